"""Synthetic VOC-like segmentation data ('shapes'): generator, TFDS builder and a figure helper.

Every object has a large body drawn from one shape and colour distribution shared by all
classes. Its class is coded in one of two ways (`coding`):
  marker (default): the body is plain and a small marker symbol inside it tells the class, so a
    class activation map covers the marker and rarely the whole body, as on real photographs.
    Backgrounds are cluttered with speckled and striped blobs, lines and marker-like decoys.
  texture: a periodic texture of two colours covers the whole body (stripes in four directions,
    a checkerboard, a dot grid), so any window inside an object carries its class; the last
    `fine_classes` classes have a fine period that only a close view resolves. Background clutter
    is speckled and smooth blobs and lines, nothing periodic.
1 to `max_objects` objects are drawn in sequence, later ones occluding earlier ones (never
their markers), and thin background lines may cross objects. Pixel labels are uint8 with
0 = background, 1..K-1 = object classes and 255 = ignore on the inner contour of each object
(as VOC marks object boundaries).

Examples are a pure function of (seed, split, index): the same parameters give bit-identical
datasets, and every parameter is part of the TFDS config name, so different parameters never
share a cache directory.
"""
import colorsys
import dataclasses
import functools
import io
import math
import sys

from matplotlib.figure import Figure
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from rwsjax import config as config_lib
from rwsjax import figures
from rwsjax import progress
from rwsjax.data.pipeline import image_labels
from rwsjax.losses import IGNORE_LABEL

MARKERS = ('cross', 'ring', 'checker', 'stripes', 'saltire', 'dot', 'bars', 'frame', 'wedge')
# Texture classes in class order: (name, pattern, direction of the pattern's u axis in degrees,
# counter-clockwise as seen). Stripes run along u; every pattern inks half of the plane, so
# textures of one period mix their two colours alike when blurred.
TEXTURES = (('hstripes', 'stripes', 0), ('vstripes', 'stripes', 90), ('diag45', 'stripes', 45),
            ('diag135', 'stripes', 135), ('checker', 'checker', 0), ('dots', 'dots', 0))
CODINGS = config_lib.SHAPES_FIELDS['coding'].values
# ShapesConfig fields after these defaults: the config name spells them only off their defaults,
# so the names (cache directories) of marker-coded datasets stay those they always had.
CODING_FIELDS = ('coding', 'texture_period', 'fine_period')
SPLITS = ('train', 'validation')
MIN_IMAGE_SIZE = 28  # Four marker sides: room for a body around a marker.


def marker_size(image_size):
  """Side of the square class marker in pixels (0.16 of the image side, at least 7)."""
  return max(7, round(0.16 * image_size))


def marker_patterns(size):
  """(len(MARKERS), size, size) bool ink patterns on a centred [-1, 1]^2 grid."""
  t = (np.arange(size) + 0.5) / size * 2 - 1
  v, u = np.meshgrid(t, t, indexing='ij')
  r = np.hypot(u, v)

  def cells(x, n):
    return np.floor((x + 1) * n / 2).astype(np.int32)

  return np.stack([
      (np.abs(u) < 0.3) | (np.abs(v) < 0.3),
      (r > 0.45) & (r < 0.95),
      (u < 0) == (v < 0),
      cells(v, 5) % 2 == 0,
      (np.abs(u - v) < 0.3) | (np.abs(u + v) < 0.3),
      r < 0.6,
      cells(u, 5) % 2 == 0,
      np.maximum(np.abs(u), np.abs(v)) > 0.55,
      v > 2 * np.abs(u) - 1,
  ])


def _grid(size):
  """(y, x) float32 pixel-centre coordinate grids of shape (size, size)."""
  t = np.arange(size, dtype=np.float32)
  return np.meshgrid(t, t, indexing='ij')


def _random_colour(rng, saturation=(0.15, 0.8), value=(0.25, 0.95)):
  """An RGB colour in [0, 255] with uniform hue and the given saturation/value ranges."""
  rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
  return np.asarray(rgb, np.float32) * 255


def _ink(rng, colour):
  """A marker colour with a clear lightness contrast to `colour`."""
  shift = rng.uniform(70, 130) * (1 if colour.mean() < 128 else -1)
  return np.clip(colour + shift + rng.normal(0, 20, 3), 0, 255).astype(np.float32)


