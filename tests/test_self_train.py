"""ISIM self-training: schedule rules, optimizer groups, and the resumable round loop on a toy
DeepLabCAM-shaped model."""
import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isimjax import cam
from isimjax import config as isim_config
from isimjax import models
from isimjax import self_train
from rwsjax import parts
from rwsjax import train
from rwsjax.progress import MetricWriter

NUM_CLASSES = 3
SIZE = 16


class ToyBackbone(nn.Module):
  """A stride-8 conv with BatchNorm: 'layer4' of size ceil(h / 8), as the dilated ResNets."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=8, padding='SAME')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return {'layer4': nn.relu(x)}


class ToyHead(nn.Module):

  @nn.compact
  def __call__(self, features, train=False):
    return nn.Conv(NUM_CLASSES, (1, 1))(features['layer4'])


def toy_model():
  return models.CamSegmenter(ToyBackbone(), ToyHead(), NUM_CLASSES)


def toy_config(**isim):
  config = isim_config.shrink_for_smoke(isim_config.isim_config())
  config.input.crop_size = (SIZE, SIZE)
  config.input.batch_size = 4
  config.train.checkpoint_every = 1
  config.isim.update(isim)
  return config


def toy_source(count=8):
  """In-memory examples: a bright square of class 1 or 2 on a dark background."""
  rng = np.random.default_rng(0)
  examples = []
  for i in range(count):
    cls = 1 + i % 2
    image = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    seg = np.zeros((SIZE, SIZE, 1), np.uint8)
    y, x = rng.integers(0, SIZE - 6, 2)
    image[y:y + 6, x:x + 6] = 200 if cls == 1 else 120
    seg[y:y + 6, x:x + 6] = cls
    examples.append({'image': image, 'segmentation': seg,
                     'labels': np.arange(1, NUM_CLASSES) == cls})
  return examples


def test_regeneration_epochs():
  assert self_train.regeneration_epochs(50, 5, 10) == [5, 15, 25, 35, 45]
  assert self_train.regeneration_epochs(12, 3, 3) == [3, 6, 9]
  assert self_train.regeneration_epochs(5, 5, 10) == []
  with pytest.raises(ValueError, match='first_regen_epoch=0'):
    self_train.regeneration_epochs(10, 0, 2)


def test_plateau_rule_on_hand_made_losses():
  # Relative improvements over the running minimum: 0.5, 0.02, 0.0102..., then a rise.
  losses = [2.0, 1.0, 0.98, 0.97, 1.1]
  assert not self_train.plateaued(losses[:2], tol=0.05, patience=1)
  assert self_train.plateaued(losses[:3], tol=0.05, patience=1)
  assert not self_train.plateaued(losses[:3], tol=0.05, patience=2)
  assert self_train.plateaued(losses[:4], tol=0.05, patience=2)
  assert not self_train.plateaued(losses[:4], tol=0.01, patience=2)
  assert self_train.plateaued(losses, tol=0.0, patience=1)
  assert not self_train.plateaued([1.0], tol=0.5, patience=1)


def test_epoch_mean_losses_weight_rows_by_steps(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [(2, 'isim', 4.0), (3, 'isim', 1.0), (3, 'other', 100.0), (4, 'isim', 2.0),
          (6, 'isim', 3.0)]
  path.write_text(''.join(json.dumps({'step': s, 'stage': st, 'loss': l}) + '\n'
                          for s, st, l in rows))
  # Two steps per epoch: epoch 1 = steps 1-2, epoch 2 = steps 3-4, epoch 3 = steps 5-6.
  assert self_train.epoch_mean_losses(str(path), 'isim', 2, 1, 3) == [4.0, 1.5, 3.0]
  with pytest.raises(ValueError, match='epoch 4'):
    self_train.epoch_mean_losses(str(path), 'isim', 2, 1, 4)


def test_each_parameter_gets_the_learning_rate_of_its_part():
  config = toy_config(lr_encoder=0.1, lr_decoder=0.01, lr_classifier=1.0)
  config.train.optimizer = 'sgd'
  config.train.momentum = 0.0
  config.train.weight_decay = 0.0
  params = train.random_variables(toy_model(), (1, SIZE, SIZE, 3), jax.random.key(0))['params']
  tx = self_train.make_optimizer(config, total_steps=10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = {'backbone': -0.1, 'head': -0.01, 'classifier': -1.0}
  flat = flax.traverse_util.flatten_dict(updates)
  assert {path[0] for path in flat} == set(expected)
  for path, update in flat.items():
    np.testing.assert_allclose(update, expected[path[0]], rtol=1e-6, err_msg=str(path))


def test_unknown_parameter_part_is_rejected():
  with pytest.raises(ValueError, match="'decoder2'"):
    self_train.param_groups({'backbone': {}, 'decoder2': {}})


class Harness:
  """Runs `self_train` on the toy model and source in `workdir`."""

  def __init__(self, config):
    self.config = config
    self.model = toy_model()
    self.source = parts.Part(toy_source(), 0, 8)
    self.mesh = train.make_mesh()
    self.variables = train.random_variables(self.model, (1, SIZE, SIZE, 3), jax.random.key(0))
    self.cams = cam.CamExtractor(self.model, config.input, scales=(1.0, 0.5), flip=True,
                                 stride=8, batch_size=4)

  def run(self, workdir, cams='default', on_round=None):
    return self_train.self_train(
        self.config, str(workdir), stage='isim', model=self.model, variables=self.variables,
        train_source=self.source, mesh=self.mesh, rng=jax.random.key(1),
        writer=MetricWriter(str(workdir / 'metrics.jsonl')),
        cams=self.cams if cams == 'default' else cams, on_round=on_round)

  def labels(self, record):
    store = self_train.label_store(record['directory'], self.source)
    assert store.complete
    return np.stack([store[i] for i in range(len(self.source))])


@pytest.fixture(scope='module')
def harness():
  return Harness(toy_config(epochs=3, first_regen_epoch=1, regen_every=1))


@pytest.fixture(scope='module')
def uninterrupted(harness, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('full')
  state, rounds = harness.run(workdir)
  return workdir, state, rounds


def test_rounds_follow_the_fixed_schedule(harness, uninterrupted):
  workdir, state, rounds = uninterrupted
  assert int(state.step) == 3 * 2
  assert [(r['round'], r['epoch']) for r in rounds] == [(1, 1), (2, 2)]
  assert json.loads((workdir / 'isim' / 'rounds.json').read_text())['rounds'] == rounds
  for record in rounds:
    labels = harness.labels(record)
    assert labels.shape == (8, SIZE, SIZE) and labels.max() < NUM_CLASSES
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  with_seg = {r['step']: 'seg_loss' in r for r in rows}
  assert with_seg == {1: False, 2: False, 3: True, 4: True, 5: True, 6: True}


class Killed(Exception):
  pass


class FailingCams:
  """A CamExtractor whose bound cam_fn raises on call number `fail_at` (a kill mid-round)."""

  def __init__(self, cams, fail_at):
    self.cams, self.fail_at, self.calls = cams, fail_at, 0

  def bind(self, variables):
    bound = self.cams.bind(variables)

    def cam_fn(images, labels):
      self.calls += 1
      if self.calls == self.fail_at:
        raise Killed()
      return bound(images, labels)
    return cam_fn


def test_kills_between_and_inside_rounds_resume_to_the_same_run(harness, uninterrupted,
                                                                tmp_path):
  _, full_state, full_rounds = uninterrupted

  def kill_after_round(record, state):
    raise Killed()

  with pytest.raises(Killed):
    harness.run(tmp_path, on_round=kill_after_round)
  # Round 1 is complete; the rerun trains epoch 2, then dies in round 2 at its second batch.
  failing = FailingCams(harness.cams, fail_at=2)
  with pytest.raises(Killed):
    harness.run(tmp_path, cams=failing)
  partial = self_train.label_store(self_train.round_directory(str(tmp_path), 'isim', 2),
                                   harness.source)
  assert 0 < partial.written().size < 8
  state, rounds = harness.run(tmp_path)
  assert [r['epoch'] for r in rounds] == [r['epoch'] for r in full_rounds]
  for resumed, full in zip(rounds, full_rounds):
    np.testing.assert_array_equal(harness.labels(resumed), harness.labels(full))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state.params,
               full_state.params)


def test_converge_regenerates_when_the_loss_stalls(harness, tmp_path, monkeypatch):
  scripted = {2: 1.0, 3: 0.5, 4: 0.49, 5: 0.3}
  monkeypatch.setattr(self_train, 'epoch_mean_losses',
                      lambda path, stage, per_epoch, first, last:
                      [scripted[e] for e in range(first, last + 1)])
  converge = Harness(toy_config(epochs=6, first_regen_epoch=1, regen='converge',
                                converge_tol=0.1, converge_patience=1))
  converge.cams = harness.cams
  _, rounds = converge.run(tmp_path)
  # Epoch 2: one loss, not enough; epoch 3 improved by 50%; epoch 4 by 2% < 10%: round 2.
  assert [r['epoch'] for r in rounds] == [1, 4]


def test_classification_only_run_has_no_rounds(harness, tmp_path):
  state, rounds = harness.run(tmp_path, cams=None)
  assert rounds == [] and int(state.step) == 6
  assert not (tmp_path / 'isim' / 'pseudo').exists()


def test_examples_in_size_order_fill_whole_batches():
  shapes = [(4, 5), (6, 5), (4, 5), (4, 5), (6, 5), (4, 6)]
  source = [{'image': np.full((*s, 3), i, np.uint8), 'labels': np.array([i % 2, 1], bool)}
            for i, s in enumerate(shapes)]
  sizes = self_train.image_sizes(source)
  np.testing.assert_array_equal(sizes, shapes)
  order = self_train.size_order(np.array([5, 4, 3, 2, 1, 0]), sizes)
  np.testing.assert_array_equal(order, [3, 2, 0, 5, 4, 1])
  batches = list(self_train.example_batches(source, order, 2))
  assert [b[0].tolist() for b in batches] == [[3, 2], [0], [5], [4, 1]]
  indices, images, labels = batches[0]
  assert images.shape == (2, 4, 5, 3) and images[0, 0, 0, 0] == 3
  np.testing.assert_array_equal(labels, [[1, 1], [0, 1]])
