"""COCO-Stuff, ADE20K and Cityscapes builders on tiny fake trees written by the tests."""
import io
import os
import re
import shutil

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from configs_util import load_config
import fake_datasets
from rwsjax import data
from rwsjax import supervised
from rwsjax.data import ade20k
from rwsjax.data import cityscapes
from rwsjax.data import cocostuff
from rwsjax.data import folder
from rwsjax.data import pipeline

# COCO 2017 category ids (1-based) that no annotation uses: the 91 thing ids minus the 80 used.
COCO_UNUSED_CATEGORY_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
# cityscapesScripts' labels.py: (name, label id, train id) of the ids stored in labelIds PNGs.
CITYSCAPES_LABELS = (
    ('unlabeled', 0, 255), ('ego vehicle', 1, 255), ('rectification border', 2, 255),
    ('out of roi', 3, 255), ('static', 4, 255), ('dynamic', 5, 255), ('ground', 6, 255),
    ('road', 7, 0), ('sidewalk', 8, 1), ('parking', 9, 255), ('rail track', 10, 255),
    ('building', 11, 2), ('wall', 12, 3), ('fence', 13, 4), ('guard rail', 14, 255),
    ('bridge', 15, 255), ('tunnel', 16, 255), ('pole', 17, 5), ('polegroup', 18, 255),
    ('traffic light', 19, 6), ('traffic sign', 20, 7), ('vegetation', 21, 8),
    ('terrain', 22, 9), ('sky', 23, 10), ('person', 24, 11), ('rider', 25, 12), ('car', 26, 13),
    ('truck', 27, 14), ('bus', 28, 15), ('caravan', 29, 255), ('trailer', 30, 255),
    ('train', 31, 16), ('motorcycle', 32, 17), ('bicycle', 33, 18))

WRITERS = {'cocostuff': fake_datasets.write_cocostuff, 'ade20k': fake_datasets.write_ade20k,
           'cityscapes': fake_datasets.write_cityscapes}
SPLIT_IDS = {'cocostuff': (fake_datasets.COCO_TRAIN, fake_datasets.COCO_VAL),
             'ade20k': (fake_datasets.ADE_TRAIN, fake_datasets.ADE_VAL),
             'cityscapes': (fake_datasets.CITY_TRAIN, fake_datasets.CITY_VAL)}


def coco_raw_oracle(value):
  """Train id of a raw stuffthingmaps value: its rank among the used COCO-Stuff ids."""
  if value == 255 or value + 1 in COCO_UNUSED_CATEGORY_IDS:
    return 255
  return value - sum(u - 1 < value for u in COCO_UNUSED_CATEGORY_IDS)


ORACLES = {'cocostuff': coco_raw_oracle, 'ade20k': lambda v: 255 if v == 0 else v - 1,
           'cityscapes': {i: t for _, i, t in CITYSCAPES_LABELS}.__getitem__}


def expected_label(name, stored):
  return np.vectorize(ORACLES[name], otypes=[np.uint8])(stored)


def _config(tmp_path, name, manual_dir):
  return ml_collections.ConfigDict({
      'name': name, 'data_dir': str(tmp_path / 'tfds'), 'manual_dir': str(manual_dir),
      'num_classes': data.num_classes(ml_collections.ConfigDict({'name': name}))})


@pytest.fixture(scope='module', params=sorted(WRITERS))
def built(request, tmp_path_factory):
  """(name, config, truth) of a fake tree prepared once for the read-only tests."""
  name = request.param
  tmp_path = tmp_path_factory.mktemp(name)
  truth = WRITERS[name](tmp_path / 'manual')
  cfg = _config(tmp_path, name, tmp_path / 'manual')
  data.load_builder(cfg)
  return name, cfg, truth


def _ids(source):
  return [source[i]['id'].decode() for i in range(len(source))]


def test_split_sizes_and_ids(built):
  name, cfg, _ = built
  train_ids, val_ids = SPLIT_IDS[name]
  assert _ids(data.load_source(cfg, 'train', per_process=False)) == sorted(train_ids)
  assert _ids(data.load_source(cfg, 'validation', per_process=False)) == sorted(val_ids)


