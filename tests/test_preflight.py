"""rwsjax.preflight: every check of user input fails with one sentence before any data
preparation or compute; launch.py prints it alone (docs/design.md: errors a user can cause)."""
import os
import re

import pytest

from configs_util import load_config
from configs_util import ROOT
from isimjax import isim
from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import inference
from rwsjax import preflight
from rwsjax.data import shapes
from rwsjax.models import conv
from rwsjax.models import registry
from rwsjax.models.resnet import STAGE_GEOMETRY
from rwsjax.rws import pipeline as rws_pipeline
from rwsjax import supervised
from test_launch import launch, last_line
from test_pretrained import WIDTH, fake_state_dict, save_npz


def smoke(name, tmp_path):
  config = load_config(name, 'smoke')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  return config


def training_error(config, workdir, check_config=supervised.check_config):
  with pytest.raises(preflight.UserInputError) as error:
    preflight.for_training(config, str(workdir), check_config)
  assert not os.path.exists(config.dataset.data_dir)  # nothing was prepared
  return str(error.value)


def test_pretrained_files_are_checked_key_by_key(tmp_path):
  config = smoke('shapes_rws', tmp_path)
  config.model.pretrained = str(tmp_path / 'absent.npz')
  assert training_error(config, tmp_path / 'run', rws_pipeline.check_config) == (
      f"Pretrained weights file {tmp_path / 'absent.npz'} (config.model.pretrained) does not "
      "exist: pass a torchvision ResNet state dict, or pretrain one first with `python "
      "launch.py --config=configs/shapes_pretrain.py --workdir=DIR`, which writes "
      "DIR/backbone.npz.")
  # The pretrained variant's file, not written yet: the sentence gives the command that writes
  # it (into the directory it is looked for in).
  config = load_config('shapes_rws', 'smoke,pretrained')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.model.pretrained = str(tmp_path / 'pretrain' / 'backbone.npz')
  assert training_error(config, tmp_path / 'run', rws_pipeline.check_config) == (
      f"Pretrained weights file {tmp_path / 'pretrain' / 'backbone.npz'} "
      "(config.model.pretrained) does not exist: run the pretraining command that writes it "
      "first, `python launch.py --config=configs/shapes_pretrain.py "
      f"--workdir={tmp_path / 'pretrain'}`.")
  config = smoke('shapes_rws', tmp_path)
  (tmp_path / 'notes.npz').write_text('not an archive\n')
  config.model.pretrained = str(tmp_path / 'notes.npz')
  assert 'is not a readable .npz archive of arrays' in training_error(config, tmp_path / 'run')
  config.model.width = WIDTH
  config.model.pretrained = save_npz(tmp_path, fake_state_dict(34, WIDTH))
  assert "that config.model.backbone='resnet18', width=0.125 does not have" in training_error(
      config, tmp_path / 'run')
  config.model.pretrained = save_npz(tmp_path, fake_state_dict(18, WIDTH))
  preflight.for_training(config, str(tmp_path / 'run'), rws_pipeline.check_config)


def test_config_values_are_checked(tmp_path):
  config = smoke('shapes_rws', tmp_path)
  config.rws.slice_size = 48
  assert 'config.rws.slice_size = 48 is larger than the crop' in training_error(
      config, tmp_path / 'run', rws_pipeline.check_config)
  for key, value, match in (('scales', (1.0, 0.0), 'config.eval.scales=(1.0, 0.0)'),
                            ('max_side', 0, 'config.eval.max_side=0'),
                            ('pad_multiple', -1, 'config.eval.pad_multiple=-1')):
    config = smoke('shapes_baseline', tmp_path)
    config.eval[key] = value
    assert match in training_error(config, tmp_path / 'run')
  config = smoke('shapes_baseline', tmp_path)
  config.input.scale_mode = 'crop'
  assert "config.input.scale_mode='crop'" in training_error(config, tmp_path / 'run')
  config = smoke('shapes_baseline', tmp_path)
  config.train.optimizer = 'lamb'
  assert "config.train.optimizer='lamb'" in training_error(config, tmp_path / 'run')
  config = smoke('shapes_baseline', tmp_path)
  config.dataset.num_classes = 5
  assert 'config.dataset.num_classes is 5' in training_error(config, tmp_path / 'run')
  config = smoke('shapes_isim', tmp_path)
  config.isim.regen = 'often'
  assert "config.isim.regen='often'" in training_error(config, tmp_path / 'run',
                                                       isim.check_config)


