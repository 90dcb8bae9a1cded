"""PASCAL VOC2012 + SBD 'trainaug' segmentation dataset ('voc_aug'), read from a local directory.

Splits: 'train' = VOC train + SBD train + SBD val minus VOC val (10,582 images with the standard
lists), labels from VOC SegmentationClass where available, else from SBD; 'validation' = VOC
val (1,449). Labels are uint8 with 0 = background, 1..20 = classes, 255 = ignore (VOC object
boundaries). JPEG bytes are stored as they are.
"""
import os

import numpy as np
import PIL.Image
import scipy.io
import tensorflow_datasets as tfds

from rwsjax import progress
from rwsjax.data import folder
from rwsjax.data.pipeline import image_labels
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
INSTRUCTIONS = (
    'Extract VOCtrainval_11-May-2012.tar and the SBD benchmark.tgz into one directory so that '
    'it holds ' + ', '.join(LAYOUT.values()) + '; pass it as config.dataset.manual_dir.')


def check_layout(manual_dir):
  """{key: absolute path} of LAYOUT under `manual_dir`; FileNotFoundError naming what is missing."""
  return folder.check_layout('voc_aug', LAYOUT, manual_dir)


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


def _check_values(label, path):
  """Raises ValueError naming `path` when a label is outside 0..20 and 255."""
  bad = np.setdiff1d(np.unique(label), [*range(NUM_CLASSES), IGNORE_LABEL])
  if bad.size:
    raise ValueError(f'{path} has label value(s) {bad.tolist()}; expected 0..{NUM_CLASSES - 1} '
                     f'or {IGNORE_LABEL}.')
  return label


def read_voc_label(path):
  """(H, W) uint8 class indices of a VOC palette PNG (the palette index, not the RGB colour)."""
  try:
    with PIL.Image.open(path) as image:
      mode = image.mode
      label = np.asarray(image)
  except (OSError, SyntaxError) as e:
    raise ValueError(f'{path} is not a readable PNG image ({e}).') from e
  if mode not in ('P', 'L'):
    raise ValueError(f'{path} has PIL mode {mode}; expected a palette (P) or grey (L) PNG.')
  return _check_values(label.astype(np.uint8), path)


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


def read_jpeg(path):
  """(JPEG bytes as stored, (H, W)); ValueError naming `path` when it does not decode."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is listed in a split file but does not exist.')
  return folder.read_image(path)


def read_example(paths, image_id):
  """Feature dict of one image: JPEG bytes, (H, W, 1) label, image-level labels, id."""
  voc_label = os.path.join(paths['voc_labels'], image_id + '.png')
  sbd_label = os.path.join(paths['sbd_labels'], image_id + '.mat')
  if os.path.exists(voc_label):
    label_path, label = voc_label, read_voc_label(voc_label)
  elif os.path.exists(sbd_label):
    label_path, label = sbd_label, read_sbd_label(sbd_label)
  else:
    raise FileNotFoundError(f'Image {image_id} has neither {voc_label} nor {sbd_label}.')
  jpeg, shape = read_jpeg(os.path.join(paths['voc_images'], image_id + '.jpg'))
  if label.shape != shape:
    raise ValueError(f'{label_path} has shape {label.shape} but its image is {shape}.')
  return {
      'image': jpeg,
      'segmentation': label[..., None],
      'labels': image_labels(label, NUM_CLASSES - 1),
      'id': image_id,
  }


class VocAug(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of VOC2012 + SBD trainaug; the data is read from `manual_dir`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'trainaug (VOC train + SBD train/val - VOC val) and VOC val.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  url_infos = None  # Nothing is downloaded, so there are no URL checksums to look up.

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'segmentation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'labels': tfds.features.Tensor(shape=(NUM_CLASSES - 1,), dtype=np.bool_),
            'id': tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    paths = check_layout(dl_manager.manual_dir)
    return {split: self._generate_examples(paths, ids)
            for split, ids in split_ids(paths).items()}

  def _generate_examples(self, paths, ids):
    for image_id in progress.logged(ids, 'preparing voc_aug', len(ids)):
      example = read_example(paths, image_id)
      label = PIL.Image.fromarray(example['segmentation'][..., 0])
      yield image_id, dict(example, segmentation=label)
