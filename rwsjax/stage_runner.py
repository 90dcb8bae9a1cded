"""The stage runner (docs/design.md, resume): the one way a pipeline runs its stages, each
once, reading back the stages an earlier run finished under the same settings and resuming the
first unfinished one; what each stage was made from goes into its record and the run record
(`rwsjax.provenance`).
"""
import json
import os
import resource
import time

from absl import logging
import jax

from rwsjax import provenance
from rwsjax import train
from rwsjax.progress import write_json
from rwsjax.record import host_cpu


COST_KEYS = ('seconds', 'peak_rss_mb', 'host_cpu', 'resumed')


def cost(start, resumed=False):
  """{'seconds': wall time since `start` (a `time.perf_counter()` value), 'peak_rss_mb': the
  process's peak resident memory so far (Linux ru_maxrss, in MiB), 'host_cpu': the CPU model
  of the host that timed it (`rwsjax.record.host_cpu`), 'resumed': whether an earlier process had
  started the stage and stopped}. A resumed stage's seconds count only the process that
  finished it (a training stage goes on from its last checkpoint, a per-image store from the
  files it holds); the stages of a run resumed on another host name different CPUs."""
  return {'seconds': round(time.perf_counter() - start, 2),
          'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          'host_cpu': host_cpu(), 'resumed': resumed}


class Runner:
  """Runs the named stages of one pipeline run in `workdir`, each once (docs/design.md, resume).

  A stage is finished when its record exists: a JSON-ready dict written when it ends, at the
  path its `plan` (`rwsjax.provenance.Plan`) gives, default `<workdir>/stages/<name>.json`. A
  rerun reads finished stages back, with one log line each, and resumes the first unfinished
  one; a training stage resumes from the last checkpoint in `<workdir>/<name>/checkpoints`.
  With a plan, every stage run must be in it: the stage's stamp (`Plan.stamp`) goes into a
  marker beside its record when it starts and into the record when it ends, with what the
  stage cost the process that finished it (`cost`), and `made` lists each stage as computed in
  this process or read back, with its fingerprint, the workdir that computed it and its cost
  (the run record of summary.json, `made_record`).
  """

  def __init__(self, workdir, plan=None):
    self.workdir = workdir
    self.plan = plan
    self.made = {}

  def record_path(self, name):
    """Where stage `name`'s record lives."""
    return provenance.record_path(self.plan.table if self.plan else {}, self.workdir, name)

  def run(self, name, compute):
    """The record of stage `name`: read back when an earlier run finished the stage, else
    `compute()`, a JSON-ready dict, written with its stamp (its wall time goes to the log)."""
    path = self.record_path(name)
    stamp = None if self.plan is None else self.plan.stamp(self.workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      saved = record.pop(provenance.KEY, None) or {}
      if stamp is not None and saved.get('fingerprint') not in (None, stamp['fingerprint']):
        raise ValueError(f'Stage {name} in {path} was made with other settings; '
                         'rwsjax.provenance.check stops such a run before it starts.')
      self._note(name, 'read back', saved)
      self.made[name].update({key: saved[key] for key in COST_KEYS if key in saved})
      logging.info('Stage %s: done in an earlier run (%s).', name, path)
      return record
    logging.info('Stage %s.', name)
    resumed = os.path.exists(provenance.started_path(path))  # an earlier process stopped in it
    if stamp is not None:
      write_json(provenance.started_path(path), {provenance.KEY: stamp})
    self._note(name, 'computed', stamp or {})
    start = time.perf_counter()
    record = compute()
    spent = cost(start, resumed)
    self.made[name].update(spent)
    write_json(path, record if stamp is None else
               dict(record, **{provenance.KEY: dict(stamp, **spent)}))
    if stamp is not None and jax.process_index() == 0:
      os.remove(provenance.started_path(path))
    logging.info('Stage %s finished in %.1f s (peak RSS of the process so far %.0f MB).', name,
                 spent['seconds'], spent['peak_rss_mb'])
    return record

  def _note(self, name, how, stamp):
    self.made[name] = {'status': how, 'fingerprint': stamp.get('fingerprint'),
                       'computed_in': stamp.get('workdir')}

  def made_record(self):
    """The run record's part that this runner knows (`record.write_results`' `made`): the
    report's fingerprint and, per stage run, how it was made."""
    return {'fingerprint': self.plan.made[provenance.REPORT].fingerprint,
            'stages': dict(self.made)}

  def train(self, name, **kwargs):
    """Training stage `name`: `train.train_stage(workdir=workdir, stage=name, **kwargs)`, whose
    record holds its step count; returns the final TrainState, from the stage's last
    checkpoint once the stage has finished."""
    state = None

    def compute():
      nonlocal state
      state = train.train_stage(workdir=self.workdir, stage=name, **kwargs)
      return {'steps': int(state.step)}

    self.run(name, compute)
    if state is None:
      state = train.train_stage(workdir=self.workdir, stage=name, **kwargs)
    return state