def _smooth_field(rng, size, amplitude):
  """(size, size, 3) low-frequency noise: a random coarse grid upsampled bilinearly."""
  cells = int(rng.integers(2, 6))
  coarse = rng.normal(0, amplitude, (cells + 1, cells + 1, 3)).astype(np.float32)
  pos = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
  lo = np.minimum(pos.astype(np.int32), cells - 1)
  frac = pos - lo
  weights = np.zeros((size, cells + 1), np.float32)
  weights[np.arange(size), lo] = 1 - frac
  weights[np.arange(size), lo + 1] = frac
  return (weights @ coarse.transpose(2, 0, 1) @ weights.T).transpose(1, 2, 0)


def _blob_mask(rng, grid, size, radius_range):
  """Random rotated super-ellipse with a wavy rim: (mask, smaller semi-axis in pixels)."""
  yy, xx = grid
  cy, cx = rng.uniform(0, size, 2)
  a, b = rng.uniform(*radius_range, 2) * size
  angle = rng.uniform(0, np.pi)
  power = np.exp(rng.uniform(np.log(1.3), np.log(4.0)))
  wobble, lobes, phase = rng.uniform(0, 0.15), rng.integers(3, 6), rng.uniform(0, 2 * np.pi)
  dx, dy = xx - cx, yy - cy
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = -dx * np.sin(angle) + dy * np.cos(angle)
  dist = (np.abs(u / a) ** power + np.abs(v / b) ** power) ** (1 / power)
  rim = 1 + wobble * np.sin(lobes * np.arctan2(v, u) + phase)
  return dist <= rim, min(a, b)


def _line_mask(rng, grid, size):
  """A straight line segment 1-3 pixels thick between two random points."""
  yy, xx = grid
  (y0, x0), (y1, x1) = rng.uniform(-0.1, 1.1, (2, 2)) * size
  width = rng.uniform(1.0, 3.0)
  dy, dx = y1 - y0, x1 - x0
  t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
  return np.hypot(yy - y0 - t * dy, xx - x0 - t * dx) <= width / 2


def _shaded(rng, grid, colour):
  """(H, W, 3) plain colour with a gentle linear shading gradient."""
  yy, xx = grid
  gy, gx = rng.normal(0, 0.5, 2)
  return colour + (gy * (yy - yy.mean()) + gx * (xx - xx.mean()))[..., None]


def _striped(rng, grid, colour):
  """(H, W, 3) colour modulated by sine stripes of random period and direction."""
  yy, xx = grid
  angle, period = rng.uniform(0, np.pi), rng.uniform(3, 10)
  phase = xx * np.cos(angle) + yy * np.sin(angle)
  return colour + (rng.uniform(20, 50) * np.sin(2 * np.pi * phase / period))[..., None]


def _stripes(u, v):
  """Ink of stripes along u: half of every period in v."""
  del u  # Constant along the stripes.
  return v % 1 < 0.5


def _checker(u, v):
  """Ink of a checkerboard with two squares per period in u and in v."""
  return (np.floor(2 * u) + np.floor(2 * v)) % 2 == 0


def _dots(u, v):
  """Ink of a square grid of dots covering half of each cell (radius sqrt(1 / (2 pi)))."""
  return np.hypot(u % 1 - 0.5, v % 1 - 0.5) < np.sqrt(0.5 / np.pi)


# Pattern -> ink (bool) at frame coordinates (u, v) in periods.
PATTERNS = {'stripes': _stripes, 'checker': _checker, 'dots': _dots}


def texture_coverage(y, x, pattern, period, angle, phase, samples=4):
  """Share of each pixel (centres y, x: arrays of one shape) inked by `pattern` (PATTERNS).

  The pattern's frame has its u axis at `angle` degrees counter-clockwise as seen (image rows
  grow downwards), `period` pixels per unit and offset `phase` (u0, v0) in periods; each pixel
  averages samples x samples points (anti-aliasing)."""
  offsets = (np.arange(samples, dtype=np.float32) + 0.5) / samples - 0.5
  y = y[None, None] + offsets.reshape((samples, 1) + (1,) * np.ndim(y))
  x = x[None, None] + offsets.reshape((1, samples) + (1,) * np.ndim(x))
  cos, sin = math.cos(math.radians(angle)) / period, math.sin(math.radians(angle)) / period
  u = x * cos - y * sin + float(phase[0])
  v = x * sin + y * cos + float(phase[1])
  return PATTERNS[pattern](u, v).mean((0, 1), dtype=np.float32)


def _inner_boxes(mask, side):
  """Top-left corners (i, j) of all side x side windows lying entirely inside `mask`."""
  integral = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side]
          + integral[:-side, :-side])
  return np.argwhere(sums == side * side)


