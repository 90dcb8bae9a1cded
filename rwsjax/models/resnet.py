"""Dilated ResNet backbones, torchvision layout (docs/methods.md, shared building blocks: backbone).

Parameter names mirror torchvision's so that its ImageNet weights map one to one
(`rwsjax.models.pretrained`): `conv1`, `bn1`, block `layer{s}.{b}` is the submodule
`layer{s}_{b}`, `downsample.0` / `downsample.1` are `downsample_conv` / `downsample_bn`.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from rwsjax.models import conv as conv_lib
from rwsjax.models.backbone import LAYER_NAMES, layer_output

# Output stride -> (strides, dilations) of layers 1-4 (docs/methods.md).
STAGE_GEOMETRY = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
}
# Depth -> (block kind, blocks per layer), as torchvision.
RESNET_SPECS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
STEM_STRIDE = 4  # conv1 (stride 2) then max pool (stride 2): the stride of layer1.
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1.
BN_EPSILON = 1e-5
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # torchvision's.


def scaled_channels(channels, width):
  """Channel count `channels` scaled by the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def block_plan(output_stride, blocks_per_layer):
  """Per layer, the (stride, dilation) of each block.

  torchvision's `replace_stride_with_dilation` semantics: a layer whose stride is traded for
  dilation has stride 1; its first block keeps the previous layer's dilation, the others use
  the layer's own.
  """
  strides, dilations = STAGE_GEOMETRY[output_stride]
  previous = (1,) + dilations[:-1]
  return tuple(((stride, first),) + ((1, dilation),) * (count - 1)
               for stride, dilation, first, count
               in zip(strides, dilations, previous, blocks_per_layer))


def conv2d(features, kernel, stride=1, dilation=1, *, dtype=jnp.float32, use_bias=False,
           kernel_init=CONV_INIT, conv_impl='auto', name=None):
  """PyTorch-style square convolution: symmetric padding `dilation * (kernel - 1) / 2`.

  `conv_impl` picks how it is computed (`rwsjax.models.conv`); the parameters are the same.
  """
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 kernel_dilation=dilation, use_bias=use_bias, dtype=dtype,
                 kernel_init=kernel_init, name=name,
                 conv_general_dilated=functools.partial(conv_lib.conv_general_dilated,
                                                        impl=conv_impl))


def residual_relu(x):
  """The ReLU that ends a block (its sum with the shortcut): `nn.relu`'s values and gradients
  (0 at 0, NaN stays NaN), written as a select.

  XLA:CPU copies a cheap single-operand op like `maximum(x, 0)` into every consumer it can fuse
  with, so each block's residual sum recomputed the stream from the layer's first block (23
  blocks deep in ResNet-101's layer3: quadratic in the depth; BENCHMARKS.md, train step). A
  select reads two full-size operands, which XLA does not duplicate into a fusion when another
  consumer (the next block's 1x1 convolution) needs it materialized: each block's output is
  computed once. Bottleneck blocks (ResNet-50/101/152) end with it; basic blocks (ResNet-18/34,
  the shapes configs') keep `nn.relu`, so those runs compute to the bit what they did (the
  select changes the rounding of a fused training step, by about 1e-5).
  """
  return jnp.where(x <= 0, 0, x)


def _shortcut(x, channels, stride, dtype, norm, conv_impl):
  """Identity, or torchvision's `downsample` (1x1 conv + BN) when the shape changes."""
  if stride == 1 and x.shape[-1] == channels:
    return x
  x = conv2d(channels, 1, stride, dtype=dtype, conv_impl=conv_impl, name='downsample_conv')(x)
  return norm(name='downsample_bn')(x)


class BasicBlock(nn.Module):
  """ResNet-18/34 block: two 3x3 convs, both at the block's dilation."""
  channels: int
  stride: int
  dilation: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  expansion = 1

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(conv2d, self.channels, 3, dilation=self.dilation, dtype=self.dtype,
                             conv_impl=self.conv_impl)
    y = nn.relu(self.norm(name='bn1')(conv(self.stride, name='conv1')(x)))
    y = self.norm(name='bn2')(conv(1, name='conv2')(y))
    return nn.relu(y + _shortcut(x, self.channels, self.stride, self.dtype, self.norm,
                                 self.conv_impl))


class Bottleneck(nn.Module):
  """ResNet-50/101/152 block, v1.5: the stride and the dilation are on the 3x3 conv."""
  channels: int
  stride: int
  dilation: int
  norm: Callable[..., nn.Module]
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.channels * self.expansion
    conv = functools.partial(conv2d, dtype=self.dtype, conv_impl=self.conv_impl)
    y = nn.relu(self.norm(name='bn1')(conv(self.channels, 1, name='conv1')(x)))
    y = conv(self.channels, 3, self.stride, self.dilation, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.norm(name='bn3')(conv(out, 1, name='conv3')(y))
    return residual_relu(y + _shortcut(x, out, self.stride, self.dtype, self.norm,
                                       self.conv_impl))


class ResNet(nn.Module):
  """ResNet backbone returning {'stem', 'layer1'..'layer4'}, as `rwsjax.models.backbone`
  describes (RWS's F_1..F_4 are the layers).

  `stem` is the conv1-bn1-relu output (stride 2, before max pooling); each layer's output goes
  through `backbone.layer_output`. `init` returns 'params', 'batch_stats' and 'perturbations'
  (zeros shaped like the init batch's features): training keeps only 'params' and
  'batch_stats'.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    output_stride: 8 or 16 (docs/methods.md layer strides and dilations).
    width: multiplier of every channel count (base 64); < 1 gives tiny CPU variants.
    frozen_bn: BatchNorm always uses (and never updates) its running statistics; its scale
      and bias stay trainable.
    dtype: computation dtype; parameters stay float32.
    conv_impl: how convolutions are computed, 'auto', 'lax' or 'matmul'
      (`rwsjax.models.conv`; the same parameters and, up to float rounding, results).
  """
  depth: int = 50
  output_stride: int = 8
  width: float = 1.0
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, *, train=False, layer_hook=None):
    if self.depth not in RESNET_SPECS:
      raise ValueError(f'ResNet depth {self.depth} is not one of {sorted(RESNET_SPECS)}.')
    if self.output_stride not in STAGE_GEOMETRY:
      raise ValueError(
          f'ResNet output_stride {self.output_stride} is not one of {sorted(STAGE_GEOMETRY)}.')
    kind, blocks_per_layer = RESNET_SPECS[self.depth]
    block = BasicBlock if kind == 'basic' else Bottleneck
    norm = functools.partial(nn.BatchNorm, use_running_average=self.frozen_bn or not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype)
    x = conv2d(scaled_channels(64, self.width), 7, 2, dtype=self.dtype,
               conv_impl=self.conv_impl, name='conv1')(x.astype(self.dtype))
    x = nn.relu(norm(name='bn1')(x))
    features = {'stem': x}
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    plans = block_plan(self.output_stride, blocks_per_layer)
    for layer, (name, plan) in enumerate(zip(LAYER_NAMES, plans)):
      channels = scaled_channels(64 * 2**layer, self.width)
      for index, (stride, dilation) in enumerate(plan):
        x = block(channels, stride, dilation, norm, self.dtype, self.conv_impl,
                  name=f'{name}_{index}')(x)
      x = layer_output(self, name, x, layer_hook)
      features[name] = x
    return features
