"""The trainer: data-parallel equivalence, kill-and-resume, non-finite loss, optimizer."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rwsjax import train


class TinySeg(nn.Module):
  """Conv + BatchNorm + 1x1 classifier: enough to exercise global BN statistics."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Conv(3, (1, 1))(nn.relu(x))


def train_cfg(**overrides):
  cfg = ml_collections.ConfigDict(dict(optimizer='sgd', lr=0.1, momentum=0.9, weight_decay=1e-4,
                                       poly_power=0.9, warmup_steps=0, log_every=1,
                                       checkpoint_every=2, max_to_keep=2))
  cfg.update(overrides)
  return cfg


def batches(batch_size=8):
  def factory(start):
    step = start
    while True:
      rng = np.random.default_rng(step)
      yield {'image': rng.normal(size=(batch_size, 6, 6, 3)).astype(np.float32),
             'segmentation': rng.integers(0, 3, size=(batch_size, 6, 6)).astype(np.int32)}
      step += 1
  return factory


def run(workdir, num_devices, total_steps, stop_at=None, stage='s', lr=0.1):
  model = TinySeg()
  mesh = train.make_mesh(num_devices)
  cfg = train_cfg(lr=lr)
  tx = train.make_optimizer(cfg, total_steps)
  variables = train.random_variables(model, (1, 6, 6, 3), jax.random.key(0))
  losses = []

  class Recorder:
    def write(self, step, stage=None, **scalars):
      losses.append((step, scalars['loss']))

    def truncate_after(self, step, stage=None):
      pass

  state = train.train_stage(workdir=str(workdir), stage=stage, loss_fn=train.supervised_loss(model),
                            tx=tx, variables=variables, batches=batches(),
                            total_steps=total_steps, train_cfg=cfg, mesh=mesh,
                            rng=jax.random.key(1), writer=Recorder(), stop_at=stop_at)
  return state, losses


def test_one_and_four_devices_give_the_same_losses(tmp_path):
  _, one = run(tmp_path / 'one', 1, 3)
  _, four = run(tmp_path / 'four', 4, 3)
  assert [s for s, _ in one] == [1, 2, 3]
  np.testing.assert_allclose([l for _, l in one], [l for _, l in four], rtol=0, atol=1e-5)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
  full, full_losses = run(tmp_path / 'full', 4, 4)
  first, _ = run(tmp_path / 'resumed', 4, 4, stop_at=2)
  assert int(first.step) == 2
  resumed, resumed_losses = run(tmp_path / 'resumed', 4, 4)
  assert [s for s, _ in resumed_losses] == [3, 4]
  np.testing.assert_allclose([l for _, l in resumed_losses], [l for _, l in full_losses[2:]],
                             atol=1e-6)
  for a, b in zip(jax.tree.leaves(full.variables), jax.tree.leaves(resumed.variables)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  again, again_losses = run(tmp_path / 'resumed', 4, 4)  # a finished stage is not redone
  assert int(again.step) == 4 and again_losses == []


def test_a_stage_of_no_steps_is_finished_with_the_variables_it_was_given(tmp_path):
  state, losses = run(tmp_path, 1, 0)
  assert int(state.step) == 0 and losses == []
  finished = train.finished_variables(
      workdir=str(tmp_path), stage='s', model=TinySeg(), tx=train.make_optimizer(train_cfg(), 0),
      total_steps=0, image_shape=(1, 6, 6, 3), rng=jax.random.key(0), mesh=train.make_mesh(1))
  given = train.random_variables(TinySeg(), (1, 6, 6, 3), jax.random.key(0))
  assert jax.tree.structure(finished) == jax.tree.structure(given)
  for a, b in zip(jax.tree.leaves(finished), jax.tree.leaves(given)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(train.NonFiniteLossError) as error:
    run(tmp_path, 1, 50, lr=1e6)
  pattern = r'(?:loss|parameters) at step (\d+).*checkpoint \(step (\d+)\)'
  bad_step, kept = map(int, re.search(pattern, str(error.value)).groups())
  assert kept < bad_step and kept % 2 == 0  # checkpoints every 2 steps, none after the nan
  checkpointer = train.Checkpointer(tmp_path / 's' / 'checkpoints', every=2)
  assert checkpointer.latest_step() == kept
  restored = checkpointer.restore(train.make_train_state(
      train.make_optimizer(train_cfg(), 50),
      train.random_variables(TinySeg(), (1, 6, 6, 3), jax.random.key(0)), train.make_mesh(1)))
  checkpointer.close()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))


