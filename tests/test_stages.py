"""The stage runner: a finished stage is read back from its record, never recomputed; a killed
training stage resumes from its checkpoint and ends as the uninterrupted one."""
import json
import os

import jax
import numpy as np
import pytest

from rwsjax import provenance
from rwsjax import stage_runner
from rwsjax import train
from test_train import TinySeg, batches, train_cfg

STEPS = 4


def test_a_recorded_stage_is_read_back_not_recomputed(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {'value': len(calls)}

  first = stage_runner.Runner(str(tmp_path)).run('a/b', compute)
  again = stage_runner.Runner(str(tmp_path)).run('a/b', compute)
  assert first == again == {'value': 1} and len(calls) == 1
  with open(tmp_path / 'stages' / 'a' / 'b.json') as f:
    assert json.load(f) == {'value': 1}
  plan = provenance.Plan({'c': provenance.Stage(('seed',), record='round_1/analysis.json')},
                         {'seed': 0})
  assert stage_runner.Runner(str(tmp_path), plan).run('c', compute) == {'value': 2}
  assert stage_runner.Runner(str(tmp_path), plan).run('c', compute) == {'value': 2}
  assert len(calls) == 2 and not os.path.exists(tmp_path / 'stages' / 'c.json')
  with open(tmp_path / 'round_1' / 'analysis.json') as f:
    saved = json.load(f)
  spent = {key: saved['provenance'].pop(key) for key in stage_runner.COST_KEYS}
  assert saved == {'value': 2, 'provenance': plan.stamp(str(tmp_path), 'c')}
  assert spent['seconds'] >= 0 and spent['peak_rss_mb'] > 0


def train_tiny(runner, counted):
  cfg = train_cfg()
  variables = train.random_variables(TinySeg(), (1, 6, 6, 3), jax.random.key(0))

  def factory(start):
    counted.append(start)
    return batches()(start)

  return runner.train('stage1', loss_fn=train.supervised_loss(TinySeg()),
                      tx=train.make_optimizer(cfg, STEPS), variables=variables,
                      batches=factory, total_steps=STEPS, train_cfg=cfg, mesh=train.make_mesh(1),
                      rng=jax.random.key(1))


def test_a_killed_training_stage_resumes_and_a_finished_one_is_read_back(tmp_path, monkeypatch):
  full = train_tiny(stage_runner.Runner(str(tmp_path / 'full')), [])
  original = train.Checkpointer.save

  def save_then_fail(self, step, state):
    original(self, step, state)
    if step == 2:
      raise KeyboardInterrupt('killed')

  monkeypatch.setattr(train.Checkpointer, 'save', save_then_fail)
  with pytest.raises(KeyboardInterrupt):
    train_tiny(stage_runner.Runner(str(tmp_path / 'killed')), [])
  monkeypatch.undo()
  runner = stage_runner.Runner(str(tmp_path / 'killed'))
  assert not os.path.exists(runner.record_path('stage1'))
  started = []
  resumed = train_tiny(runner, started)
  assert started == [2]
  with open(runner.record_path('stage1')) as f:
    assert json.load(f) == {'steps': STEPS}
  started.clear()
  again = train_tiny(runner, started)
  assert started == [] and int(again.step) == STEPS
  for a, b, c in zip(*(jax.tree.leaves(s.variables) for s in (full, resumed, again))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(b))
