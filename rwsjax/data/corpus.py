"""Pretraining corpus ('shapes_corpus'): synthetic single-label classification images whose
classes are none of the shapes data's (docs/methods.md, shared building blocks: pretrained
weights).

Each image holds one object on a cluttered background drawn as the shapes data draws its
backgrounds (a smooth colour field, noise, speckled and plain blobs, lines: the helpers of
`rwsjax.data.shapes`). The object's class (`CLASSES`) is one of two kinds:
  silhouettes: a filled outline (stars of five and seven points, a crescent, a ring of beads,
    an arrow, a crown, a spiral, a lightning bolt, a bowtie, a dumbbell, a chevron, a
    three-petal rose, a six-armed asterisk, a curved pinwheel), one shaded colour of clear
    lightness contrast to the background behind it;
  patterns: a two-colour pattern over a rounded body (concentric circles, wavy rings, spiral
    arms, a hexagonal grid of dots, a honeycomb, a hexagonal grid of rings, lines
    crossing at 60 degrees, a triangle grid, rays from a centre, random dots, the outlines of
    random cells), at a period of 5 to 9 pixels on 96-pixel images.
Neither kind is a shapes class: the shapes data tells its classes by nine marker symbols
(`shapes.MARKERS`) or by stripes, a checkerboard and a square dot grid (`shapes.TEXTURES`), and
tests/test_corpus.py checks by image statistics that no corpus class is one of them at any size,
direction, period or phase. Every object has a random position, size, rotation and aspect; a
line crosses a third of the images. The label map holds the object's class + 1 on its pixels
and 0 elsewhere (`segmentation`, as the shapes data's), and `labels` is the one-hot class.

Examples are a pure function of (seed, split, index) (`example_rng`), and example `index`
has class `index % len(CLASSES)`, so every split is balanced to one example.
"""
import dataclasses
import math

import numpy as np
import tensorflow_datasets as tfds

from rwsjax.data import shapes
# The shapes generator's background helpers (its private drawing functions are reused, not
# copied, so that corpus backgrounds look like the targets' backgrounds).
from rwsjax.data.shapes import (_draw_plain_clutter, _grid, _ink, _line_mask, _random_colour,
                                _shaded, _smooth_field)

SPLITS = ('train', 'validation')
# Generator seed namespace. A shapes example draws from np.random.default_rng([seed, k, index])
# with its split number k in {0, 1}; numpy's SeedSequence hashes entropy shorter than its pool
# of four words as if padded with zero words, so that is the word sequence [seed, k, index, 0].
# A corpus example draws from [seed, CORPUS_TAG, split, index]: its second word is CORPUS_TAG,
# which is no shapes split number, so while both seeds fit in one 32-bit word (the corpus
# checks its own in `corpus_config`) no corpus example shares the entropy, hence the random
# stream, of a shapes example.
CORPUS_TAG = 0x636F7270  # 'corp'
MIN_IMAGE_SIZE = 32
REFERENCE_SIZE = 96  # pattern periods are given in pixels at this image size


def _polar(u, v):
  """(radius, angle) of points (u, v)."""
  return np.hypot(u, v), np.arctan2(v, u)


def _segment_distance(u, v, start, end):
  """Distance of points (u, v) to the segment from `start` to `end` (pairs)."""
  (u0, v0), (u1, v1) = start, end
  du, dv = u1 - u0, v1 - v0
  t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0, 1)
  return np.hypot(u - u0 - t * du, v - v0 - t * dv)


def _polyline_distance(u, v, points):
  """Distance of points (u, v) to the polyline through `points`."""
  return np.min([_segment_distance(u, v, a, b) for a, b in zip(points[:-1], points[1:])],
                axis=0)


def _star(rng, u, v, points, inner):
  """A regular star of `points` points, outer radius 1 and inner radius `inner` (times
  U(0.9, 1.1)): inside where the radius is below the boundary between the nearest outer
  vertex (angle 0 after folding) and inner vertex."""
  r, phi = _polar(u, v)
  sector = 2 * np.pi / points
  folded = phi % sector
  angle = np.minimum(folded, sector - folded)
  inner *= rng.uniform(0.9, 1.1)
  du, dv = inner * math.cos(sector / 2) - 1, inner * math.sin(sector / 2)
  return r * (np.cos(angle) * dv - np.sin(angle) * du) <= dv


def _star5(rng, u, v):
  """Five-pointed star."""
  return _star(rng, u, v, 5, 0.42)


