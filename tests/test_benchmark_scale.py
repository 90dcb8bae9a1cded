"""benchmarks/scale.py: the table of a dry run that has not finished, from its stage records."""
import json
import os

import scale

from rwsjax import provenance


def write(path, record, mtime):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f)
  os.utime(path, (mtime, mtime))


def stamp(seconds, peak):
  return {provenance.KEY: {'fingerprint': 'f', 'seconds': seconds, 'peak_rss_mb': peak}}


def test_an_unfinished_run_gives_its_finished_stages_in_the_order_they_finished(tmp_path):
  workdir = tmp_path / 'isim_384_4000'
  write(workdir / 'stages' / 'psa_affinity_labels.json', stamp(30.0, 2048.0), 300)
  write(workdir / 'stages' / 'isim_train.json', stamp(10.0, 1024.0), 100)
  write(workdir / 'round1' / 'analysis.json', dict(stamp(20.0, 1500.0), weak=[1]), 200)
  write(workdir / 'stages' / 'psa_affinity_train.started.json', stamp(0.0, 0.0), 400)
  write(workdir / 'image_sizes.json', {'sizes': [[384, 384]]}, 50)  # no stamp: not a stage
  write(workdir / 'round1' / 'boxes.json', [[0, 0, 32, 32]], 70)  # not a dict: not a stage
  write(workdir / 'stages' / 'report.json', {provenance.KEY: {'fingerprint': 'f'}}, 60)
  stages = scale.finished_stages(str(workdir))
  assert list(stages) == ['isim_train', 'round1/analysis', 'psa_affinity_labels']
  assert stages['round1/analysis']['seconds'] == 20.0

  summary, wall, peak = scale.run('isim', 4000, 384, str(tmp_path), table_only=True)
  assert (wall, peak) == (None, None) and list(summary['run']['stages']) == list(stages)
  assert summary['unfinished']


def test_the_table_marks_the_stages_a_run_has_not_finished(tmp_path):
  finished = {'run': {'stages': {'a': {'seconds': 10.0, 'peak_rss_mb': 100.0},
                                 'b': {'seconds': 40.0, 'peak_rss_mb': 300.0},
                                 'report': {'status': 'computed'}}}}
  partial = {'run': {'stages': {'a': {'seconds': 35.0, 'peak_rss_mb': 120.0}}},
             'unfinished': True}
  lines = scale.table('isim', {1000: (finished, 60.0, 310.0), 4000: (partial, None, None)})
  rows = {line.split(' | ')[0].lstrip('| '): line for line in lines.splitlines()}
  assert rows['a'] == '| a | 10.0 (10.0) | 35.0 (8.8) |'
  assert rows['b'] == '| b | 40.0 (40.0) | unfinished |'
  assert rows['report'] == '| report | - | unfinished |'  # a finished run's report: no cost
  assert rows['whole run, wall'] == '| whole run, wall | 60 s | - |'
  assert rows['highest peak RSS at a stage end'] == (
      '| highest peak RSS at a stage end | 300 MiB | 120 MiB |')
  empty = scale.table('isim', {4000: ({'run': {'stages': {}}}, None, None)})
  assert empty.splitlines()[-3] == '| highest peak RSS at a stage end | - |'
  assert empty.splitlines()[-1] == '| host CPU of the stages | - |'


def test_a_finished_runs_stages_come_in_the_order_they_finished(tmp_path):
  workdir = tmp_path / 'isim_384_1000'
  write(workdir / 'stages' / 'psa_final.json', stamp(5.0, 10.0), 300)
  write(workdir / 'stages' / 'isim_train.json', stamp(10.0, 10.0), 100)
  write(workdir / 'stages' / 'isim_eval.json', stamp(20.0, 10.0), 200)
  stages = {name: {'seconds': 1.0} for name in ('isim_eval', 'isim_train', 'psa_final')}
  write(workdir / 'summary.json', {'run': {'stages': dict(stages, report={})}}, 400)
  summary, _, _ = scale.run('isim', 1000, 384, str(tmp_path))
  assert list(summary['run']['stages']) == ['isim_train', 'isim_eval', 'psa_final', 'report']


