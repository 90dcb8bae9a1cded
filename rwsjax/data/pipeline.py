"""Random-access input pipelines on grain MapDataset: training, evaluation and RWS slice crops.

`ds[step]` is the batch of global step `step`, a pure function of (seed, step): random numbers
come from grain's per-index generators, so a resumed run sees the batches an uninterrupted run
sees, whatever the number of reader threads.

Fields of config.input read here:
  crop_size: int or (h, w), the training crop.
  scale_range: (lo, hi); scale_mode 'ratio' multiplies both sides by s ~ U(lo, hi).
  scale_mode: 'ratio' or 'long_side' (ISIM: the long side is resized to an integer drawn
    uniformly from [crop, 2 * crop], crop = the longer crop side; scale_range is not used).
  flip: random horizontal flip with probability 1/2.
  mean, std: per-channel normalisation constants on the 0-255 scale.
  eval_pad_size: None or (h, w); evaluation images are padded to it (None: all images of the
    split have the same size).
  eval_max_long_side: None or an int; evaluation images (and the RWS slice crops, whose boxes
    come from evaluation canvases) with a longer side first shrink to that long side, aspect
    kept, the label by nearest neighbour; their mIoU is then measured at that size.
Batch sizes are per process; the trainer divides config.input.batch_size and
config.input.eval_batch_size by the process count.

Batches are dicts of numpy arrays, keyed as the sources: 'image' float32 (B, h, w, 3)
normalised, 'segmentation' int32 (B, h, w) pixel labels with IGNORE_LABEL in padding, 'valid'
bool (B, h, w) False on padding (pixels that are not from the image), 'labels' float32
(B, K-1) image-level multi-hot,
'index' int32 (B,) and, for finite datasets, 'mask' bool (B,) (False on padding entries, whose
index is -1).
"""
import math

import grain
import numpy as np
import PIL.Image

from rwsjax import config as config_lib
from rwsjax.losses import IGNORE_LABEL



