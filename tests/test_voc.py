"""voc_aug builder on a tiny fake VOC2012 + SBD tree written by the test."""
import os
import re

import ml_collections
import numpy as np
import PIL.Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

import fake_voc
from rwsjax import data
from rwsjax.data import folder
from rwsjax.data import voc


def _config(tmp_path, manual_dir):
  return ml_collections.ConfigDict({
      'name': 'voc_aug', 'data_dir': str(tmp_path / 'tfds'), 'manual_dir': str(manual_dir),
      'num_classes': 21})


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """(config, truth) of a fake tree prepared once for the read-only tests of this module."""
  tmp_path = tmp_path_factory.mktemp('voc')
  truth = fake_voc.write_tree(tmp_path / 'manual')
  cfg = _config(tmp_path, tmp_path / 'manual')
  data.load_builder(cfg)
  return cfg, truth


def _ids(source):
  return [source[i]['id'].decode() for i in range(len(source))]


def test_split_sizes_and_membership(built):
  cfg, _ = built
  train = data.load_source(cfg, 'train', per_process=False)
  val = data.load_source(cfg, 'validation', per_process=False)
  assert _ids(train) == fake_voc.TRAINAUG
  assert _ids(val) == sorted(fake_voc.VOC_VAL)
  assert not set(_ids(train)) & set(_ids(val))


def test_labels_prefer_voc_then_sbd(built):
  cfg, truth = built
  for split in ('train', 'validation'):
    source = data.load_source(cfg, split, per_process=False)
    for i in range(len(source)):
      example = source[i]
      image, voc_label, sbd_label = truth[example['id'].decode()]
      expected = voc_label if voc_label is not None else sbd_label
      np.testing.assert_array_equal(example['segmentation'][..., 0], expected)
      assert example['image'].shape == image.shape
      present = set(np.unique(expected).tolist()) - {0, 255}
      assert set((np.flatnonzero(example['labels']) + 1).tolist()) == present


def test_palette_png_read_as_index(tmp_path):
  label = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
  path = str(tmp_path / 'a.png')
  fake_voc.write_palette_png(path, label)
  assert PIL.Image.open(path).mode == 'P'
  np.testing.assert_array_equal(folder.read_label(path, voc.LABEL_MAP), label)


def test_jpeg_bytes_stored_unchanged(built):
  cfg, _ = built
  builder = data.load_builder(cfg)
  raw = builder.as_data_source('validation', decoders={'image': tfds.decode.SkipDecoding()})
  for i in range(len(raw)):
    image_id = raw[i]['id'].decode()
    with open(os.path.join(cfg.manual_dir, voc.LAYOUT['voc_images'], image_id + '.jpg'),
              'rb') as f:
      assert raw[i]['image'] == f.read()


def test_missing_directory(tmp_path):
  fake_voc.write_tree(tmp_path / 'manual')
  missing = tmp_path / 'manual' / voc.LAYOUT['sbd_labels']
  for f in os.listdir(missing):
    os.remove(missing / f)
  os.rmdir(missing)
  with pytest.raises(FileNotFoundError, match=re.escape(f'but {missing} is missing')):
    data.load_source(_config(tmp_path, tmp_path / 'manual'), 'train')


def test_missing_list_file(tmp_path):
  fake_voc.write_tree(tmp_path / 'manual')
  missing = tmp_path / 'manual' / voc.LAYOUT['voc_val']
  os.remove(missing)
  with pytest.raises(FileNotFoundError, match=re.escape(f'but {missing} is missing')):
    data.load_source(_config(tmp_path, tmp_path / 'manual'), 'train')


def test_manual_dir_not_set(tmp_path):
  cfg = _config(tmp_path, tmp_path)
  cfg.manual_dir = None
  with pytest.raises(ValueError, match='config.dataset.manual_dir'):
    data.load_source(cfg, 'train')


def test_corrupt_image(tmp_path):
  fake_voc.write_tree(tmp_path / 'manual')
  path = tmp_path / 'manual' / voc.LAYOUT['voc_images'] / (fake_voc.VOC_VAL[0] + '.jpg')
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(ValueError, match=re.escape(f'{path} is not a readable image')):
    data.load_source(_config(tmp_path, tmp_path / 'manual'), 'train')


def test_label_out_of_range(tmp_path):
  truth = fake_voc.write_tree(tmp_path / 'manual')
  image_id = fake_voc.VOC_TRAIN[0]
  label = truth[image_id][1].copy()
  label[2, 2] = 40
  path = tmp_path / 'manual' / voc.LAYOUT['voc_labels'] / (image_id + '.png')
  fake_voc.write_palette_png(str(path), label)
  with pytest.raises(ValueError, match=re.escape(f'{path} has label value(s) [40]')):
    data.load_source(_config(tmp_path, tmp_path / 'manual'), 'train')


def test_sbd_label_out_of_range(tmp_path):
  label = np.zeros((4, 5), np.uint8)
  label[1, 1] = 21
  path = str(tmp_path / 'x.mat')
  fake_voc.write_sbd_mat(path, label)
  with pytest.raises(ValueError, match=re.escape(f'{path} has label value(s) [21]')):
    voc.read_sbd_label(path)


def test_rgb_label_rejected(tmp_path):
  path = str(tmp_path / 'rgb.png')
  PIL.Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
  with pytest.raises(ValueError, match=re.escape(f'{path} has PIL mode RGB')):
    folder.read_label(path, voc.LABEL_MAP)


def test_sbd_mat_without_gtcls(tmp_path):
  path = str(tmp_path / 'bad.mat')
  scipy.io.savemat(path, {'other': np.zeros((2, 2))})
  with pytest.raises(ValueError, match=re.escape(f'{path} is not an SBD .mat file')):
    voc.read_sbd_label(path)


def test_class_names_and_num_classes():
  cfg = ml_collections.ConfigDict({'name': 'voc_aug'})
  assert data.class_names(cfg)[0] == 'background'
  assert len(data.class_names(cfg)) == data.num_classes(cfg) == 21


def test_listed_image_missing(tmp_path):
  fake_voc.write_tree(tmp_path / 'manual')
  path = tmp_path / 'manual' / voc.LAYOUT['voc_images'] / (fake_voc.SBD_VAL[0] + '.jpg')
  os.remove(path)
  with pytest.raises(FileNotFoundError, match=re.escape(f'{path} is listed in a split file')):
    data.load_source(_config(tmp_path, tmp_path / 'manual'), 'train')


def test_label_size_differs_from_image(tmp_path):
  fake_voc.write_tree(tmp_path / 'manual')
  path = tmp_path / 'manual' / voc.LAYOUT['sbd_labels'] / (fake_voc.SBD_VAL[0] + '.mat')
  fake_voc.write_sbd_mat(str(path), np.zeros((3, 3), np.uint8))
  with pytest.raises(ValueError, match=re.escape(f'{path} has shape (3, 3) but its image is')):
    data.load_source(_config(tmp_path, tmp_path / 'manual'), 'train')
