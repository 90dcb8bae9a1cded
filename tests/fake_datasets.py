"""Writes tiny COCO-Stuff 164k, ADE20K and Cityscapes trees in their release layouts, for
offline tests. Each writer returns {id: (image uint8 (H, W, 3), stored label uint8 (H, W))}."""
import os

import numpy as np
import PIL.Image

COCO_TRAIN = ('000000000009', '000000000025', '000000000030', '000000000034')
COCO_VAL = ('000000000139', '000000000285')
ADE_TRAIN = ('ADE_train_00000001', 'ADE_train_00000002', 'ADE_train_00000003',
             'ADE_train_00000004')
ADE_VAL = ('ADE_val_00000001', 'ADE_val_00000002')
CITY_TRAIN = ('aachen/aachen_000000_000019', 'aachen/aachen_000001_000019',
              'bremen/bremen_000000_000019', 'bremen/bremen_000001_000019')
CITY_VAL = ('frankfurt/frankfurt_000000_000294', 'lindau/lindau_000000_000019')

# Stored label values drawn in the fake labels; the first fills the background.
COCO_RAW_VALUES = (255, 0, 12, 91, 181, 40, 100)      # raw COCO ids - 1 (stuffthingmaps)
COCO_TRAIN_ID_VALUES = (255, 0, 11, 80, 170, 36, 89)  # mmsegmentation's _labelTrainIds
ADE_VALUES = (0, 1, 5, 150, 13)
CITY_VALUES = (7, 0, 4, 8, 9, 24, 26, 33)


def make_label(rng, shape, values):
  """(H, W) uint8: values[0] everywhere, then three rectangles of random `values`."""
  label = np.full(shape, values[0], np.uint8)
  for value in rng.choice(values, 3):
    h, w = max(2, shape[0] // 3), max(2, shape[1] // 3)
    y, x = rng.integers(0, shape[0] - h + 1), rng.integers(0, shape[1] - w + 1)
    label[y:y + h, x:x + w] = value
  return label


def _write(root, image_path, label_path, shape, values, rng):
  """Writes a random image (format from the suffix) and its label PNG; returns both arrays."""
  image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
  label = make_label(rng, shape, values)
  for path, array in ((image_path, image), (label_path, label)):
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    PIL.Image.fromarray(array).save(os.path.join(root, path))
  return image, label


def _sizes(count, base):
  """Different (h, w) per image, growing from `base`."""
  return [(base[0] + 3 * k, base[1] + 2 * k) for k in range(count)]


def write_cocostuff(root, seed=0, base=(10, 14), train_ids=False):
  """COCO-Stuff 164k: images/{train,val}2017/<id>.jpg with raw stuffthingmaps labels
  annotations/{split}2017/<id>.png, or with train_ids mmsegmentation's <id>_labelTrainIds.png."""
  rng = np.random.default_rng(seed)
  suffix, values = ('_labelTrainIds.png', COCO_TRAIN_ID_VALUES) if train_ids else (
      '.png', COCO_RAW_VALUES)
  truth = {}
  for split, ids in (('train2017', COCO_TRAIN), ('val2017', COCO_VAL)):
    for image_id, shape in zip(ids, _sizes(len(ids), base)):
      truth[image_id] = _write(root, os.path.join('images', split, image_id + '.jpg'),
                               os.path.join('annotations', split, image_id + suffix), shape,
                               values, rng)
  return truth


def write_ade20k(root, seed=0, base=(10, 14)):
  """ADEChallengeData2016: images/{training,validation}/<id>.jpg, annotations/.../<id>.png."""
  rng = np.random.default_rng(seed)
  truth = {}
  for split, ids in (('training', ADE_TRAIN), ('validation', ADE_VAL)):
    for image_id, shape in zip(ids, _sizes(len(ids), base)):
      truth[image_id] = _write(root, os.path.join('images', split, image_id + '.jpg'),
                               os.path.join('annotations', split, image_id + '.png'), shape,
                               ADE_VALUES, rng)
  return truth


def write_cityscapes(root, seed=0, shape=(12, 24)):
  """Cityscapes: leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and
  gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png, all images of one size."""
  rng = np.random.default_rng(seed)
  truth = {}
  for split, ids in (('train', CITY_TRAIN), ('val', CITY_VAL)):
    for image_id in ids:
      truth[image_id] = _write(
          root, os.path.join('leftImg8bit', split, image_id + '_leftImg8bit.png'),
          os.path.join('gtFine', split, image_id + '_gtFine_labelIds.png'), shape,
          CITY_VALUES, rng)
  return truth
