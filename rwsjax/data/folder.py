"""Segmentation datasets stored as image files and label PNGs in folders (VOC, COCO-Stuff,
ADE20K, Cityscapes): layout checks, file pairing, label id mapping and a TFDS builder base.

A dataset module declares a `FolderDataset`: its classes, the layout of the release under
config.dataset.manual_dir, how to unpack it, and how to list each split's (id, image path,
label path) with a `LabelMap` (a 256-entry table from the stored label value to the class
index, 255 = ignore, -1 = a value the release never stores: an error); `split_folders` and
`paired_examples` give both for a release with one folder per split. Its `FolderBuilder`
subclass names the TFDS dataset and its version; the base makes the examples: the image
file's bytes as stored, the mapped label as PNG, the multi-hot of the classes 1..K-1 present
('labels', as `pipeline.image_labels`), and the id.
"""
import dataclasses
import glob
import io
import os
from typing import Callable

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


@dataclasses.dataclass(frozen=True)
class FolderDataset:
  """A dataset read from the folder config.dataset.manual_dir, declared once by its module.

  name: its config.dataset.name, for messages.
  class_names: in class index order (K = their number, the background included).
  layout: {key: path under manual_dir} that the release must hold (checked before any work).
  unpack: how to unpack the release, a sentence that the layout's paths complete
    (`instructions`).
  split_examples: (paths: the layout under manual_dir) -> {split: (list of (id, image path,
    label path), LabelMap)}.
  image_format: 'jpeg' or 'png', the format of the stored image files.
  read_label: (path, LabelMap) -> (H, W) uint8 class indices of a label file; one-channel
    PNGs by default (`read_label`).
  """
  name: str
  class_names: tuple
  layout: dict
  unpack: str
  split_examples: Callable
  image_format: str = 'jpeg'
  read_label: Callable = read_label

  @property
  def num_classes(self):
    return len(self.class_names)

  @property
  def instructions(self):
    """What TFDS prints when manual_dir is missing, and the README row's paths."""
    return (f'{self.unpack} so that it holds {", ".join(self.layout.values())}; pass it as '
            'config.dataset.manual_dir.')

  def check_layout(self, manual_dir):
    """{key: absolute path} of the layout under `manual_dir` (`check_layout`)."""
    return check_layout(self.name, self.layout, manual_dir)

  def examples(self, manual_dir):
    """{split: (examples, LabelMap)} of the release at `manual_dir`."""
    return self.split_examples(self.check_layout(manual_dir))


def split_folders(splits, image_root, label_root):
  """The layout of a release with one folder per split under an image and a label root:
  {'images_<split>': <image_root>/<folder>, 'labels_<split>': <label_root>/<folder>} for
  `splits` {split: folder name}."""
  return {f'{kind}_{split}': os.path.join(root, folder_name)
          for split, folder_name in splits.items()
          for kind, root in (('images', image_root), ('labels', label_root))}


def paired_examples(image_suffix, label_format):
  """`FolderDataset.split_examples` of a `split_folders` layout: each split's images paired
  with their labels by `list_examples`; `label_format(label_dir)` gives the split's (label
  suffix, LabelMap)."""

  def split_examples(paths):
    splits = [key.removeprefix('images_') for key in paths if key.startswith('images_')]
    result = {}
    for split in splits:
      label_dir = paths[f'labels_{split}']
      suffix, lmap = label_format(label_dir)
      result[split] = (list_examples(paths[f'images_{split}'], image_suffix, label_dir, suffix),
                       lmap)
    return result
  return split_examples


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder base of a `FolderDataset` read from `manual_dir`.

  Subclasses set DATASET (the `FolderDataset`), VERSION and RELEASE_NOTES; TFDS names the
  dataset after the subclass (CityscapesFine -> cityscapes_fine).
  """

  DATASET = None
  url_infos = None  # Nothing is downloaded, so there are no URL checksums to look up.

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.DATASET is not None:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.DATASET.instructions

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=type(self).__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format=self.DATASET.image_format),
            'segmentation': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'labels': tfds.features.Tensor(shape=(self.DATASET.num_classes - 1,),
                                           dtype=np.bool_),
            'id': tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(examples, lmap)
            for split, (examples, lmap) in self.DATASET.examples(dl_manager.manual_dir).items()}

  def _generate_examples(self, examples, lmap):
    declared = self.DATASET
    for image_id, image_path, label_path in progress.logged(examples, f'preparing {self.name}',
                                                            len(examples)):
      example = read_example(image_id, image_path, label_path,
                             lambda path: declared.read_label(path, lmap), declared.num_classes)
      label = PIL.Image.fromarray(example['segmentation'][..., 0])
      yield image_id, dict(example, segmentation=label)
