"""scripts/readme_results.py: every command it would run names config fields that exist, its
tables compute mean and sample sd, and a control copies only the stages of its main run that
its own settings would make alike."""
import importlib.util
import os
import shutil
import statistics

import pytest

from configs_util import ROOT, load_config
from rwsjax import preflight
from rwsjax import provenance
from rwsjax import stage_runner
from rwsjax.rws import pipeline as rws_pipeline


def _script():
  path = os.path.join(ROOT, 'scripts', 'readme_results.py')
  spec = importlib.util.spec_from_file_location('readme_results', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config_name(path):
  """'configs/shapes_rws.py:pretrained' -> 'shapes_rws' (the file, without its argument)."""
  return os.path.splitext(os.path.basename(path.partition(':')[0]))[0]


def test_every_override_names_an_existing_config_field():
  script = _script()
  runs = [(config, overrides) for config, controls in script.RWS_EXPERIMENTS.values()
          for _, _, overrides in controls]
  runs += [(config, overrides) for _, config, overrides in script.SINGLE_RUNS]
  assert len(runs) == (sum(len(c) for _, c in script.RWS_EXPERIMENTS.values())
                       + len(script.SINGLE_RUNS))
  for config_path, overrides in runs:
    config = load_config(_config_name(config_path))
    for override in overrides:
      *parents, field = override.removeprefix('--config.').split('=')[0].split('.')
      node = config
      for parent in parents:
        node = node[parent]
      assert field in node, (config_path, override)


def test_control_directories_are_distinct_and_named_after_their_switch():
  script = _script()
  names = [script.control_name(overrides) for _, _, overrides in script.CONTROLS]
  assert len(set(names)) == len(names)
  for _, controls in script.RWS_EXPERIMENTS.values():
    assert set(controls) <= set(script.CONTROLS)
  assert script.control_name(('--config.rws.fuse_layers=()',)) == 'fuse_layers-none'
  assert script.control_name(('--config.rws.fuse_layers=(3, 4)',)) == 'fuse_layers-3_4'
  assert script.control_name(('--config.rws.fuse_layers=(4,)',)) == 'fuse_layers-4'
  assert script.control_name(('--config.rws.t_rule=last_flat', '--config.rws.t_min_share=0')
                             ) == 't_rule-last_flat'


def test_controls_of_stage_3_retrain():
  """By default there is no stage 3 (integration=inference): a control that changes stage 3
  or removes the fusion must retrain, or it would evaluate stage 1's model unchanged."""
  script = _script()
  assert load_config('shapes_rws').rws.integration == 'inference'
  for _, _, overrides in script.CONTROLS:
    if any(o.startswith('--config.rws.stage3_') or o == '--config.rws.fuse_layers=()'
           for o in overrides):
      assert '--config.rws.integration=retrain' in overrides, overrides


def test_table_mean_and_sample_sd():
  script = _script()
  values = [0.5, 0.6, 0.8]
  expected = f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'
  assert expected == '0.633 ± 0.153'
  text = script.table('t', [('row', values), ('missing', [0.25, None, None])], [0, 1, 2])
  lines = text.splitlines()
  assert lines[2] == '| row | 0.500 | 0.600 | 0.800 | 0.633 ± 0.153 |'
  assert lines[3] == '| missing | 0.250 | - | - | 0.250 |'


def test_selected_controls_by_directory_name():
  script = _script()
  assert script.selected_controls(None) == script.RWS_CONTROLS
  chosen = script.selected_controls(['local_scale-1', 'slices-arbitrary'])
  assert [script.control_name(o) for _, _, o in chosen] == ['slices-arbitrary', 'local_scale-1']
  assert script.selected_controls([]) == ()
  try:
    script.selected_controls(['local_scale-3'])
  except ValueError as e:
    assert 'local_scale-3' in str(e)
  else:
    raise AssertionError('an unknown control must be refused')


def test_first_round_line_skips_missing_runs():
  script = _script()
  summaries = [{'rounds': [{'threshold': 0.4419, 'weak_share': 0.2376}]}, None,
               {'rounds': [{'threshold': 0.375, 'weak_share': 0.22032}, {}]}]
  assert script.first_round(summaries) == 'T: 0.442 / 0.375; weak windows: 23.8% / 22.0%'


def test_run_config_reads_overrides_as_launch_does():
  script = _script()
  config = script.run_config('configs/shapes_rws.py', 2, (
      '--config.rws.fuse_layers=()', '--config.rws.local_scale=1', '--config.rws.t_rule=robust',
      '--config.rws.select_omega=False', '--config.rws.stage3_lr=1.5e-4'))
  expected = load_config('shapes_rws')
  expected.seed = 2
  expected.rws.fuse_layers, expected.rws.local_scale = (), 1.0
  expected.rws.t_rule, expected.rws.select_omega, expected.rws.stage3_lr = 'robust', False, 1.5e-4
  assert config.to_dict() == expected.to_dict()
  assert isinstance(config.rws.local_scale, float)


def _main_run(workdir, config):
  """A main run's stamped records of stage 1, its evaluation, the analysis and the figures
  (no training: stages with empty results), with their outputs."""
  runner = stage_runner.Runner(str(workdir),
                               provenance.Plan(rws_pipeline.stage_table(config), config))
  for name, outputs in (('stage1', ('stage1/checkpoints/2/state',)), ('stage1/eval', ()),
                        ('round_1/analysis', ('round_1/weak_boxes.npz',)),
                        ('round_1/figures', ('round_1/heatmaps.png',))):
    for output in outputs:
      os.makedirs(os.path.dirname(workdir / output), exist_ok=True)
      (workdir / output).write_text(name)
    runner.run(name, lambda: {})


def test_a_control_copies_only_stages_made_with_its_own_settings(tmp_path):
  """copy_shared compares the fingerprints the control's config gives each stage with the
  main run's: a T-rule control copies stage 1 and its evaluation, not the analysis; a
  local-scale control copies the analysis too. The control's run refuses an analysis copied
  under another T rule."""
  script = _script()
  main = tmp_path / 'main'
  _main_run(main, script.run_config('configs/shapes_rws.py', 0))
  t_rule = script.run_config('configs/shapes_rws.py', 0, ('--config.rws.t_rule=robust',
                                                          '--config.rws.baseline=False'))
  local = script.run_config('configs/shapes_rws.py', 0, ('--config.rws.local_scale=1',
                                                         '--config.rws.baseline=False'))
  assert script.copy_shared(str(main), str(tmp_path / 't_rule'), 'analysis', t_rule) == [
      'stage1', 'stage1/eval']
  assert sorted(os.listdir(tmp_path / 't_rule')) == ['stage1', 'stages']
  assert sorted(os.listdir(tmp_path / 't_rule' / 'stage1')) == ['checkpoints', 'eval.json']
  assert (tmp_path / 't_rule' / 'stage1' / 'checkpoints' / '2' / 'state').read_text() == 'stage1'
  assert script.copy_shared(str(main), str(tmp_path / 'local'), 'analysis', local) == [
      'stage1', 'stage1/eval', 'round_1/analysis', 'round_1/figures']
  assert script.copy_shared(str(main), str(tmp_path / 'local'), 'analysis', local) == []
  os.makedirs(tmp_path / 't_rule' / 'round_1')
  for part in ('round_1/analysis.json', 'round_1/weak_boxes.npz'):  # a copy by hand
    shutil.copy2(main / part, tmp_path / 't_rule' / part)
  t_rule.dataset.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(preflight.UserInputError) as error:
    rws_pipeline.run(t_rule, str(tmp_path / 't_rule'))
  assert str(error.value) == (
      f"{tmp_path / 't_rule'} holds stages made with other settings than this config: "
      "round_1/analysis (rws.t_rule: 'first_flat' -> 'robust'); pass "
      '--recompute_from=round_1/analysis to recompute it and every stage that consumes it, or '
      'another --workdir.')
