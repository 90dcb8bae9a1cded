"""Multi-scale class activation maps (docs/methods.md, ISIM step 2).

For each scale s in 1.0, 0.5, 1.5, 2.0 the image is resized by s, the model's CAMs
ReLU(conv1x1(layer4)) are computed for it and for its horizontal flip (flipped back), each is
resized to the image size and all are summed; classes not in the image are zeroed and each
class map is divided by its maximum (+1e-5).

All scales and flips run in one jitted function per padded image size. Images may be padded
(bottom/right, with the normalised mean 0) to a shared "bucket" size so that datasets whose
images vary in size compile once per bucket instead of once per size: every resize below
works on the valid top-left region only (`interpolation_matrix`), so padding changes a CAM
only through the convolutions' view of the padded border, near the bottom and right edges.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from rwsjax import train
from rwsjax.data import pipeline

NORMALIZE_EPS = 1e-5


def interpolation_matrix(out_valid, in_valid, out_size, in_size):
  """(out_size, in_size) weights resizing the first `in_valid` samples to `out_valid`.

  Linear interpolation with half-pixel centres and, when shrinking, the antialiasing triangle
  filter widened by in/out: `jax.image.resize(..., 'bilinear')` restricted to the valid parts.
  Rows past `out_valid` and columns past `in_valid` are zero. The valid sizes may be traced.
  """
  inv_scale = in_valid / out_valid
  kernel_scale = jnp.maximum(inv_scale, 1.0)
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale - 0.5
  source = jnp.arange(in_size, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(sample[:, None] - source[None]) / kernel_scale)
  weights = jnp.where(source[None] < in_valid, weights, 0.0)
  total = weights.sum(axis=1, keepdims=True)
  weights = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
  inside = (sample >= -0.5) & (sample <= in_valid - 0.5)
  return jnp.where(inside[:, None], weights, 0.0)


def resize_valid(x, in_valid, out_valid, out_size):
  """Bilinear resize of the valid (h, w) region of x (H, W, C) to `out_valid`, placed at the
  top-left of a zero (out_size[0], out_size[1], C) array. Sizes (h, w) may be traced."""
  rows = interpolation_matrix(out_valid[0], in_valid[0], out_size[0], x.shape[0])
  cols = interpolation_matrix(out_valid[1], in_valid[1], out_size[1], x.shape[1])
  return jnp.einsum('oh,hwc,pw->opc', rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def flip_valid(x, width):
  """Mirrors the first `width` columns of x (H, W, C); the columns past it become 0."""
  cols = jnp.arange(x.shape[1])
  source = jnp.clip(width - 1 - cols, 0, x.shape[1] - 1).astype(jnp.int32)
  flipped = jnp.take(x, source, axis=1)
  return jnp.where((cols < width)[None, :, None], flipped, 0.0)


def scaled_size(size, scale):
  """Image size after resizing by `scale`: round half to even, as numpy, and at least 1."""
  return jnp.maximum(jnp.round(size * scale), 1.0)


def multi_scale_cams(class_maps_fn, images, sizes, image_labels, *, scales, flip, stride):
  """Normalised multi-scale CAMs of a padded batch (docs/methods.md, ISIM step 2).

  Args:
    class_maps_fn: images (B, h, w, 3) -> per-pixel class scores (B, ceil(h/stride),
      ceil(w/stride), C) before the ReLU.
    images: (B, H, W, 3) normalised images, each valid in its top-left `sizes` region and 0
      (the normalised mean) elsewhere.
    sizes: (B, 2) valid (height, width) of each image.
    image_labels: (B, C) multi-hot image labels.
    scales: resize factors (static).
    flip: also use each scale's horizontal flip.
    stride: output stride of `class_maps_fn` (8 or 16 for the dilated ResNets).

  Returns:
    (B, H, W, C) CAMs in [0, 1): zero outside the valid region and for absent classes.
  """
  batch, height, width = images.shape[:3]
  sizes = sizes.astype(jnp.float32)
  total = jnp.zeros((batch, height, width, image_labels.shape[1]), jnp.float32)
  for scale in scales:
    canvas = (math.ceil(height * scale), math.ceil(width * scale))
    valid = scaled_size(sizes, scale)
    scaled = jax.vmap(resize_valid, (0, 0, 0, None))(images.astype(jnp.float32), sizes, valid,
                                                      canvas)
    views = [scaled, jax.vmap(flip_valid)(scaled, valid[:, 1])] if flip else [scaled]
    maps = class_maps_fn(jnp.concatenate(views))
    expected = tuple(-(-n // stride) for n in canvas)
    if maps.shape[1:3] != expected:
      raise ValueError(f'class maps of a {canvas} input have size {maps.shape[1:3]}; expected '
                       f'{expected} for output stride {stride}.')
    cams = jax.nn.relu(maps.astype(jnp.float32)).reshape(len(views), batch, *maps.shape[1:])
    feature_valid = jnp.ceil(valid / stride)
    if flip:
      cams = cams.at[1].set(jax.vmap(flip_valid)(cams[1], feature_valid[:, 1]))
    upsample = jax.vmap(resize_valid, (0, 0, 0, None))
    total += sum(upsample(view, feature_valid, sizes, (height, width)) for view in cams)
  total *= image_labels[:, None, None, :].astype(jnp.float32)
  return total / (jnp.max(total, axis=(1, 2), keepdims=True) + NORMALIZE_EPS)


def valid_mean(maps, valid):
  """Mean of maps (B, h, w, C) over each map's top-left `valid` (B, 2) region: global
  average pooling of an image that was padded."""
  rows = jnp.arange(maps.shape[1])[None, :] < valid[:, :1]
  cols = jnp.arange(maps.shape[2])[None, :] < valid[:, 1:]
  mask = (rows[:, :, None] & cols[:, None, :]).astype(maps.dtype)[..., None]
  return (maps * mask).sum(axis=(1, 2)) / mask.sum(axis=(1, 2))


def bucket_size(shape, bucket):
  """(h, w) rounded up to a multiple of `bucket` (0: unchanged)."""
  if not bucket:
    return tuple(int(n) for n in shape)
  return tuple(-(-int(n) // bucket) * bucket for n in shape)


def _local_copy(x):
  """A numpy copy of a replicated array as this process holds it."""
  return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


class CamExtractor:
  """Multi-scale CAMs and class logits of uint8 images on this process's devices.

  `bind(variables)` gives the `cam_fn` of `isimjax.pseudo.generate_pseudo_labels`. Each call
  takes a batch of equally sized images, pads it to (`batch_size`, bucketed size) and runs
  one jitted function, compiled once per bucketed size for all the variables bound. The batch
  is sharded over a mesh of this process's own devices, so the processes of a multi-host run
  extract their parts independently.
  """

  def __init__(self, model, input_cfg, *, scales, flip, stride, batch_size, bucket=0):
    """
    Args:
      model: an `isimjax.models.CamSegmenter`.
      input_cfg: config.input (mean and std of the normalisation).
      scales, flip, stride: as in `multi_scale_cams`.
      batch_size: images per device call; a multiple of the local device count.
      bucket: pad heights and widths up to a multiple of this (0: exact sizes).
    """
    self.mesh = jax.make_mesh((jax.local_device_count(),), ('data',),
                              axis_types=(jax.sharding.AxisType.Auto,),
                              devices=jax.local_devices())
    if batch_size % self.mesh.size:
      raise ValueError(f'config.isim.cam_batch_size={batch_size} must be a multiple of the '
                       f'{self.mesh.size} local devices.')
    self.input_cfg = input_cfg
    self.batch_size = batch_size
    self.bucket = bucket

    def cams(variables, images, sizes, image_labels):
      maps_fn = lambda x: model.apply(variables, x, method='class_maps')
      return multi_scale_cams(maps_fn, images, sizes, image_labels, scales=tuple(scales),
                              flip=flip, stride=stride)

    def logits(variables, images, sizes, image_labels):
      del image_labels
      maps = model.apply(variables, images, method='class_maps')
      return valid_mean(maps, jnp.ceil(sizes / stride))

    sharded = train.data_sharded(self.mesh)
    self.cams = jax.jit(cams, out_shardings=sharded)
    self.logits = jax.jit(logits, out_shardings=sharded)

  def bind(self, variables):
    """A `BoundCams` of the model with `variables` ({'params', 'batch_stats'}, any placement)."""
    return BoundCams(self, jax.device_put(jax.tree.map(_local_copy, variables),
                                          train.replicated(self.mesh)))

  def run(self, fn, variables, images, image_labels):
    """`fn(variables, padded images, sizes, labels)` on a batch padded to (batch_size, bucket),
    with the padding entries dropped from the numpy result."""
    images, image_labels = np.asarray(images), np.asarray(image_labels, np.float32)
    count, height, width = images.shape[:3]
    if count > self.batch_size:
      raise ValueError(f'CamExtractor got {count} images; at most batch_size='
                       f'{self.batch_size} per call.')
    padded = np.zeros((self.batch_size, *bucket_size((height, width), self.bucket), 3),
                      np.float32)
    padded[:count, :height, :width] = pipeline.normalize(images, self.input_cfg)
    sizes = np.tile(np.array([[height, width]], np.int32), (self.batch_size, 1))
    labels = np.zeros((self.batch_size, image_labels.shape[1]), np.float32)
    labels[:count] = image_labels
    sharding = train.data_sharded(self.mesh)
    return np.asarray(fn(variables, *jax.device_put((padded, sizes, labels), sharding)))[:count]


class BoundCams:
  """CAMs and class logits of one model's variables; calling it is a `cam_fn` of
  `isimjax.pseudo.generate_pseudo_labels`."""

  def __init__(self, extractor, variables):
    self.extractor = extractor
    self.variables = variables

  def __call__(self, images, image_labels):
    """Numpy CAMs (B, C, H, W) of uint8 images (B, H, W, 3) with image labels (B, C)."""
    height, width = np.shape(images)[1:3]
    cams = self.extractor.run(self.extractor.cams, self.variables, images, image_labels)
    return cams[:, :height, :width].transpose(0, 3, 1, 2)

  def class_logits(self, images, num_labels):
    """Numpy class logits (B, num_labels) of uint8 images at scale 1, pooled over each image's
    own extent (padding excluded)."""
    labels = np.zeros((len(images), num_labels), np.float32)
    return self.extractor.run(self.extractor.logits, self.variables, images, labels)