def pair(size):
  """(h, w) from an int or a pair."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def normalize(image, input_cfg):
  """(image - mean) / std as float32; `image` uint8 or float on the 0-255 scale."""
  mean = np.asarray(input_cfg.mean, np.float32)
  std = np.asarray(input_cfg.std, np.float32)
  return (np.asarray(image, np.float32) - mean) / std


def denormalize(image, input_cfg):
  """Inverse of `normalize`: float32 on the 0-255 scale."""
  mean = np.asarray(input_cfg.mean, np.float32)
  std = np.asarray(input_cfg.std, np.float32)
  return np.asarray(image, np.float32) * std + mean


def resize(array, size, resample):
  """PIL resize of a uint8 (H, W) or (H, W, C) array to `size` = (h, w)."""
  if array.shape[:2] == tuple(size):
    return array
  h, w = size
  return np.asarray(PIL.Image.fromarray(array).resize((w, h), resample))


def image_labels(label, num_labels):
  """(num_labels,) bool multi-hot of the classes 1..num_labels in a uint8 label map."""
  return np.bincount(label.ravel(), minlength=256)[1:num_labels + 1] > 0


def long_side_size(shape, max_side):
  """(h, w) of `shape` shrunk, aspect kept, so that the long side is at most `max_side`
  (None: no limit)."""
  if max_side is None or max(shape) <= max_side:
    return tuple(shape)
  return tuple(max(1, round(n * max_side / max(shape))) for n in shape)


def limit_long_side(image, label, max_side):
  """Image (bilinear) and label (nearest) shrunk so the long side is at most `max_side`."""
  size = long_side_size(label.shape, max_side)
  if size == label.shape:
    return image, label
  return resize(image, size, PIL.Image.BILINEAR), resize(label, size, PIL.Image.NEAREST)


def scale_factor(shape, input_cfg, rng):
  """Random resize factor of docs/methods.md ISIM step 7 ('long_side') or of DeepLab ('ratio')."""
  mode = input_cfg.scale_mode
  if mode == 'ratio':
    return rng.uniform(*input_cfg.scale_range)
  config_lib.check_value(mode, config_lib.INPUT_FIELDS['scale_mode'].values,
                         'config.input.scale_mode')
  crop = max(pair(input_cfg.crop_size))
  return rng.integers(crop, 2 * crop + 1) / max(shape)


def random_scale(image, label, input_cfg, rng):
  """Resizes image (bilinear) and label (nearest) by `scale_factor`."""
  factor = scale_factor(label.shape, input_cfg, rng)
  size = tuple(max(1, round(n * factor)) for n in label.shape)
  return resize(image, size, PIL.Image.BILINEAR), resize(label, size, PIL.Image.NEAREST)


def pad(image, label, size):
  """Pads bottom/right up to at least `size`: image with 0 (the normalised mean), label ignore."""
  extra = [(0, max(0, s - n)) for s, n in zip(size, label.shape)]
  image = np.pad(image, extra + [(0, 0)], constant_values=0)
  return image, np.pad(label, extra, constant_values=IGNORE_LABEL)


def random_crop(image, label, size, rng):
  """A random `size` window of image and label (both at least `size`)."""
  y = rng.integers(0, label.shape[0] - size[0] + 1)
  x = rng.integers(0, label.shape[1] - size[1] + 1)
  window = (slice(y, y + size[0]), slice(x, x + size[1]))
  return image[window], label[window]


def random_flip(image, label, rng):
  """Horizontal flip of image and label together with probability 1/2."""
  if rng.random() < 0.5:
    return image[:, ::-1], label[:, ::-1]
  return image, label


def with_valid_channel(image):
  """The image with a fourth channel of ones: padding (zeros) then marks pixels off the image
  through any crop or flip; `split_valid` takes it off again."""
  return np.concatenate([image, np.ones(image.shape[:2] + (1,), image.dtype)], axis=-1)


def split_valid(image):
  """(image (H, W, 3), valid (H, W) bool) from a `with_valid_channel` image."""
  return image[..., :3], image[..., 3] > 0.5


def augment(example, input_cfg, rng):
  """Train augmentation: scale, normalise, pad to the crop, random crop, optional flip.

  'valid' marks the crop's pixels that come from the image (False on padding)."""
  crop = pair(input_cfg.crop_size)
  image, label = random_scale(example['image'], example['segmentation'], input_cfg, rng)
  image, label = pad(with_valid_channel(normalize(image, input_cfg)), label, crop)
  image, label = random_crop(image, label, crop, rng)
  if input_cfg.flip:
    image, label = random_flip(image, label, rng)
  image, valid = split_valid(image)
  return dict(example, image=image, segmentation=label, valid=valid)


def _batch_ready(example):
  """Contiguous arrays with the batch dtypes ('valid' all True when the example has none)."""
  label = np.ascontiguousarray(example['segmentation']).astype(np.int32)
  return dict(example,
              image=np.ascontiguousarray(example['image'], np.float32),
              segmentation=label,
              valid=np.ascontiguousarray(example.get('valid', np.ones(label.shape, bool))),
              labels=np.asarray(example['labels'], np.float32),
              index=np.int32(example['index']))


def reader(source, label_source=None):
  """index -> {'image' uint8 (H, W, 3), 'segmentation' uint8 (H, W), 'labels', 'index'} of
  `source`.

  `label_source[index]` (uint8 (H, W) at the image's size), when given, replaces the
  ground-truth segmentation (ISIM pseudo labels); image-level labels stay those of `source`.
  """
  if label_source is not None and len(label_source) != len(source):
    raise ValueError(f'label_source has {len(label_source)} items but the source has '
                     f'{len(source)}; expected one label map per example.')

  def read(index):
    example = source[int(index)]
    label = example['segmentation'][..., 0]
    if label_source is not None:
      label = np.asarray(label_source[int(index)], np.uint8)
      if label.shape != example['image'].shape[:2]:
        raise ValueError(f'label_source[{index}] has shape {label.shape}; expected the image '
                         f'size {example["image"].shape[:2]}.')
    return {'image': example['image'], 'segmentation': label,
            'labels': np.asarray(example['labels'], np.float32), 'index': index}

  return read


