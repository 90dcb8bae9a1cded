"""launch.py end to end: a one-step supervised smoke run, and one-sentence errors for bad
command lines (docs/design.md: errors a user can cause)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs_util import ROOT
from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import eventlog
from test_eventlog import read_events, scalars


def launch(*args, timeout=300, pythonpath=None):
  """launch.py with `args` in a subprocess on the CPU; `pythonpath` is prepended to its path."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if pythonpath:
    env['PYTHONPATH'] = os.pathsep.join(filter(None, (pythonpath, env.get('PYTHONPATH'))))
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout, check=False)


def last_line(text):
  return [line for line in text.splitlines() if line.strip()][-1]


def test_one_step_supervised_smoke_run(tmp_path):
  result = launch('--config=configs/shapes_baseline.py:smoke', f"--workdir={tmp_path / 'run'}",
                  f"--config.dataset.data_dir={tmp_path / 'tfds'}", '--config.train.steps=1')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.load(open(tmp_path / 'run' / 'summary.json'))
  assert summary['steps'] == 1 and 0.0 <= summary['validation']['miou'] <= 1.0
  assert summary['run']['config']['train']['steps'] == 1
  assert '--config.train.steps=1' in summary['run']['command']
  with open(tmp_path / 'run' / 'results.md') as f:
    assert f"| supervised (1 steps) | {summary['validation']['miou']:.4f} |" in f.read()
  rows = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [1] and rows[0]['stage'] == 'supervised'
  assert os.path.exists(tmp_path / 'run' / 'supervised' / 'checkpoints' / '1')
  assert os.path.exists(tmp_path / 'run' / 'predictions.png')
  events = tmp_path / 'run' / eventlog.EVENTS_DIR
  logged = {tag: value for tag, step, value in scalars(events / 'supervised') if step == 1}
  assert logged == pytest.approx({k: rows[0][k] for k in ('loss', 'grad_norm', 'lr')})
  assert logged['lr'] == pytest.approx(summary['run']['config']['train']['lr'])
  assert scalars(events / eventlog.RESULTS_RUN) == [
      ('validation/miou', 0, pytest.approx(summary['validation']['miou']))]
  images = [v.tag for e in read_events(events / eventlog.RESULTS_RUN) for v in e.summary.value
            if v.HasField('image')]
  assert images == ['per_class_iou', 'predictions']

  def files():
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(tmp_path / 'run') for n in names}
  before = files()
  again = launch('--config=configs/shapes_baseline.py:smoke', f"--workdir={tmp_path / 'run'}",
                 f"--config.dataset.data_dir={tmp_path / 'tfds'}", '--config.train.steps=1')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'holds this run, finished (summary.json); nothing to do' in last_line(again.stderr)
  assert files() == before
  other = launch('--config=configs/shapes_baseline.py:smoke', f"--workdir={tmp_path / 'run'}",
                 f"--config.dataset.data_dir={tmp_path / 'tfds'}", '--config.train.steps=2')
  assert other.returncode != 0 and 'Traceback' not in other.stderr
  assert last_line(other.stderr) == (
      f"launch.py: {tmp_path / 'run'} holds stages made with other settings than this config: "
      'supervised (train.steps: 1 -> 2); pass --recompute_from=supervised to recompute it and '
      'every stage that consumes it, or another --workdir.')
  assert files() == before
  again = launch('--config=configs/shapes_baseline.py:smoke', f"--workdir={tmp_path / 'run'}",
                 f"--config.dataset.data_dir={tmp_path / 'tfds'}", '--config.train.steps=1',
                 '--recompute_from=evaluation')
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = json.load(open(tmp_path / 'run' / 'summary.json'))
  assert {name: entry['status'] for name, entry in rerun['run']['stages'].items()} == {
      'supervised': 'read back', 'evaluation': 'computed'}
  assert rerun['run']['stages']['supervised'] == dict(
      summary['run']['stages']['supervised'], status='read back')
  assert rerun['validation'] == summary['validation']
  changed = {path for path, mtime in files().items() if before.get(path) != mtime}
  assert {os.path.relpath(path, tmp_path / 'run') for path in changed} >= {
      'stages/evaluation.json', 'summary.json', 'results.md'}
  assert not any(os.path.relpath(path, tmp_path / 'run').startswith('supervised/')
                 for path in changed)


def test_bad_config_key_is_one_sentence(tmp_path):
  result = launch('--config=configs/shapes_baseline.py:smoke', f'--workdir={tmp_path}',
                  '--config.train.stepz=3')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  line = last_line(result.stderr)
  assert '--config.train.stepz=3 does not apply' in line and 'Did you mean "steps"' in line


def test_bad_config_value_and_missing_file_and_method(tmp_path):
  result = launch('--config=configs/shapes_baseline.py:smoke', f'--workdir={tmp_path}',
                  '--config.train.steps=abc')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert '--config.train.steps=abc: invalid literal for int()' in last_line(result.stderr)
  result = launch('--config=configs/nope.py', f'--workdir={tmp_path}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'cannot load the --config file' in last_line(result.stderr)
  assert 'configs/nope.py' in last_line(result.stderr)
  result = launch('--config=configs/shapes_baseline.py:smoke', f'--workdir={tmp_path}',
                  '--config.method=xyz')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert ("config.method='xyz'; expected one of ['isim', 'pretrain', 'rws', 'supervised']"
          in result.stderr)


def test_recompute_from_goes_with_train_mode(tmp_path):
  result = launch('--config=configs/shapes_baseline.py:smoke', f'--workdir={tmp_path}',
                  '--mode=evaluate', '--recompute_from=evaluation')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert last_line(result.stderr) == (
      'launch.py: --recompute_from goes with --mode=train, not --mode=evaluate.')


def test_help_prints_the_usage_and_exits_0():
  for flag in ('--help', '--helpfull'):
    result = launch(flag)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith('Runs one experiment') and '--workdir' in result.stdout
  assert launch().returncode != 0  # without --help, the required flags are still required


def test_a_method_registered_by_an_imported_module_runs_and_evaluates(tmp_path):
  """README's recipe: tests/toy_method.py registers 'majority' (every pixel the most frequent
  training class); its mIoU against one computed here from the dataset's label maps."""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  workdir, data_dir = tmp_path / 'run', tmp_path / 'tfds'
  args = ('--config=configs/shapes_baseline.py:smoke', f'--workdir={workdir}',
          f'--config.dataset.data_dir={data_dir}', '--config.method=majority',
          '--imports=toy_method', '--compilation_cache=')
  result = launch(*args, pythonpath=tests_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'shapes_baseline.py'), 'smoke')
  config.dataset.data_dir = str(data_dir)
  labels = [data.load_source(config.dataset, split, per_process=False)
            for split in ('train', 'validation')]
  train_pixels = np.concatenate([s[i]['segmentation'].ravel() for s in labels[:1]
                                 for i in range(len(s))])
  majority = np.bincount(train_pixels[train_pixels != 255], minlength=7).argmax()
  assert np.argmax(summary['class_pixels']) == majority
  truth = np.concatenate([labels[1][i]['segmentation'].ravel() for i in range(len(labels[1]))])
  truth = truth[truth != 255]
  iou = np.mean(truth == majority)  # the only class with a prediction; the others score 0
  present = len(np.unique(truth)) + (majority not in truth)
  assert summary['validation']['miou'] == pytest.approx(iou / present)
  result = launch(*args, '--mode=evaluate', pythonpath=tests_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'eval_validation.json') as f:
    assert json.load(f)['eval_validation']['miou'] == pytest.approx(summary['validation']['miou'])
