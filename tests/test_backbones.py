"""The backbone contract (rwsjax.models.backbone): a toy backbone registered by name builds
under every head, meets the strides it registers, and carries a :smoke RWS run end to end,
started from the command line with `--imports`."""
import importlib
import json
import os

import jax
import jax.numpy as jnp
import pytest

from configs_util import ROOT, load_config
from rwsjax import models
from rwsjax import train
from rwsjax.rws import pipeline as rws_pipeline
from rwsjax.rws import segcam
from test_launch import launch

TOY_PARAMS = {'stem', 'conv_layer1', 'conv_layer2', 'conv_layer3', 'conv_layer4'}


@pytest.fixture
def toy():
  """The module that registers config.model.backbone='toy' (an import registers it)."""
  return importlib.import_module('toy_backbone')


@pytest.mark.parametrize('head', sorted(models.HEADS))
def test_toy_backbone_meets_its_registered_strides_under_every_head(toy, head):
  cfg = {'name': head, 'backbone': 'toy', 'head_channels': 8}
  model = models.make_model(cfg, 3)
  images = jnp.zeros((2, 32, 48, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  logits, features = jax.eval_shape(
      lambda v: model.apply(v, images, return_features=True), variables)
  assert logits.shape == (2, 32, 48, 3)
  assert {name: 32 // features[name].shape[1] for name in models.LAYER_NAMES} == toy.STRIDES
  assert {name: 48 // features[name].shape[2] for name in models.LAYER_NAMES} == toy.STRIDES
  assert models.feature_strides(cfg) == toy.STRIDES
  assert set(variables['params']['backbone']) == TOY_PARAMS


def test_seg_grad_cam_reaches_the_toy_backbones_layers(toy):
  model = models.make_model({'name': 'deeplabv3', 'backbone': 'toy', 'head_channels': 8}, 3)
  images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
  variables = model.init(jax.random.key(0), images)
  result = segcam.seg_grad_cam(model, variables, images, max_classes=2)
  assert set(result.heatmaps) == set(models.LAYER_NAMES)
  for name, stride in toy.STRIDES.items():
    assert result.features[name].shape[1:3] == (32 // stride, 32 // stride)
    assert result.heatmaps[name].shape[-2:] == (32, 32)


def test_smoke_rws_runs_on_a_backbone_registered_by_imports(toy, tmp_path):
  workdir = tmp_path / 'run'
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  result = launch('--config=configs/shapes_rws.py:smoke', f'--workdir={workdir}',
                  f'--config.dataset.data_dir={tmp_path / "tfds"}', '--config.model.backbone=toy',
                  '--imports=toy_backbone', '--compilation_cache=', timeout=600,
                  pythonpath=tests_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  assert summary['run']['config']['model']['backbone'] == 'toy'
  assert summary['rounds'][0]['trained']
  for key in ('stage1', 'baseline', 'rws_plain', 'rws_fused'):
    assert 0.0 <= summary[key]['miou'] <= 1.0, key
  config = load_config('shapes_rws', 'smoke')
  config.model.backbone = 'toy'
  network = rws_pipeline.finished_network(config, str(workdir),
                                          models.make_model(config.model, 7), train.make_mesh())
  for part in ('model', 'global', 'local'):
    assert set(network[part]['params']['backbone']) == TOY_PARAMS, part


def test_imports_names_a_module_that_does_not_import(tmp_path):
  result = launch('--config=configs/shapes_rws.py:smoke', f'--workdir={tmp_path}',
                  '--imports=no_such_module_here')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(
      'launch.py: --imports=no_such_module_here does not import:')


def readme_backbone_recipe():
  """The indented code of README's 'A new backbone' recipe."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  start = text.index('\n', text.index('**A new backbone.**'))
  lines, started = [], False
  for line in text[start:].splitlines():
    if line.startswith('    ') or (started and not line):
      started = True
      lines.append(line[4:])
    elif started:
      break
  return '\n'.join(lines)


def test_readme_backbone_recipe_registers_a_working_backbone():
  code = readme_backbone_recipe()
  assert 'register_backbone' in code
  exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  try:
    cfg = {'name': 'deeplabv3plus', 'backbone': 'mynet', 'head_channels': 8}
    model = models.make_model(cfg, 3)
    images = jnp.zeros((1, 32, 32, 3))
    _, features = jax.eval_shape(lambda v: model.apply(v, images, return_features=True),
                                 jax.eval_shape(model.init, jax.random.key(0), images))
    strides = {name: 32 // features[name].shape[1] for name in models.LAYER_NAMES}
    assert strides == models.feature_strides(cfg)
  finally:
    del models.BACKBONES['mynet']


def test_a_head_registered_by_name_builds_names_itself_and_declares_what_it_reads(monkeypatch):
  """`models.register_head`: a 1x1-conv head on layer4 is one call; make_model builds it, the
  final-model and CAM titles come from its registration, and an override of a model field it
  does not read is refused (`preflight.CONDITIONAL_FIELDS`)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from isimjax import models as cam_models  # pylint: disable=g-import-not-at-top
  from rwsjax import preflight  # pylint: disable=g-import-not-at-top

  class Linear(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, features, *, train=False):
      return nn.Conv(self.num_classes, (1, 1), name='logits')(features['layer4'])

  monkeypatch.setattr(models.registry, 'HEADS', dict(models.HEADS))
  monkeypatch.setattr(models, 'HEADS', models.registry.HEADS)
  models.register_head('linear', lambda cfg, k: Linear(k), 'Linear')
  cfg = {'name': 'linear', 'backbone': 'resnet18', 'width': 0.125}
  model = models.make_model(cfg, 3)
  images = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), images)
  assert set(variables['params']['head']) == {'logits'}
  layer4 = model.apply(variables, images, return_features=True)[1]['layer4']
  kernel = variables['params']['head']['logits']
  expected = jnp.einsum('nhwc,ck->nhwk', layer4, kernel['kernel'][0, 0]) + kernel['bias']
  assert jnp.allclose(model.apply(variables, images),
                      models.resize_bilinear(expected, (32, 32)), atol=1e-5)
  assert models.head(cfg).title == 'Linear'
  with pytest.raises(ValueError, match=r"'linear' has no CAM variant; expected one of "
                                       r"\['deeplabv3', 'deeplabv3plus', 'unet'\]"):
    cam_models.make_cam_model(cfg, 3)
  config = load_config('shapes_baseline')
  config.model.name = 'linear'
  with pytest.raises(preflight.UserInputError,
                     match="model.head_channels is read only with config.model.name='deeplabv3' "
                           "or 'deeplabv3plus' or 'unet'"):
    preflight.check_overrides(['model.head_channels'], {}, 'supervised', config)
  models.register_head('linear', lambda cfg, k: Linear(k), 'Linear', reads=('head_channels',),
                       cam_title='LinearCAM')
  preflight.check_overrides(['model.head_channels'], {}, 'supervised', config)
  assert cam_models.cam_title(cfg) == 'LinearCAM'
