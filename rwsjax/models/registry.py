"""SegmentationModel, and the backbones and heads registered by name, built from config.model
(docs/design.md: models).

Fields a partial config.model (a dict in a test or a benchmark) leaves out take their
`rwsjax.config.base_config` defaults (`rwsjax.config.field`).
"""
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from rwsjax import config as config_lib
from rwsjax.models import heads
from rwsjax.models.backbone import LAYER_NAMES
from rwsjax.models.resnet import RESNET_SPECS, STAGE_GEOMETRY, STEM_STRIDE, ResNet

# Output stride -> DeepLabv3 ASPP rates (docs/methods.md).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class SegmentationModel(nn.Module):
  """Backbone + head; logits (N, H, W, K) float32, bilinearly upsampled to the input size.

  Parameters live under 'params'/'backbone' and 'params'/'head' (and likewise 'batch_stats'),
  so optimisers can give each part its own learning rate. `init` also returns the backbone's
  'perturbations' collection (see `ResNet`): training keeps only 'params' and 'batch_stats'.
  Gradients of a score w.r.t. {'perturbations': {'backbone': {'layer1': zeros, ...}}} passed
  to `apply` are the gradients w.r.t. the (post-hook) layer outputs.
  """
  backbone: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, images, *, train=False, layer_hook=None, return_features=False):
    """Logits, or (logits, features) with the backbone's dict of post-hook layer outputs."""
    features = self.backbone(images, train=train, layer_hook=layer_hook)
    logits = self.head(features, train=train).astype(jnp.float32)
    logits = heads.resize_bilinear(logits, images.shape[1:3])
    return (logits, features) if return_features else logits


class Backbone(NamedTuple):
  """A registered backbone: `build(model_cfg)` returns the module (`rwsjax.models.backbone`
  says what it returns); `strides(model_cfg)` maps 'layer1'..'layer4' to their strides with
  respect to the input under that config."""
  build: Callable[[Any], nn.Module]
  strides: Callable[[Any], dict]


BACKBONES = {}  # config.model.backbone -> Backbone


def register_backbone(name, build, strides):
  """Makes config.model.backbone=`name` build `build(model_cfg)` with layer strides
  `strides(model_cfg)` (a dict over `LAYER_NAMES`); a later registration of `name` replaces
  the earlier one."""
  BACKBONES[name] = Backbone(build, strides)


def _field(model_cfg, key):
  return config_lib.field(model_cfg, 'model', key)


def _switch(model_cfg, key):
  """config.model.<key>, checked against the values `rwsjax.config.MODEL_FIELDS` declares."""
  return config_lib.switch(model_cfg, config_lib.MODEL_FIELDS, 'model', key)


def _positive(model_cfg, key, integer):
  """config.model.<key>, checked to be a positive number (an int if `integer`)."""
  value = _field(model_cfg, key)
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    expected = 'positive integer' if integer else 'positive number'
    raise ValueError(f'config.model.{key}={value!r} must be a {expected}.')
  return value


def _registered(model_cfg):
  """The `Backbone` registered as config.model.backbone."""
  name = _field(model_cfg, 'backbone')
  if name not in BACKBONES:
    raise ValueError(f'config.model.backbone={name!r} is not registered; registered: '
                     f'{list(BACKBONES)} (launch.py --imports names a module that registers '
                     'one of your own).')
  return BACKBONES[name]


def feature_strides(model_cfg):
  """Stride of 'layer1'..'layer4' w.r.t. the input under config.model (backbone,
  output_stride); for the ResNets 4, 8, then 8/8 (OS 8) or 16/16 (OS 16)."""
  return dict(_registered(model_cfg).strides(model_cfg))


def make_backbone(model_cfg):
  """The backbone registered as config.model.backbone, built from config.model."""
  return _registered(model_cfg).build(model_cfg)


def compute_dtype(model_cfg):
  """The computation dtype of config.model.dtype ('float32' or 'bfloat16')."""
  return DTYPES[_switch(model_cfg, 'dtype')]


def _resnet_strides(model_cfg):
  strides, _ = STAGE_GEOMETRY[_switch(model_cfg, 'output_stride')]
  out, total = {}, STEM_STRIDE
  for name, stride in zip(LAYER_NAMES, strides):
    total *= stride
    out[name] = total
  return out


