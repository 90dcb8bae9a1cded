"""Checks of everything a user gives, run before any data preparation or compute
(docs/design.md: errors a user can cause).

Each pipeline's `run` calls `for_training` first; `launch.py --mode=evaluate|predict` calls
`for_evaluation` and `for_prediction`. Both compare the stages a workdir holds with the config
(`rwsjax.provenance`). A failed check raises `UserInputError`, whose message is
one sentence naming the config key, file or directory and what was expected; launch.py prints
it alone, without a traceback.
"""
import functools
import os
import tempfile

import jax

from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import models
from rwsjax import provenance
from rwsjax import train

class UserInputError(ValueError):
  """A config value, file or directory given by the user that cannot work."""


def user_input(fn, *args, **kwargs):
  """`fn(*args, **kwargs)`, its ValueError, OSError or ImportError turned into a
  UserInputError with the same message: for checks, and steps such as reading a finished run,
  whose errors are worded for users."""
  try:
    return fn(*args, **kwargs)
  except UserInputError:
    raise
  except (ValueError, OSError, ImportError) as error:
    raise UserInputError(' '.join(str(error).split())) from None


def check_common_config(config):
  """config values every pipeline reads: dataset, model, optimizer, input, eval, devices."""
  data.num_classes(config.dataset)
  models.make_model(config.model, config.dataset.num_classes)
  train.make_optimizer(config.train, 1)
  config_lib.check_switches(config, config_lib.FIELDS, None)
  check_eval_config(config.eval)
  mesh = train.make_mesh(config.num_devices)
  train.local_batch_size(config.input.batch_size, mesh)
  train.local_batch_size(config.input.eval_batch_size, mesh)


def config_overrides(argv):
  """The dotted config fields a command line overrides: 'train.steps' for
  `--config.train.steps=3` or `--config.train.steps 3`."""
  return [arg[len('--config.'):].split('=')[0] for arg in argv
          if arg.startswith('--config.')]


def _head_field(field):
  """The CONDITIONAL_FIELDS entry of a config.model field that only some heads read
  (`models.register_head`'s `reads`): the setting names the heads registered at check time."""
  return (lambda config: field in models.head(config.model).reads,
          lambda: 'config.model.name=' + ' or '.join(
              repr(name) for name, h in models.HEADS.items() if field in h.reads))


# Fields every pipeline reads only under a setting: field -> (whether `config` reads it, the
# setting). Pipelines add their own as CONDITIONAL_FIELDS.
CONDITIONAL_FIELDS = {
    'train.momentum': (lambda config: config.train.optimizer == 'sgd',
                       "config.train.optimizer='sgd'"),
    'model.upsample': _head_field('upsample'),
    'model.head_channels': _head_field('head_channels'),
}


def check_overrides(fields, unread, method, config=None, conditional=None):
  """Refuses an override of a field that the `method` pipeline never reads, or that `config`
  does not read.

  `unread` maps such fields to what the pipeline reads instead (the pipeline module's
  UNREAD_FIELDS); `conditional` maps the pipeline's own fields read only under a setting (its
  CONDITIONAL_FIELDS) to (whether `config` reads them, the setting or a function giving it),
  and `CONDITIONAL_FIELDS` apply to every pipeline. Each applies to the field and to
  anything below it."""
  def covers(name, field):
    return field == name or field.startswith(name + '.')

  conditional = {**CONDITIONAL_FIELDS, **(conditional or {})}

  for field in fields:
    for name, instead in unread.items():
      if covers(name, field):
        raise UserInputError(f'--config.{field} is not read by the {method} pipeline: set '
                             f'{instead} instead.')
    for name, (reads, setting) in conditional.items():
      if config is not None and covers(name, field) and not reads(config):
        setting = setting() if callable(setting) else setting
        raise UserInputError(f'--config.{field} is read only with {setting}, which this config '
                             'does not set.')


def check_eval_config(eval_cfg):
  """config.eval: positive TTA scales, a positive max_side, a non-negative pad_multiple."""
  scales = tuple(eval_cfg.scales)
  if not scales or any(not s > 0 for s in scales):
    raise ValueError(f'config.eval.scales={scales}; expected one or more positive scales.')
  if not eval_cfg.max_side or eval_cfg.max_side < 1:
    raise ValueError(f'config.eval.max_side={eval_cfg.max_side}; expected a positive number '
                     'of pixels.')
  if eval_cfg.pad_multiple < 0:
    raise ValueError(f'config.eval.pad_multiple={eval_cfg.pad_multiple}; expected 0 (no '
                     'padding) or a positive number of pixels.')


