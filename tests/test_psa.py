"""isimjax.psa and the PSA parts of isimjax.isim: stage configs, config checks, the CRF
choices, label streaming, AffinityNet batches, and the Table 7 / 11 numbers, against
hand-computed values and independent computations."""
import functools

import numpy as np
import PIL.Image
import pytest

from isimjax import affinity
from isimjax import config as isim_config
from isimjax import crf
from isimjax import isim
from isimjax import psa
from rwsjax import models
from rwsjax import parts
from rwsjax import stages
from rwsjax import train
from rwsjax.data import pipeline


def test_stage_config_overrides_three_sections_and_follows_the_model():
  config = isim_config.isim_config()
  config.model.backbone = 'resnet50'
  config.model.output_stride = 16
  config.psa.final.train.lr = 0.02
  config.lock()
  aff, final = psa.stage_config(config, 'affinity'), psa.stage_config(config, 'final')
  assert (aff.model.backbone, aff.model.output_stride) == ('resnet50', 8)
  assert tuple(aff.input.crop_size) == (448, 448) and aff.input.batch_size == 8
  assert (aff.train.optimizer, aff.train.lr, aff.train.weight_decay) == ('sgd', 0.1, 5e-4)
  assert (final.model.name, final.model.backbone, final.model.output_stride) == (
      'deeplabv3', 'resnet50', 16)
  assert final.train.lr == 0.02 and tuple(final.input.scale_range) == (0.5, 2.0)
  assert aff.input.mean == config.input.mean and aff.train.poly_power == 0.9
  assert config.model.output_stride == 16 and tuple(config.input.crop_size) == (96, 96)
  assert config.train.lr == 3e-3
  assert psa.final_title(config) == 'DeepLabv3 (resnet50)'
  with config.unlocked():
    config.psa.final.model.name = 'deeplabv2'
  assert psa.final_title(config) == 'DeepLabv2 (resnet50)'
  head = models.make_model(psa.stage_config(config, 'final').model, 21).head
  assert isinstance(head, models.DeepLabV2Head)


@pytest.mark.parametrize('field,value,match', [
    ('label_crf', 'other', 'config.psa.label_crf'),
    ('init', 'scratch', 'config.psa.init'),
    ('final_labels', 'cam', 'config.psa.final_labels'),
    ('aff_bg', 0.5, 'aff_bg'),
    ('radius', 1, 'config.psa.radius'),
    ('walk_scale', 3, 'config.psa.walk_scale'),
    ('walk_scale', 2, r'scale_range=\(1.0, 1.0\); include 2'),
])
def test_check_config_names_the_offending_key(field, value, match):
  config = isim_config.isim_config()
  config.psa[field] = value
  with pytest.raises(ValueError, match=match):
    psa.check_config(config)


def test_check_config_geometry_and_models():
  config = isim_config.isim_config()
  psa.check_config(config)
  config.psa.affinity.model.output_stride = 16
  with pytest.raises(ValueError, match='output_stride'):
    psa.check_config(config)
  config.psa.affinity.model.output_stride = 8
  config.psa.affinity.input.crop_size = (64, 64)
  with pytest.raises(ValueError, match=r'crop_size=\(64, 64\)'):
    psa.check_config(config)
  config.psa.radius = 2
  psa.check_config(config)
  config.psa.final.model.name = 'segformer'
  with pytest.raises(ValueError, match='config.psa.final.model'):
    psa.check_config(config)


def test_walk_scale_enlarges_as_the_training_pipeline_and_sets_the_stride():
  config = isim_config.isim_config()
  config.psa.walk_scale = 2
  config.psa.affinity.input.scale_range = (0.5, 2.0)
  psa.check_config(config)
  assert psa.walk_stride(config.psa) == 4 and psa.walk_options(config.psa)['stride'] == 4
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  enlarged = psa.enlarge(images, 2)
  assert enlarged.shape == (2, 10, 14, 3) and enlarged.dtype == np.uint8
  for image, large in zip(images, enlarged):
    np.testing.assert_array_equal(large, pipeline.resize(image, (10, 14), PIL.Image.BILINEAR))
  assert psa.enlarge(images, 1) is images


def test_epoch_steps():
  sub = isim_config.isim_config()
  sub.input.batch_size = 4
  assert psa.epoch_steps(sub, range(10), 3) == 6
  assert psa.epoch_steps(sub, range(10), 0.5) == 1
  with pytest.raises(ValueError, match='3 examples, fewer than the batch size 4 of config.psa'):
    psa.epoch_steps(sub, range(3), 1)


def test_crf_choices():
  config = isim_config.isim_config()
  assert psa.label_crf_fn(config.psa) is affinity.hard_label_crf
  walk = psa.walk_crf_fn(config.psa)
  assert walk.func is crf.crf_refine_probs and walk.keywords['params'] == crf.CrfParams(
      iterations=1)
  config.psa.label_crf = 'psa'
  config.psa.rw_crf_iterations = 3
  labels = psa.label_crf_fn(config.psa)
  assert labels.keywords['params'] == crf.CrfParams(bilateral_sxy=80.0, bilateral_srgb=13.0)
  assert psa.walk_crf_fn(config.psa).keywords['params'] == crf.CrfParams(
      bilateral_sxy=80.0, bilateral_srgb=13.0, iterations=3)


