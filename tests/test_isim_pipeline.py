"""The ISIM pipeline end to end, PSA stages included: the VOC `:smoke` config on a fake VOC tree,
stage caching and resume after a kill, the final tables, and the classification metrics
against hand-computed values."""
import json
import os

import numpy as np
import PIL.Image
import pytest

import fake_voc
from configs_util import ROOT, load_config
from isimjax import config as isim_config
from isimjax import isim
from isimjax import psa
from isimjax import self_train
from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import inference
from rwsjax import provenance


def voc_smoke_config(tmp_path):
  config = load_config('voc_isim', 'smoke')
  config.dataset.manual_dir = str(tmp_path / 'manual')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  return config


LAYER_NAMES = [name for name, _ in isim.STAGES]
KILLED = (0, 2)  # examples whose random-walk labels the simulated kill leaves unwritten


def _kill_random_walk(workdir):
  """What a kill during the random walk leaves: no stage record, the marker of its start and
  some labels missing. Returns {path: (label, mtime)} of the labels removed and of those
  kept."""
  path = os.path.join(workdir, 'stages', 'psa_random_walk.json')
  with open(path) as f:
    stamp = json.load(f)[provenance.KEY]
  with open(provenance.started_path(path), 'w') as f:
    json.dump({provenance.KEY: stamp}, f)
  os.remove(path)
  removed, kept = {}, {}
  for name in ('rw', 'rw_crf'):
    directory = os.path.join(workdir, 'psa', name)
    for file in sorted(os.listdir(directory)):
      path = os.path.join(directory, file)
      entry = (np.asarray(PIL.Image.open(path)), os.path.getmtime(path))
      if int(file[:-4]) in KILLED:
        removed[path] = entry
        os.remove(path)
      else:
        kept[path] = entry
  return removed, kept


@pytest.fixture(scope='module')
def voc_run(tmp_path_factory):
  """A run stopped after ISIM training, resumed up to the random walk, killed during the
  random walk, then resumed to the end."""
  tmp_path = tmp_path_factory.mktemp('voc_isim')
  fake_voc.write_tree(tmp_path / 'manual')
  config = voc_smoke_config(tmp_path)
  workdir = str(tmp_path / 'run')
  first = isim.run(config, workdir, stage_list=isim.STAGES[:1])
  train_mtime = os.path.getmtime(os.path.join(workdir, 'stages', 'isim_train.json'))
  walked = isim.run(config, workdir,
                    stage_list=isim.STAGES[:LAYER_NAMES.index('psa_random_walk') + 1])
  removed, kept = _kill_random_walk(workdir)
  results = isim.run(config, workdir)
  return config, workdir, first, train_mtime, results, (walked, removed, kept)


def test_every_stage_ran_once_and_reports(voc_run):
  config, workdir, first, train_mtime, results, _ = voc_run
  assert list(results) == LAYER_NAMES
  assert results['isim_train'] == first['isim_train']
  assert os.path.getmtime(os.path.join(workdir, 'stages', 'isim_train.json')) == train_mtime
  assert [r['epoch'] for r in results['isim_train']['rounds']] == [1, 2]
  train_size = results['isim_eval']['classification']['train']['images']
  assert train_size == len(fake_voc.TRAINAUG)
  for key in ('isim_eval', 'baseline_eval'):
    for labels in ('cam', 'cam_crf'):
      assert 0.0 <= results[key][labels]['miou'] <= 1.0
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['stages']['isim_eval']['rounds'][1]['round'] == 2
  assert summary['run']['config']['isim'] == json.loads(json.dumps(config.isim.to_dict()))
  assert summary['run']['seed'] == config.seed
  with open(os.path.join(workdir, 'results.md')) as f:
    table = f.read()
  assert '| CAM + dCRF |' in table and 'DeepLabCAM' in table
  assert table.count('\n| 1 | 1 |') == 1 and table.count('\n| 2 | 2 |') == 1
  assert os.path.getsize(os.path.join(workdir, 'isim_pseudo_labels.png')) > 0
  numbers = summary['psa']
  assert set(numbers) == {'cam', 'isim', 'isim_rw', 'isim_rw_crf', 'final'}
  assert numbers['isim_rw_crf'] == results['psa_random_walk']['rw_crf']['miou']
  assert numbers['final'] == results['psa_final']['validation']['miou']
  assert f'| DeepLabCAM + RW + dCRF | {100 * numbers["isim_rw_crf"]:.2f} |' in table
  assert results['psa_final']['steps'] == 1 and results['psa_affinity_train']['steps'] == 1
  assert 0.0 < results['psa_affinity_labels']['coverage'] <= 1.0
  assert os.path.getsize(os.path.join(workdir, 'psa_final_predictions.png')) > 0


