"""Segmentation heads on the backbone's feature dict (docs/methods.md, shared building
blocks: heads).

Every head is called as `head(features, train=...)` with the dict returned by
`rwsjax.models.resnet.ResNet` and returns class logits (N, h, w, K) at its own resolution;
`SegmentationModel` upsamples them to the input size. Dropout needs the rng 'dropout' when
`train=True`. `conv_impl` picks how their convolutions are computed (`rwsjax.models.conv`).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rwsjax import config as config_lib
from rwsjax.models import conv as conv_lib
from rwsjax.models.resnet import BN_EPSILON, BN_MOMENTUM, conv2d

UNET_SKIPS = ('layer3', 'layer2', 'layer1', 'stem')


def resize_bilinear(x, size):
  """Bilinear resize of NHWC `x` to spatial `size`, half-pixel centres (PyTorch's
  align_corners=False when upsampling)."""
  size = tuple(size)
  if x.shape[1:3] == size:
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'bilinear')


def classifier(num_classes, dtype, conv_impl='auto', name='classifier'):
  """1x1 convolution with bias to class logits."""
  return nn.Conv(num_classes, (1, 1), dtype=dtype, name=name,
                 conv_general_dilated=functools.partial(conv_lib.conv_general_dilated,
                                                        impl=conv_impl))


class ConvBNReLU(nn.Module):
  """Convolution without bias, BatchNorm, ReLU."""
  features: int
  kernel: int = 3
  dilation: int = 1
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train):
    x = conv2d(self.features, self.kernel, dilation=self.dilation, dtype=self.dtype,
               conv_impl=self.conv_impl)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     dtype=self.dtype)(x)
    return nn.relu(x)


class ASPP(nn.Module):
  """DeepLabv3 atrous spatial pyramid pooling, as torchvision's `ASPP`.

  Branches: 1x1 conv, one 3x3 atrous conv per rate, image pooling (global mean, 1x1 conv,
  broadcast back); concatenated, projected by a 1x1 conv, dropout 0.5.
  """
  rates: Sequence[int]
  channels: int = 256
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train):
    branch = functools.partial(ConvBNReLU, self.channels, dtype=self.dtype,
                               conv_impl=self.conv_impl)
    outs = [branch(1, name='conv1x1')(x, train)]
    outs += [branch(3, rate, name=f'atrous{i}')(x, train) for i, rate in enumerate(self.rates)]
    pooled = branch(1, name='pool')(jnp.mean(x, axis=(1, 2), keepdims=True), train)
    outs.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
    y = branch(1, name='project')(jnp.concatenate(outs, axis=-1), train)
    return nn.Dropout(0.5, deterministic=not train)(y)


class DeepLabV3Head(nn.Module):
  """torchvision's DeepLabHead: ASPP on layer4, 3x3 conv + BN + ReLU, 1x1 classifier."""
  num_classes: int
  rates: Sequence[int]
  channels: int = 256
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, features, *, train=False):
    x = ASPP(self.rates, self.channels, self.dtype, self.conv_impl, name='aspp')(
        features['layer4'], train)
    x = ConvBNReLU(self.channels, 3, dtype=self.dtype, conv_impl=self.conv_impl, name='conv')(
        x, train)
    return classifier(self.num_classes, self.dtype, self.conv_impl)(x)


class DeepLabV3PlusHead(nn.Module):
  """DeepLabv3+ decoder: ASPP on layer4 upsampled to layer1, concatenated with a 1x1
  projection of layer1 (48 channels at the default width), two 3x3 convs, classifier."""
  num_classes: int
  rates: Sequence[int]
  channels: int = 256
  low_level_channels: int = 48
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, features, *, train=False):
    x = ASPP(self.rates, self.channels, self.dtype, self.conv_impl, name='aspp')(
        features['layer4'], train)
    block = functools.partial(ConvBNReLU, dtype=self.dtype, conv_impl=self.conv_impl)
    low = block(self.low_level_channels, 1, name='low_level')(features['layer1'], train)
    x = jnp.concatenate([resize_bilinear(x, low.shape[1:3]), low], axis=-1)
    x = block(self.channels, 3, name='fuse1')(x, train)
    x = block(self.channels, 3, name='fuse2')(x, train)
    return classifier(self.num_classes, self.dtype, self.conv_impl)(x)


class FCNHead(nn.Module):
  """torchvision's FCNHead on layer4: 3x3 conv to in/4 channels, BN, ReLU, dropout 0.1,
  1x1 classifier (the RWS Table II baseline)."""
  num_classes: int
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, features, *, train=False):
    x = features['layer4']
    x = ConvBNReLU(max(1, x.shape[-1] // 4), 3, dtype=self.dtype, conv_impl=self.conv_impl,
                   name='conv')(x, train)
    x = nn.Dropout(0.1, deterministic=not train)(x)
    return classifier(self.num_classes, self.dtype, self.conv_impl)(x)


class UNetHead(nn.Module):
  """UNet decoder: from layer4, per skip (layer3, layer2, layer1, stem) upsample to the
  skip's size, concatenate, two 3x3 conv + BN + ReLU; classifier at the stem's stride 2.

  `upsample='bilinear'` resizes; `'learnable'` is a transposed conv (kernel = stride = the
  size ratio, rounded; a remaining odd-size mismatch is resized). Equal sizes (dilated stages)
  are not upsampled.
  """
  num_classes: int
  channels: Sequence[int] = (256, 128, 64, 32)
  upsample: str = 'bilinear'
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, features, *, train=False):
    config_lib.check_value(self.upsample, config_lib.MODEL_FIELDS['upsample'].values,
                           'config.model.upsample')
    x = features['layer4']
    block = functools.partial(ConvBNReLU, dtype=self.dtype, conv_impl=self.conv_impl)
    for i, (skip_name, channels) in enumerate(zip(UNET_SKIPS, self.channels)):
      skip = features[skip_name]
      factor = max(1, round(skip.shape[1] / x.shape[1]))
      if self.upsample == 'learnable' and factor > 1:
        x = nn.ConvTranspose(channels, (factor, factor), strides=(factor, factor),
                             padding='VALID', dtype=self.dtype, name=f'up{i}')(x)
      x = jnp.concatenate([resize_bilinear(x, skip.shape[1:3]), skip], axis=-1)
      x = block(channels, 3, name=f'decode{i}_conv1')(x, train)
      x = block(channels, 3, name=f'decode{i}_conv2')(x, train)
    return classifier(self.num_classes, self.dtype, self.conv_impl)(x)


class DeepLabV2Head(nn.Module):
  """DeepLabv2 ASPP-sum: one 3x3 atrous conv (with bias) per rate from layer4 straight to
  class logits, summed; weights initialised N(0, 0.01) as in DeepLabv2."""
  num_classes: int
  rates: Sequence[int] = (6, 12, 18, 24)
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, features, *, train=False):
    x = features['layer4']
    init = nn.initializers.normal(0.01)
    return sum(conv2d(self.num_classes, 3, dilation=rate, dtype=self.dtype, use_bias=True,
                      kernel_init=init, conv_impl=self.conv_impl, name=f'branch{i}')(x)
               for i, rate in enumerate(self.rates))