def test_labels_images_and_image_level_labels(built):
  name, cfg, truth = built
  for split in ('train', 'validation'):
    source = data.load_source(cfg, split, per_process=False)
    for i in range(len(source)):
      example = source[i]
      image, stored = truth[example['id'].decode()]
      expected = expected_label(name, stored)
      np.testing.assert_array_equal(example['segmentation'][..., 0], expected)
      if name == 'cityscapes':  # PNG: the pixels come back exactly
        np.testing.assert_array_equal(example['image'], image)
      assert example['image'].shape == image.shape
      present = set(np.unique(expected).tolist()) - {0, 255}
      assert set((np.flatnonzero(example['labels']) + 1).tolist()) == present
      assert example['labels'].shape == (data.num_classes(cfg) - 1,)


def test_image_bytes_stored_unchanged(built):
  name, cfg, _ = built
  raw = data.load_builder(cfg).as_data_source(
      'validation', decoders={'image': tfds.decode.SkipDecoding()})
  for i in range(len(raw)):
    image_id = raw[i]['id'].decode()
    path = {'cocostuff': f'images/val2017/{image_id}.jpg',
            'ade20k': f'images/validation/{image_id}.jpg',
            'cityscapes': f'leftImg8bit/val/{image_id}_leftImg8bit.png'}[name]
    with open(os.path.join(cfg.manual_dir, path), 'rb') as f:
      assert raw[i]['image'] == f.read()


def test_coco_raw_map_against_oracle():
  assert len(cocostuff.THING_NAMES) == 80 and len(cocostuff.STUFF_NAMES) == 91
  stored = np.array([list(range(182)) + [255]], np.uint8)
  mapped = cocostuff.RAW_MAP.table[stored]
  np.testing.assert_array_equal(mapped, expected_label('cocostuff', stored))
  names = cocostuff.CLASS_NAMES
  assert names[mapped[0, 12]] == 'stop sign'  # COCO category 13
  assert names[mapped[0, 91]] == 'banner'     # COCO-Stuff 92, the first stuff class
  assert names[mapped[0, 181]] == 'wood' and mapped[0, 181] == 170
  assert sorted(set(mapped[0, :182].tolist()) - {255}) == list(range(171))


def test_coco_train_id_layout(tmp_path):
  truth = fake_datasets.write_cocostuff(tmp_path / 'manual', train_ids=True)
  cfg = _config(tmp_path, 'cocostuff', tmp_path / 'manual')
  source = data.load_source(cfg, 'validation', per_process=False)
  assert _ids(source) == sorted(fake_datasets.COCO_VAL)
  for i in range(len(source)):
    _, stored = truth[source[i]['id'].decode()]
    np.testing.assert_array_equal(source[i]['segmentation'][..., 0], stored)


def test_ade_and_cityscapes_id_examples(tmp_path):
  path = str(tmp_path / 'a.png')
  PIL.Image.fromarray(np.array([[0, 5, 1, 150]], np.uint8)).save(path)
  np.testing.assert_array_equal(folder.read_label(path, ade20k.LABEL_MAP), [[255, 4, 0, 149]])
  assert ade20k.CLASS_NAMES[4] == 'tree' and ade20k.CLASS_NAMES[149] == 'flag'
  PIL.Image.fromarray(np.array([[26, 0, 7, 33]], np.uint8)).save(path)
  np.testing.assert_array_equal(folder.read_label(path, cityscapes.LABEL_MAP),
                                [[13, 255, 0, 18]])


def test_cityscapes_map_is_labels_py():
  for name, label_id, train_id in CITYSCAPES_LABELS:
    assert cityscapes.LABEL_MAP.table[label_id] == train_id, name
    if train_id != 255:
      assert cityscapes.CLASS_NAMES[train_id] == name
  assert (cityscapes.LABEL_MAP.table[34:] == -1).all()


def test_class_names_and_num_classes():
  for name, k in (('cocostuff', 171), ('ade20k', 150), ('cityscapes', 19)):
    cfg = ml_collections.ConfigDict({'name': name})
    assert len(data.class_names(cfg)) == data.num_classes(cfg) == k
    assert len(set(data.class_names(cfg))) == k


@pytest.mark.parametrize('name, missing', [
    ('cocostuff', 'annotations/val2017'), ('ade20k', 'images/training'),
    ('cityscapes', 'gtFine/train')])
def test_missing_directory(tmp_path, name, missing):
  WRITERS[name](tmp_path / 'manual')
  path = tmp_path / 'manual' / missing
  shutil.rmtree(path)
  with pytest.raises(FileNotFoundError, match=re.escape(f'but {path} is missing')):
    data.load_source(_config(tmp_path, name, tmp_path / 'manual'), 'train')


def test_manual_dir_not_set(tmp_path):
  cfg = _config(tmp_path, 'ade20k', tmp_path)
  cfg.manual_dir = None
  with pytest.raises(ValueError, match='config.dataset.manual_dir is not set; ade20k needs'):
    data.load_source(cfg, 'train')


