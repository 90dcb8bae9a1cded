"""The pretraining pipeline (rwsjax.pretrain): the exported backbone is the trained one under
torchvision's names, the `:smoke` config runs through launch.py and resumes after a kill, and
the shapes configs' `pretrained` argument changes only what it should."""
import json
import os

import jax
import numpy as np
import pytest

from configs_util import ROOT, load_config
from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import models
from rwsjax import preflight
from rwsjax import pretrain
from rwsjax import train
from rwsjax.data import corpus
from rwsjax.data import pipeline
from test_launch import launch, last_line
from test_pretrained import np_resnet, torchvision_shapes

WIDTH = 0.125
C = len(corpus.CLASSES)


def variables_like(model, shape, seed=None):
  """{'params', 'batch_stats'} of `model` on images of `shape`: their structure only (no
  initialisation), or with `seed` random values in every leaf, BatchNorm statistics and
  scales included (He-scaled kernels, variances and scales U(0.5, 1.5), the rest N(0, 0.1)),
  so that no value of an export can come out right by chance."""
  abstract = jax.eval_shape(lambda key: train.random_variables(model, shape, key),
                            jax.random.key(0))
  if seed is None:
    return abstract
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('var', 'scale'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == 'kernel':
      value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    else:
      value = rng.normal(0, 0.1, leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize('backbone', ('resnet18', 'resnet50'))
def test_export_is_the_trained_backbone_under_torchvision_names(tmp_path, backbone):
  """The oracle: `load_pretrained_backbone` of the exported file into a fresh backbone gives
  exactly the layer1..layer4 outputs of the classifier's own backbone, the keys and shapes are
  those of torchvision's resnet state dict (the independent table of test_pretrained, fc with
  the corpus's classes), and a NumPy torchvision forward pass of the file agrees."""
  cfg = {'backbone': backbone, 'width': WIDTH, 'output_stride': 16}
  model = pretrain.Classifier(models.make_backbone(cfg), len(corpus.CLASSES))
  variables = variables_like(model, (1, 32, 32, 3), seed=int(backbone[6:]))
  path = str(tmp_path / config_lib.EXPORT_NAME)
  record = pretrain.export_backbone(variables, path, steps=7)
  with np.load(path) as archive:
    state = {k: archive[k] for k in archive.files}
  expected = torchvision_shapes(int(backbone[6:]), WIDTH)
  expected['fc.weight'] = (len(corpus.CLASSES), expected['fc.weight'][1])
  expected['fc.bias'] = (len(corpus.CLASSES),)
  assert {k: v.shape for k, v in state.items()} == expected
  assert record['keys'] == len(expected)
  assert all(int(v) == 7 for k, v in state.items() if k.endswith('num_batches_tracked'))
  np.testing.assert_array_equal(state['fc.weight'], variables['params']['fc']['kernel'].T)

  x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
  trained = model.apply(variables, x, method=lambda m, images: m.backbone(images))
  fresh = models.make_backbone(cfg)
  loaded = models.load_pretrained_backbone(variables_like(fresh, x.shape), path, cfg, scope=())
  outputs = fresh.apply(loaded, x)
  oracle = np_resnet(x.transpose(0, 3, 1, 2).astype(np.float64), state, int(backbone[6:]), 16)
  for name in models.LAYER_NAMES:
    np.testing.assert_array_equal(np.asarray(outputs[name]), np.asarray(trained[name]))
    scale = np.abs(oracle[name]).max()
    np.testing.assert_allclose(np.asarray(trained[name]).transpose(0, 3, 1, 2), oracle[name],
                               rtol=1e-4, atol=1e-4 * scale)


def smoke_config(data_dir):
  config = load_config('shapes_pretrain', 'smoke')
  config.dataset.data_dir = str(data_dir)
  return config


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  """The `:smoke` config run through launch.py: (workdir, data_dir)."""
  root = tmp_path_factory.mktemp('pretrain')
  result = launch('--config=configs/shapes_pretrain.py:smoke', f"--workdir={root / 'run'}",
                  f"--config.dataset.data_dir={root / 'tfds'}")
  assert result.returncode == 0, result.stderr[-3000:]
  return root / 'run', root / 'tfds'


def read_state(path):
  with np.load(path) as archive:
    return {k: archive[k] for k in archive.files}


def test_smoke_run_writes_the_trained_backbone(smoke_run):
  """launch.py runs the pipeline to its end: summary.json records the held-out accuracy, which
  a loop classifying the held-out images one by one with the finished checkpoint reproduces
  (the padded last batch included), and the exported file, which holds that checkpoint's
  backbone and loads into the backbone of every shapes config's `:smoke,pretrained` variant,
  as their preflight checks."""
  workdir, data_dir = smoke_run
  summary = json.load(open(workdir / 'summary.json'))
  result = summary['validation']
  assert summary['method'] == 'pretrain' and summary['steps'] == 2
  assert result['examples'] == len(corpus.CLASSES)
  assert 0 <= result['top1'] <= 1 and set(result['per_class_accuracy']) == set(corpus.CLASSES)
  assert summary['backbone']['path'] == str(workdir / config_lib.EXPORT_NAME)
  config = smoke_config(data_dir)
  model = pretrain.make_classifier(config)
  variables = train.finished_variables(
      workdir=str(workdir), stage='pretrain', model=model,
      tx=train.make_optimizer(config.train, 2), total_steps=2, image_shape=(1, 32, 32, 3),
      rng=jax.random.key(0), mesh=train.make_mesh())
  source = data.load_source(config.dataset, 'validation', per_process=False)
  apply = jax.jit(model.apply)
  correct = [int(np.argmax(apply(variables, pipeline.normalize(source[i]['image'],
                                                                config.input)[None])))
             == int(np.argmax(source[i]['labels'])) for i in range(len(source))]
  assert result['top1'] == pytest.approx(np.mean(correct))
  for c, name in enumerate(corpus.CLASSES):  # example i has class i % C
    assert result['per_class_accuracy'][name] == pytest.approx(np.mean(correct[c::C]))
  state = read_state(workdir / config_lib.EXPORT_NAME)
  exported = models.backbone_state_dict(variables, num_batches_tracked=2)
  assert set(state) == set(exported) | {'fc.weight', 'fc.bias'}
  for key, value in exported.items():
    np.testing.assert_array_equal(state[key], value)
  for name in ('shapes_baseline', 'shapes_rws', 'shapes_isim', 'shapes_fine_rws',
               'shapes_texture_rws'):
    target = load_config(name, 'smoke,pretrained')
    target.model.pretrained = str(workdir / config_lib.EXPORT_NAME)
    preflight.check_pretrained(target.model)


def test_launch_refuses_evaluate_and_a_wrong_config_word_with_one_sentence(smoke_run):
  workdir, data_dir = smoke_run
  result = launch('--config=configs/shapes_rws.py:smoke,pretrainde', f'--workdir={workdir}',
                  timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert last_line(result.stderr) == (
      "launch.py: cannot load the --config file: ValueError: The config argument "
      "'smoke,pretrainde' holds 'pretrainde'; expected comma-separated words of ['smoke', "
      "'pretrained'].")
  result = launch('--config=configs/shapes_pretrain.py:smoke', f'--workdir={workdir}',
                  f'--config.dataset.data_dir={data_dir}', '--mode=evaluate', timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert last_line(result.stderr).startswith(
      'launch.py: --mode=evaluate uses a finished segmentation model, which the pretrain '
      'pipeline does not make: it trains a classifier for the backbone weights it exports to '
      '<workdir>/backbone.npz')


def metric_steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f]


def test_a_killed_run_resumes_and_ends_as_the_uninterrupted_one(smoke_run, tmp_path,
                                                                 monkeypatch):
  """Killed after the checkpoint of step 1, the rerun restores it and ends with the backbone
  file and accuracy of the uninterrupted launch.py run (same config and data, and one device
  as launch.py has: the tests' four devices would reduce in another order)."""
  full, data_dir = smoke_run
  config = smoke_config(data_dir)
  config.train.checkpoint_every = 1
  config.num_devices = 1
  save = train.Checkpointer.save

  def save_then_kill(self, step, state):
    save(self, step, state)
    if step == 1:
      raise KeyboardInterrupt('killed')

  monkeypatch.setattr(train.Checkpointer, 'save', save_then_kill)
  with pytest.raises(KeyboardInterrupt):
    pretrain.run(config, str(tmp_path))
  monkeypatch.undo()
  assert metric_steps(tmp_path) == [1] and not os.path.exists(tmp_path / config_lib.EXPORT_NAME)
  summary = pretrain.run(config, str(tmp_path))
  assert metric_steps(tmp_path) == [1, 2]
  resumed, uninterrupted = (read_state(d / config_lib.EXPORT_NAME) for d in (tmp_path, full))
  assert set(resumed) == set(uninterrupted)
  for key, value in uninterrupted.items():
    np.testing.assert_array_equal(resumed[key], value)
  full_summary = json.load(open(full / 'summary.json'))
  assert summary['validation']['top1'] == full_summary['validation']['top1']


def test_accuracy_summary_of_a_hand_computed_confusion_matrix():
  """Rows are the true classes: 7 of 10 right; class b has no example (None, and out of the
  mean class accuracy)."""
  result = pretrain.accuracy_summary([[3, 1, 0], [0, 0, 0], [2, 0, 4]], ['a', 'b', 'c'])
  assert result == {'top1': 0.7, 'mean_class_accuracy': pytest.approx((3 / 4 + 4 / 6) / 2),
                    'examples': 10,
                    'per_class_accuracy': {'a': 0.75, 'b': None, 'c': pytest.approx(4 / 6)}}


def test_the_pipeline_refuses_what_it_does_not_read():
  config = load_config('shapes_pretrain', 'smoke')
  with pytest.raises(preflight.UserInputError, match=r'--config.dataset.shapes.num_train is not '
                                                     r'read by the pretrain pipeline: set '
                                                     r'config.dataset.corpus instead'):
    preflight.check_overrides(['dataset.shapes.num_train'], pretrain.UNREAD_FIELDS, 'pretrain',
                              config)
  with pytest.raises(preflight.UserInputError, match='--config.model.head_channels is not read'):
    preflight.check_overrides(['model.head_channels'], pretrain.UNREAD_FIELDS, 'pretrain', config)
  config.dataset.name = 'shapes'
  with pytest.raises(ValueError, match="config.dataset.name='shapes'; the pretrain pipeline"):
    pretrain.check_config(config)
  assert load_config('shapes_pretrain').dataset.num_classes == len(corpus.CLASSES) + 1
  with pytest.raises(ValueError, match="holds 'pretrained'; expected comma-separated words"):
    load_config('shapes_pretrain', 'pretrained')


def flat(config):
  """{'a.b': leaf} of a config's JSON."""
  def walk(value, prefix):
    if not isinstance(value, dict):
      return {prefix: value}
    return {k: v for key, item in value.items() for k, v in walk(item, f'{prefix}{key}.').items()}
  return {k.rstrip('.'): v for k, v in walk(json.loads(json.dumps(config.to_dict())), '').items()}


def differing(a, b):
  fa, fb = flat(a), flat(b)
  return {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize('name', ('shapes_baseline', 'shapes_rws', 'shapes_isim',
                                  'shapes_fine_rws', 'shapes_texture_rws'))
def test_the_pretrained_variant_differs_only_in_the_intended_fields(name):
  """`pretrained` sets config.model.pretrained to the pretraining command's export (ISIM's
  AffinityNet and final model follow it, and AffinityNet starts from it: psa.init
  'imagenet'); with `smoke` it also keeps the width the weights have."""
  weights = os.path.join(ROOT, 'runs', 'shapes_pretrain', 'backbone.npz')
  isim = name == 'shapes_isim'
  models_ = ['model', 'psa.affinity.model', 'psa.final.model'] if isim else ['model']
  for arg, base, extra in (('pretrained', None, []), ('smoke,pretrained', 'smoke', ['width'])):
    variant = load_config(name, arg)
    assert differing(load_config(name, base), variant) == (
        {f'{m}.{key}' for m in models_ for key in ['pretrained', *extra]}
        | ({'psa.init'} if isim else set()))
    assert flat(variant)['model.pretrained'] == weights == config_lib.pretrained_backbone(
        os.path.join(ROOT, 'configs', f'{name}.py'))
    assert flat(variant)['model.width'] == 0.25
    if isim:
      assert variant.psa.init == 'imagenet' and load_config(name).psa.init == 'isim'
  assert not differing(load_config(name, 'pretrained,smoke'), load_config(name, 'smoke,pretrained'))
  with pytest.raises(ValueError, match="holds 'pretrain'; expected comma-separated words of "
                                       r"\['smoke', 'pretrained'\]"):
    load_config(name, 'smoke,pretrain')
