"""A backbone of one's own, registered as 'toy' when imported: README's recipe (Extending),
used by tests/test_backbones.py in process and through `launch.py --imports=toy_backbone`."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from rwsjax import models

STRIDES = {'layer1': 4, 'layer2': 8, 'layer3': 8, 'layer4': 8}


class ToyBackbone(nn.Module):
  """Strided 3x3 convolutions: the smallest module that meets the backbone contract."""
  channels: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train=False, layer_hook=None):
    del train
    conv = lambda stride, name: nn.Conv(self.channels, (3, 3), strides=stride, dtype=self.dtype,
                                        name=name)
    x = nn.relu(conv(2, 'stem')(images))
    features = {'stem': x}
    for name, stride in zip(models.LAYER_NAMES, (2, 2, 1, 1)):
      x = nn.relu(conv(stride, f'conv_{name}')(x))
      features[name] = models.layer_output(self, name, x, layer_hook)
    return features


models.register_backbone('toy', lambda cfg: ToyBackbone(dtype=models.compute_dtype(cfg)),
                         lambda cfg: STRIDES)