def test_evaluate_restores_the_final_model_or_without_psa_the_isim_model(voc_run):
  config, workdir, _, _, results, _ = voc_run
  evaluated = inference.evaluate_run(config, workdir, isim)
  assert evaluated['eval_validation'] == results['psa_final']['validation']
  assert evaluated['network'] == f'{psa.final_title(config)} on the DeepLabCAM + PSA labels'
  config = config.copy_and_resolve_references()
  config.psa.enabled = False
  evaluated = inference.evaluate_run(config, workdir, isim)
  assert evaluated['network'] == 'DeepLabCAM'
  assert 0.0 <= evaluated['eval_validation']['miou'] <= 1.0


def test_a_killed_random_walk_redoes_only_its_missing_labels(voc_run):
  _, _, _, _, results, (walked, removed, kept) = voc_run
  for name in LAYER_NAMES[:LAYER_NAMES.index('psa_random_walk')]:
    assert results[name] == walked[name]
  without_time = lambda r: {k: v for k, v in r.items() if k != 'seconds'}
  assert without_time(results['psa_random_walk']) == without_time(walked['psa_random_walk'])
  assert len(removed) == 2 * len(KILLED)
  for path, (label, mtime) in kept.items():
    assert os.path.getmtime(path) == mtime
  for path, (label, _) in removed.items():
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), label)


def test_psa_labels_cover_the_split_with_the_image_classes(voc_run):
  config, workdir, _, _, _, _ = voc_run
  source = data.load_source(config.dataset, 'train')
  for name in ('affinity_labels', 'rw', 'rw_crf'):
    store = self_train.label_store(os.path.join(workdir, 'psa', name), source)
    assert store.complete
    for i in range(len(source)):
      example = source[i]
      allowed = {0, 255} | set((np.flatnonzero(example['labels']) + 1).tolist())
      assert store[i].shape == example['image'].shape[:2]
      assert set(np.unique(store[i]).tolist()) <= allowed
      if name != 'affinity_labels':
        assert 255 not in store[i]


def test_pseudo_labels_cover_the_training_split_at_image_size(voc_run):
  config, workdir, _, _, results, _ = voc_run
  source = data.load_source(config.dataset, 'train')
  for record in results['isim_train']['rounds']:
    for i in range(len(source)):
      path = os.path.join(record['directory'], f'{i:08d}.png')
      assert os.path.exists(path)
  store = self_train.label_store(record['directory'], source)
  label = store[len(source) - 1]
  assert label.shape == source[len(source) - 1]['image'].shape[:2]
  assert label.max() < config.dataset.num_classes


def test_a_finished_run_is_not_redone(voc_run):
  config, workdir, _, _, results, _ = voc_run
  mtimes = {n: os.path.getmtime(os.path.join(workdir, 'stages', f'{n}.json'))
            for n, _ in isim.STAGES}
  again = isim.run(config, workdir)
  assert again == results
  assert mtimes == {n: os.path.getmtime(os.path.join(workdir, 'stages', f'{n}.json'))
                    for n, _ in isim.STAGES}


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  config = voc_smoke_config(tmp_path)
  config.dataset.manual_dir = None
  with pytest.raises(ValueError, match='config.dataset.manual_dir is not set'):
    isim.run(config, str(tmp_path / 'run'))