@pytest.mark.parametrize('name, value, expected', [
    ('cocostuff', 200, 'raw COCO-Stuff ids 0..181 or 255'), ('ade20k', 151, '0..150'),
    ('cityscapes', 34, 'Cityscapes label ids 0..33')])
def test_label_value_out_of_range(tmp_path, name, value, expected):
  truth = WRITERS[name](tmp_path / 'manual')
  image_id = SPLIT_IDS[name][0][1]
  stored = truth[image_id][1].copy()
  stored[1, 1] = value
  path = {'cocostuff': f'annotations/train2017/{image_id}.png',
          'ade20k': f'annotations/training/{image_id}.png',
          'cityscapes': f'gtFine/train/{image_id}_gtFine_labelIds.png'}[name]
  PIL.Image.fromarray(stored).save(tmp_path / 'manual' / path)
  message = f'{tmp_path / "manual" / path} has label value(s) [{value}]; expected {expected}.'
  with pytest.raises(ValueError, match=re.escape(message)):
    data.load_source(_config(tmp_path, name, tmp_path / 'manual'), 'train')


def test_coco_train_id_out_of_range(tmp_path):
  path = str(tmp_path / 'x_labelTrainIds.png')
  PIL.Image.fromarray(np.array([[0, 171]], np.uint8)).save(path)
  with pytest.raises(ValueError, match=re.escape(f'{path} has label value(s) [171]')):
    folder.read_label(path, cocostuff.TRAIN_ID_MAP)


def test_corrupt_image(tmp_path):
  fake_datasets.write_ade20k(tmp_path / 'manual')
  path = tmp_path / 'manual' / 'images' / 'validation' / (fake_datasets.ADE_VAL[0] + '.jpg')
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(ValueError, match=re.escape(f'{path} is not a readable image')):
    data.load_source(_config(tmp_path, 'ade20k', tmp_path / 'manual'), 'train')


def test_image_without_label(tmp_path):
  fake_datasets.write_cityscapes(tmp_path / 'manual')
  image_id = fake_datasets.CITY_VAL[1]
  label = tmp_path / 'manual' / 'gtFine' / 'val' / (image_id + '_gtFine_labelIds.png')
  label.unlink()
  image = tmp_path / 'manual' / 'leftImg8bit' / 'val' / (image_id + '_leftImg8bit.png')
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f'{image} has no label; expected {label}.')):
    data.load_source(_config(tmp_path, 'cityscapes', tmp_path / 'manual'), 'train')


def test_empty_image_folder(tmp_path):
  (tmp_path / 'images').mkdir()
  with pytest.raises(FileNotFoundError, match=re.escape(f'{tmp_path / "images"} holds no *.jpg')):
    folder.list_examples(str(tmp_path / 'images'), '.jpg', str(tmp_path), '.png')


def test_label_size_differs_from_image(tmp_path):
  fake_datasets.write_cocostuff(tmp_path / 'manual')
  image_id = fake_datasets.COCO_VAL[0]
  label = tmp_path / 'manual' / 'annotations' / 'val2017' / (image_id + '.png')
  PIL.Image.fromarray(np.zeros((3, 3), np.uint8)).save(label)
  with pytest.raises(ValueError, match=re.escape(f'{label} has shape (3, 3) but its image is')):
    data.load_source(_config(tmp_path, 'cocostuff', tmp_path / 'manual'), 'train')


def test_rgb_label_rejected(tmp_path):
  path = str(tmp_path / 'rgb.png')
  PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
  with pytest.raises(ValueError, match=re.escape(f'{path} has PIL mode RGB')):
    folder.read_label(path, ade20k.LABEL_MAP)