def _star7(rng, u, v):
  """Seven-pointed star."""
  return _star(rng, u, v, 7, 0.5)


def _crescent(rng, u, v):
  """A disc with an overlapping disc cut out of one side."""
  shift, radius = rng.uniform(0.4, 0.55), rng.uniform(0.8, 0.95)
  return (np.hypot(u, v) <= 1) & (np.hypot(u - shift, v) > radius)


def _bead_ring(rng, u, v):
  """6 to 9 separate beads on a circle."""
  count = int(rng.integers(6, 10))
  share = math.sin(np.pi / count) * rng.uniform(0.55, 0.7)  # bead radius / circle radius
  circle = 0.98 / (1 + share)
  _, phi = _polar(u, v)
  nearest = np.round(phi / (2 * np.pi / count)) * (2 * np.pi / count)
  return np.hypot(u - circle * np.cos(nearest), v - circle * np.sin(nearest)) < circle * share


def _arrow(rng, u, v):
  """A shaft with a triangular head."""
  shaft = rng.uniform(0.12, 0.17)
  head = (u >= 0.05) & (np.abs(v) <= 0.6 * (0.95 - u) / 0.9)
  return ((np.abs(v) <= shaft) & (u >= -0.95) & (u <= 0.1)) | head


def _crown(rng, u, v):
  """A band with 3 to 5 triangular spikes on one side."""
  spikes = int(rng.integers(3, 6))
  edge = np.abs(2 * (((u + 0.78) * spikes / 1.56) % 1) - 1)  # 0 at a spike's tip, 1 between
  return (np.abs(u) <= 0.78) & (v <= 0.55) & (v >= -0.75 + 1.05 * edge)


def _spiral(rng, u, v):
  """An Archimedean spiral band of 2 to 3 turns."""
  turns = rng.uniform(2.0, 3.0)
  r, phi = _polar(u, v)
  return (r <= 1) & ((r * turns - phi / (2 * np.pi)) % 1 < 0.45)


def _bolt(rng, u, v):
  """A thick lightning-bolt polyline."""
  bend = rng.uniform(0.2, 0.35)
  points = [(-0.3, -0.8), (bend, -0.12), (-bend, 0.12), (0.3, 0.8)]
  return _polyline_distance(u, v, points) < rng.uniform(0.1, 0.14)


def _bowtie(rng, u, v):
  """Two triangles meeting at their tips."""
  return (np.abs(v) <= rng.uniform(0.6, 0.8) * np.abs(u)) & (np.abs(u) <= 0.75)


def _dumbbell(rng, u, v):
  """Two discs joined by a bar."""
  radius = rng.uniform(0.28, 0.35)
  ends = np.hypot(np.abs(u) - (1 - radius), v) <= radius
  return ends | ((np.abs(v) <= rng.uniform(0.08, 0.12)) & (np.abs(u) <= 1 - radius))


def _chevron(rng, u, v):
  """A thick V."""
  depth = rng.uniform(0.5, 0.65)
  points = [(-0.45, -depth), (0.6, 0.0), (-0.45, depth)]
  return _polyline_distance(u, v, points) < rng.uniform(0.13, 0.17)


def _rose(rng, u, v):
  """A three-petal rose, r <= cos(3 phi)^0.6."""
  del rng  # No parameter: size, aspect and rotation vary per object.
  r, phi = _polar(u, v)
  return r <= np.maximum(np.cos(3 * phi), 0) ** 0.6


def _asterisk(rng, u, v):
  """Three bars crossing at 60 degrees."""
  width = rng.uniform(0.07, 0.1)
  bars = [np.abs(u * math.sin(a) - v * math.cos(a)) for a in (0, np.pi / 3, 2 * np.pi / 3)]
  return (np.min(bars, axis=0) <= width) & (np.hypot(u, v) <= 0.95)


def _pinwheel(rng, u, v):
  """Four curved blades."""
  r, phi = _polar(u, v)
  twist = rng.uniform(1.0, 1.6)
  return (r <= 0.95) & (r >= 0.08) & ((phi - twist * r) / (np.pi / 2) % 1 < 0.5)


def _frac_band(x, duty):
  """Ink of bands of `duty` of each unit period of x."""
  return x % 1 < duty


def _concentric(rng, u, v, period):
  """Concentric circles around a point near the object's centre."""
  du, dv = rng.uniform(-0.2, 0.2, 2) * period
  return _frac_band(np.hypot(u - du, v - dv) / period + rng.random(), 0.5)