def _speckled(rng, grid, colour):
  """(H, W, 3) colour with strong per-pixel noise."""
  return colour + rng.normal(0, rng.uniform(20, 35), (*grid[0].shape, 3))


def _paint(image, mask, texture):
  """Writes `texture` (H, W, 3) into `image` where `mask` is set."""
  image[mask] = texture[mask]


def _draw_clutter(rng, image, grid, size, count, side):
  """Background clutter: speckled and striped blobs, lines, marker-like decoys (label 0) of
  `side` pixels."""
  for kind in rng.integers(0, 4, count):
    colour = _random_colour(rng)
    if kind == 0:
      _paint(image, _blob_mask(rng, grid, size, (0.08, 0.25))[0], _speckled(rng, grid, colour))
    elif kind == 1:
      _paint(image, _blob_mask(rng, grid, size, (0.08, 0.3))[0], _striped(rng, grid, colour))
    elif kind == 2:
      image[_line_mask(rng, grid, size)] = colour
    else:
      decoy = np.kron(rng.random((3, 3)) < 0.5, np.ones((side, side), bool))[:side, :side]
      i, j = rng.integers(0, size - side + 1, 2)
      image[i:i + side, j:j + side][decoy] = _ink(rng, colour)


def _draw_plain_clutter(rng, image, grid, size, count):
  """Background clutter without anything periodic (texture coding): speckled and smooth blobs
  and lines (label 0)."""
  for kind in rng.integers(0, 3, count):
    colour = _random_colour(rng)
    if kind == 2:
      image[_line_mask(rng, grid, size)] = colour
    else:
      painter = _speckled if kind == 0 else _shaded
      _paint(image, _blob_mask(rng, grid, size, (0.08, 0.3))[0], painter(rng, grid, colour))


def _draw_textured(rng, image, label, grid, size, cls, periods):
  """Draws one object of class `cls` covered by its texture (TEXTURES[cls - 1]) at about
  `periods[cls - 1]` pixels: period +-10%, direction +-4 degrees, random phase, body colour and
  an ink colour of clear lightness contrast. Always fits: returns True."""
  body, _ = _blob_mask(rng, grid, size, (0.15, 0.3))
  _, pattern, angle = TEXTURES[cls - 1]
  coverage = texture_coverage(grid[0][body], grid[1][body], pattern,
                              periods[cls - 1] * rng.uniform(0.9, 1.1),
                              angle + rng.uniform(-4, 4), rng.random(2))
  colour = _random_colour(rng)
  ink = _ink(rng, colour)
  image[body] = _shaded(rng, grid, colour)[body] + coverage[:, None] * (ink - colour)
  label[body] = cls
  return True


def _draw_object(rng, image, label, protected, grid, size, cls, patterns, tries=10):
  """Draws one object of class `cls` without covering earlier markers; False if none fits.

  `patterns[cls - 1]` is the class's (side, side) marker."""
  side = patterns[cls - 1].shape[-1]
  for _ in range(tries):
    body, radius = _blob_mask(rng, grid, size, (0.15, 0.3))
    if radius < side or np.any(body & protected):
      continue
    corners = _inner_boxes(body, side + 2)
    if not len(corners):
      continue
    colour = _random_colour(rng)
    _paint(image, body, _shaded(rng, grid, colour))
    label[body] = cls
    i, j = corners[rng.integers(len(corners))] + 1
    image[i:i + side, j:j + side][patterns[cls - 1]] = _ink(rng, colour)
    protected[i - 1:i + side + 1, j - 1:j + side + 1] = True
    return True
  return False


def inner_contour(label):
  """Foreground pixels with a 4-neighbour of another label (the image edge does not count)."""
  padded = np.pad(label, 1, mode='edge')
  centre = padded[1:-1, 1:-1]
  differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
             | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
  return differs & (label > 0)


