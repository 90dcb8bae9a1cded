"""What made each stage of a run: a rerun reads a stage back only under the settings that made
it (docs/design.md, Checkpoints and resume).

Every pipeline module declares its stages in one table, `stage_table(config)`: {name: `Stage`}
in run order, each with the config fields it reads and the stages whose results it consumes.
A stage's fingerprint hashes the values of its fields, `NEUTRAL_FIELDS` left out, and the
fingerprints of the stages it consumes; its settings are the values of its fields and of the
fields of every stage it consumes, directly or not. `Plan` holds both for a config, with the
report (summary.json), which reads every field and consumes every stage.

`rwsjax.stage_runner.Runner` writes a stage's `stamp` (fingerprint, settings, workdir) into a marker
beside its record when the stage starts, and into its record when it ends. Before any work,
`check` compares every stage a workdir holds, finished or started, with what the config would
make; `clear` removes the stages that `--recompute_from` names and every stage consuming
them.
"""
import glob
import hashlib
import json
import os
import shutil
from typing import Any, NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils

from rwsjax import record

# Fields that cannot change a result: left out of every fingerprint (each covers the fields
# below it). field -> why.
NEUTRAL_FIELDS = {
    'num_devices': 'results do not depend on the device count, up to float rounding',
    'dataset.data_dir': 'where the prepared data is stored, not what it holds',
    'dataset.manual_dir': 'where the downloaded data is read from, not what it holds',
    'model.conv_impl': 'the same convolutions computed another way, up to float rounding',
    'train.log_every': 'logging cadence',
    'train.checkpoint_every': 'checkpoint cadence: a resumed stage ends as the uninterrupted one',
    'train.max_to_keep': 'checkpoints kept on disk',
    'figures': 'figures only',
    'rws.slice_chunk': 'slices per call of the local model: memory, not results',
    'rws.pair_chunk': "the local model's Seg-Grad-CAM computed another way: time, not results",
    'isim.cam_batch_size': 'images per CAM call: memory, not results',
    'isim.crf_workers': 'CRF worker processes',
}
ALL = ('*',)  # the fields of a stage that reads every field (the report)
REPORT = 'report'  # the stage that writes summary.json, last in every plan
REPORT_OUTPUTS = (record.SUMMARY_FILE, record.RESULTS_FILE, 'eval_*.json', 'eval_*.md',
                  'tensorboard/results')
KEY = 'provenance'  # a stage record's entry that holds its stamp
TRAIN = 'train'  # `check`'s mode of a training run, which may recompute stages
UNKNOWN = {'fingerprint': None, 'settings': None}  # what made outputs without a record


class Stage(NamedTuple):
  """A stage as its pipeline's table declares it.

  fields: the dotted config fields it reads; each covers the fields below it ('train' covers
    'train.lr'), and one ending in '*' every field it begins ('rws.t_*').
  consumes: the names of the stages whose results it reads.
  record: its record's path in the workdir; None: stages/<name>.json.
  outputs: what it writes besides its record (paths or glob patterns in the workdir, files or
    folders): checkpoints, label stores, figures. Cleared with the record.
  """
  fields: tuple
  consumes: tuple = ()
  record: Any = None
  outputs: tuple = ()


class Made(NamedTuple):
  """What a config makes of a stage: its `fingerprint` and its `settings` ({field: value} of
  its fields and of those of every stage it consumes)."""
  fingerprint: str
  settings: dict


def training_stage(directory, fields, consumes=(), outputs=(), record_path=None):
  """The `Stage` of a training stage whose checkpoints and TensorBoard run are named
  `directory` (`rwsjax.train.train_stage`'s `stage`): both are among its outputs."""
  return Stage(tuple(fields), tuple(consumes), record_path,
               (directory, f'tensorboard/{directory}', *outputs))


def report_stage(consumes, record_path=record.SUMMARY_FILE, outputs=()):
  """The report: reads every field, consumes every stage; writes summary.json, results.md
  and what evaluate mode adds (eval_*.json, eval_*.md)."""
  return Stage(ALL, tuple(consumes), record_path, REPORT_OUTPUTS + tuple(outputs))


