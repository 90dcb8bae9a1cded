"""Writes a tiny VOC2012 + SBD directory tree in the standard layouts, for offline tests."""
import os

import numpy as np
import PIL.Image
import scipy.io

from rwsjax.data import voc

VOC_TRAIN = ('2007_000001', '2007_000002', '2008_000003')
VOC_VAL = ('2007_000010', '2008_000011')
SBD_TRAIN = ('2007_000002', '2009_000020', '2007_000010')
SBD_VAL = ('2009_000021', '2008_000011', '2009_000022')
TRAINAUG = sorted(set(VOC_TRAIN + SBD_TRAIN + SBD_VAL) - set(VOC_VAL))


def voc_palette():
  """The 256-colour VOC palette (bit-interleaved colour map)."""
  palette = np.zeros((256, 3), np.uint8)
  for index in range(256):
    c, r, g, b = index, 0, 0, 0
    for bit in range(8):
      r |= ((c >> 0) & 1) << (7 - bit)
      g |= ((c >> 1) & 1) << (7 - bit)
      b |= ((c >> 2) & 1) << (7 - bit)
      c >>= 3
    palette[index] = (r, g, b)
  return palette


def make_label(rng, shape, border=True):
  """(H, W) uint8 label: background, two random class rectangles, optional 255 frame."""
  label = np.zeros(shape, np.uint8)
  for cls in rng.choice(np.arange(1, voc.NUM_CLASSES), 2, replace=False):
    y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
    label[y:y + 3, x:x + 3] = cls
  if border:
    label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = voc.IGNORE_LABEL
  return label


def write_palette_png(path, label):
  """Saves `label` as a palette ('P' mode) PNG with the VOC colours."""
  image = PIL.Image.frombytes('P', label.shape[::-1], label.tobytes())
  image.putpalette(voc_palette().ravel().tolist())
  image.save(path)


def write_sbd_mat(path, label):
  """Saves `label` as an SBD cls .mat file: struct GTcls with fields Segmentation, Boundaries."""
  gtcls = {'Segmentation': label, 'Boundaries': np.zeros((1, 1), object),
           'CategoriesPresent': np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)}
  scipy.io.savemat(path, {'GTcls': gtcls})


def write_list(path, ids):
  with open(path, 'w') as f:
    f.write(''.join(i + '\n' for i in ids))


def write_tree(root, seed=0):
  """Writes the fake tree under `root`; returns {id: (image, voc label or None, sbd label)}.

  Images have different sizes; ids in both VOC and SBD get different labels in each so that
  tests can tell which one was read.
  """
  rng = np.random.default_rng(seed)
  paths = {k: os.path.join(root, v) for k, v in voc.LAYOUT.items()}
  for key in ('voc_images', 'voc_labels', 'sbd_labels'):
    os.makedirs(paths[key])
  os.makedirs(os.path.dirname(paths['voc_train']))
  write_list(paths['voc_train'], VOC_TRAIN)
  write_list(paths['voc_val'], VOC_VAL)
  write_list(paths['sbd_train'], SBD_TRAIN)
  write_list(paths['sbd_val'], SBD_VAL)
  truth = {}
  for k, image_id in enumerate(sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))):
    shape = (10 + k, 14 + 2 * k)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    PIL.Image.fromarray(image).save(os.path.join(paths['voc_images'], image_id + '.jpg'))
    voc_label = sbd_label = None
    if image_id in VOC_TRAIN + VOC_VAL:
      voc_label = make_label(rng, shape)
      write_palette_png(os.path.join(paths['voc_labels'], image_id + '.png'), voc_label)
    if image_id in SBD_TRAIN + SBD_VAL:
      sbd_label = make_label(rng, shape, border=False)
      write_sbd_mat(os.path.join(paths['sbd_labels'], image_id + '.mat'), sbd_label)
    truth[image_id] = (image, voc_label, sbd_label)
  return truth