def _shuffled_batches(count, transform, seed, batch_size, shard):
  """Infinite batches of `transform(i, rng)` over 0..count-1, reshuffled every epoch: process
  `index` of `count` (`shard`) gets the batches index, index + count, ... of one global stream,
  so the global batch of a step, the processes' batches in process order, is the batch a single
  process with the whole global batch size gets."""
  index, processes = shard
  return (grain.MapDataset.range(count).shuffle(seed=seed).repeat()
          .random_map(lambda i, rng: _batch_ready(transform(i, rng)), seed=seed)
          .batch(batch_size, drop_remainder=True)[index::processes])


def _masked_batches(count, element, padding, batch_size, num_batches):
  """Finite in-order batches of `element(i)`, padded to `num_batches` full batches."""
  needed = math.ceil(count / batch_size)
  num_batches = needed if num_batches is None else num_batches
  if num_batches < needed:
    raise ValueError(f'num_batches={num_batches} is too small for {count} examples in batches '
                     f'of {batch_size}; expected at least {needed}.')

  def get(i):
    if i < count:
      return dict(_batch_ready(element(i)), mask=np.True_)
    return dict(padding, mask=np.False_)

  return grain.MapDataset.range(num_batches * batch_size).map(get).batch(batch_size)


def _padding_entry(size, num_labels):
  """A masked-out batch entry: zero image, all-ignore label, index -1."""
  return _batch_ready({'image': np.zeros((*size, 3), np.float32),
                       'segmentation': np.full(size, IGNORE_LABEL, np.uint8),
                       'valid': np.zeros(size, bool),
                       'labels': np.zeros(num_labels, np.float32), 'index': -1})


def train_dataset(source, input_cfg, *, seed, batch_size, label_source=None, shard=(0, 1)):
  """Infinite augmented training batches; `ds[step]` is the batch of step `step`.

  Args:
    source: random-access source (len, [i] -> dict with 'image', 'segmentation', 'labels'),
      the whole split on every process.
    input_cfg: config.input (see the module docstring).
    seed: shuffling and augmentation seed in [0, 2**32).
    batch_size: per-process batch size.
    label_source: optional sequence of uint8 (H, W) label maps replacing the segmentation.
    shard: (process index, process count): this process's share of the global stream.
  """
  read = reader(source, label_source)
  return _shuffled_batches(len(source), lambda i, rng: augment(read(i), input_cfg, rng),
                           seed, batch_size, shard)


def eval_dataset(source, input_cfg, *, batch_size, num_batches=None):
  """Finite in-order evaluation batches with 'mask'; images shrunk to eval_max_long_side when
  they are larger, then padded to eval_pad_size.

  `num_batches` (default: just enough) lets hosts with different source lengths run the same
  number of batches; the extra entries are masked out.
  """
  if not len(source):
    raise ValueError('eval_dataset needs a non-empty source.')
  first = source[0]
  pad_size = config_lib.field(input_cfg, 'input', 'eval_pad_size')
  max_long_side = config_lib.field(input_cfg, 'input', 'eval_max_long_side')
  size = pair(pad_size) if pad_size is not None else first['image'].shape[:2]
  read = reader(source)

  def element(i):
    example = read(i)
    image, label = limit_long_side(example['image'], example['segmentation'], max_long_side)
    shape = label.shape
    if pad_size is None and shape != size:
      raise ValueError(f'Example {i} has size {shape} but example 0 has {size}; set '
                       'config.input.eval_pad_size to pad images of different sizes.')
    if shape[0] > size[0] or shape[1] > size[1]:
      raise ValueError(f'Example {i} has size {shape}, larger than config.input.eval_pad_size '
                       f'{size}.')
    image, label = pad(with_valid_channel(normalize(image, input_cfg)), label, size)
    image, valid = split_valid(image)
    return dict(example, image=image, segmentation=label, valid=valid)

  padding = _padding_entry(size, len(first['labels']))
  return _masked_batches(len(source), element, padding, batch_size, num_batches)


