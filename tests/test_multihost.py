"""Two processes over loopback (jax.distributed, CPU collectives over gloo) against one process
with the same number of devices: per-host data parts, global batch assembly, training losses
and evaluation with uneven per-host example counts (docs/design.md, multi-host).

The processes are in multihost_worker.py; this module starts them and compares their outputs.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from multihost_worker import NUM_PROCESSES, example_ids, experiment_config
from rwsjax import data
from rwsjax.losses import IGNORE_LABEL

# Seconds of an unloaded machine that both runs together may take: a wall-clock second counts
# as 1 / (load per core) of one while the machine is busier than one runnable task per core, so
# a run slowed by other work is not cut off, and a hung one still is.
BUDGET_S = 150
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multihost_worker.py')
# Unoptimised XLA CPU code: compiles several times faster, and these models are tiny.
XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def _log_tails(logs):
  return '\n'.join(f'--- {path.name}:\n{path.read_text()[-3000:]}' for path in logs)


class Budget:
  """`BUDGET_S` seconds of machine time, spent by `tick` at the rate `1 / max(1, load per
  core)` (the 1-minute load average)."""

  def __init__(self, seconds=BUDGET_S):
    self.left = seconds
    self.last = time.monotonic()

  def tick(self):
    """Charges the time since the last tick; returns whether any budget is left."""
    now = time.monotonic()
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    self.left -= (now - self.last) / max(1.0, load)
    self.last = now
    return self.left > 0


def _run(commands, logs, budget):
  """Runs `commands` concurrently to completion; kills them all on a failure or when the
  `Budget` is spent."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip())
  procs = []
  try:
    for command, log in zip(commands, logs):
      with open(log, 'wb') as f:
        procs.append(subprocess.Popen([sys.executable, SCRIPT, *map(str, command)], stdout=f,
                                      stderr=subprocess.STDOUT, env=env))
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        break  # the others would wait for the failed one in a collective
      if not budget.tick():
        pytest.fail(f'Processes still running after {BUDGET_S} s of machine time (wall '
                    f'seconds scaled by the load).\n{_log_tails(logs)}')
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  codes = [p.returncode for p in procs]
  if any(codes):
    pytest.fail(f'Exit codes {codes}.\n{_log_tails(logs)}')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(config, out_dir, per-process results, single-process results) of one run."""
  root = tmp_path_factory.mktemp('multihost')
  data_dir, out_dir = root / 'data', root / 'out'
  out_dir.mkdir()
  config = experiment_config(data_dir)
  data.load_builder(config.dataset)  # prepared once, before the processes start
  budget = Budget()
  port = portpicker.pick_unused_port()
  _run([('worker', i, port, data_dir, out_dir) for i in range(NUM_PROCESSES)],
       [out_dir / f'process_{i}.log' for i in range(NUM_PROCESSES)], budget)
  _run([('reference', data_dir, out_dir)], [out_dir / 'single.log'], budget)
  results = [dict(np.load(out_dir / f'process_{i}.npz')) for i in range(NUM_PROCESSES)]
  return config, out_dir, results, dict(np.load(out_dir / 'single.npz'))


def _losses(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line)['loss'] for line in f]


@pytest.mark.parametrize('split,key,sizes', [('train', 'train_ids', [8, 7]),
                                             ('validation', 'eval_ids', [5, 4])])
def test_process_parts_are_disjoint_and_cover_the_split(run, split, key, sizes):
  config, _, results, _ = run
  parts = [list(r[key]) for r in results]
  assert [len(p) for p in parts] == sizes
  assert not set(parts[0]) & set(parts[1])
  assert parts[0] + parts[1] == example_ids(data.load_source(config.dataset, split,
                                                             per_process=False))


def test_global_batch_is_the_concatenation_of_process_batches(run):
  _, _, results, _ = run
  for key in ('image', 'segmentation'):
    local = [r[f'train_{key}'][0] for r in results]
    assert local[0].shape[0] == local[1].shape[0] == 2  # global batch 4 over 2 processes
    assert not np.array_equal(*local)
    np.testing.assert_array_equal(results[0][f'global_{key}'], np.concatenate(local))
    np.testing.assert_array_equal(results[1][f'global_{key}'], results[0][f'global_{key}'])


def test_two_processes_train_like_one_process(run):
  config, out_dir, _, _ = run
  two, one = _losses(out_dir), _losses(out_dir / 'single')
  assert len(two) == len(one) == config.train.steps
  np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)


def test_uneven_evaluation_equals_single_process(run):
  config, _, results, single = run
  whole = data.load_source(config.dataset, 'validation', per_process=False)
  labels = np.stack([whole[i]['segmentation'][..., 0] for i in range(len(whole))])
  counted = labels[labels != IGNORE_LABEL]
  np.testing.assert_array_equal(single['confusion'].sum(1),
                                np.bincount(counted, minlength=config.dataset.num_classes))
  for r in results:
    np.testing.assert_array_equal(r['confusion'], single['confusion'])



def test_the_budget_is_spent_slower_on_a_loaded_machine(monkeypatch):
  clock = iter([0.0, 100.0, 300.0])
  monkeypatch.setattr(time, 'monotonic', lambda: next(clock))
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  budget = Budget(150)
  monkeypatch.setattr(os, 'getloadavg', lambda: (1.0, 0.0, 0.0))  # below one task per core
  assert budget.tick() and budget.left == pytest.approx(50)
  monkeypatch.setattr(os, 'getloadavg', lambda: (8.0, 0.0, 0.0))  # 4 per core: 200 s -> 50
  assert not budget.tick() and budget.left == pytest.approx(0)
