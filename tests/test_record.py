"""rwsjax.record: the run record in summary.json (config, seed, versions, git, devices,
command line) and the results files every pipeline writes."""
import json
import os
import subprocess

import jax
import ml_collections

from configs_util import load_config
from rwsjax import record


def git(directory, *args):
  return subprocess.run(['git', '-C', str(directory), '-c', 'user.name=test',
                         '-c', 'user.email=test@example.com', *args],
                        capture_output=True, text=True, check=True).stdout.strip()


def test_record_holds_what_produced_the_run():
  config = load_config('shapes_rws')
  config.seed = 7
  config.rws.slice_size = 48
  argv = ['launch.py', '--config=configs/shapes_rws.py', '--config.seed=7']
  run = record.run_record(config, argv)
  assert json.loads(json.dumps(run)) == run
  assert set(run) == {'config', 'seed', 'versions', 'git', 'devices', 'command'}
  assert run['seed'] == 7 and run['command'] == argv
  assert run['config']['seed'] == 7 and run['config']['method'] == 'rws'
  assert run['config']['rws']['slice_size'] == 48
  assert run['config']['input']['crop_size'] == [96, 96]
  assert run['config']['dataset']['data_dir'] is None
  assert set(run['versions']) == {'python', *record.PACKAGES}
  assert run['versions']['jax'] == jax.__version__
  assert run['devices'] == {'platform': 'cpu', 'device_kind': jax.devices()[0].device_kind,
                            'local_devices': 4, 'global_devices': 4, 'processes': 1,
                            'host_cpu': record.host_cpu(), 'host_cores': os.cpu_count()}


def test_host_cpu_is_the_model_name_of_cpuinfo(tmp_path, monkeypatch):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\n'
                     'model name\t: AMD EPYC 7B13 64-Core Processor\nflags\t: fpu\n\n'
                     'processor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n')
  assert record.host_cpu(str(cpuinfo)) == 'AMD EPYC 7B13 64-Core Processor'
  monkeypatch.setattr(record.platform, 'processor', lambda: 'arm')
  assert record.host_cpu(str(tmp_path / 'absent')) == 'arm'  # no /proc: platform's name
  monkeypatch.setattr(record.platform, 'processor', lambda: '')
  assert record.host_cpu(str(tmp_path / 'absent')) is None


def test_config_round_trips_with_references_resolved():
  config = load_config('shapes_isim')
  config.model.backbone = 'resnet34'
  saved = record.run_record(config)['config']
  assert saved['psa']['affinity']['model']['backbone'] == 'resnet34'  # follows config.model
  rebuilt = ml_collections.ConfigDict(saved)
  assert record.config_json(rebuilt) == saved
  assert tuple(rebuilt.isim.cam_scales) == tuple(config.isim.cam_scales)


def test_git_state_of_a_checkout_and_its_changes(tmp_path):
  git(tmp_path, 'init', '-q')
  (tmp_path / 'a.py').write_text('x = 1\n')
  git(tmp_path, 'add', 'a.py')
  git(tmp_path, 'commit', '-q', '-m', 'a')
  head = git(tmp_path, 'rev-parse', 'HEAD')
  assert record.git_state(str(tmp_path)) == {'commit': head, 'dirty': False}
  (tmp_path / 'notes.txt').write_text('untracked\n')
  assert record.git_state(str(tmp_path)) == {'commit': head, 'dirty': False}
  (tmp_path / 'a.py').write_text('x = 2\n')
  assert record.git_state(str(tmp_path)) == {'commit': head, 'dirty': True}


def test_git_state_without_git_or_outside_a_checkout(tmp_path, monkeypatch):
  assert record.git_state(str(tmp_path)) is None  # not a git tree
  git(tmp_path, 'init', '-q')
  (tmp_path / 'site-packages').mkdir()
  assert record.git_state(str(tmp_path / 'site-packages')) is None  # inside, not the root
  monkeypatch.setenv('PATH', str(tmp_path / 'no-binaries'))
  assert record.git_state(str(tmp_path)) is None  # git missing


def test_write_results_writes_summary_with_record_and_table(tmp_path):
  config = load_config('shapes_baseline')
  summary = record.write_results(str(tmp_path), config, {'miou': 0.5}, '| a |\n|---|\n')
  with open(os.path.join(tmp_path, 'summary.json')) as f:
    assert json.load(f) == summary
  assert summary['miou'] == 0.5 and summary['run']['config']['method'] == 'supervised'
  with open(os.path.join(tmp_path, 'results.md')) as f:
    assert f.read() == '| a |\n|---|\n'
