"""SegmentationModel and the model registry by config string (docs/design.md: models)."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rwsjax.models import conv as conv_lib
from rwsjax.models import heads
from rwsjax.models.resnet import RESNET_SPECS, STAGE_GEOMETRY, STAGE_NAMES, STEM_STRIDE, ResNet

HEAD_NAMES = ('deeplabv3', 'deeplabv3plus', 'fcn', 'unet', 'deeplabv2')
BACKBONES = {f'resnet{depth}': depth for depth in RESNET_SPECS}
# Output stride -> DeepLabv3 ASPP rates (docs/methods.md).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class SegmentationModel(nn.Module):
  """Backbone + head; logits (N, H, W, K) float32, bilinearly upsampled to the input size.

  Parameters live under 'params'/'backbone' and 'params'/'head' (and likewise 'batch_stats'),
  so optimisers can give each part its own learning rate. `init` also returns the backbone's
  'perturbations' collection (see `ResNet`): training keeps only 'params' and 'batch_stats'.
  Gradients of a score w.r.t. {'perturbations': {'backbone': {'layer1': zeros, ...}}} passed
  to `apply` are the gradients w.r.t. the (post-hook) stage outputs.
  """
  backbone: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, images, *, train=False, stage_hook=None, return_features=False):
    """Logits, or (logits, features) with the backbone's dict of post-hook stage outputs."""
    features = self.backbone(images, train=train, stage_hook=stage_hook)
    logits = self.head(features, train=train).astype(jnp.float32)
    logits = heads.resize_bilinear(logits, images.shape[1:3])
    return (logits, features) if return_features else logits


def _choice(model_cfg, key, choices, default=None):
  """`model_cfg[key]` (or `default`), checked against `choices`."""
  value = model_cfg.get(key, default)
  if value not in choices:
    raise ValueError(f'config.model.{key}={value!r} is not one of {list(choices)}.')
  return value


def _positive(model_cfg, key, default, integer):
  """`model_cfg[key]` (or `default`), checked to be a positive number (an int if `integer`)."""
  value = model_cfg.get(key, default)
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    expected = 'positive integer' if integer else 'positive number'
    raise ValueError(f'config.model.{key}={value!r} must be a {expected}.')
  return value


def feature_strides(model_cfg):
  """Stride of 'layer1'..'layer4' w.r.t. the input: 4, 8, then 8/8 (OS 8) or 16/16 (OS 16)."""
  strides, _ = STAGE_GEOMETRY[_choice(model_cfg, 'output_stride', STAGE_GEOMETRY)]
  out, total = {}, STEM_STRIDE
  for name, stride in zip(STAGE_NAMES, strides):
    total *= stride
    out[name] = total
  return out


def build_backbone(model_cfg):
  """The ResNet named by config.model (backbone, output_stride, width, frozen_bn, dtype,
  conv_impl)."""
  return ResNet(
      depth=BACKBONES[_choice(model_cfg, 'backbone', BACKBONES)],
      output_stride=_choice(model_cfg, 'output_stride', STAGE_GEOMETRY),
      width=_positive(model_cfg, 'width', 1.0, integer=False),
      frozen_bn=bool(model_cfg.get('frozen_bn', False)),
      dtype=DTYPES[_choice(model_cfg, 'dtype', DTYPES, 'float32')],
      conv_impl=_choice(model_cfg, 'conv_impl', conv_lib.CONV_IMPLS, 'auto'))


def build_head(model_cfg, num_classes):
  """The head named by config.model.name, with `head_channels` channels (default 256), in
  config.model.dtype, convolutions by config.model.conv_impl."""
  name = _choice(model_cfg, 'name', HEAD_NAMES)
  output_stride = _choice(model_cfg, 'output_stride', STAGE_GEOMETRY)
  channels = _positive(model_cfg, 'head_channels', 256, integer=True)
  upsample = _choice(model_cfg, 'upsample', heads.UPSAMPLE_MODES, 'bilinear')
  dtype = DTYPES[_choice(model_cfg, 'dtype', DTYPES, 'float32')]
  impl = _choice(model_cfg, 'conv_impl', conv_lib.CONV_IMPLS, 'auto')
  if name == 'deeplabv3':
    return heads.DeepLabV3Head(num_classes, ASPP_RATES[output_stride], channels, dtype, impl)
  if name == 'deeplabv3plus':
    return heads.DeepLabV3PlusHead(num_classes, ASPP_RATES[output_stride], channels,
                                   max(1, channels * 48 // 256), dtype, impl)
  if name == 'fcn':
    return heads.FCNHead(num_classes, dtype, impl)
  if name == 'unet':
    return heads.UNetHead(num_classes, tuple(max(1, channels >> i) for i in range(4)),
                          upsample, dtype, impl)
  return heads.DeepLabV2Head(num_classes, dtype=dtype, conv_impl=impl)


def build_model(model_cfg: Any, num_classes: int) -> nn.Module:
  """SegmentationModel from config.model (ConfigDict or dict); see `build_backbone` and
  `build_head` for the fields. `pretrained` is not read here: the trainer loads it with
  `rwsjax.models.pretrained.load_pretrained_backbone`."""
  return SegmentationModel(build_backbone(model_cfg), build_head(model_cfg, num_classes))