def test_every_toolkit_switch_is_declared_once_and_checked_before_compute(tmp_path):
  """config.dataset/input/model/train are built from `rwsjax.config`'s field tables: each
  switch is refused before any work with its declared values; those of the shared building
  blocks have their `config.<section>.<key>: a | b` line in docs/methods.md; the code's tables
  of options are the declared values (one place)."""
  with open(os.path.join(ROOT, 'docs/methods.md')) as f:
    methods = ' '.join(f.read().split())
  declared = {}
  for name, table in (('dataset.shapes', config_lib.SHAPES_FIELDS),
                      ('input', config_lib.INPUT_FIELDS), ('model', config_lib.MODEL_FIELDS),
                      ('train', config_lib.TRAIN_FIELDS)):
    for key, values in config_lib.switches(table).items():
      declared[f'{name}.{key}'] = values
  assert set(declared) == {'dataset.shapes.coding', 'input.scale_mode', 'model.output_stride',
                           'model.frozen_bn', 'model.upsample', 'model.dtype',
                           'model.conv_impl', 'train.optimizer'}
  for path, values in declared.items():
    if path not in ('dataset.shapes.coding', 'model.conv_impl'):  # data and implementation
      assert f'config.{path}: {" | ".join(map(str, values))}`' in methods, path
    config = smoke('shapes_baseline', tmp_path)
    *sections, key = path.split('.')
    target = config
    for part in sections:
      target = target[part]
    assert target[key] == values[0]  # the default comes first
    if isinstance(values[0], bool):
      continue  # a ConfigDict refuses a non-bool
    target[key] = 'other' if isinstance(values[0], str) else 3
    message = training_error(config, tmp_path / 'run')
    assert message.startswith(f'config.{path}='), message
    assert f'expected one of {tuple(values)}' in message, message
  assert tuple(STAGE_GEOMETRY) == declared['model.output_stride']
  assert tuple(registry.DTYPES) == declared['model.dtype']
  assert conv.CONV_IMPLS == declared['model.conv_impl']
  assert shapes.CODINGS == declared['dataset.shapes.coding']


def test_dataset_layout_and_workdir_are_checked(tmp_path):
  config = smoke('voc_rws', tmp_path)
  config.dataset.manual_dir = None
  assert training_error(config, tmp_path / 'run', rws_pipeline.check_config).startswith(
      'config.dataset.manual_dir is not set; voc_aug needs the directory holding')
  config.dataset.manual_dir = str(tmp_path / 'empty')
  assert 'voc_aug expects VOCdevkit' in training_error(config, tmp_path / 'run',
                                                       rws_pipeline.check_config)
  (tmp_path / 'file').write_text('')
  config = smoke('shapes_baseline', tmp_path)
  assert training_error(config, tmp_path / 'file' / 'run').startswith(
      f"--workdir {tmp_path / 'file' / 'run'} is not a directory that can be written")


def test_evaluate_and_predict_need_a_finished_run_and_their_folders(tmp_path):
  config = smoke('shapes_baseline', tmp_path)
  with pytest.raises(preflight.UserInputError, match='does not exist; evaluate and predict'):
    preflight.for_evaluation(config, str(tmp_path / 'absent'), supervised.check_config,
                             'validation')
  os.makedirs(tmp_path / 'run')
  with pytest.raises(preflight.UserInputError, match='holds no finished run of 2 steps'):
    inference.evaluate_run(config, str(tmp_path / 'run'), supervised)
  images = tmp_path / 'images'
  for path, match in ((tmp_path / 'absent', 'is not a directory'),
                      (images, 'holds no files')):
    os.makedirs(images, exist_ok=True)
    with pytest.raises(preflight.UserInputError, match=match):
      preflight.for_prediction(config, str(tmp_path / 'run'), supervised.check_config,
                               str(path), str(tmp_path / 'out'))
  (images / 'a.png').write_bytes(b'')
  with pytest.raises(preflight.UserInputError, match='--out is not set'):
    preflight.for_prediction(config, str(tmp_path / 'run'), supervised.check_config,
                             str(images), None)
  with pytest.raises(preflight.UserInputError, match='is not a directory that can be written'):
    preflight.for_prediction(config, str(tmp_path / 'run'), supervised.check_config,
                             str(images), str(images / 'a.png'))


def test_an_unknown_split_of_a_prepared_dataset(tmp_path):
  config = smoke('shapes_baseline', tmp_path)
  os.makedirs(tmp_path / 'run')
  data.load_builder(config.dataset)
  with pytest.raises(preflight.UserInputError, match=r"--split=test is not a split of dataset "
                                                     r"shapes; expected one of \['train', "
                                                     r"'validation'\]"):
    preflight.for_evaluation(config, str(tmp_path / 'run'), supervised.check_config, 'test')


