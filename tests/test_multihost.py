"""Several processes over loopback (jax.distributed, CPU collectives over gloo) against one
process with the same number of devices (docs/design.md, multi-host): two processes of
multihost_worker.py for per-host data parts, global batch assembly, training losses and
evaluation with uneven per-host example counts; then four processes of launch.py running the
RWS and ISIM `:smoke` configs end to end, whose records must equal the single process's.
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
HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, 'multihost_worker.py')
LAUNCH = os.path.join(os.path.dirname(HERE), 'launch.py')
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


def _run(commands, logs, budget, devices=None):
  """Runs the argument lists `commands` (python scripts and their arguments) concurrently to
  completion, each with `devices` CPU devices (default: one); kills them all on a failure or
  when the `Budget` is spent."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}"
  if devices:
    flags += f' --xla_force_host_platform_device_count={devices}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=flags.strip())
  procs = []
  try:
    for command, log in zip(commands, logs):
      with open(log, 'wb') as f:
        procs.append(subprocess.Popen([sys.executable, *map(str, command)], stdout=f,
                                      stderr=subprocess.STDOUT, env=env))
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        break  # the others would wait for the failed one in a collective
      if not budget.tick():
        pytest.fail(f'Processes still running after their budget of machine time (wall '
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
  _run([(SCRIPT, 'worker', i, port, data_dir, out_dir) for i in range(NUM_PROCESSES)],
       [out_dir / f'process_{i}.log' for i in range(NUM_PROCESSES)], budget)
  _run([(SCRIPT, 'reference', data_dir, out_dir)], [out_dir / 'single.log'], budget)
  results = [dict(np.load(out_dir / f'process_{i}.npz')) for i in range(NUM_PROCESSES)]
  return config, out_dir, results, dict(np.load(out_dir / 'single.npz'))


def _losses(workdir):
  """{(stage, step): loss} of the training steps logged in workdir/metrics.jsonl."""
  with open(workdir / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  return {(r.get('stage'), r['step']): r['loss'] for r in rows if 'loss' in r}


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
  assert list(two) == list(one) and len(one) == config.train.steps
  np.testing.assert_allclose(list(two.values()), list(one.values()), rtol=0, atol=1e-5)


def test_uneven_evaluation_equals_single_process(run):
  config, _, results, single = run
  whole = data.load_source(config.dataset, 'validation', per_process=False)
  labels = np.stack([whole[i]['segmentation'][..., 0] for i in range(len(whole))])
  counted = labels[labels != IGNORE_LABEL]
  np.testing.assert_array_equal(single['confusion'].sum(1),
                                np.bincount(counted, minlength=config.dataset.num_classes))
  for r in results:
    np.testing.assert_array_equal(r['confusion'], single['confusion'])



# The `:smoke` runs of launch.py with LAUNCH_PROCESSES processes of one device each, against one
# process with as many devices. Their records are equal up to the order of float reductions
# (gloo's all-reduce against XLA's), which two parts of the methods amplify: AffinityNet's
# affinities are exp(-L1 distance), whose gradient takes the sign of near-zero feature
# differences, and Adam's first steps divide by the gradient's magnitude (RWS stage 2). From
# these on (AMPLIFIED: stages, and summary keys under these prefixes) the records are compared
# within AMPLIFIED_TOL; everything before them within 1e-5.
LAUNCH_PROCESSES = 4
LAUNCH_BUDGET_S = 900
LAUNCHED = {'rws': 'configs/shapes_rws.py:smoke', 'isim': 'configs/shapes_isim.py:smoke'}
AMPLIFIED = {
    'rws': {'stages': ('round_1/stage2',),
            'summary': ('.rws.', '.rws_fused.', '.rounds[0].miou_fused',
                        '.rounds[0].premise.')},
    'isim': {'stages': ('psa_affinity', 'psa_final'),
             'summary': ('.psa.', '.stages.psa_random_walk.', '.stages.psa_walk_premise.',
                         '.stages.psa_final.')}}
AMPLIFIED_TOL = 0.02
NOT_RESULTS = ('.run.', '.inference_ms_per_image.', '.directory')  # the record, timings, paths


@pytest.fixture(scope='module', params=sorted(LAUNCHED))
def launched(request, tmp_path_factory):
  """(method, the single process's workdir, the processes' workdir)."""
  method, root = request.param, tmp_path_factory.mktemp(f'launched_{request.param}')
  args = (LAUNCH, f'--config={os.path.join(os.path.dirname(HERE), LAUNCHED[method])}',
          f'--config.dataset.data_dir={root / "data"}')
  budget = Budget(LAUNCH_BUDGET_S)
  _run([(*args, f'--workdir={root / "one"}')], [root / 'one.log'], budget,
       devices=LAUNCH_PROCESSES)  # prepares the dataset for the processes too
  port = portpicker.pick_unused_port()
  _run([(*args, f'--workdir={root / "many"}', '--distributed', f'--coordinator=127.0.0.1:{port}',
         f'--num_processes={LAUNCH_PROCESSES}', f'--process_id={i}')
        for i in range(LAUNCH_PROCESSES)],
       [root / f'many_{i}.log' for i in range(LAUNCH_PROCESSES)], budget)
  return method, root / 'one', root / 'many'


def _leaves(tree, path=''):
  """(path, value) of every leaf of a JSON tree, paths as '.key[index]'."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _leaves(value, f'{path}.{key}')
  elif isinstance(tree, list):
    for i, value in enumerate(tree):
      yield from _leaves(value, f'{path}[{i}]')
  else:
    yield path, tree


def test_four_processes_train_like_one(launched):
  method, one, many = launched
  expected, got = _losses(one), _losses(many)
  assert list(got) == list(expected)
  amplified = AMPLIFIED[method]['stages']
  for (stage, step), loss in expected.items():
    exact = stage not in amplified or (stage == amplified[0] and step == 1)
    tol = 1e-5 if exact else AMPLIFIED_TOL
    assert got[stage, step] == pytest.approx(loss, rel=tol), (stage, step)


def test_four_processes_record_what_one_records(launched):
  method, one, many = launched
  with open(one / 'summary.json') as f:
    expected = dict(_leaves(json.load(f)))
  with open(many / 'summary.json') as f:
    got = dict(_leaves(json.load(f)))
  compared = 0
  for path, value in expected.items():
    if any(part in path for part in NOT_RESULTS):
      continue
    assert path in got
    if any(path.startswith(prefix) for prefix in AMPLIFIED[method]['summary']):
      if path.endswith('miou'):
        assert got[path] == pytest.approx(value, abs=AMPLIFIED_TOL), path
    elif isinstance(value, float):
      assert got[path] == pytest.approx(value, abs=1e-5), path
    else:
      assert got[path] == value, path
    compared += 1
  assert compared > 100


def test_the_budget_is_spent_slower_on_a_loaded_machine(monkeypatch):
  clock = iter([0.0, 100.0, 300.0])
  monkeypatch.setattr(time, 'monotonic', lambda: next(clock))
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  budget = Budget(150)
  monkeypatch.setattr(os, 'getloadavg', lambda: (1.0, 0.0, 0.0))  # below one task per core
  assert budget.tick() and budget.left == pytest.approx(50)
  monkeypatch.setattr(os, 'getloadavg', lambda: (8.0, 0.0, 0.0))  # 4 per core: 200 s -> 50
  assert not budget.tick() and budget.left == pytest.approx(0)