def check_pretrained(model_cfg):
  """The file of model_cfg.pretrained, if any, exists and holds the backbone's weights, every
  key with its shape (read once; nothing is initialised)."""
  path = config_lib.field(model_cfg, 'model', 'pretrained')
  if not path:
    return
  backbone = models.make_backbone(model_cfg)
  abstract = jax.eval_shape(functools.partial(train.random_variables, backbone, (1, 64, 64, 3)),
                            jax.random.key(0))
  models.load_pretrained_backbone(abstract, path, model_cfg, scope=())


def check_writable_dir(path, what):
  """`path` is, or can be made, a directory this process can write files in."""
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise UserInputError(f'{what} {path} is not a directory that can be written '
                         f'({error.strerror or error}).') from None


def check_finished_workdir(workdir):
  """`workdir` is a directory: a finished run of this config is looked for there."""
  if not os.path.isdir(workdir):
    raise UserInputError(f'--workdir {workdir} does not exist; evaluate and predict read a '
                         'run that `--mode=train` finished there.')


def check_split(dataset_cfg, split):
  """`split` is a split of the dataset, when it is prepared (else it is checked once it is)."""
  builder, _ = data.builder_and_download_config(dataset_cfg)
  if builder.is_prepared() and split not in builder.info.splits:
    raise UserInputError(f'--split={split} is not a split of dataset {dataset_cfg.name}; '
                         f'expected one of {sorted(builder.info.splits)}.')


def for_training(config, workdir, check_config, model_configs=None, plan=None,
                 recompute_from=()):
  """Before training: the config (common fields and the pipeline's `check_config`), the
  pretrained files of `model_configs` (default [config.model]), the dataset (the
  manual_dir layout when it is not prepared yet), the workdir and, given the run's `plan`,
  the stages the workdir holds (`provenance.prepare`: those made with other settings stop the
  run; those `recompute_from` names, and what consumes them, are cleared)."""
  user_input(check_common_config, config)
  user_input(check_config, config)
  for model_cfg in model_configs or [config.model]:
    user_input(check_pretrained, model_cfg)
  user_input(data.builder_and_download_config, config.dataset)
  check_writable_dir(workdir, '--workdir')
  if plan is not None:
    user_input(provenance.prepare, workdir, plan, recompute_from)


def check_trained_with(workdir, plan, mode):
  """The stages in `workdir` were made with the settings of `plan`'s config (evaluate and
  predict, `mode`: `provenance.check`)."""
  if plan is not None:
    user_input(provenance.check, workdir, plan, mode=mode)


def for_evaluation(config, workdir, check_config, split, plan=None):
  """Before evaluating the run in `workdir` on `split`: the config, the stages in the workdir
  against `plan`, the dataset, the split."""
  user_input(check_common_config, config)
  user_input(check_config, config)
  check_finished_workdir(workdir)
  check_trained_with(workdir, plan, 'evaluate')
  user_input(data.builder_and_download_config, config.dataset)
  check_split(config.dataset, split)
  check_writable_dir(workdir, '--workdir')


def for_trained_run(config, workdir, check_config, plan=None):
  """Before predicting with the run in `workdir` (launch.py --mode=predict, `rwsjax.api`): one
  process, the config, and the stages in the workdir against `plan`."""
  if jax.process_count() > 1:
    raise UserInputError('--mode=predict runs in one process; start it without --distributed.')
  user_input(check_common_config, config)
  user_input(check_config, config)
  check_finished_workdir(workdir)
  check_trained_with(workdir, plan, 'predict')


def for_prediction(config, workdir, check_config, images, out, plan=None):
  """Before predicting with the run in `workdir`: the config, the stages in the workdir
  against `plan`, the image folder `images` (a directory holding files) and the output
  folder `out`."""
  for_trained_run(config, workdir, check_config, plan)
  if not images or not os.path.isdir(images):
    raise UserInputError(f'--images={images} is not a directory; expected a folder of JPEG or '
                         'PNG images.')
  if not any(os.path.isfile(os.path.join(images, name)) for name in os.listdir(images)):
    raise UserInputError(f'--images={images} holds no files; expected JPEG or PNG images.')
  if not out:
    raise UserInputError('--out is not set; expected the folder the masks and overlays go to.')
  check_writable_dir(out, '--out')