def _ripples(rng, u, v, period):
  """Wavy concentric rings: their radius swings by a sine of 5 to 8 lobes around the centre."""
  r, phi = _polar(u, v)
  swing = rng.uniform(0.3, 0.45) * period * np.sin(int(rng.integers(5, 9)) * phi + rng.random() * 7)
  return _frac_band((r + swing) / period, 0.5)


def _swirl(rng, u, v, period):
  """6 to 10 spiral arms winding out from the centre."""
  r, phi = _polar(u, v)
  arms = int(rng.integers(6, 11))
  return _frac_band(arms * phi / (2 * np.pi) + r / (2 * period), 0.5)


def _hex_lattice_distances(u, v, spacing):
  """Distances of points (u, v) to their nearest and second nearest points of a triangular
  lattice of `spacing` (a point at the origin): among the 4 x 4 lattice points around the
  point's cell, which hold both."""
  a = u / spacing - v / (spacing * math.sqrt(3))
  b = 2 * v / (spacing * math.sqrt(3))
  i0, j0 = np.floor(a), np.floor(b)
  distances = []
  for di in (-1, 0, 1, 2):
    for dj in (-1, 0, 1, 2):
      i, j = i0 + di, j0 + dj
      pu, pv = (i + j / 2) * spacing, j * spacing * math.sqrt(3) / 2
      distances.append(np.hypot(u - pu, v - pv))
  nearest, second = np.partition(np.stack(distances), 1, axis=0)[:2]
  return nearest, second


def _hexdots(rng, u, v, period):
  """Dots on a triangular (hexagonal) lattice."""
  spacing = 1.3 * period
  nearest, _ = _hex_lattice_distances(u, v, spacing)
  return nearest < rng.uniform(0.28, 0.34) * spacing


def _honeycomb(rng, u, v, period):
  """Hexagon outlines: points about as near to two lattice points as to their nearest."""
  spacing = 1.6 * period
  nearest, second = _hex_lattice_distances(u, v, spacing)
  return second - nearest < rng.uniform(0.1, 0.14) * spacing


def _bubbles(rng, u, v, period):
  """Rings on a triangular lattice."""
  spacing = 1.6 * period
  nearest, _ = _hex_lattice_distances(u, v, spacing)
  return np.abs(nearest - 0.3 * spacing) < rng.uniform(0.06, 0.08) * spacing


def _line_family(u, v, angle, period, duty):
  """Ink of parallel lines at `angle` radians: `duty` of each period."""
  return _frac_band((v * math.cos(angle) - u * math.sin(angle)) / period, duty)


def _crosshatch60(rng, u, v, period):
  """Two families of lines crossing at 60 degrees."""
  duty = rng.uniform(0.25, 0.32)
  return _line_family(u, v, 0, period, duty) | _line_family(u, v, np.pi / 3, period, duty)


def _trigrid(rng, u, v, period):
  """Three families of lines at 60 degrees: a grid of triangles."""
  duty = rng.uniform(0.18, 0.24)
  spacing = 1.3 * period
  return np.any([_line_family(u, v, a, spacing, duty) for a in (0, np.pi / 3, 2 * np.pi / 3)],
                axis=0)


def _sunburst(rng, u, v, period):
  """Rays from the object's centre."""
  del period  # The rays' count sets their width.
  _, phi = _polar(u, v)
  return _frac_band(phi / (2 * np.pi) * int(rng.integers(10, 17)), 0.5)


def _confetti(rng, u, v, period):
  """Dots at random places (`_random_points_distances`), which may overlap; about 30% of the
  area inked."""
  nearest, _ = _random_points_distances(rng, u, v, 0.9 * period)
  return nearest < (0.3 / 0.9) ** 2


def _random_points_distances(rng, u, v, cell):
  """Squared distances, in cells, of points (u, v) to their nearest and second nearest random
  points: one point per square cell of side `cell`, uniform over its cell (a jitter that leaves
  no lattice frequency in the spectrum); among the 3 x 3 cells around the point's cell, which
  hold both."""
  x, y = u / cell, v / cell
  i, j = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
  i0, j0 = i.min() - 1, j.min() - 1
  places = rng.random((i.max() - i0 + 2, j.max() - j0 + 2, 2))
  dist2 = []
  for di in (-1, 0, 1):
    for dj in (-1, 0, 1):
      ci, cj = i + di, j + dj
      place = places[ci - i0, cj - j0]
      dist2.append((x - ci - place[..., 0]) ** 2 + (y - cj - place[..., 1]) ** 2)
  nearest, second = np.partition(np.stack(dist2), 1, axis=0)[:2]
  return nearest, second


