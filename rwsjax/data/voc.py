"""PASCAL VOC2012 + SBD 'trainaug' segmentation dataset ('voc_aug'), read from a local directory.

Splits: 'train' = VOC train + SBD train + SBD val minus VOC val (10,582 images with the standard
lists), labels from VOC SegmentationClass where available, else from SBD; 'validation' = VOC
val (1,449). Labels are uint8 with 0 = background, 1..20 = classes, 255 = ignore (VOC object
boundaries). JPEG bytes are stored as they are.
"""
import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from rwsjax.data import folder
from rwsjax.losses import IGNORE_LABEL

CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')
NUM_CLASSES = len(CLASS_NAMES)

VOC = os.path.join('VOCdevkit', 'VOC2012')
SBD = os.path.join('benchmark_RELEASE', 'dataset')
LAYOUT = {
    'voc_images': os.path.join(VOC, 'JPEGImages'),
    'voc_labels': os.path.join(VOC, 'SegmentationClass'),
    'voc_train': os.path.join(VOC, 'ImageSets', 'Segmentation', 'train.txt'),
    'voc_val': os.path.join(VOC, 'ImageSets', 'Segmentation', 'val.txt'),
    'sbd_labels': os.path.join(SBD, 'cls'),
    'sbd_train': os.path.join(SBD, 'train.txt'),
    'sbd_val': os.path.join(SBD, 'val.txt'),
}
def read_ids(path):
  """Image ids of a list file, one per line, blank lines skipped."""
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def split_ids(paths):
  """{'train': trainaug ids, 'validation': VOC val ids}, both sorted (see module docstring)."""
  val = set(read_ids(paths['voc_val']))
  train = set(read_ids(paths['voc_train']))
  train |= set(read_ids(paths['sbd_train'])) | set(read_ids(paths['sbd_val']))
  return {'train': sorted(train - val), 'validation': sorted(val)}


# VOC's palette PNGs store the class index (and 255 on object boundaries) as they are.
LABEL_MAP = folder.label_map({**{i: i for i in range(NUM_CLASSES)}, IGNORE_LABEL: IGNORE_LABEL},
                             f'0..{NUM_CLASSES - 1} or {IGNORE_LABEL}')


def _check_values(label, path):
  """Raises ValueError naming `path` when a label is outside 0..20 and 255."""
  bad = np.setdiff1d(np.unique(label), [*range(NUM_CLASSES), IGNORE_LABEL])
  if bad.size:
    raise ValueError(f'{path} has label value(s) {bad.tolist()}; expected {LABEL_MAP.expected}.')
  return label


def read_sbd_label(path):
  """(H, W) uint8 class indices from an SBD cls .mat file (struct GTcls, field Segmentation)."""
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    label = np.asarray(mat['GTcls'].Segmentation)
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise ValueError(f'{path} is not an SBD .mat file with GTcls.Segmentation ({e}).') from e
  if label.ndim != 2:
    raise ValueError(f'{path}: GTcls.Segmentation has shape {label.shape}; expected (H, W).')
  return _check_values(label, path).astype(np.uint8)


def example_files(paths, image_id):
  """(id, JPEG path, label path) of one image: its VOC SegmentationClass PNG where there is
  one, else its SBD .mat; FileNotFoundError when the image or both labels are missing."""
  image = os.path.join(paths['voc_images'], image_id + '.jpg')
  if not os.path.exists(image):
    raise FileNotFoundError(f'{image} is listed in a split file but does not exist.')
  voc_label = os.path.join(paths['voc_labels'], image_id + '.png')
  sbd_label = os.path.join(paths['sbd_labels'], image_id + '.mat')
  for label in (voc_label, sbd_label):
    if os.path.exists(label):
      return image_id, image, label
  raise FileNotFoundError(f'Image {image_id} has neither {voc_label} nor {sbd_label}.')


def split_examples(paths):
  """{split: (examples, LabelMap)} of the tree whose LAYOUT paths are `paths` (see the module
  docstring)."""
  return {split: ([example_files(paths, image_id) for image_id in ids], LABEL_MAP)
          for split, ids in split_ids(paths).items()}


def read_label(path, lmap):
  """VOC palette PNGs by `lmap`, SBD .mat files by `read_sbd_label`."""
  return read_sbd_label(path) if path.endswith('.mat') else folder.read_label(path, lmap)


DATASET = folder.FolderDataset(
    'voc_aug', CLASS_NAMES, LAYOUT,
    'Extract VOCtrainval_11-May-2012.tar and the SBD benchmark.tgz into one directory',
    split_examples, read_label=read_label)


class VocAug(folder.FolderBuilder):
  """PASCAL VOC2012 + SBD trainaug (21 classes); the data is read from `manual_dir`."""

  DATASET = DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'trainaug (VOC train + SBD train/val - VOC val) and VOC val.'}