def test_a_resumed_runs_wall_and_process_peak_say_they_cover_only_its_own_stages():
  resumed = {'run': {'stages': {'a': {'seconds': 10.0, 'peak_rss_mb': 100.0,
                                      'status': 'read back'},
                                'b': {'seconds': 40.0, 'peak_rss_mb': 300.0,
                                      'status': 'computed'}}}}
  twice = {'run': {'stages': {name: {'status': 'read back'} for name in 'ab'}}}
  whole = {'run': {'stages': {'a': {'seconds': 10.0, 'peak_rss_mb': 100.0,
                                    'status': 'computed'}}}}
  lines = scale.table('isim', {1000: (whole, 60.0, 310.0), 4000: (resumed, 45.0, 320.0)})
  rows = {line.split(' | ')[0].lstrip('| '): line for line in lines.splitlines()}
  assert rows['whole run, wall'] == (
      '| whole run, wall | 60 s | 45 s (this process; 1 stage read back) |')
  assert rows['peak RSS of the process'] == (
      '| peak RSS of the process | 310 MiB | 320 MiB (this process; 1 stage read back) |')
  assert rows['highest peak RSS at a stage end'] == (
      '| highest peak RSS at a stage end | 100 MiB | 300 MiB |')
  assert scale.resumed_mark(twice) == ' (this process; 2 stages read back)'
  assert rows['host CPU of the stages'] == '| host CPU of the stages | unrecorded | unrecorded |'


def test_the_table_names_every_host_that_timed_a_stage():
  moved = {'run': {'stages': {'a': {'seconds': 1.0, 'host_cpu': 'Intel Xeon'},
                              'b': {'seconds': 2.0, 'host_cpu': 'AMD EPYC', 'resumed': True},
                              'c': {'seconds': 3.0, 'host_cpu': 'AMD EPYC'},
                              'report': {'status': 'computed'}}}}
  assert scale.hosts(moved) == ['Intel Xeon', 'AMD EPYC']
  lines = scale.table('isim', {1000: (moved, 6.0, 10.0)}).splitlines()
  assert '| b | 2.0 (2.0), resumed: partial |' in lines and '| a | 1.0 (1.0) |' in lines
  assert lines[-1] == '| host CPU of the stages | Intel Xeon / AMD EPYC |'


def test_a_stage_stopped_part_way_is_timed_afresh_on_request(tmp_path):
  plain = scale.launch_command('isim', 4000, 384, str(tmp_path))
  again = scale.launch_command('isim', 4000, 384, str(tmp_path),
                               ['psa_random_walk', 'psa_final'])
  assert not any(arg.startswith('--recompute_from') for arg in plain)
  assert again == plain + ['--recompute_from=psa_random_walk,psa_final']
  assert f'--workdir={tmp_path}' in plain and '--config=configs/shapes_isim.py' in plain


def test_a_resumed_run_appends_to_the_log_of_the_runs_before_it(tmp_path, monkeypatch):
  workdir = tmp_path / 'isim_384_4000'
  def fake_launch(method, images, size, workdir, recompute_from=()):
    summary = os.path.join(workdir, 'summary.json')
    code = ('import json, sys; print("part", sys.argv[1]); '
            f'json.dump({{"run": {{"stages": {{}}}}}}, open({summary!r}, "w"))')
    return [scale.sys.executable, '-c', code, ','.join(recompute_from) or 'first']
  monkeypatch.setattr(scale, 'launch_command', fake_launch)
  scale.run('isim', 4000, 384, str(tmp_path))
  os.remove(workdir / 'summary.json')
  scale.run('isim', 4000, 384, str(tmp_path), recompute_from=['psa_final'])
  lines = (workdir / 'scale.log').read_text().splitlines()
  assert [line for line in lines if line.startswith('part')] == ['part first', 'part psa_final']
  assert lines[0].endswith('first') and lines[2].endswith('psa_final')
