"""The RWS configs of the four real datasets: the full configs carry the paper's settings
(section V), and each `:smoke` variant runs the whole pipeline on a fake tree of its dataset."""
import json
import os

import numpy as np
import pytest

import fake_datasets
import fake_voc
from configs_util import load_config
from rwsjax import data
from rwsjax.rws import pipeline as rws_pipeline

# Paper section V: (lr, weight decay, crop (h, w), batch, iterations) and the class count.
PAPER = {
    'voc_rws': (0.01, 5e-4, (512, 512), 16, 30000, 21),
    'cocostuff_rws': (0.001, 1e-4, (512, 512), 16, 60000, 171),
    'ade20k_rws': (0.01, 5e-4, (512, 512), 16, 160000, 150),
    'cityscapes_rws': (0.01, 5e-4, (512, 1024), 8, 80000, 19),
}
FAKE_TREES = {
    'voc_rws': fake_voc.write_tree,
    'cocostuff_rws': lambda root: fake_datasets.write_cocostuff(root, base=(30, 40)),
    'ade20k_rws': lambda root: fake_datasets.write_ade20k(root, base=(36, 44)),
    'cityscapes_rws': lambda root: fake_datasets.write_cityscapes(root, shape=(32, 64)),
}


@pytest.mark.parametrize('name', sorted(PAPER))
def test_full_config_has_the_paper_settings(name):
  lr, weight_decay, crop, batch, steps, num_classes = PAPER[name]
  config = load_config(name)
  assert config.train.lr == lr and config.rws.stage3_lr == lr
  assert config.train.weight_decay == weight_decay
  assert tuple(config.input.crop_size) == crop
  assert config.input.batch_size == batch
  assert config.rws.stage1_steps == steps
  assert config.dataset.num_classes == num_classes == data.num_classes(config.dataset)
  assert (config.model.name, config.model.backbone, config.model.output_stride,
          config.model.width, config.model.head_channels) == ('deeplabv3', 'resnet101', 8, 1.0,
                                                              256)
  assert config.method == 'rws'
  rws_pipeline.check_config(config)


@pytest.mark.parametrize('name', sorted(FAKE_TREES))
def test_smoke_config_runs_rws_on_a_fake_tree(name, tmp_path):
  config = load_config(name, 'smoke')
  FAKE_TREES[name](tmp_path / 'manual')
  config.dataset.manual_dir = str(tmp_path / 'manual')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  workdir = tmp_path / 'run'
  rws_pipeline.run(config, str(workdir))
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  names = data.class_names(config.dataset)
  for key in ('stage1', 'rws', 'baseline'):
    assert np.isfinite(summary[key]['miou']), key
    assert set(summary[key]['per_class_iou']) <= set(names), key
  assert [r['round'] for r in summary['rounds']] == list(range(1, len(summary['rounds']) + 1))
  assert all(np.isfinite(r['threshold']) for r in summary['rounds'])
  assert summary['run']['config']['rws'] == json.loads(json.dumps(config.rws.to_dict()))
  trained = sum(r['trained'] for r in summary['rounds'])
  assert summary['total_steps'] == 2 + 4 * trained
  assert os.path.exists(workdir / 'results.md')
