"""Segmentation datasets stored as image files and label PNGs in folders (COCO-Stuff, ADE20K,
Cityscapes): layout checks, file pairing, label id mapping and a TFDS builder base.

A dataset module describes each split by the folders and file name suffixes of its images and
labels and by a `LabelMap` (a 256-entry table from the stored label value to the class index,
255 = ignore, -1 = a value the release never stores: an error). `FolderBuilder` makes TFDS
examples: the image file's bytes as stored, the mapped label as PNG, the multi-hot of the
classes 1..K-1 present ('labels', as `pipeline.image_labels`), and the id.
"""
import abc
import dataclasses
import glob
import io
import os

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from rwsjax import progress
from rwsjax.data.pipeline import image_labels


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """Stored label value -> class index; `table[v]` = -1 marks a value that is an error."""
  table: np.ndarray  # (256,) int16
  expected: str      # the valid stored values, for error messages


def label_map(mapping, expected):
  """LabelMap of {stored value: class index or IGNORE_LABEL}; other values are errors."""
  table = np.full(256, -1, np.int16)
  table[list(mapping)] = list(mapping.values())
  return LabelMap(table, expected)


def check_layout(name, layout, manual_dir):
  """{key: absolute path} of `layout` under `manual_dir`; FileNotFoundError naming a gap."""
  paths = {k: os.path.join(os.fspath(manual_dir), v) for k, v in layout.items()}
  missing = [p for p in paths.values() if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(
        f'{name} expects {", ".join(layout.values())} under {manual_dir}, but {missing[0]} is '
        f'missing ({len(missing)} of {len(paths)} paths missing).')
  return paths


def list_examples(image_dir, image_suffix, label_dir, label_suffix):
  """Sorted (id, image path, label path) of every `*image_suffix` file under `image_dir`.

  Subfolders are searched too (Cityscapes cities); the id is the path relative to `image_dir`
  without the suffix, and the label is the same relative path under `label_dir` with
  `label_suffix`. Raises FileNotFoundError for an image without its label or an empty folder.
  """
  pattern = os.path.join(glob.escape(image_dir), '**', '*' + image_suffix)
  images = sorted(glob.glob(pattern, recursive=True))
  if not images:
    raise FileNotFoundError(f'{image_dir} holds no *{image_suffix} images.')
  examples = []
  for image_path in images:
    image_id = os.path.relpath(image_path, image_dir)[:-len(image_suffix)]
    label_path = os.path.join(label_dir, image_id + label_suffix)
    if not os.path.isfile(label_path):
      raise FileNotFoundError(f'{image_path} has no label; expected {label_path}.')
    examples.append((image_id.replace(os.sep, '/'), image_path, label_path))
  return examples


def read_image(path):
  """(encoded bytes, (H, W)) of an image file; ValueError naming `path` when it does not decode.

  RGB and grey images are kept as stored (grey decodes to 3 equal channels); other modes
  (CMYK, RGBA, palette, 16-bit) are converted to RGB and stored as PNG.
  """
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()
      size, mode = image.size, image.mode
      if mode not in ('RGB', 'L'):
        buffer = io.BytesIO()
        image.convert('RGB').save(buffer, format='PNG')
        data = buffer.getvalue()
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{path} is not a readable image ({e}).') from e
  return data, (size[1], size[0])


def read_label(path, lmap):
  """(H, W) uint8 class indices of a one-channel label PNG mapped by `lmap` (a `LabelMap`)."""
  try:
    with PIL.Image.open(path) as image:
      mode = image.mode
      stored = np.asarray(image)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{path} is not a readable PNG image ({e}).') from e
  if mode not in ('L', 'P'):
    raise ValueError(f'{path} has PIL mode {mode}; expected a one-channel (L or P) label PNG.')
  label = lmap.table[stored]
  if (label < 0).any():
    bad = np.unique(stored[label < 0])
    raise ValueError(f'{path} has label value(s) {bad.tolist()}; expected {lmap.expected}.')
  return label.astype(np.uint8)


def read_example(image_id, image_path, label_path, label_reader, num_classes):
  """Feature dict of one image: encoded image, (H, W, 1) label (`label_reader(label_path)`,
  (H, W) uint8 class indices), image-level labels, id."""
  image, shape = read_image(image_path)
  label = label_reader(label_path)
  if label.shape != shape:
    raise ValueError(f'{label_path} has shape {label.shape} but its image is {shape}.')
  return {
      'image': image,
      'segmentation': label[..., None],
      'labels': image_labels(label, num_classes - 1),
      'id': image_id,
  }


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder base of a folder dataset read from `manual_dir`.

  Subclasses set VERSION, RELEASE_NOTES, MANUAL_DOWNLOAD_INSTRUCTIONS, NUM_CLASSES,
  IMAGE_FORMAT ('jpeg' or 'png', the stored files' format) and define `split_examples`; one
  whose labels are not all one-channel PNGs overrides `read_label`.
  """

  NUM_CLASSES = 0
  IMAGE_FORMAT = 'jpeg'
  url_infos = None  # Nothing is downloaded, so there are no URL checksums to look up.

  @abc.abstractmethod
  def split_examples(self, manual_dir):
    """{split: (list of (id, image path, label path), LabelMap)} of the tree at `manual_dir`."""

  def read_label(self, path, lmap):
    """(H, W) uint8 class indices of the label file at `path`: a one-channel PNG mapped by
    `lmap` (`read_label`)."""
    return read_label(path, lmap)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=type(self).__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format=self.IMAGE_FORMAT),
            'segmentation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'labels': tfds.features.Tensor(shape=(self.NUM_CLASSES - 1,), dtype=np.bool_),
            'id': tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(examples, lmap)
            for split, (examples, lmap) in self.split_examples(dl_manager.manual_dir).items()}

  def _generate_examples(self, examples, lmap):
    for image_id, image_path, label_path in progress.logged(examples, f'preparing {self.name}',
                                                            len(examples)):
      example = read_example(image_id, image_path, label_path,
                             lambda path: self.read_label(path, lmap), self.NUM_CLASSES)
      label = PIL.Image.fromarray(example['segmentation'][..., 0])
      yield image_id, dict(example, segmentation=label)
