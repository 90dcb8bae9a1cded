"""Synthetic shapes generator and builder, and the dataset API of rwsjax.data."""
import itertools

import ml_collections
import numpy as np
import PIL.Image
import pytest

from rwsjax import data
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


def test_config_names_separate_parameters():
  base = shapes.shapes_config(**SMALL)
  names = {base.name}
  for key, value in [('num_train', 13), ('num_val', 6), ('image_size', 50),
                     ('num_object_classes', 4), ('max_objects', 2), ('clutter', 3),
                     ('ignore_border', False), ('seed', 4), ('fine_classes', 2),
                     ('fine_marker', 5)]:
    names.add(shapes.shapes_config(**dict(SMALL, **{key: value})).name)
  assert len(names) == 11


def test_config_errors():
  with pytest.raises(ValueError, match='config.dataset.shapes has unknown key'):
    shapes.shapes_config(num_trian=3)
  with pytest.raises(ValueError, match='num_object_classes must be in'):
    shapes.shapes_config(num_object_classes=len(shapes.MARKERS) + 1)


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
  builder = data.load_builder(cfg)
  parts = [[e['id'] for e in data.read_split(builder, 'train', process_index=i,
                                               process_count=3)] for i in range(3)]
  assert sorted(sum(parts, [])) == sorted(e['id'] for e in data.read_split(builder, 'train'))
  assert len(set(sum(parts, []))) == 12
  assert [len(p) for p in parts] == [4, 4, 4]


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


def test_plot_examples(cfg, tmp_path):
  path = tmp_path / 'examples.png'
  shapes.plot_examples(data.load_source(cfg, 'train', per_process=False), path, 3,
                       data.class_names(cfg))
  with PIL.Image.open(path) as image:
    assert image.size[0] > image.size[1] > 100
