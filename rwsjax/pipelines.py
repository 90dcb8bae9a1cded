"""The methods `launch.py` runs: `config.method` names a pipeline registered here.

A pipeline is a module (or any object) with

  run(config, workdir, recompute_from=())  trains and evaluates into `workdir`, resuming a
                                          killed run (`stage_runner.Runner`); returns the summary
  stage_table(config)                     its stages: {name: (config fields read, stages
                                          consumed)}, the run record's plan (`provenance.Plan`)
  check_config(config)                    raises ValueError on a config it cannot run

and optionally `trained_predictor(config, workdir, mesh)`, the finished run's
`stages.Predictor` for `--mode=evaluate | predict` (without it, a string `NO_PREDICTOR` says
what the pipeline makes instead), and the override tables `UNREAD_FIELDS` and
`CONDITIONAL_FIELDS` (`preflight.check_overrides`). A method of your own registers itself in a
module given to `launch.py --imports` (README, Extending).
"""
import importlib
import os
from typing import Any, Protocol

from absl import logging

from rwsjax import preflight
from rwsjax import provenance
from rwsjax import record

REQUIRED = ('run', 'stage_table', 'check_config')


class Pipeline(Protocol):
  """What launch.py calls; see the module docstring for the optional parts."""

  def run(self, config: Any, workdir: str, recompute_from: tuple = ()) -> dict:
    ...

  def stage_table(self, config: Any) -> dict:
    ...

  def check_config(self, config: Any) -> None:
    ...


# The methods of this repository, imported on first use; a module given to `launch.py
# --imports` (or imported before `rwsjax.api.load_run`) registers others.
BUILTIN = {
    'supervised': 'rwsjax.supervised',
    'rws': 'rwsjax.rws.pipeline',
    'isim': 'isimjax.isim',
    'pretrain': 'rwsjax.pretrain',
}
_PIPELINES = dict(BUILTIN)  # name -> a pipeline, or the import path of a module that is one


def register_pipeline(name, pipeline):
  """Makes config.method=`name` run `pipeline`: an object with the module docstring's
  functions, or the import path of such a module (imported on first use). A later
  registration of `name` replaces the earlier one."""
  if not isinstance(pipeline, str):
    _check_contract(name, pipeline)
  _PIPELINES[name] = pipeline


def names():
  """The registered method names, sorted."""
  return sorted(_PIPELINES)


def get_pipeline(name):
  """The pipeline registered as `name`; ValueError naming the registered ones otherwise."""
  if name not in _PIPELINES:
    raise ValueError(f'config.method={name!r}; expected one of {names()} (a method of your '
                     'own: rwsjax.pipelines.register_pipeline in a module given to --imports).')
  pipeline = _PIPELINES[name]
  if isinstance(pipeline, str):
    pipeline = importlib.import_module(pipeline)
    _check_contract(name, pipeline)
    _PIPELINES[name] = pipeline
  return pipeline


def _check_contract(name, pipeline):
  missing = [f for f in REQUIRED if not callable(getattr(pipeline, f, None))]
  if missing:
    raise TypeError(f'The pipeline registered as {name!r} has no {", ".join(missing)}; a '
                    f'pipeline needs {", ".join(REQUIRED)} (rwsjax/pipelines.py).')
  if not (callable(getattr(pipeline, 'trained_predictor', None))
          or isinstance(getattr(pipeline, 'NO_PREDICTOR', None), str)):
    raise TypeError(f'The pipeline registered as {name!r} has neither trained_predictor nor a '
                    'NO_PREDICTOR string saying what it makes instead (rwsjax/pipelines.py).')


def train(pipeline, config, workdir, recompute_from=()):
  """`launch.py --mode=train`: `pipeline.run`, which resumes a killed run; a finished run
  (its summary.json) with nothing to recompute is checked against `config` (a run made with
  other settings is refused, `provenance.check`) and left as it is: returns None then."""
  if os.path.exists(os.path.join(workdir, record.SUMMARY_FILE)) and not recompute_from:
    preflight.user_input(provenance.check, workdir,
                         provenance.Plan(pipeline.stage_table(config), config))
    logging.info('%s holds this run, finished (summary.json); nothing to do. --mode=evaluate '
                 'and --mode=predict use it.', workdir)
    return None
  return pipeline.run(config, workdir, recompute_from=recompute_from)


def check_predictor(pipeline, config, use):
  """UserInputError when `pipeline` makes no segmentation model for `use` (evaluate,
  predict, `rwsjax.api`): its NO_PREDICTOR says what it makes instead."""
  if not callable(getattr(pipeline, 'trained_predictor', None)):
    raise preflight.UserInputError(
        f'{use} uses a finished segmentation model, which the {config.method} pipeline does '
        f'not make: {pipeline.NO_PREDICTOR}.')