def _resnet_builder(depth):
  """`Backbone.build` of ResNet-`depth` (config.model: output_stride, width, frozen_bn, dtype,
  conv_impl)."""
  def build(model_cfg):
    return ResNet(depth=depth,
                  output_stride=_switch(model_cfg, 'output_stride'),
                  width=_positive(model_cfg, 'width', integer=False),
                  frozen_bn=bool(_field(model_cfg, 'frozen_bn')), dtype=compute_dtype(model_cfg),
                  conv_impl=_switch(model_cfg, 'conv_impl'))
  return build


for _depth in RESNET_SPECS:
  register_backbone(f'resnet{_depth}', _resnet_builder(_depth), _resnet_strides)


class Head(NamedTuple):
  """A registered head: `build(model_cfg, num_classes)` returns the module (a dict of backbone
  features -> logits (N, h, w, K), `rwsjax.models.heads`); `title` names it in tables;
  `reads` lists the config.model fields its build reads besides dtype and conv_impl
  (`preflight` refuses an override of one it does not read); `cam_title`, when it has one,
  names its ISIM variant with a classification branch (DeepLabCAM), None when ISIM cannot
  use it."""
  build: Callable[[Any, int], nn.Module]
  title: str
  reads: tuple = ()
  cam_title: Any = None


HEADS = {}  # config.model.name -> Head


def register_head(name, build, title, reads=(), cam_title=None):
  """Makes config.model.name=`name` build `build(model_cfg, num_classes)` (`Head`); a later
  registration of `name` replaces the earlier one."""
  HEADS[name] = Head(build, title, tuple(reads), cam_title)


def head(model_cfg):
  """The `Head` registered as config.model.name."""
  return HEADS[config_lib.check_value(_field(model_cfg, 'name'), HEADS, 'config.model.name')]


def make_head(model_cfg, num_classes):
  """The head registered as config.model.name, built from config.model."""
  return head(model_cfg).build(model_cfg, num_classes)


def head_options(model_cfg):
  """(dtype, conv_impl) of config.model, checked: what every head of this module takes, and
  any other module built beside the backbone (ISIM's CAM branch, AffinityNet's embedding)."""
  return compute_dtype(model_cfg), _switch(model_cfg, 'conv_impl')


def _aspp_rates(model_cfg):
  """DeepLab's ASPP rates for config.model.output_stride."""
  return ASPP_RATES[_switch(model_cfg, 'output_stride')]


def _deeplabv3(model_cfg, num_classes):
  return heads.DeepLabV3Head(num_classes, _aspp_rates(model_cfg),
                             _positive(model_cfg, 'head_channels', integer=True),
                             *head_options(model_cfg))


def _deeplabv3plus(model_cfg, num_classes):
  channels = _positive(model_cfg, 'head_channels', integer=True)
  return heads.DeepLabV3PlusHead(num_classes, _aspp_rates(model_cfg), channels,
                                 max(1, channels * 48 // 256), *head_options(model_cfg))


def _fcn(model_cfg, num_classes):
  return heads.FCNHead(num_classes, *head_options(model_cfg))


def _unet(model_cfg, num_classes):
  channels = _positive(model_cfg, 'head_channels', integer=True)
  return heads.UNetHead(num_classes, tuple(max(1, channels >> i) for i in range(4)),
                        _switch(model_cfg, 'upsample'),
                        *head_options(model_cfg))


def _deeplabv2(model_cfg, num_classes):
  dtype, impl = head_options(model_cfg)
  return heads.DeepLabV2Head(num_classes, dtype=dtype, conv_impl=impl)


register_head('deeplabv3', _deeplabv3, 'DeepLabv3', ('head_channels', 'output_stride'),
              cam_title='DeepLabCAM')
register_head('deeplabv3plus', _deeplabv3plus, 'DeepLabv3+', ('head_channels', 'output_stride'),
              cam_title='DeepLabCAM')
register_head('fcn', _fcn, 'FCN')
register_head('unet', _unet, 'UNet', ('head_channels', 'upsample'), cam_title='UNetCAM')
register_head('deeplabv2', _deeplabv2, 'DeepLabv2')


def make_model(model_cfg: Any, num_classes: int) -> nn.Module:
  """SegmentationModel from config.model (ConfigDict or dict); see `make_backbone` and
  `make_head` for the fields. `pretrained` is not read here: the trainer loads it with
  `rwsjax.models.pretrained.load_pretrained_backbone`."""
  return SegmentationModel(make_backbone(model_cfg), make_head(model_cfg, num_classes))
