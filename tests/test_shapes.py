"""Synthetic shapes generator and builder, and the dataset API of rwsjax.data."""
import hashlib
import itertools

import ml_collections
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import PIL.Image
import pytest
from scipy import ndimage

from rwsjax import data
from rwsjax import parts
from rwsjax.data import shapes

SMALL = {'num_train': 12, 'num_val': 5, 'image_size': 48, 'seed': 3}


def _config(data_dir, **shapes_params):
  return ml_collections.ConfigDict({
      'name': 'shapes', 'data_dir': str(data_dir), 'num_classes': 7,
      'shapes': dict(SMALL, **shapes_params)})


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  """Config of a small shapes dataset, prepared once for this module."""
  config = _config(tmp_path_factory.mktemp('tfds'))
  data.load_builder(config)
  return config


def test_render_is_deterministic_and_index_dependent():
  a = shapes.render(shapes.example_rng(0, 'train', 4))
  b = shapes.render(shapes.example_rng(0, 'train', 4))
  c = shapes.render(shapes.example_rng(0, 'validation', 4))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_render_labels_and_classes():
  for index in range(20):
    image, label = shapes.render(shapes.example_rng(1, 'train', index), image_size=64,
                                 num_object_classes=5, max_objects=3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.uint8
    values = set(np.unique(label).tolist())
    assert values <= set(range(6)) | {255}
    assert 1 <= len(values - {0, 255}) <= 3
    background = image[label == 0].astype(np.float32)
    assert background.std(axis=0).mean() > 8  # textured, not flat


def test_inner_contour_matches_brute_force():
  rng = np.random.default_rng(0)
  label = np.repeat(np.repeat(rng.integers(0, 3, (5, 6)), 2, 0), 2, 1).astype(np.uint8)
  expected = np.zeros(label.shape, bool)
  for y, x in itertools.product(range(label.shape[0]), range(label.shape[1])):
    neighbours = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
    inside = [(i, j) for i, j in neighbours if 0 <= i < label.shape[0] and 0 <= j < label.shape[1]]
    expected[y, x] = label[y, x] > 0 and any(label[i, j] != label[y, x] for i, j in inside)
  np.testing.assert_array_equal(shapes.inner_contour(label), expected)


def test_markers_are_distinct():
  for size in (7, 10, 13):
    patterns = shapes.marker_patterns(size).reshape(len(shapes.MARKERS), -1)
    for a, b in itertools.combinations(range(len(patterns)), 2):
      assert np.mean(patterns[a] != patterns[b]) > 0.2, (size, a, b)


def test_object_marker_inside_body_and_not_covered():
  size, cls = 64, 2
  grid = shapes._grid(size)
  patterns = shapes.marker_patterns(shapes.marker_size(size))
  image = np.zeros((size, size, 3), np.float32)
  label = np.zeros((size, size), np.uint8)
  protected = np.zeros((size, size), bool)
  rng = np.random.default_rng(5)
  assert shapes._draw_object(rng, image, label, protected, grid, size, cls, patterns)
  box = np.argwhere(protected)
  (y0, x0), (y1, x1) = box.min(0) + 1, box.max(0)
  assert np.all(label[protected] == cls)  # the marker and its 1-pixel rim lie on the body
  marker = image[y0:y1, x0:x1]
  ink = marker[patterns[cls - 1]]
  assert np.all(ink == ink[0])
  assert not np.any(np.all(marker[~patterns[cls - 1]] == ink[0], axis=-1))
  before = label.copy()
  for _ in range(5):
    shapes._draw_object(rng, image, label, protected, grid, size, 3, patterns)
  np.testing.assert_array_equal(label[y0 - 1:y1 + 1, x0 - 1:x1 + 1],
                                before[y0 - 1:y1 + 1, x0 - 1:x1 + 1])


def test_fine_classes_carry_small_markers():
  normal, fine = shapes.marker_size(96), shapes.marker_size(96) // 2
  patterns = shapes.class_markers(96, 6, fine_classes=2)
  assert [p.shape[0] for p in patterns] == [normal] * 4 + [fine] * 2
  np.testing.assert_array_equal(patterns[5], shapes.marker_patterns(fine)[5])
  assert [p.shape[0] for p in shapes.class_markers(96, 6, 1, fine_marker=5)][-2:] == [normal, 5]
  grid = shapes._grid(96)
  for cls, side in ((2, normal), (6, fine)):
    protected = np.zeros((96, 96), bool)
    assert shapes._draw_object(np.random.default_rng(1), np.zeros((96, 96, 3), np.float32),
                               np.zeros((96, 96), np.uint8), protected, grid, 96, cls, patterns)
    assert protected.sum() == (side + 2) ** 2  # the marker and its 1-pixel rim
  with pytest.raises(ValueError, match='fine_classes must be in'):
    shapes.shapes_config(fine_classes=7)


def _digest(example):
  """First 16 hex digits of the SHA-256 of an (image, label) pair's bytes."""
  digest = hashlib.sha256()
  for array in example:
    digest.update(array.tobytes())
  return digest.hexdigest()[:16]


def test_marker_data_is_unchanged():
  """Regression oracle: these digests were computed from the generator as it was before
  texture coding was added (marker coding must stay bit-identical)."""
  for (seed, split, index), params, expected in [
      ((0, 'train', 0), {}, '79fed43cb2b94b03'),
      ((0, 'train', 1), {}, 'd535f4b1dbc2626b'),
      ((0, 'validation', 7), {}, 'e5c117c2fad9bf69'),
      ((3, 'train', 2), {'image_size': 48, 'num_object_classes': 9, 'max_objects': 3,
                         'clutter': 6}, 'f3bbf731934d4af6'),
      ((1, 'train', 5), {'fine_classes': 3}, 'e390a6b8ffdc518b')]:
    example = shapes.render(shapes.example_rng(seed, split, index), **params)
    assert _digest(example) == expected, (seed, split, index, params)


TEXTURE = {'coding': 'texture', 'fine_classes': 3}


def test_texture_render_is_deterministic_with_labels_and_classes():
  a = shapes.render(shapes.example_rng(0, 'train', 4), **TEXTURE)
  b = shapes.render(shapes.example_rng(0, 'train', 4), **TEXTURE)
  c = shapes.render(shapes.example_rng(0, 'validation', 4), **TEXTURE)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  seen = set()
  for index in range(20):
    image, label = shapes.render(shapes.example_rng(1, 'train', index), image_size=64,
                                 max_objects=3, **TEXTURE)
    assert image.shape == (64, 64, 3) and label.shape == (64, 64) and label.dtype == np.uint8
    values = set(np.unique(label).tolist())
    assert values <= set(range(7)) | {255}
    assert 1 <= len(values - {0, 255}) <= 3
    assert 255 in values  # the inner contour of the objects
    seen |= values
  assert seen == set(range(7)) | {255}
  _, label = shapes.render(shapes.example_rng(1, 'train', 0), ignore_border=False, **TEXTURE)
  assert 255 not in label


def test_textures_ink_half_the_plane_and_are_anti_aliased():
  """Every pattern inks half of a large area whatever its direction and phase (so textures of
  one period blur to the same colour mix), and a pixel's value is the share of it inked: for
  vertical stripes of period 4 and phase 0 (ink where x mod 4 < 2) the pixels x = 0..3 cover
  [x - 1/2, x + 1/2], inked 1/2, 1, 1/2, 0 (hand-computed)."""
  y, x = shapes._grid(120)
  rng = np.random.default_rng(0)
  for _, pattern, angle in shapes.TEXTURES:
    for period in (3, 8):
      coverage = shapes.texture_coverage(y, x, pattern, period, angle + rng.uniform(-4, 4),
                                         rng.random(2))
      assert abs(coverage.mean() - 0.5) < 0.01, (pattern, period)
  stripes = shapes.texture_coverage(y[:4, :8], x[:4, :8], 'stripes', 4, 90, (0, 0))
  np.testing.assert_allclose(stripes, np.tile([0.5, 1, 0.5, 0], (4, 2)))


# Fundamental spatial frequencies (f_x, f_y) of each texture in cycles per period, up to sign,
# worked out by hand: stripes vary across their direction (rows grow downwards, so '/' stripes
# vary along x + y and '\\' along x - y), a checkerboard has its fundamentals on both diagonals
# at sqrt(2) cycles per period, a dot grid on both axes.
H = np.sqrt(0.5)
FUNDAMENTALS = {'hstripes': {(0, 1)}, 'vstripes': {(1, 0)}, 'diag45': {(H, H)},
                'diag135': {(H, -H)}, 'checker': {(1, 1), (1, -1)}, 'dots': {(1, 0), (0, 1)}}
CANDIDATES = sorted(set().union(*FUNDAMENTALS.values()))


def _spectrum(patch, pad=256):
  """|FFT| of a Hann-windowed grey patch with its mean removed and frequencies below 0.05
  cycles per pixel zeroed, and the (f_x, f_y) of every bin."""
  grey = patch.astype(np.float64).mean(-1)
  window = np.outer(np.hanning(len(grey)), np.hanning(len(grey)))
  magnitude = np.abs(np.fft.fft2((grey - grey.mean()) * window, (pad, pad)))
  f_y, f_x = np.meshgrid(np.fft.fftfreq(pad), np.fft.fftfreq(pad), indexing='ij')
  magnitude[np.hypot(f_x, f_y) < 0.05] = 0
  return magnitude, f_x, f_y


def _nearest_fundamental(frequency, period):
  """(candidate fundamental, distance relative to its frequency) nearest to `frequency`
  (cycles per pixel) among CANDIDATES at `period`, up to sign."""
  distances = [min(np.hypot(*(frequency - np.array(c) / period)),
                   np.hypot(*(frequency + np.array(c) / period))) * period / np.hypot(*c)
               for c in CANDIDATES]
  k = int(np.argmin(distances))
  return CANDIDATES[k], distances[k]


def _strong_peaks(patch, period):
  """Frequencies of the spectrum's local maxima of at least 0.4 of its largest, below 1.75
  cycles per `period` (above every fundamental, below the dot grid's 2nd harmonic)."""
  magnitude, f_x, f_y = _spectrum(patch)
  magnitude[np.hypot(f_x, f_y) > 1.75 / period] = 0
  peaks = ((magnitude == ndimage.maximum_filter(magnitude, size=9, mode='wrap'))
           & (magnitude >= 0.4 * magnitude.max()))
  return np.stack([f_x[peaks], f_y[peaks]], -1)


def _dominant_frequency(patch):
  """(f_x, f_y) of the spectrum's largest bin."""
  magnitude, f_x, f_y = _spectrum(patch, pad=128)
  k = np.unravel_index(magnitude.argmax(), magnitude.shape)
  return np.array([f_x[k], f_y[k]])


def _boxes(mask, side, step):
  """Top-left corners, on a `step` grid, of side x side boxes entirely inside `mask`."""
  inside = sliding_window_view(mask, (side, side)).all((-1, -2))
  return np.argwhere(inside[::step, ::step]) * step


@pytest.mark.parametrize('fine_classes, texture_period, fine_period',
                         [(3, 8, 3), (0, 6, 3), (6, 8, 4)])
def test_every_object_carries_its_class_texture(fine_classes, texture_period, fine_period):
  """Independent check of the generator by spectra of patches inside objects (one object per
  image, as touching objects of one class share a label): in every 24 x 24 box of an object
  (8-pixel grid) the dominant frequency is one of its class's fundamentals at its class's
  period (the last `fine_classes` classes at fine_period); in a 40 x 40 box of each object the
  strong spectral peaks are exactly its class's fundamentals (so no two classes look alike);
  period +-10% and direction +-4 degrees stay within 15%."""
  names = [name for name, _, _ in shapes.TEXTURES]
  checked = dict.fromkeys(range(1, 7), 0)
  for index in range(40):
    image, label = shapes.render(shapes.example_rng(2, 'train', index), image_size=160,
                                 max_objects=1, coding='texture', fine_classes=fine_classes,
                                 texture_period=texture_period, fine_period=fine_period)
    cls = int(label.max(initial=0, where=label < 255))
    period = fine_period if cls > 6 - fine_classes else texture_period
    expected = FUNDAMENTALS[names[cls - 1]]
    for y, x in _boxes(label == cls, 24, 8):
      found, distance = _nearest_fundamental(_dominant_frequency(image[y:y + 24, x:x + 24]),
                                             period)
      assert found in expected and distance < 0.15, (index, cls, y, x, found, distance)
    boxes = _boxes(label == cls, 40, 4)
    if len(boxes):
      y, x = boxes[len(boxes) // 2]
      nearest = [_nearest_fundamental(f, period)
                 for f in _strong_peaks(image[y:y + 40, x:x + 40], period)]
      assert {f for f, _ in nearest} == expected, (index, cls, nearest)
      assert max(d for _, d in nearest) < 0.15, (index, cls, nearest)
      checked[cls] += 1
    if min(checked.values()) >= 2:
      break
  assert min(checked.values()) >= 2, checked
  assert len({frozenset(f) for f in FUNDAMENTALS.values()}) == len(FUNDAMENTALS)


def _rebound(patch, max_lag=12, rays=36):
  """How far the patch's normalised autocorrelation climbs back after falling, along rays of
  lags up to `max_lag` pixels: about 2 for a periodic pattern (-1 at half a period, +1 at a
  period), near 0 for noise, edges, lines and smooth shading (they fall monotonically)."""
  grey = patch.astype(np.float64).mean(-1)
  n = len(grey)
  power = np.abs(np.fft.fft2(grey - grey.mean(), (2 * n, 2 * n))) ** 2
  overlap = np.abs(np.fft.fft2(np.ones((n, n)), (2 * n, 2 * n))) ** 2
  auto = np.fft.fftshift(np.fft.ifft2(power).real / np.maximum(np.fft.ifft2(overlap).real, 1))
  auto /= auto[n, n]
  angle = np.linspace(0, np.pi, rays, endpoint=False)[:, None]
  lag = np.arange(1, max_lag + 1)[None]
  along = ndimage.map_coordinates(auto, [n + lag * np.sin(angle), n + lag * np.cos(angle)],
                                  order=1)
  return (along - np.minimum.accumulate(along, axis=1)).max()


def test_texture_clutter_is_not_periodic():
  """No 24 x 24 background box of texture-coded images is periodic (autocorrelation rebound
  below 0.8), while a box of every object is (above 0.8) and marker-coded backgrounds, whose
  clutter holds striped blobs, have periodic boxes: the measure tells the two apart."""
  background, objects, marker = [], [], []
  for index in range(8):
    image, label = shapes.render(shapes.example_rng(4, 'train', index), image_size=128,
                                 **TEXTURE)
    background += [_rebound(image[y:y + 24, x:x + 24]) for y, x in _boxes(label == 0, 24, 12)]
    for cls in set(np.unique(label).tolist()) - {0, 255}:
      boxes = _boxes(label == cls, 24, 4)
      if len(boxes):
        y, x = boxes[len(boxes) // 2]
        objects.append(_rebound(image[y:y + 24, x:x + 24]))
    image, label = shapes.render(shapes.example_rng(4, 'train', index), image_size=128)
    marker += [_rebound(image[y:y + 24, x:x + 24]) for y, x in _boxes(label == 0, 24, 12)]
  assert len(background) > 100 and len(objects) > 8
  assert max(background) < 0.8 < min(objects), (max(background), min(objects))
  assert max(marker) > 0.8


def test_config_names_separate_parameters():
  base = shapes.shapes_config(**SMALL)
  names = {base.name}
  for key, value in [('num_train', 13), ('num_val', 6), ('image_size', 50),
                     ('num_object_classes', 4), ('max_objects', 2), ('clutter', 3),
                     ('ignore_border', False), ('seed', 4), ('fine_classes', 2),
                     ('fine_marker', 5), ('coding', 'texture'), ('texture_period', 6),
                     ('fine_period', 4)]:
    names.add(shapes.shapes_config(**dict(SMALL, **{key: value})).name)
  names.add(shapes.shapes_config(**dict(SMALL, coding='texture', texture_period=6)).name)
  names.add(shapes.shapes_config(**dict(SMALL, coding='texture', fine_period=4)).name)
  assert len(names) == 16


def test_config_names_of_marker_data_are_unchanged():
  """The names (cache directories) the marker-coded datasets had before texture coding; a
  texture dataset's name spells out both periods."""
  assert shapes.shapes_config().name == (
      'train2000-val500-image_size96-object_classes6-max_objects4-clutter4-ignore_border1-seed0-'
      'fine_classes0-fine_marker0')
  assert shapes.shapes_config(fine_classes=3, coding='marker', texture_period=8).name == (
      'train2000-val500-image_size96-object_classes6-max_objects4-clutter4-ignore_border1-seed0-'
      'fine_classes3-fine_marker0')
  assert shapes.shapes_config(coding='texture').name.endswith(
      '-fine_marker0-codingtexture-texture_period8-fine_period3')


def test_config_errors():
  with pytest.raises(ValueError, match='config.dataset.shapes has unknown key'):
    shapes.shapes_config(num_trian=3)
  with pytest.raises(ValueError, match='num_object_classes must be in'):
    shapes.shapes_config(num_object_classes=len(shapes.MARKERS) + 1)
  with pytest.raises(ValueError, match=r'num_object_classes must be in \[1, 6\] with texture'):
    shapes.shapes_config(coding='texture', num_object_classes=7)
  with pytest.raises(ValueError, match="config.dataset.shapes.coding='stripes'; expected one"):
    shapes.shapes_config(coding='stripes')
  for key, value in (('texture_period', 1), ('fine_period', 1), ('fine_period', 2.5)):
    with pytest.raises(ValueError, match=f'{key} must be a whole number of at least 2 pixels'):
      shapes.shapes_config(**{key: value})
  with pytest.raises(ValueError, match="coding='stripes'; expected one of"):
    shapes.render(np.random.default_rng(0), coding='stripes')


def test_built_dataset(cfg):
  train = data.load_source(cfg, 'train', per_process=False)
  val = data.load_source(cfg, 'validation', per_process=False)
  assert (len(train), len(val)) == (12, 5)
  for i in range(len(train)):
    example = train[i]
    image, label = shapes.render(shapes.example_rng(3, 'train', i), image_size=48)
    np.testing.assert_array_equal(example['image'], image)
    np.testing.assert_array_equal(example['segmentation'][..., 0], label)
    present = set(np.unique(label).tolist()) - {0, 255}
    assert set((np.flatnonzero(example['labels']) + 1).tolist()) == present
    assert example['id'].decode() == f'train_{i:06d}'


def test_rebuild_is_bit_identical(cfg, tmp_path):
  again = data.load_source(_config(tmp_path), 'validation', per_process=False)
  first = data.load_source(cfg, 'validation', per_process=False)
  for i in range(len(first)):
    for key in ('image', 'segmentation', 'labels'):
      np.testing.assert_array_equal(first[i][key], again[i][key])


def test_process_parts_are_disjoint_and_cover(cfg):
  whole = data.read_split(data.load_builder(cfg), 'train')
  ids = [[e['id'] for e in parts.Part(whole, *parts.bounds(len(whole), i, 3))] for i in range(3)]
  assert sum(ids, []) == [e['id'] for e in whole]
  assert len(set(sum(ids, []))) == 12
  assert [len(p) for p in ids] == [4, 4, 4]


def test_a_later_process_reads_the_splits_that_process_0_prepared(tmp_path, monkeypatch):
  """Process 1 of 2 on an unprepared dataset: the barrier stands for process 0 preparing it,
  and the builder process 1 returns must see the splits made meanwhile."""
  config = _config(tmp_path)
  monkeypatch.setattr(data.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(data.jax, 'process_index', lambda: 1)
  monkeypatch.setattr(data.multihost_utils, 'sync_global_devices',
                      lambda name: data.builder_and_download_config(config)[0]
                      .download_and_prepare())
  builder = data.load_builder(config)
  assert sorted(builder.info.splits) == ['train', 'validation']
  assert len(data.read_split(builder, 'validation')) == SMALL['num_val']


def test_dataset_errors(cfg):
  with pytest.raises(ValueError, match=r"config.dataset.name is 'kitti'; expected one"):
    data.load_source(ml_collections.ConfigDict({'name': 'kitti'}), 'train')
  wrong = ml_collections.ConfigDict(cfg.to_dict())
  wrong.num_classes = 21
  with pytest.raises(ValueError, match='config.dataset.num_classes is 21'):
    data.load_source(wrong, 'train')
  with pytest.raises(ValueError, match="Split 'test' is not in dataset synthetic_shapes"):
    data.load_source(cfg, 'test')


def test_class_names(cfg):
  assert data.class_names(cfg) == ['background', 'cross', 'ring', 'checker', 'stripes',
                                   'saltire', 'dot']


def test_texture_dataset_has_texture_class_names_and_rendered_examples(tmp_path):
  config = _config(tmp_path, num_train=3, num_val=2, image_size=32, **TEXTURE)
  assert data.class_names(config) == ['background', 'hstripes', 'vstripes', 'diag45', 'diag135',
                                      'checker', 'dots']
  assert shapes.class_names(2, 'texture') == ['background', 'hstripes', 'vstripes']
  train = data.load_source(config, 'train', per_process=False)
  assert len(train) == 3
  for i in range(len(train)):
    image, label = shapes.render(shapes.example_rng(3, 'train', i), image_size=32, **TEXTURE)
    np.testing.assert_array_equal(train[i]['image'], image)
    np.testing.assert_array_equal(train[i]['segmentation'][..., 0], label)


def test_plot_examples(cfg, tmp_path):
  path = tmp_path / 'examples.png'
  shapes.plot_examples(data.load_source(cfg, 'train', per_process=False), path, 3,
                       data.class_names(cfg))
  with PIL.Image.open(path) as image:
    assert image.size[0] > image.size[1] > 100
