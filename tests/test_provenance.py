"""rwsjax.provenance: fingerprints against their definition, neutral fields, a consumed
stage's change reaching every stage after it, the workdir check's one sentence, clearing with
--recompute_from, and the stage tables of the three pipelines against every config field."""
import hashlib
import json
import os
import time

import numpy as np
import pytest

from configs_util import ROOT, load_config
from isimjax import isim
from rwsjax import provenance
from rwsjax import record
from rwsjax import stage_runner
from rwsjax import supervised
from rwsjax.rws import pipeline as rws_pipeline

# a -> b -> c, and d alone; c also writes a folder.
TABLE = {'a': provenance.Stage(('train',)),
         'b': provenance.Stage(('rws.t_*',), ('a',), 'b/record.json'),
         'c': provenance.Stage(('seed',), ('b',), outputs=('c_out',)),
         'd': provenance.Stage(('model',))}


def config(**changes):
  """A small nested config; `changes` maps 'section.key' to a new value."""
  values = {'seed': 0, 'method': 'toy', 'model': {'width': 1.0},
            'train': {'lr': 0.1, 'log_every': 5, 'checkpoint_every': 10},
            'rws': {'t_rule': 'first_flat', 't_bins': 20, 'slice_chunk': 32},
            'figures': {'num_examples': 4}}
  for field, value in changes.items():
    section, key = field.split('.') if '.' in field else (None, field)
    (values[section] if section else values)[key] = value
  return values