def test_launch_stops_at_a_missing_pretrained_file_before_preparing_data(tmp_path):
  result = launch('--config=configs/shapes_rws.py', f"--workdir={tmp_path / 'run'}",
                  f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                  '--config.model.pretrained=/tmp/nonexistent.npz', timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert last_line(result.stderr) == (
      'launch.py: Pretrained weights file /tmp/nonexistent.npz (config.model.pretrained) does '
      'not exist: pass a torchvision ResNet state dict, or pretrain one first with `python '
      'launch.py --config=configs/shapes_pretrain.py --workdir=DIR`, which writes '
      'DIR/backbone.npz.')
  assert not os.path.exists(tmp_path / 'tfds')
  result = launch('--config=configs/shapes_baseline.py:smoke', f"--workdir={tmp_path / 'none'}",
                  '--mode=evaluate', timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert last_line(result.stderr).startswith(f"launch.py: --workdir {tmp_path / 'none'} does "
                                             "not exist")
  result = launch('--config=configs/shapes_baseline.py:smoke', f'--workdir={tmp_path}',
                  f'--images={tmp_path}', timeout=120)
  assert last_line(result.stderr) == ('launch.py: --images goes with --mode=predict, not '
                                      '--mode=train.')
  assert result.returncode != 0


def test_overrides_of_fields_a_pipeline_never_reads_are_refused(tmp_path):
  assert preflight.config_overrides(['--config=c.py', '--config.train.steps=3', '--workdir=w',
                                     '--config.rws.t_fixed', '0.2']) == ['train.steps',
                                                                         'rws.t_fixed']
  unread = {'train.steps': 'x', 'psa': 'y'}
  preflight.check_overrides(['train.steps_per_epoch', 'train.lr', 'psa_x'], unread, 'm')
  for field in ('train.steps', 'psa.final.epochs'):
    with pytest.raises(preflight.UserInputError, match=rf'^--config.{field} is not read by the '
                                                       r'm pipeline: set [xy] instead.$'):
      preflight.check_overrides(['train.lr', field], unread, 'm')
  result = launch('--config=configs/shapes_rws.py:smoke', f"--workdir={tmp_path / 'run'}",
                  f"--config.dataset.data_dir={tmp_path / 'tfds'}", '--config.train.steps=200',
                  timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert last_line(result.stderr) == (
      'launch.py: --config.train.steps is not read by the rws pipeline: set '
      'config.rws.stage1_steps, stage2_steps and stage3_steps instead.')
  assert not os.path.exists(tmp_path / 'tfds') and not os.path.exists(tmp_path / 'run')


def test_overrides_of_fields_this_config_does_not_read_are_refused(tmp_path):
  config = load_config('shapes_rws', 'smoke')
  assert config.train.optimizer == 'adamw' and config.rws.weak_rule == 'curve'
  for field, setting in (('train.momentum', "config.train.optimizer='sgd'"),
                         ('model.upsample', "config.model.name='unet'"),
                         ('rws.t_fixed', "config.rws.weak_rule='fixed'")):
    with pytest.raises(preflight.UserInputError,
                       match=re.escape(f'--config.{field} is read only with {setting}, ')):
      preflight.check_overrides(['train.lr', field], {}, 'rws', config,
                                rws_pipeline.CONDITIONAL_FIELDS)
  config.unlock()
  config.train.optimizer, config.model.name, config.rws.weak_rule = 'sgd', 'unet', 'fixed'
  preflight.check_overrides(['train.momentum', 'model.upsample', 'rws.t_fixed'], {}, 'rws',
                            config, rws_pipeline.CONDITIONAL_FIELDS)
  isim_config = load_config('shapes_isim', 'smoke')
  preflight.check_overrides(['psa.final.epochs', 'psa.alpha'], {}, 'isim', isim_config,
                            isim.CONDITIONAL_FIELDS)
  isim_config.unlock()
  isim_config.psa.enabled = False
  preflight.check_overrides(['psa.enabled', 'isim.epochs'], {}, 'isim', isim_config,
                            isim.CONDITIONAL_FIELDS)
  with pytest.raises(preflight.UserInputError, match=re.escape(
      '--config.psa.final.train.lr is read only with config.psa.enabled=True, ')):
    preflight.check_overrides(['psa.final.train.lr'], {}, 'isim', isim_config,
                              isim.CONDITIONAL_FIELDS)
  result = launch('--config=configs/shapes_rws.py:smoke', f"--workdir={tmp_path / 'run'}",
                  '--config.rws.integration=retrain', '--config.rws.stage3_init=fresh',
                  '--config.rws.stage3_warmup=20', timeout=120)
  assert last_line(result.stderr) == (
      "launch.py: --config.rws.stage3_warmup is read only with config.rws.integration='retrain' "
      "and config.rws.stage3_init='stage1', which this config does not set.")
  assert not os.path.exists(tmp_path / 'run')
