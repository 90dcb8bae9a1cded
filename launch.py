"""Runs one experiment: `python launch.py --config=configs/shapes_rws.py --workdir=runs/demo`.

`config.method` picks the pipeline. Rerunning the same command with the same --workdir resumes
where a killed run stopped; a finished run (its summary.json exists) is left as it is. A stage
is read back only under the settings that made it: a workdir holding stages made with other
settings (finished or not) stops the run with the stages and fields that differ, unless
--recompute_from names them (they and every stage consuming them are computed again).
Override any config field on the command line, e.g. `--config.train.steps=200`;
`--config=configs/voc_rws.py:smoke` runs a small variant; the shapes configs also take
`:pretrained` (and `:smoke,pretrained`), a backbone pretrained by `configs/shapes_pretrain.py`
(config.method 'pretrain'). The methods and their config switches are described in
docs/methods.md.

A backbone, dataset or method of your own: --imports=my_module, a module that registers it
(README, Extending), and --config.model.backbone, --config.dataset.name or --config.method
naming it.

After training, with the same --config and --workdir:
  --mode=evaluate [--split=NAME] [--config.eval.tta=True]   evaluate the run again
  --mode=predict --images=DIR --out=OUT                      segment a folder of images
"""
import ast
import importlib
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

HELP_FLAGS = ('help', 'helpshort', 'helpfull', 'helpxml', '?')
MODES = ('train', 'evaluate', 'predict')
MODE_FLAGS = {'split': 'evaluate', 'images': 'predict', 'out': 'predict',
              'recompute_from': 'train'}
CONFIG_FILE_ERROR = 'Error whilst parsing config file'  # how config_flags reports get_config's

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and figures.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first (multi-host GPU/TPU runs).')
_COORDINATOR = flags.DEFINE_string('coordinator', None, 'host:port of process 0 (optional).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (optional).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index (optional).")
_LIBRARY_LOGS = flags.DEFINE_bool('library_logs', False,
                                  'Show the INFO logs of orbax, grain and TFDS too.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', MODES,
    'train: run the pipeline (resuming a killed run); evaluate: evaluate the finished run in '
    '--workdir on --split, writing eval_<split>.json; predict: segment the images in --images '
    'into --out with it.')
_SPLIT = flags.DEFINE_string('split', None,
                             '--mode=evaluate: the split (default config.dataset.eval_split).')
_IMAGES = flags.DEFINE_string('images', None, '--mode=predict: a folder of JPEG or PNG images.')
_OUT = flags.DEFINE_string('out', None,
                           '--mode=predict: the folder the masks and overlays are written to.')
_RECOMPUTE_FROM = flags.DEFINE_list(
    'recompute_from', [],
    '--mode=train: stages to compute again, e.g. round_1/stage2: their records, checkpoints and '
    'outputs are cleared, and those of every stage that consumes them, directly or not. A '
    'rerun whose workdir holds stages made with other settings names the stages to give.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', os.path.join('~', '.cache', 'rwsjax', 'xla'),
    "Directory of JAX's persistent compilation cache, so that a rerun or a run of a related "
    "config skips compiling what an earlier run compiled; empty to disable.")
_IMPORTS = flags.DEFINE_list(
    'imports', [], 'Modules to import before the run, e.g. ones that register a backbone '
    '(rwsjax.models.register_backbone), a dataset (rwsjax.data.register_dataset) or a method '
    '(rwsjax.pipelines.register_pipeline) under the name the config gives.')
flags.mark_flags_as_required(['config', 'workdir'])


def asked_for_help(argv):
  """Whether the command line asks for absl's usage text (--help, -?, --helpfull, ...)."""
  return any(arg.lstrip('-').split('=')[0] in HELP_FLAGS
             for arg in argv[1:] if arg.startswith('-'))


def parse_flags(argv):
  """absl flag parsing, with a one-sentence error for a config override that does not apply.

  A help request prints the usage and exits with status 0 (absl's own exit status is 1)."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if asked_for_help(argv):
      sys.exit(0)
    raise
  except flags.Error as error:
    text = str(error).strip()
    if CONFIG_FILE_ERROR in text:  # get_config raised: its exception's line, not the traceback
      text = f'cannot load the --config file: {text.splitlines()[-1]}'
    sys.exit(f'launch.py: {text}')
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    text = str(error).strip()
    if text[:1] in "'\"":
      text = str(ast.literal_eval(text))
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    reason = ' '.join(text.replace('\n', ' ').split())
    sys.exit(f"launch.py: the config override {' '.join(overrides)} does not apply: "
             f"no such field or wrong type ({reason}).")


def check_mode_flags():
  """Each flag of MODE_FLAGS (--split, --images, --out, --recompute_from) is given only with
  its mode."""
  for name, mode in MODE_FLAGS.items():
    if flags.FLAGS[name].present and _MODE.value != mode:
      sys.exit(f'launch.py: --{name} goes with --mode={mode}, not --mode={_MODE.value}.')


def run_mode(pipeline, config, workdir):
  """Trains, evaluates or predicts (--mode) with `pipeline`'s run or its trained predictor; a
  pipeline without one (pretrain: its product is a backbone file) only trains."""
  # pylint: disable-next=g-import-not-at-top  (after absl parsed the flags)
  from rwsjax import inference, pipelines
  if _MODE.value == 'train':
    return pipelines.train(pipeline, config, workdir, tuple(_RECOMPUTE_FROM.value))
  pipelines.check_predictor(pipeline, config, f'--mode={_MODE.value}')
  if _MODE.value == 'evaluate':
    return inference.evaluate_run(config, workdir, pipeline, _SPLIT.value)
  return inference.predict_folder(config, workdir, pipeline, _IMAGES.value,
                                  _OUT.value and os.path.abspath(_OUT.value))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  check_mode_flags()
  import jax  # pylint: disable=g-import-not-at-top  (after absl parsed the flags)
  # pylint: disable-next=g-import-not-at-top  (after absl parsed the flags)
  from rwsjax import pipelines, progress
  if not _LIBRARY_LOGS.value:
    progress.quiet_library_logs()
  for name in _IMPORTS.value:
    try:
      importlib.import_module(name)
    except ImportError as error:
      sys.exit(f'launch.py: --imports={name} does not import: {error}.')
  if _COMPILATION_CACHE.value:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(_COMPILATION_CACHE.value))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  config = _CONFIG.value
  try:
    method = config.method
  except OSError as error:  # config_flags reports a file that failed to load on first use
    cause = error.__cause__ or error
    sys.exit(f"launch.py: cannot load the --config file: {' '.join(str(cause).split())}")
  try:
    pipeline = pipelines.get_pipeline(method)
  except (TypeError, ValueError) as error:
    sys.exit(f'launch.py: {error}')
  logging.info('Process %d/%d, %d local / %d global devices (%s).', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  from rwsjax import preflight  # pylint: disable=g-import-not-at-top  (after absl parsed the flags)
  try:
    preflight.check_overrides(preflight.config_overrides(sys.argv[1:]),
                              getattr(pipeline, 'UNREAD_FIELDS', {}), method, config,
                              getattr(pipeline, 'CONDITIONAL_FIELDS', {}))
    run_mode(pipeline, config, os.path.abspath(_WORKDIR.value))
  except preflight.UserInputError as error:
    sys.exit(f'launch.py: {error}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