def class_markers(image_size, num_object_classes, fine_classes=0, fine_marker=0):
  """Marker pattern of each object class: (side, side) bool arrays, class 1 first.

  The last `fine_classes` classes carry their marker at `fine_marker` pixels (0: half the
  usual side, at least 5), so that only a fine-scale view tells them apart.
  """
  patterns = list(marker_patterns(marker_size(image_size))[:num_object_classes])
  if fine_classes:
    side = fine_marker or max(5, marker_size(image_size) // 2)
    fine = marker_patterns(side)
    for k in range(num_object_classes - fine_classes, num_object_classes):
      patterns[k] = fine[k]
  return patterns


def class_periods(num_object_classes, fine_classes=0, texture_period=8, fine_period=3):
  """Texture period of each object class in pixels, class 1 first: the last `fine_classes`
  classes at `fine_period`, the others at `texture_period`."""
  coarse = num_object_classes - fine_classes
  return (texture_period,) * coarse + (fine_period,) * fine_classes


def render(rng, image_size=96, num_object_classes=6, max_objects=4, clutter=4,
           ignore_border=True, fine_classes=0, fine_marker=0, coding='marker', texture_period=8,
           fine_period=3):
  """One synthetic example: (image uint8 (S, S, 3), label uint8 (S, S)).

  Args:
    rng: numpy Generator; the example is a pure function of its state.
    image_size: S.
    num_object_classes: object classes 1..num_object_classes (at most len(MARKERS), or
      len(TEXTURES) with texture coding).
    max_objects: objects per image are uniform in [1, max_objects].
    clutter: background clutter items are uniform in [clutter // 2, clutter].
    ignore_border: mark the inner contour of every object with IGNORE_LABEL.
    fine_classes: the last `fine_classes` classes are fine-scale: small markers
      (`class_markers`) or textures of period `fine_period` (`class_periods`).
    fine_marker: marker coding, the fine classes' marker side; 0 = half the usual side.
    coding: 'marker' (a marker inside a plain body) or 'texture' (a texture over the body).
    texture_period, fine_period: texture coding, the period in pixels of the other classes'
      and of the fine classes' textures.
  """
  config_lib.check_value(coding, CODINGS, 'coding')
  size = image_size
  grid = _grid(size)
  image = _smooth_field(rng, size, rng.uniform(15, 40)) + _random_colour(rng)
  image += rng.normal(0, rng.uniform(3, 10), image.shape)
  count = int(rng.integers(clutter // 2, clutter + 1))
  label = np.zeros((size, size), np.uint8)
  protected = np.zeros((size, size), bool)
  if coding == 'marker':
    _draw_clutter(rng, image, grid, size, count, marker_size(size))
    draw = functools.partial(_draw_object, rng, image, label, protected, grid, size,
                             patterns=class_markers(size, num_object_classes, fine_classes,
                                                    fine_marker))
  else:
    _draw_plain_clutter(rng, image, grid, size, count)
    draw = functools.partial(_draw_textured, rng, image, label, grid, size,
                             periods=class_periods(num_object_classes, fine_classes,
                                                   texture_period, fine_period))
  drawn = 0
  for cls in rng.integers(1, num_object_classes + 1, int(rng.integers(1, max_objects + 1))):
    drawn += draw(cls)
  while not drawn:
    drawn = draw(int(rng.integers(1, num_object_classes + 1)))
  if rng.random() < 0.5:
    occluder = _line_mask(rng, grid, size) & ~protected
    image[occluder] = _random_colour(rng)
    label[occluder] = 0
  image += rng.normal(0, rng.uniform(2, 6), image.shape)
  if ignore_border:
    label[inner_contour(label)] = IGNORE_LABEL
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def example_rng(seed, split, index):
  """The Generator of example `index` of `split`: independent of generation order."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


def _png(array):
  """Fast lossless PNG bytes of a uint8 array."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format='png', compress_level=1)
  return buffer.getvalue()


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Parameters of the synthetic dataset; see `render` for their meaning."""
  num_train: int = 2000
  num_val: int = 500
  image_size: int = 96
  num_object_classes: int = 6
  max_objects: int = 4
  clutter: int = 4
  ignore_border: bool = True
  seed: int = 0
  fine_classes: int = 0
  fine_marker: int = 0
  coding: str = 'marker'
  texture_period: int = 8
  fine_period: int = 3


def _name(values, defaults):
  """Config name: every parameter, but CODING_FIELDS only when one of them is off its default."""
  named = {k: v for k, v in values.items() if k not in CODING_FIELDS}
  if any(values[k] != defaults[k] for k in CODING_FIELDS):
    named.update((k, values[k]) for k in CODING_FIELDS)
  return '-'.join(f'{k.removeprefix("num_")}{v if isinstance(v, str) else int(v)}'
                  for k, v in named.items())


def shapes_config(**params):
  """A ShapesConfig whose name spells out every parameter (one cache directory per setting)."""
  fields = [f.name for f in dataclasses.fields(ShapesConfig)]
  fields = fields[fields.index('num_train'):]
  unknown = sorted(set(params) - set(fields))
  if unknown:
    raise ValueError(f'config.dataset.shapes has unknown key(s) {unknown}; valid keys: {fields}.')
  defaults = {k: ShapesConfig.__dataclass_fields__[k].default for k in fields}
  values = {k: params.get(k, defaults[k]) for k in fields}
  config_lib.check_value(values['coding'], CODINGS, 'config.dataset.shapes.coding')
  for key in ('texture_period', 'fine_period'):
    if values[key] != int(values[key]) or values[key] < 2:
      raise ValueError(f'config.dataset.shapes.{key} must be a whole number of at least 2 '
                       f'pixels, got {values[key]}.')
  most = len(MARKERS) if values['coding'] == 'marker' else len(TEXTURES)
  if not 1 <= values['num_object_classes'] <= most:
    raise ValueError(f'config.dataset.shapes.num_object_classes must be in [1, {most}] with '
                     f'{values["coding"]} coding, got {values["num_object_classes"]}.')
  if not 0 <= values['fine_classes'] <= values['num_object_classes']:
    raise ValueError('config.dataset.shapes.fine_classes must be in [0, num_object_classes], '
                     f'got {values["fine_classes"]}.')
  if values['image_size'] < MIN_IMAGE_SIZE:
    raise ValueError(f'config.dataset.shapes.image_size must be at least {MIN_IMAGE_SIZE}, '
                     f'got {values["image_size"]}.')
  return ShapesConfig(name=_name(values, defaults), **values)


class GeneratedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder of square images drawn from a seed (nothing downloaded): 'train' and
  'validation' splits of `builder_config.num_train` and `num_val` examples, each an 'image', a
  'segmentation' map, multi-hot image 'labels' and an 'id'. A subclass gives `num_labels` and
  `example(split, index) -> (image, label map, labels)`."""

  url_infos = None  # Nothing is downloaded, so there are no URL checksums to look up.

  def num_labels(self):
    raise NotImplementedError

  def example(self, split, index):
    raise NotImplementedError

  def _info(self):
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=sys.modules[type(self).__module__].__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3)),
            'segmentation': tfds.features.Image(shape=(size, size, 1)),
            'labels': tfds.features.Tensor(shape=(self.num_labels(),), dtype=np.bool_),
            'id': tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'validation': self._generate_examples('validation', cfg.num_val)}

  def _generate_examples(self, split, count):
    for index in progress.logged(range(count), f'preparing {self.name} {split}', count):
      image, label, labels = self.example(split, index)
      yield index, {'image': _png(image), 'segmentation': _png(label), 'labels': labels,
                    'id': f'{split}_{index:06d}'}


