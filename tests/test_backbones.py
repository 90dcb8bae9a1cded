"""The backbone contract (rwsjax.models.backbone): a toy backbone registered by name builds
under every head, meets the strides it registers, and carries a :smoke RWS run end to end."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs_util import load_config
from rwsjax import models
from rwsjax import train
from rwsjax.rws import pipeline as rws_pipeline
from rwsjax.rws import segcam

TOY_STRIDES = {'layer1': 4, 'layer2': 8, 'layer3': 8, 'layer4': 8}
TOY_PARAMS = {'stem', 'conv_layer1', 'conv_layer2', 'conv_layer3', 'conv_layer4'}


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


@pytest.fixture
def toy():
  """config.model.backbone='toy' while the test runs."""
  models.register_backbone('toy', lambda cfg: ToyBackbone(dtype=models.compute_dtype(cfg)),
                           lambda cfg: TOY_STRIDES)
  yield 'toy'
  del models.BACKBONES['toy']


@pytest.mark.parametrize('head', models.HEAD_NAMES)
def test_toy_backbone_meets_its_registered_strides_under_every_head(toy, head):
  cfg = {'name': head, 'backbone': toy, 'head_channels': 8}
  model = models.make_model(cfg, 3)
  images = jnp.zeros((2, 32, 48, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  logits, features = jax.eval_shape(
      lambda v: model.apply(v, images, return_features=True), variables)
  assert logits.shape == (2, 32, 48, 3)
  assert {name: 32 // features[name].shape[1] for name in models.LAYER_NAMES} == TOY_STRIDES
  assert {name: 48 // features[name].shape[2] for name in models.LAYER_NAMES} == TOY_STRIDES
  assert models.feature_strides(cfg) == TOY_STRIDES
  assert set(variables['params']['backbone']) == TOY_PARAMS


def test_seg_grad_cam_reaches_the_toy_backbones_layers(toy):
  model = models.make_model({'name': 'deeplabv3', 'backbone': toy, 'head_channels': 8}, 3)
  images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
  variables = model.init(jax.random.key(0), images)
  result = segcam.seg_grad_cam(model, variables, images, max_classes=2)
  assert set(result.heatmaps) == set(models.LAYER_NAMES)
  for name, stride in TOY_STRIDES.items():
    assert result.features[name].shape[1:3] == (32 // stride, 32 // stride)
    assert result.heatmaps[name].shape[-2:] == (32, 32)


def test_smoke_rws_runs_on_a_registered_toy_backbone(toy, tmp_path):
  config = load_config('shapes_rws', 'smoke')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.model.backbone = toy
  summary = rws_pipeline.run(config, str(tmp_path / 'run'))
  assert summary['rounds'][0]['trained']
  for key in ('stage1', 'baseline', 'rws_plain', 'rws_fused'):
    assert 0.0 <= summary[key]['miou'] <= 1.0, key
  network = rws_pipeline.finished_network(config, str(tmp_path / 'run'),
                                          models.make_model(config.model, 7), train.make_mesh())
  for part in ('model', 'global', 'local'):
    assert set(network[part]['params']['backbone']) == TOY_PARAMS, part