def covers(patterns, field):
  """Whether one of `patterns` covers the dotted `field` (`Stage.fields`)."""
  return any(field == p or field.startswith(p + '.')
             or (p.endswith('*') and field.startswith(p[:-1])) for p in patterns)


def flatten(value, prefix=''):
  """{'a.b': leaf} of nested dicts."""
  if not isinstance(value, dict):
    return {prefix: value}
  return {k: v for key, item in value.items()
          for k, v in flatten(item, f'{prefix}.{key}' if prefix else key).items()}


def config_values(config):
  """{dotted field: JSON value} of a config (a ConfigDict, or its `record.config_json`), the
  neutral fields left out."""
  nested = config if isinstance(config, dict) else record.config_json(config)
  return {k: v for k, v in flatten(nested).items() if not covers(NEUTRAL_FIELDS, k)}


def fingerprint(own, consumed):
  """16 hex digits of the SHA-256 of a stage's own settings and the fingerprints of the
  stages it consumes."""
  text = json.dumps({'settings': own, 'consumes': consumed}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(table, workdir, name):
  """Where stage `name` of a pipeline's `table` keeps its record in `workdir`: its `Stage`'s
  `record`, or stages/<name>.json (also for a stage the table does not hold)."""
  stage = table.get(name)
  return os.path.join(workdir, (stage and stage.record) or os.path.join('stages', f'{name}.json'))


def made_by(table, values):
  """{name: `Made`} of every stage of `table` under the config `values` (`config_values`)."""
  made = {}
  for name, stage in table.items():
    own = {k: v for k, v in values.items() if covers(stage.fields, k)}
    settings = dict(own)
    for used in stage.consumes:
      settings.update(made[used].settings)
    made[name] = Made(fingerprint(own, {used: made[used].fingerprint for used in stage.consumes}),
                      dict(sorted(settings.items())))
  return made


def started_path(record_path):
  """The marker a stage writes beside its record when it starts."""
  return record_path.removesuffix('.json') + '.started.json'


class Plan:
  """The stages of one config: `table` (name -> `Stage`, in run order, the report last) and
  `made` (name -> `Made`)."""

  def __init__(self, table, config):
    self.table = dict(table)
    if REPORT not in self.table:
      self.table[REPORT] = report_stage(tuple(table))
    self.made = made_by(self.table, config_values(config))

  def record_path(self, workdir, name):
    return record_path(self.table, workdir, name)

  def stamp(self, workdir, name):
    """What a stage's marker and record hold: fingerprint, settings, the workdir computing
    it."""
    made = self.made[name]
    return {'fingerprint': made.fingerprint, 'settings': made.settings,
            'workdir': os.path.abspath(workdir)}

  def downstream(self, names):
    """`names` and every stage that consumes one of them, directly or not, in run order."""
    found = set(names)
    for name, stage in self.table.items():
      if found.intersection(stage.consumes):
        found.add(name)
    return [name for name in self.table if name in found]

  def upstream(self, name):
    """The stages `name` consumes, directly or not."""
    found = set()
    for used in self.table[name].consumes:
      found |= {used} | self.upstream(used)
    return found

  def paths(self, workdir, name):
    """The record, the marker and the outputs of stage `name` that exist in `workdir`."""
    path = self.record_path(workdir, name)
    outputs = [os.path.join(workdir, p) for pattern in self.table[name].outputs
               for p in sorted(glob.glob(pattern, root_dir=workdir))]
    return [p for p in dict.fromkeys((path, started_path(path), *outputs)) if os.path.exists(p)]


def _read(path):
  with open(path) as f:
    return json.load(f)


def found_stamp(workdir, plan, name, legacy=None):
  """What made stage `name` as `workdir` holds it: the stamp of its record, or of its marker
  while it is unfinished; for summary.json, its run record's; None when the workdir holds
  nothing of it; `UNKNOWN` for outputs without a stamp. A record written before stages were
  stamped takes its stamp from `legacy` (`made_by` of the config a finished run recorded)."""
  path = plan.record_path(workdir, name)
  for candidate in (path, started_path(path)):
    if os.path.exists(candidate):
      saved = _read(candidate)
      if KEY in saved:
        return saved[KEY]
      if 'config' in saved.get('run', {}):
        return {'fingerprint': saved['run'].get('fingerprint'),
                'settings': config_values(saved['run']['config'])}
      if legacy is not None:
        return {'fingerprint': None, 'settings': legacy[name].settings}
      return UNKNOWN
  return UNKNOWN if plan.paths(workdir, name) else None


def matches(stamp, made):
  """Whether a found stamp is what `made` describes (by fingerprint; by settings for a stamp
  without one)."""
  if stamp['fingerprint']:
    return stamp['fingerprint'] == made.fingerprint
  return stamp['settings'] == made.settings


def differences(stamp, made):
  """['field: old -> new', ...] between a found stamp and `made`."""
  if stamp['settings'] is None:
    return ['its settings were not recorded']
  old, new = stamp['settings'], made.settings
  return [f'{key}: {old.get(key)!r} -> {new.get(key)!r}' for key in sorted(set(old) | set(new))
          if old.get(key) != new.get(key)] or ['made from other stages']


def legacy_made(workdir, plan):
  """`made_by` under the config that the finished run in `workdir` recorded (what made the
  records it holds that carry no stamp, written before stages were stamped), or None."""
  path = os.path.join(workdir, record.SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  return made_by(plan.table, config_values(_read(path).get('run', {}).get('config', {})))


def mismatch_sentence(workdir, plan, differing, mode):
  """The one sentence that stops a run: the first stages made with other settings (those no
  other such stage feeds) and their fields, and the way on."""
  roots = [name for name in differing if not plan.upstream(name) & set(differing)]
  listed = ', '.join(f"{name} ({', '.join(differing[name])})" for name in roots)
  if mode == TRAIN:
    them = 'it' if len(roots) == 1 else 'them'
    way = (f"pass --recompute_from={','.join(roots)} to recompute {them} and every stage that "
           f'consumes {them}, or another --workdir')
  else:
    way = f'--mode={mode} needs the config the run was trained with'
  return f'{workdir} holds stages made with other settings than this config: {listed}; {way}.'


def check(workdir, plan, recompute_from=(), mode=TRAIN):
  """Compares every stage of `plan` that `workdir` holds, finished or started, with what the
  plan's config makes; returns the stages to clear before the run: those `recompute_from`
  names and every stage consuming them, where the workdir holds them.

  Raises ValueError (one sentence, `mismatch_sentence`) when a stage left alone was made
  with other settings, or `recompute_from` names no stage. Evaluate and predict (`mode`) do
  not compare the report: their own settings (config.eval) may differ.
  """
  unknown = [name for name in recompute_from if name not in plan.table]
  if unknown:
    raise ValueError(f"--recompute_from={','.join(unknown)} names no stage of this run; its "
                     f"stages are {', '.join(plan.table)}.")
  cleared = plan.downstream(recompute_from)
  legacy = legacy_made(workdir, plan)
  differing = {}
  for name, made in plan.made.items():
    if name in cleared or (mode != TRAIN and name == REPORT):
      continue
    stamp = found_stamp(workdir, plan, name, legacy)
    if stamp is not None and not matches(stamp, made):
      differing[name] = differences(stamp, made)
  if differing:
    raise ValueError(mismatch_sentence(workdir, plan, differing, mode))
  return [name for name in cleared if plan.paths(workdir, name)]


def clear(workdir, plan, names):
  """Removes the records, markers and outputs of the stages `names` (process 0; the other
  processes wait)."""
  if names and jax.process_index() == 0:
    logging.info('Recomputing %s: their records, checkpoints and outputs are cleared.',
                 ', '.join(names))
    for name in names:
      for path in plan.paths(workdir, name):
        if os.path.isdir(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('provenance.clear')


def prepare(workdir, plan, recompute_from=()):
  """`check`, then `clear` what `recompute_from` asks for: the start of every training run."""
  clear(workdir, plan, check(workdir, plan, recompute_from))