class SyntheticShapes(GeneratedBuilder):
  """TFDS builder of the synthetic shapes dataset (no download; built from `seed`)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Marker-coded objects on cluttered backgrounds.'}

  def __init__(self, *, config=None, **kwargs):
    """`config`: a ShapesConfig (default parameters when None); other kwargs go to TFDS."""
    super().__init__(config=config or shapes_config(), **kwargs)

  def num_labels(self):
    return self.builder_config.num_object_classes

  def example(self, split, index):
    cfg = self.builder_config
    image, label = render(example_rng(cfg.seed, split, index), cfg.image_size,
                          cfg.num_object_classes, cfg.max_objects, cfg.clutter,
                          cfg.ignore_border, cfg.fine_classes, cfg.fine_marker, cfg.coding,
                          cfg.texture_period, cfg.fine_period)
    return image, label, image_labels(label, cfg.num_object_classes)


def class_names(num_object_classes, coding='marker'):
  """['background', <marker or texture names>...] of the first `num_object_classes` classes."""
  names = MARKERS if coding == 'marker' else [name for name, _, _ in TEXTURES]
  return ['background', *names[:num_object_classes]]


def plot_examples(source, path, n=4, names=None):
  """Saves a PNG with n examples of `source` (image above, pixel labels below) to `path`."""
  n = min(n, len(source))
  fig = Figure(figsize=(2.2 * n, 4.6))
  axes = fig.subplots(2, n, squeeze=False)
  for k in range(n):
    example = source[k]
    present = np.flatnonzero(example['labels']) + 1
    axes[0, k].imshow(example['image'])
    axes[0, k].set_title(', '.join(names[c] if names else str(c) for c in present), fontsize=8)
    axes[1, k].imshow(figures.colorize(example['segmentation'][..., 0]))
  for ax in axes.ravel():
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