def _source(count, shape, seed):
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
           'segmentation': np.zeros((*shape, 1), np.uint8),
           'labels': np.ones(3, np.float32)} for _ in range(count)]


def test_affinity_batches_are_the_training_batches_with_labels_at_stride_8():
  source = _source(4, (20, 28), seed=1)
  rng = np.random.default_rng(2)
  labels = [rng.choice(np.array([0, 1, 3, 255], np.uint8), (20, 28)) for _ in source]
  sub = isim_config.isim_config()
  sub.input.crop_size = (24, 24)
  sub.input.batch_size = 4
  sub.input.scale_range = (0.8, 1.2)
  mesh = train.make_mesh(1)
  source, labels = parts.Part(source, 0, 4), parts.Part(labels, 0, 4)
  got = next(psa.affinity_batches(source, sub, mesh, seed=3, label_source=labels)(5))
  full = next(stages.train_batches(source, sub, mesh, seed=3, label_source=labels)(5))
  np.testing.assert_array_equal(got['image'], full['image'])
  assert got['segmentation'].shape == (4, 3, 3)
  np.testing.assert_array_equal(got['segmentation'], full['segmentation'][:, 4::8, 4::8])


def test_with_backbone_takes_the_donor_backbone_only():
  own = {'params': {'backbone': {'w': np.zeros(3)}, 'head': {'w': np.zeros(2)}},
         'batch_stats': {'backbone': {'mean': np.zeros(3)}}}
  donor = {'params': {'backbone': {'w': np.ones(3)}, 'classifier': {'w': np.ones(5)}},
           'batch_stats': {'backbone': {'mean': np.ones(3)}}}
  got = psa._with_backbone(own, donor)  # pylint: disable=protected-access
  np.testing.assert_array_equal(got['params']['backbone']['w'], np.ones(3))
  np.testing.assert_array_equal(got['params']['head']['w'], np.zeros(2))
  assert set(got['params']) == {'backbone', 'head'}
  np.testing.assert_array_equal(got['batch_stats']['backbone']['mean'], np.ones(3))
  donor['params']['backbone']['w'] = np.ones(4)
  with pytest.raises(ValueError, match='config.psa.affinity.model'):
    psa._with_backbone(own, donor)  # pylint: disable=protected-access


def test_affinity_label_quality_by_hand():
  gt = np.array([[0, 0, 1, 1], [2, 2, 255, 0]], np.uint8)
  labels = np.array([[0, 255, 1, 0], [2, 255, 1, 255]], np.uint8)
  source = [{'segmentation': gt[..., None]}]
  quality = isim.affinity_label_quality([labels], source, 3, ['bg', 'a', 'b'])
  # 7 ground-truth pixels; 4 of them confident: gt 0 -> 0, gt 1 -> 1, gt 1 -> 0, gt 2 -> 2.
  assert quality['coverage'] == pytest.approx(4 / 7)
  assert quality['pixel_accuracy'] == pytest.approx(3 / 4)
  # IoU: bg 1 / (1 + 1), a 1 / (1 + 1), b 1.
  assert quality['miou'] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_psa_table_and_numbers():
  config = isim_config.isim_config()
  results = {
      'baseline_eval': {'cam': {'miou': 0.4}},
      'isim_eval': {'cam': {'miou': 0.5}},
      'psa_random_walk': {'rw': {'miou': 0.61}, 'rw_crf': {'miou': 0.625}},
      'psa_final': {'model': 'DeepLabv3 (resnet18)', 'labels': 'rw_crf',
                    'validation': {'miou': 0.7}},
  }
  assert isim.psa_numbers(config, results) == {'cam': 0.4, 'isim': 0.5, 'isim_rw': 0.61,
                                               'isim_rw_crf': 0.625, 'final': 0.7}
  lines = isim.psa_table(config, results)
  assert '| CAM | 40.00 |' in lines and '| DeepLabCAM | 50.00 |' in lines
  assert '| DeepLabCAM + RW | 61.00 |' in lines
  assert '| DeepLabCAM + RW + dCRF | 62.50 |' in lines
  assert '| DeepLabCAM + PSA | resnet18 | 50.00 | 62.50 | 70.00 |' in lines
  del results['baseline_eval']
  results['psa_final']['labels'] = 'rw'
  lines = isim.psa_table(config, results)
  assert '| CAM | - |' in lines
  assert '| DeepLabCAM + PSA | resnet18 | 50.00 | 61.00 | 70.00 |' in lines


def test_affinity_labels_stage_helpers_agree_with_the_pure_function():
  config = isim_config.isim_config()
  make = functools.partial(affinity.affinity_labels_from_cams, crf_fn=psa.label_crf_fn(
      config.psa), stride=1)
  rng = np.random.default_rng(4)
  cams = rng.uniform(0, 0.6, (3, 10, 12)).astype(np.float32)
  image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
  present = np.array([1, 0, 1])
  got = make(cams, present, image=image)
  ids = np.array([0, 1, 3])
  maps = []
  for bg_score in (0.3, 0.1):
    scores = np.stack([np.full((10, 12), bg_score, np.float32), cams[0], cams[2]])
    maps.append(ids[crf.crf_refine_labels(image, scores.argmax(axis=0), 3,
                                          class_ids=[0, 1, 2])])
  la, lb = maps
  expected = np.where(lb == 0, 0, np.where(la > 0, la, 255))
  np.testing.assert_array_equal(got, expected)