def sha(settings, consumes):
  """The fingerprint by its definition: the first 16 hex digits of SHA-256 of the sorted
  JSON of the stage's own settings and the fingerprints it consumes."""
  text = json.dumps({'settings': settings, 'consumes': consumes}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_fingerprints_by_definition_neutral_fields_and_what_propagates():
  plan = provenance.Plan(TABLE, config())
  a = sha({'train.lr': 0.1}, {})
  b = sha({'rws.t_bins': 20, 'rws.t_rule': 'first_flat'}, {'a': a})
  assert plan.made['a'].fingerprint == a and plan.made['b'].fingerprint == b
  assert plan.made['c'].fingerprint == sha({'seed': 0}, {'b': b})
  assert plan.made['c'].settings == {'seed': 0, 'train.lr': 0.1, 'rws.t_bins': 20,
                                     'rws.t_rule': 'first_flat'}
  assert list(plan.table) == ['a', 'b', 'c', 'd', 'report']
  assert plan.table['report'].consumes == ('a', 'b', 'c', 'd')
  every = {'seed': 0, 'method': 'toy', 'model.width': 1.0, 'train.lr': 0.1, 'rws.t_rule':
           'first_flat', 'rws.t_bins': 20}  # the neutral fields left out
  assert plan.made['report'].settings == every
  neutral = provenance.Plan(TABLE, config(**{'train.log_every': 1, 'train.checkpoint_every': 1,
                                             'rws.slice_chunk': 2, 'figures.num_examples': 9}))
  assert neutral.made == plan.made
  changed = provenance.Plan(TABLE, config(**{'train.lr': 0.2}))
  assert [n for n in plan.table if changed.made[n] != plan.made[n]] == ['a', 'b', 'c', 'report']
  changed = provenance.Plan(TABLE, config(**{'rws.t_rule': 'robust'}))
  assert [n for n in plan.table if changed.made[n] != plan.made[n]] == ['b', 'c', 'report']
  changed = provenance.Plan(TABLE, config(method='other'))
  assert [n for n in plan.table if changed.made[n] != plan.made[n]] == ['report']


def make_stages(workdir, plan, names):
  """Runs the stages `names` of `plan` in `workdir` with records {'name': name} (c also
  writes its folder); returns the runner."""
  runner = stage_runner.Runner(str(workdir), plan)
  for name in names:
    if name == 'c':
      os.makedirs(workdir / 'c_out', exist_ok=True)
    assert runner.run(name, lambda name=name: {'name': name}) == {'name': name}
  return runner


def test_a_stage_records_its_wall_time_and_the_peak_memory_after_it(tmp_path):
  """`cost` against a stage that sleeps 0.2 s and touches 200 MiB more than the process held:
  at least that time, and a peak at least that much above the resident memory before it
  (/proc/self/statm)."""
  plan = provenance.Plan(TABLE, config())
  with open('/proc/self/statm') as f:
    resident_mb = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

  def compute():
    time.sleep(0.2)
    buffer = np.ones(200 << 20, np.uint8)
    return {'sum': int(buffer[::4096].sum())}

  runner = stage_runner.Runner(str(tmp_path), plan)
  assert runner.run('a', compute) == {'sum': (200 << 20) // 4096}
  spent = runner.made['a']
  assert 0.2 <= spent['seconds'] < 60
  assert spent['peak_rss_mb'] >= resident_mb + 190


def test_records_carry_their_stamp_and_a_started_stage_its_marker(tmp_path):
  plan = provenance.Plan(TABLE, config())
  runner = make_stages(tmp_path, plan, ['a', 'b'])
  with open(tmp_path / 'b' / 'record.json') as f:
    saved = json.load(f)
  spent = {key: saved['provenance'].pop(key) for key in stage_runner.COST_KEYS}
  assert saved == {'name': 'b', 'provenance': {
      'fingerprint': plan.made['b'].fingerprint, 'settings': plan.made['b'].settings,
      'workdir': str(tmp_path)}}
  assert spent['seconds'] >= 0 and spent['peak_rss_mb'] > 0
  assert spent['host_cpu'] == record.host_cpu() and spent['resumed'] is False
  made_a = dict(runner.made['a'])
  assert {key: made_a.pop(key) for key in stage_runner.COST_KEYS}.keys() == set(
      stage_runner.COST_KEYS)
  assert made_a == {'status': 'computed', 'fingerprint': plan.made['a'].fingerprint,
                    'computed_in': str(tmp_path)}
  again = make_stages(tmp_path, plan, ['a'])
  assert again.made['a']['status'] == 'read back'
  assert again.made['a']['seconds'] == runner.made['a']['seconds']  # the cost of its making

  def killed():
    assert json.load(open(tmp_path / 'stages' / 'c.started.json'))['provenance'] == (
        plan.stamp(str(tmp_path), 'c'))
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    stage_runner.Runner(str(tmp_path), plan).run('c', killed)
  assert not os.path.exists(tmp_path / 'stages' / 'c.json')
  resumed = make_stages(tmp_path, plan, ['c'])
  assert not os.path.exists(tmp_path / 'stages' / 'c.started.json')
  with open(tmp_path / 'stages' / 'c.json') as f:  # its seconds count only the second process
    assert json.load(f)['provenance']['resumed'] is True
  assert resumed.made['c']['resumed'] is True


def test_check_names_the_first_stages_that_differ_and_recompute_clears_what_consumes_them(
    tmp_path):
  plan = provenance.Plan(TABLE, config())
  make_stages(tmp_path, plan, ['a', 'b', 'c', 'd'])
  assert provenance.check(str(tmp_path), plan) == []
  assert provenance.check(str(tmp_path), provenance.Plan(
      TABLE, config(**{'train.log_every': 1}))) == []
  other = provenance.Plan(TABLE, config(**{'train.lr': 0.2, 'model.width': 0.5}))
  with pytest.raises(ValueError) as error:
    provenance.check(str(tmp_path), other)
  assert str(error.value) == (
      f'{tmp_path} holds stages made with other settings than this config: a (train.lr: 0.1 '
      '-> 0.2), d (model.width: 1.0 -> 0.5); pass --recompute_from=a,d to recompute them and '
      'every stage that consumes them, or another --workdir.')
  with pytest.raises(ValueError, match=r'd \(model.width: 1.0 -> 0.5\); pass '
                     r'--recompute_from=d to recompute it'):
    provenance.check(str(tmp_path), other, ['a'])
  with pytest.raises(ValueError, match='; --mode=evaluate needs the config the run was '
                     'trained with.'):
    provenance.check(str(tmp_path), other, mode='evaluate')
  with pytest.raises(ValueError, match='--recompute_from=e names no stage of this run; its '
                     'stages are a, b, c, d, report.'):
    provenance.check(str(tmp_path), other, ['e', 'a'])
  with open(tmp_path / 'summary.json', 'w') as f:
    json.dump({'run': {'config': config(), 'fingerprint': plan.made['report'].fingerprint}}, f)
  assert provenance.check(str(tmp_path), plan) == []
  cleared = provenance.check(str(tmp_path), other, ['a', 'd'])
  assert cleared == ['a', 'b', 'c', 'd', 'report']
  provenance.clear(str(tmp_path), other, cleared)
  assert sorted(os.listdir(tmp_path)) == ['b', 'stages']
  assert os.listdir(tmp_path / 'b') == [] and os.listdir(tmp_path / 'stages') == []
  make_stages(tmp_path, other, ['a', 'b', 'c', 'd'])
  assert provenance.check(str(tmp_path), other) == []


def test_a_started_stage_and_outputs_without_a_record_are_checked(tmp_path):
  plan = provenance.Plan(TABLE, config())
  make_stages(tmp_path, plan, ['a'])
  with pytest.raises(KeyboardInterrupt):
    stage_runner.Runner(str(tmp_path), plan).run('b', lambda: (_ for _ in ()).throw(
        KeyboardInterrupt()))
  with pytest.raises(ValueError, match=r': b \(rws.t_rule: .first_flat. -> .robust.\); '):
    provenance.check(str(tmp_path), provenance.Plan(TABLE, config(**{'rws.t_rule': 'robust'})))
  os.makedirs(tmp_path / 'c_out')
  with pytest.raises(ValueError, match=r': c \(its settings were not recorded\); pass '
                     '--recompute_from=c'):
    provenance.check(str(tmp_path), plan)


def test_a_record_without_a_stamp_takes_the_config_of_the_finished_run(tmp_path):
  """Records written before stages were stamped: in a finished run, the config summary.json
  recorded made them; in an unfinished one, nothing says what did."""
  os.makedirs(tmp_path / 'stages')
  with open(tmp_path / 'stages' / 'a.json', 'w') as f:
    json.dump({'steps': 1}, f)
  plan = provenance.Plan(TABLE, config())
  with pytest.raises(ValueError, match='its settings were not recorded'):
    provenance.check(str(tmp_path), plan)
  with open(tmp_path / 'summary.json', 'w') as f:
    json.dump({'run': {'config': config()}}, f)
  assert provenance.check(str(tmp_path), plan) == []
  with pytest.raises(ValueError, match=r': a \(train.lr: 0.1 -> 0.3\); '):
    provenance.check(str(tmp_path), provenance.Plan(TABLE, config(**{'train.lr': 0.3})))
  with pytest.raises(ValueError, match=r": report \(method: 'toy' -> 'other'\); pass "
                     '--recompute_from=report'):
    provenance.check(str(tmp_path), provenance.Plan(TABLE, config(method='other')))


# Fields no stage but the report reads: switches that decide which stages run, what the
# summary calls "RWS", and the settings of evaluate and predict.
EVAL = {'eval.tta', 'eval.scales', 'eval.flip', 'eval.max_side', 'eval.pad_multiple'}
REPORT_ONLY = {
    'shapes_rws': EVAL | {'method', 'rws.baseline', 'rws.premise', 'rws.inference'},
    'voc_isim': EVAL | {'method', 'isim.baseline', 'psa.enabled'},
    'shapes_baseline': EVAL | {'method'},
}
MODULES = {'shapes_rws': rws_pipeline, 'voc_isim': isim, 'shapes_baseline': supervised}


@pytest.mark.parametrize('name', sorted(MODULES))
def test_every_config_field_is_read_by_a_stage_or_neutral(name):
  """A field that a new setting adds lands in a stage's list, or in this test's list of what
  only the report reads, or in NEUTRAL_FIELDS."""
  cfg = load_config(name, 'smoke')
  if name == 'shapes_rws':
    cfg.rws.integration = 'retrain'  # every stage: stage 3 reads rws.stage3_*
  table = MODULES[name].stage_table(cfg)
  values = provenance.config_values(cfg)
  unread = {field for field in values
            if not any(provenance.covers(stage.fields, field)
                       for stage_name, stage in table.items() if stage_name != 'report')}
  assert unread == REPORT_ONLY[name]
  assert list(provenance.Plan(table, cfg).table)[-1] == 'report'


def test_rws_rounds_consume_the_model_they_start_from():
  cfg = load_config('shapes_rws', 'smoke')
  cfg.rws.max_rounds, cfg.rws.integration = 2, 'retrain'
  table = rws_pipeline.stage_table(cfg)
  assert table['round_1/analysis'].consumes == ('stage1',)
  assert table['round_2/analysis'].consumes == ('round_1/stage3',)
  assert table['round_2/eval_fused'].consumes == ('round_2/analysis', 'round_2/stage2',
                                                  'round_2/stage3')
  assert table['baseline'].consumes == ('round_1/analysis', 'round_2/analysis')
  plan = provenance.Plan(table, cfg)
  assert plan.downstream(['round_1/stage2']) == [
      'round_1/stage2', 'round_1/stage3', 'round_1/eval_plain', 'round_1/eval_fused',
      'round_1/premise', 'round_2/analysis', 'round_2/figures', 'round_2/stage2',
      'round_2/stage3', 'round_2/eval_plain', 'round_2/eval_fused', 'round_2/premise',
      'inference_cost', 'baseline', 'baseline/eval', 'report']
  cfg.rws.integration = 'inference'
  table = rws_pipeline.stage_table(cfg)
  assert 'round_1/stage3' not in table
  assert table['round_2/analysis'].consumes == ('stage1',)
  assert table['round_2/eval_fused'].consumes == ('round_2/analysis', 'round_2/stage2')


def test_the_docs_list_the_neutral_fields():
  for doc in ('README.md', 'docs/design.md'):
    with open(os.path.join(ROOT, doc)) as f:
      text = ' '.join(f.read().split())
    for field in provenance.NEUTRAL_FIELDS:
      assert f'`{field}`' in text or f'`{field}.*`' in text, (doc, field)
