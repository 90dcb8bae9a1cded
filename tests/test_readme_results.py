"""scripts/readme_results.py: every command it would run names config fields that exist, and
its tables compute mean and sample sd."""
import importlib.util
import os
import statistics

from configs_util import ROOT, load_config


def _script():
  path = os.path.join(ROOT, 'scripts', 'readme_results.py')
  spec = importlib.util.spec_from_file_location('readme_results', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config_name(path):
  return os.path.splitext(os.path.basename(path))[0]


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
  for _, controls in script.RWS_EXPERIMENTS.values():
    names = [script.control_name(overrides) for _, _, overrides in controls]
    assert len(set(names)) == len(names)
  assert script.control_name(('--config.rws.fuse_layers=()',)) == 'fuse_layers-none'
  assert script.control_name(('--config.rws.t_rule=last_flat', '--config.rws.t_min_share=0')
                             ) == 't_rule-last_flat'


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