def _mosaic(rng, u, v, period):
  """Outlines of random cells (the Voronoi cells of random points)."""
  nearest, second = _random_points_distances(rng, u, v, 1.2 * period)
  return np.sqrt(second) - np.sqrt(nearest) < rng.uniform(0.1, 0.14)


# Class name -> ink(rng, u, v) of a silhouette in coordinates scaled to the unit disc, which
# holds all of it.
SILHOUETTES = {
    'star5': _star5, 'star7': _star7, 'crescent': _crescent, 'bead_ring': _bead_ring,
    'arrow': _arrow, 'crown': _crown, 'spiral': _spiral, 'bolt': _bolt, 'bowtie': _bowtie,
    'dumbbell': _dumbbell, 'chevron': _chevron, 'rose': _rose, 'asterisk': _asterisk,
    'pinwheel': _pinwheel,
}
# Class name -> ink(rng, u, v, period) of a pattern in pixel coordinates around the object's
# centre, for a period (or cell size) of `period` pixels.
PATTERNS = {
    'concentric': _concentric, 'ripples': _ripples, 'swirl': _swirl,
    'hexdots': _hexdots, 'honeycomb': _honeycomb, 'bubbles': _bubbles,
    'crosshatch60': _crosshatch60, 'trigrid': _trigrid, 'sunburst': _sunburst,
    'confetti': _confetti, 'mosaic': _mosaic,
}
CLASSES = (*SILHOUETTES, *PATTERNS)


def object_frame(rng, size):
  """Where the object lies: (centre (y, x) in pixels, radius in pixels, rotation in radians,
  scale of its two axes). The centre stays in the middle 40% of the image, so that crops of
  a rescaled image keep most of the object."""
  centre = rng.uniform(0.3, 0.7, 2) * size
  radius = rng.uniform(0.2, 0.34) * size
  return centre, radius, rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.0, 2)


def frame_coordinates(yy, xx, centre, rotation, scales=(1.0, 1.0), unit=1.0):
  """(u, v) of pixel coordinates (yy, xx) in the object's frame: rotated by `rotation`, each
  axis divided by `unit` times its scale."""
  dy, dx = yy - centre[0], xx - centre[1]
  cos, sin = math.cos(rotation), math.sin(rotation)
  return ((dx * cos + dy * sin) / (unit * scales[0]),
          (-dx * sin + dy * cos) / (unit * scales[1]))


def _box(centre, radius, size):
  """Rows and columns (slices) of the image that a disc of `radius` around `centre` covers."""
  lo = np.maximum(np.floor(np.asarray(centre) - radius), 0).astype(int)
  hi = np.minimum(np.ceil(np.asarray(centre) + radius) + 1, size).astype(int)
  return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def pattern_coverage(name, rng, yy, xx, centre, rotation, period, samples=2):
  """Share of each pixel (centres yy, xx) inked by pattern `name` around `centre`, from
  samples x samples points per pixel (anti-aliasing)."""
  offsets = (np.arange(samples, dtype=np.float32) + 0.5) / samples - 0.5
  sy = yy[..., None, None] + offsets[:, None]
  sx = xx[..., None, None] + offsets[None, :]
  u, v = frame_coordinates(sy, sx, centre, rotation)
  return PATTERNS[name](rng, u, v, period).mean((-2, -1), dtype=np.float32)


def _draw_silhouette(rng, image, name, yy, xx, frame):
  """Paints silhouette `name` in the object's frame into `image` (the object's box), one
  shaded colour of clear lightness contrast to the box; returns its mask."""
  centre, radius, rotation, scales = frame
  u, v = frame_coordinates(yy, xx, centre, rotation, scales, radius)
  mask = SILHOUETTES[name](rng, u, v)
  colour = _ink(rng, image.reshape(-1, 3).mean(0))
  image[mask] = _shaded(rng, (yy, xx), colour)[mask]
  return mask


def _draw_pattern(rng, image, name, yy, xx, frame, size):
  """Paints pattern `name` in two colours over a rounded body (a super-ellipse within the unit
  disc) into `image` (the object's box); returns the body's mask."""
  centre, radius, rotation, scales = frame
  u, v = frame_coordinates(yy, xx, centre, rotation, scales, radius)
  power = rng.uniform(1.6, 4.0)
  body = (np.abs(u) ** power + np.abs(v) ** power <= 1) & (np.hypot(u, v) <= 1)
  period = rng.uniform(5, 9) * size / REFERENCE_SIZE
  coverage = pattern_coverage(name, rng, yy[body], xx[body], centre, rng.uniform(0, 2 * np.pi),
                              period)
  colour = _random_colour(rng)
  ink = _ink(rng, colour)
  image[body] = _shaded(rng, (yy, xx), colour)[body] + coverage[:, None] * (ink - colour)
  return body


