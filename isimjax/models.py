"""DeepLabCAM and UNetCAM: a segmentation network plus a classification branch on layer4
(docs/methods.md, ISIM step 1; paper Sec. 3.2, Figs. 2-3).

The parameter tree has three top-level parts, one per learning-rate group of ISIM step 5:
'backbone' (the encoder), 'head' (the decoder) and 'classifier' (the branch's 1x1 conv).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rwsjax import config as config_lib
from rwsjax import models
from rwsjax.models import resnet


class CamSegmenter(nn.Module):
  """Backbone + segmentation head + classification branch (global average pooling, then a
  1x1 conv to K-1 scores without bias).

  The branch's 1x1 conv is linear, so pooling then convolving equals convolving every layer4
  pixel then pooling: `class_maps` gives the per-pixel scores whose ReLU is the CAM
  (docs/methods.md, ISIM step 2) and whose spatial mean is the class logits.

  Attributes:
    backbone: a module returning the ResNet feature dict ('layer4' at least).
    head: a module mapping that dict to segmentation logits (N, h, w, K).
    num_classes: K, background included; the branch has K-1 outputs.
    conv_impl: how the branch's conv is computed (config.model.conv_impl, as the backbone's).
  """
  backbone: nn.Module
  head: nn.Module
  num_classes: int
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  def setup(self):
    self.classifier = resnet.conv2d(self.num_classes - 1, 1, dtype=self.dtype,
                                    kernel_init=nn.initializers.lecun_normal(),
                                    conv_impl=self.conv_impl, name='classifier')

  def class_maps(self, images, *, train=False):
    """Per-pixel class scores conv1x1(layer4) (N, h, w, K-1), float32, before the ReLU."""
    features = self.backbone(images, train=train)
    return self.classifier(features['layer4']).astype(jnp.float32)

  def classify(self, images, *, train=False):
    """Class logits (N, K-1) of the branch alone (the classification-only baseline)."""
    return jnp.mean(self.class_maps(images, train=train), axis=(1, 2))

  def __call__(self, images, *, train=False):
    """(segmentation logits (N, H, W, K) at the input size, class logits (N, K-1))."""
    features = self.backbone(images, train=train)
    logits = self.head(features, train=train).astype(jnp.float32)
    logits = models.resize_bilinear(logits, images.shape[1:3])
    maps = self.classifier(features['layer4']).astype(jnp.float32)
    return logits, jnp.mean(maps, axis=(1, 2))


def cam_title(model_cfg):
  """The name of the CAM variant of config.model.name's head (DeepLabCAM, UNetCAM:
  `models.register_head`'s `cam_title`); ValueError for a head without one."""
  title = models.head(model_cfg).cam_title
  if title is None:
    name = config_lib.field(model_cfg, 'model', 'name')
    with_cam = sorted(n for n, h in models.HEADS.items() if h.cam_title)
    raise ValueError(f'config.model.name={name!r} has no CAM variant; expected one of '
                     f'{with_cam} (a head registered with a cam_title).')
  return title


def make_cam_model(model_cfg, num_classes):
  """DeepLabCAM (config.model.name deeplabv3 | deeplabv3plus) or UNetCAM (unet, with
  config.model.upsample bilinear | learnable) from config.model; see
  `rwsjax.models.make_backbone` and `make_head` for the other fields."""
  cam_title(model_cfg)
  if num_classes < 2:
    raise ValueError(f'config.dataset.num_classes={num_classes}; a CAM model needs background '
                     'and at least one object class.')
  dtype, conv_impl = models.head_options(model_cfg)
  return CamSegmenter(models.make_backbone(model_cfg), models.make_head(model_cfg, num_classes),
                      num_classes, dtype=dtype, conv_impl=conv_impl)