def test_cmyk_image_stored_as_rgb_png(tmp_path):
  path = str(tmp_path / 'cmyk.jpg')
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  PIL.Image.fromarray(rgb).convert('CMYK').save(path)
  encoded, shape = folder.read_image(path)
  assert shape == (5, 7)
  with PIL.Image.open(path) as original:
    expected = np.asarray(original.convert('RGB'))
  decoded = PIL.Image.open(io.BytesIO(encoded))
  assert decoded.format == 'PNG' and decoded.mode == 'RGB'
  np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_eval_max_long_side_shrinks_eval_images_and_slice_crops():
  rng = np.random.default_rng(0)
  shapes = [(20, 30), (9, 15), (30, 12)]  # long sides 30 and 30 shrink to 15, (9, 15) stays
  source = []
  for shape in shapes:
    label = rng.integers(0, 5, shape).astype(np.uint8)
    source.append({'image': rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
                   'segmentation': label[..., None],
                   'labels': pipeline.image_labels(label, 4)})
  cfg = ml_collections.ConfigDict({'eval_pad_size': (16, 16), 'eval_max_long_side': 15,
                                   'mean': (120.0, 110.0, 100.0), 'std': (60.0, 50.0, 40.0),
                                   'flip': False})
  batch = pipeline.eval_dataset(source, cfg, batch_size=3)[0]
  labels = [source[0]['segmentation'][1::2, 1::2, 0],  # nearest at factor 2 samples odd pixels
            source[1]['segmentation'][..., 0], source[2]['segmentation'][1::2, 1::2, 0]]
  for row, expected in zip(batch['segmentation'], labels):
    h, w = expected.shape
    np.testing.assert_array_equal(row[:h, :w], expected)
    assert (row[h:] == 255).all() and (row[:, w:] == 255).all()
  boxes = np.array([[0, 2, 4, 10, 15], [2, 3, 0, 15, 6]])
  crops = pipeline.crop_dataset(source, boxes, cfg, seed=0, batch_size=2, out_size=(8, 11),
                                augment=False)[0]
  crops_b = pipeline.crop_dataset(source, boxes[1:], cfg, seed=0, batch_size=1,
                                  out_size=(12, 6), augment=False)[0]
  np.testing.assert_array_equal(crops['segmentation'][0], batch['segmentation'][0, 2:10, 4:15])
  np.testing.assert_allclose(crops['image'][0], batch['image'][0, 2:10, 4:15], atol=1e-5)
  np.testing.assert_array_equal(crops_b['segmentation'][0], batch['segmentation'][2, 3:15, 0:6])
  np.testing.assert_allclose(crops_b['image'][0], batch['image'][2, 3:15, 0:6], atol=1e-5)


class ToyFolder(folder.FolderBuilder, skip_registration=True):
  """Three classes (background, square, bar) in 32x32 PNGs: README's new-dataset recipe."""
  DATASET = folder.FolderDataset(
      'toy_folder', ('background', 'square', 'bar'),
      folder.split_folders({'train': 'train', 'validation': 'validation'}, 'images', 'labels'),
      'Write the test tree',
      folder.paired_examples('.png', lambda _: (
          '.png', folder.label_map({0: 0, 1: 1, 2: 2, 255: 255}, '0, 1, 2 or 255'))),
      image_format='png')
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'the test tree.'}


def write_toy_tree(root, counts=(16, 8)):
  """Images with a bright square (class 1) and a dark bar (class 2) on grey, and their labels."""
  rng = np.random.default_rng(0)
  for split, count in zip(('train', 'validation'), counts):
    for k in range(count):
      label = np.zeros((32, 32), np.uint8)
      y, x = rng.integers(0, 20, 2)
      label[y:y + 12, x:x + 12] = 1
      label[rng.integers(0, 28):, rng.integers(0, 24):][:4, :8] = 2
      image = np.stack([np.choose(label, [128, 230, 20]).astype(np.uint8)] * 3, -1)
      for kind, array in (('images', image), ('labels', label)):
        os.makedirs(root / kind / split, exist_ok=True)
        PIL.Image.fromarray(array).save(root / kind / split / f'{k:03d}.png')


def test_a_registered_folder_dataset_trains_end_to_end(tmp_path):
  """README's recipe for a new dataset: a FolderDataset, its FolderBuilder and
  `data.register_dataset`; the supervised :smoke config then trains and evaluates on it by
  name."""
  write_toy_tree(tmp_path / 'manual')
  data.register_dataset(ToyFolder)
  try:
    config = load_config('shapes_baseline', 'smoke')
    config.dataset.name = 'toy_folder'
    config.dataset.num_classes = 3
    config.dataset.manual_dir = str(tmp_path / 'manual')
    config.dataset.data_dir = str(tmp_path / 'tfds')
    summary = supervised.run(config, str(tmp_path / 'run'))
    source = data.load_source(config.dataset, 'validation')
  finally:
    del data.DATASETS['toy_folder']
  assert len(source) == 8 and set(np.unique(source[0]['segmentation'])) == {0, 1, 2}
  per_class = summary['validation']['per_class_iou']
  assert list(per_class) == ['background', 'square', 'bar']
  assert 0.0 <= summary['validation']['miou'] <= 1.0