def test_poly_schedule_and_sgd_match_torch_formulas():
  schedule = train.poly_schedule(0.01, 100, 0.9)
  for t in (0, 10, 99):
    assert np.isclose(schedule(t), 0.01 * (1 - t / 100) ** 0.9)
  cfg = train_cfg(lr=0.5, momentum=0.9, weight_decay=0.1)
  tx = train.make_optimizer(cfg, 10)
  w = jnp.array([1.0, -2.0])
  g = jnp.array([0.3, 0.4])
  state = tx.init(w)
  buf, w_ref = np.zeros(2), np.array([1.0, -2.0])
  for t in range(3):  # torch.optim.SGD: d = g + wd w; buf = m buf + d; w -= lr_t buf
    updates, state = tx.update(g, state, w)
    w = optax.apply_updates(w, updates)
    d = np.array([0.3, 0.4]) + 0.1 * w_ref
    buf = 0.9 * buf + d
    w_ref = w_ref - 0.5 * (1 - t / 10) ** 0.9 * buf
  np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-5)


def test_grouped_learning_rates():
  params = {'a': jnp.ones(2), 'b': jnp.ones(2)}
  cfg = train_cfg(lr=0.0, momentum=0.0, weight_decay=0.0)
  tx = train.make_optimizer(cfg, 100, group_lrs={'slow': 0.1, 'fast': 1.0},
                            label_fn=lambda p: {'a': 'slow', 'b': 'fast'})
  updates, _ = tx.update({'a': jnp.ones(2), 'b': jnp.ones(2)}, tx.init(params), params)
  np.testing.assert_allclose(updates['a'], -0.1)
  np.testing.assert_allclose(updates['b'], -1.0)


def test_batch_must_split_over_devices():
  with pytest.raises(ValueError, match='divisible by the number of devices, 4'):
    train.local_batch_size(6, train.make_mesh(4))


def test_adamw_option_and_unknown_optimizer():
  cfg = train_cfg(lr=0.1, weight_decay=0.0)
  cfg.optimizer = 'adamw'
  tx = train.make_optimizer(cfg, 10)
  w = jnp.array([1.0, -2.0])
  updates, _ = tx.update(jnp.array([0.3, -0.4]), tx.init(w), w)
  np.testing.assert_allclose(updates, [-0.1, 0.1], rtol=1e-4)  # first Adam step: -lr * sign(g)
  cfg.optimizer = 'lamb'
  with pytest.raises(ValueError, match="config.train.optimizer='lamb'"):
    train.make_optimizer(cfg, 10)


def _logged_rates(tx, opt_state, steps):
  """The learning-rate metrics of `steps` train steps of TinySeg from `opt_state`."""
  mesh = train.make_mesh(1)
  variables = train.random_variables(TinySeg(), (1, 6, 6, 3), jax.random.key(0))
  state = train.make_train_state(tx, variables, mesh, opt_state)
  step = train.make_train_step(train.supervised_loss(TinySeg()), tx, mesh)
  rates, iterator = [], batches()(0)
  for _ in range(steps):
    state, metrics = step(state, train.to_device(next(iterator), mesh), jax.random.key(1), None)
    rates.append({k: float(v) for k, v in metrics.items() if k.startswith('lr')})
  return state, rates


def test_train_steps_log_the_learning_rate_they_apply():
  cfg = train_cfg(lr=0.1, warmup_steps=0)
  tx = train.make_optimizer(cfg, 4)
  state, rates = _logged_rates(tx, None, 3)
  assert [r['lr'] for r in rates] == pytest.approx([0.1 * (1 - t / 4) ** 0.9 for t in range(3)])
  # A stage continuing that optimizer state (count 3) with its own shifted warm-up schedule,
  # as RWS stage 3 does: its step t applies the schedule at count 3 + t, i.e. its own step t.
  continued = train.make_optimizer(train_cfg(lr=0.05, warmup_steps=1), 4, warmup_from=0.02,
                                   offset=3)
  _, rates = _logged_rates(continued, state.opt_state, 2)
  assert [r['lr'] for r in rates] == pytest.approx([0.02, 0.05])
  grouped = train.make_optimizer(cfg, 4, group_lrs={'slow': 0.1, 'fast': 1.0},
                                 label_fn=lambda p: jax.tree.map(lambda _: 'fast', p))
  _, rates = _logged_rates(grouped, None, 2)
  assert rates[1] == pytest.approx({'lr_slow': 0.1 * 0.75 ** 0.9, 'lr_fast': 0.75 ** 0.9})