def test_voc_config_carries_the_paper_settings():
  config = load_config('voc_isim')
  assert (config.method, config.dataset.name, config.dataset.num_classes) == ('isim', 'voc_aug',
                                                                              21)
  assert (config.model.name, config.model.backbone, config.model.width) == ('deeplabv3',
                                                                            'resnet101', 1.0)
  assert tuple(config.input.crop_size) == (320, 320) and config.input.scale_mode == 'long_side'
  isim_cfg = config.isim
  assert (isim_cfg.epochs, isim_cfg.first_regen_epoch, isim_cfg.regen_every) == (50, 5, 10)
  assert (isim_cfg.lr_encoder, isim_cfg.lr_decoder, isim_cfg.lr_classifier) == (0.1, 0.01, 1.0)
  assert (config.train.optimizer, config.train.momentum) == ('sgd', 0.9)
  assert tuple(isim_cfg.cam_scales) == (1.0, 0.5, 1.5, 2.0) and isim_cfg.cam_threshold == 0.3
  assert config.dataset.manual_dir is None
  psa_cfg = config.psa
  aff, final = psa.stage_config(config, 'affinity'), psa.stage_config(config, 'final')
  assert (psa_cfg.aff_fg, psa_cfg.aff_bg, psa_cfg.radius) == (0.3, 0.1, 5)
  assert (psa_cfg.beta, psa_cfg.logt, psa_cfg.alpha) == (8, 8, 16)
  assert (aff.model.backbone, aff.model.output_stride, psa_cfg.init) == ('resnet101', 8,
                                                                        'imagenet')
  assert (psa_cfg.affinity.epochs, aff.input.batch_size, tuple(aff.input.crop_size)) == (
      3, 16, (512, 512))
  assert (aff.train.lr, psa_cfg.head_lr_mult, aff.train.weight_decay) == (0.1, 10.0, 5e-4)
  assert (final.model.name, final.model.backbone, psa_cfg.final.epochs) == ('deeplabv3',
                                                                            'resnet101', 50)
  assert tuple(final.input.crop_size) == (512, 512) and psa_cfg.final_labels == 'rw_crf'


def test_shapes_configs_load():
  full, smoke = load_config('shapes_isim'), load_config('shapes_isim', 'smoke')
  assert full.method == smoke.method == 'isim'
  assert smoke.isim.steps_per_epoch == 2 and smoke.isim.epochs == 3


def test_every_isim_and_psa_switch_is_declared_once_with_its_line_in_methods():
  """config.isim and config.psa are declared in `isimjax.config`'s field tables: each switch
  has its `config.<section>.<key>: a | b` line in docs/methods.md, a run refuses another
  value, and the PSA fields are read only with the PSA stages."""
  with open(os.path.join(ROOT, 'docs/methods.md')) as f:
    methods = ' '.join(f.read().split())
  config = isim_config.isim_config()
  for section, fields in (('isim', isim_config.ISIM_FIELDS), ('psa', isim_config.PSA_FIELDS)):
    for key, values in config_lib.switches(fields).items():
      assert config[section][key] in values, key
      assert f'config.{section}.{key}: {" | ".join(map(str, values))}`' in methods, key
  config.psa.walk_scale = 3
  with pytest.raises(ValueError, match=r'config\.psa\.walk_scale=3; expected one of '
                                       r'\(1, 2, 4, 8\)\.'):
    isim.check_config(config)
  assert isim.CONDITIONAL_FIELDS['psa.radius'] == isim_config.PSA_ON
  assert {'psa.affinity', 'psa.final', 'psa.sweep_logt'} <= set(isim.CONDITIONAL_FIELDS)
  assert 'psa.enabled' not in isim.CONDITIONAL_FIELDS