def crop_dataset(source, boxes, input_cfg, *, seed, batch_size, out_size, augment=True,
                 shard=(0, 1)):
  """Batches of box crops (RWS stage 2): item j is box j of `boxes` resized to `out_size`.

  Args:
    source: random-access source as in `train_dataset`.
    boxes: int array (M, 5), rows (example_index, y0, x0, y1, x1), half-open pixel bounds on
      the evaluation canvas: the image shrunk as in `eval_dataset` (eval_max_long_side) and
      padded, so a box may reach past the bottom/right edge; the part outside has the mean
      colour and the ignore label.
    input_cfg: config.input (mean, std, flip, eval_max_long_side).
    seed: shuffling and flip seed (augment=True only).
    batch_size: per-process batch size.
    out_size: int or (h, w); image resized bilinearly, label nearest.
    augment: True: infinite shuffled batches with random flips (`ds[step]`); False: finite
      in-order batches with 'mask', for feature extraction.
    shard: augment only, (process index, process count) as in `train_dataset`.

  'index' is the box row j; 'labels' are the classes present in the crop's label.
  """
  boxes = np.asarray(boxes)
  if boxes.ndim != 2 or boxes.shape[1] != 5:
    raise ValueError(f'boxes has shape {boxes.shape}; expected (M, 5) rows '
                     '(example_index, y0, x0, y1, x1).')
  out_size = pair(out_size)
  num_labels = len(source[0]['labels'])
  max_long_side = config_lib.field(input_cfg, 'input', 'eval_max_long_side')

  def element(j):
    index, y0, x0, y1, x1 = (int(v) for v in boxes[j])
    example = source[index]
    full_image, full_label = limit_long_side(example['image'], example['segmentation'][..., 0],
                                             max_long_side)
    height, width = full_label.shape
    if not (0 <= y0 < min(y1, height) and 0 <= x0 < min(x1, width)):
      raise ValueError(f'boxes[{j}] = {boxes[j].tolist()} does not start inside example {index} '
                       f'of size {(height, width)}.')
    canvas = (max(height, y1), max(width, x1))
    image = np.empty(canvas + (3,), np.uint8)
    image[...] = np.round(input_cfg.mean).astype(np.uint8)
    image[:height, :width] = full_image
    label = np.full(canvas, IGNORE_LABEL, np.uint8)
    label[:height, :width] = full_label
    label = resize(label[y0:y1, x0:x1], out_size, PIL.Image.NEAREST)
    image = resize(image[y0:y1, x0:x1], out_size, PIL.Image.BILINEAR)
    return {'image': normalize(image, input_cfg), 'segmentation': label,
            'labels': image_labels(label, num_labels), 'index': j}

  if not augment:
    padding = _padding_entry(out_size, num_labels)
    return _masked_batches(len(boxes), element, padding, batch_size, None)

  def flipped(j, rng):
    example = element(j)
    if input_cfg.flip:
      image, label = random_flip(example['image'], example['segmentation'], rng)
      example = dict(example, image=image, segmentation=label)
    return example

  return _shuffled_batches(len(boxes), flipped, seed, batch_size, shard)


def prefetch(ds, start_step=0, *, num_threads=2, buffer_size=4):
  """Iterator over ds[start_step:], read ahead by `num_threads` threads."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer_size)
  return iter(ds[start_step:].to_iter_dataset(options))