def render(rng, cls, image_size=96, clutter=4):
  """One example of class `cls` (index into CLASSES): (image uint8 (S, S, 3), label uint8
  (S, S): cls + 1 on the object, 0 elsewhere).

  Args:
    rng: numpy Generator; the example is a pure function of its state and `cls`.
    cls: the class index.
    image_size: S.
    clutter: background clutter items are uniform in [clutter // 2, clutter].
  """
  size = image_size
  grid = _grid(size)
  image = _smooth_field(rng, size, rng.uniform(15, 40)) + _random_colour(rng)
  image += rng.normal(0, rng.uniform(3, 10), image.shape)
  _draw_plain_clutter(rng, image, grid, size, int(rng.integers(clutter // 2, clutter + 1)))
  frame = object_frame(rng, size)
  rows, cols = _box(frame[0], frame[1], size)
  yy, xx = grid[0][rows, cols], grid[1][rows, cols]
  box = image[rows, cols]
  name = CLASSES[cls]
  if name in SILHOUETTES:
    mask = _draw_silhouette(rng, box, name, yy, xx, frame)
  else:
    mask = _draw_pattern(rng, box, name, yy, xx, frame, size)
  label = np.zeros((size, size), np.uint8)
  label[rows, cols][mask] = cls + 1
  if rng.random() < 1 / 3:
    occluder = _line_mask(rng, grid, size)
    image[occluder] = _random_colour(rng)
    label[occluder] = 0
  image += rng.normal(0, rng.uniform(2, 6), image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def example_rng(seed, split, index):
  """The Generator of example `index` of `split` (see CORPUS_TAG): independent of generation
  order and of every shapes example."""
  return np.random.default_rng([seed, CORPUS_TAG, SPLITS.index(split), index])


def example_class(index):
  """The class of example `index` of any split: classes in turn, so splits are balanced."""
  return index % len(CLASSES)


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  """Parameters of the corpus; see `render` for their meaning."""
  num_train: int = 20000
  num_val: int = 2000
  image_size: int = 96
  clutter: int = 4
  seed: int = 0


def corpus_config(**params):
  """A CorpusConfig whose name spells out every parameter (one cache directory per setting)."""
  fields = [f.name for f in dataclasses.fields(CorpusConfig)]
  fields = fields[fields.index('num_train'):]
  unknown = sorted(set(params) - set(fields))
  if unknown:
    raise ValueError(f'config.dataset.corpus has unknown key(s) {unknown}; valid keys: '
                     f'{fields}.')
  values = {k: params.get(k, CorpusConfig.__dataclass_fields__[k].default) for k in fields}
  if not 0 <= values['seed'] < 2**32:
    raise ValueError(f'config.dataset.corpus.seed must be in [0, 2**32), got {values["seed"]}.')
  if values['image_size'] < MIN_IMAGE_SIZE:
    raise ValueError(f'config.dataset.corpus.image_size must be at least {MIN_IMAGE_SIZE}, '
                     f'got {values["image_size"]}.')
  for key in ('num_train', 'num_val'):
    if values[key] < 1:
      raise ValueError(f'config.dataset.corpus.{key} must be positive, got {values[key]}.')
  name = '-'.join(f'{k.removeprefix("num_")}{int(v)}' for k, v in values.items())
  return CorpusConfig(name=name, **values)


class ShapesCorpus(shapes.GeneratedBuilder):
  """TFDS builder of the pretraining corpus (no download; built from `seed`)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Silhouettes and two-colour patterns on cluttered backgrounds.'}

  def __init__(self, *, config=None, **kwargs):
    """`config`: a CorpusConfig (default parameters when None); other kwargs go to TFDS."""
    super().__init__(config=config or corpus_config(), **kwargs)

  def num_labels(self):
    return len(CLASSES)

  def example(self, split, index):
    cfg = self.builder_config
    cls = example_class(index)
    image, label = render(example_rng(cfg.seed, split, index), cls, cfg.image_size, cfg.clutter)
    return image, label, np.arange(len(CLASSES)) == cls


def class_names():
  """['background', *CLASSES]: the label map's classes (the classifier's are CLASSES)."""
  return ['background', *CLASSES]
