"""rwsjax.inference: test-time augmentation against a hand-composed average, the strip-wise
upsampling against jax.image.resize, and evaluate / predict on a supervised `:smoke` run."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from configs_util import load_config
from rwsjax import figures
from rwsjax import inference
from rwsjax import models
from rwsjax import preflight
from rwsjax import supervised
from rwsjax import train
from rwsjax.data import pipeline


class TinySeg(nn.Module):
  """Strided conv, 1x1 classifier, logits upsampled to the input: depends on size and side."""

  @nn.compact
  def __call__(self, images):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(images))
    return models.resize_bilinear(nn.Conv(4, (1, 1))(x), images.shape[1:3])


def test_tta_is_the_mean_softmax_over_scales_and_flips():
  model = TinySeg()
  images = jax.random.normal(jax.random.key(0), (2, 12, 16, 3))
  variables = model.init(jax.random.key(1), images)
  predict_fn = lambda v, batch: model.apply(v, batch['image'])
  got = inference.tta_logits(predict_fn, variables, {'image': images}, (0.5, 1.5), True)
  probabilities = []
  for size in ((6, 8), (18, 24)):
    scaled = jax.image.resize(images, (2, *size, 3), 'bilinear')
    for flip in (False, True):
      logits = model.apply(variables, scaled[:, :, ::-1] if flip else scaled)
      logits = np.asarray(logits)[:, :, ::-1] if flip else np.asarray(logits)
      back = jax.image.resize(logits, (2, 12, 16, 4), 'bilinear')
      probabilities.append(jax.nn.softmax(back, axis=-1))
  np.testing.assert_allclose(got, np.log(np.mean(probabilities, axis=0)), atol=1e-5)
  plain = inference.tta_logits(predict_fn, variables, {'image': images}, (1.0,), False)
  np.testing.assert_allclose(plain, jax.nn.log_softmax(model.apply(variables, images)),
                             atol=1e-5)


def test_tta_resizes_and_flips_the_valid_mask_with_the_image():
  seen = []
  valid = np.zeros((1, 8, 8), bool)
  valid[:, :, :4] = True

  def predict_fn(variables, batch):
    seen.append(np.asarray(batch['valid']))
    return jnp.zeros(batch['image'].shape[:3] + (2,))

  inference.tta_logits(predict_fn, None, {'image': jnp.zeros((1, 8, 8, 3)), 'valid': valid},
                       (0.5,), True)
  expected = np.zeros((1, 4, 4), bool)
  expected[:, :, :2] = True  # at half size, nearest column j reads column 2j + 1
  np.testing.assert_array_equal(seen[0], expected)
  np.testing.assert_array_equal(seen[1], expected[:, :, ::-1])


def test_strip_upsampling_equals_jax_resize_then_argmax():
  logits = np.asarray(jax.random.normal(jax.random.key(2), (5, 7, 6)))
  expected = np.argmax(jax.image.resize(logits, (23, 31, 6), 'bilinear'), axis=-1)
  np.testing.assert_array_equal(inference.upsample_argmax(logits, (23, 31), rows=4), expected)
  np.testing.assert_array_equal(inference.upsample_argmax(logits, (5, 7)),
                                np.argmax(logits, axis=-1))


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  """(config, workdir, summary) of a supervised `:smoke` run."""
  root = tmp_path_factory.mktemp('inference')
  config = load_config('shapes_baseline', 'smoke')
  config.dataset.data_dir = str(root / 'tfds')
  workdir = str(root / 'run')
  return config, workdir, supervised.run(config, workdir)


def test_evaluate_gives_the_runs_result_and_one_scale_tta_gives_the_same(smoke_run):
  config, workdir, summary = smoke_run
  plain = inference.evaluate_run(config, workdir, supervised)
  assert plain['eval_validation'] == summary['validation']
  with open(os.path.join(workdir, 'eval_validation.json')) as f:
    assert json.load(f)['eval_validation']['miou'] == summary['validation']['miou']
  config = config.copy_and_resolve_references()
  config.eval.tta, config.eval.scales, config.eval.flip = True, (1.0,), False
  one_scale = inference.evaluate_run(config, workdir, supervised)
  assert one_scale['eval_validation_tta'] == summary['validation']
  assert one_scale['tta'] == {'scales': [1.0], 'flip': False}
  config.eval.scales, config.eval.flip = (0.5, 1.0, 1.5), True
  tta = inference.evaluate_run(config, workdir, supervised, split='train')
  assert 0.0 <= tta['eval_train_tta']['miou'] <= 1.0
  with open(os.path.join(workdir, 'eval_train_tta.md')) as f:
    assert '| supervised (2 steps) + TTA (scales 0.5-1.5, flip) |' in f.read()


def test_evaluate_and_predict_refuse_a_run_trained_with_other_settings(smoke_run, tmp_path):
  config, workdir, _ = smoke_run
  config = config.copy_and_resolve_references()
  old, config.train.lr = config.train.lr, config.train.lr * 2
  (tmp_path / 'images').mkdir()
  PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'images' / 'a.png')
  for mode, call in (('evaluate', lambda: inference.evaluate_run(config, workdir, supervised)),
                     ('predict', lambda: inference.predict_folder(
                         config, workdir, supervised, str(tmp_path / 'images'),
                         str(tmp_path / 'out')))):
    with pytest.raises(preflight.UserInputError) as error:
      call()
    assert str(error.value) == (
        f'{workdir} holds stages made with other settings than this config: supervised '
        f'(train.lr: {old!r} -> {2 * old!r}); --mode={mode} needs the config the run was '
        'trained with.')
  assert not os.path.exists(tmp_path / 'out')


def _write_images(folder):
  """Images of several sizes and kinds, a text file and an image whose stem is taken."""
  rng = np.random.default_rng(0)
  folder.mkdir()
  images = {'a.png': rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            'b.jpg': rng.integers(0, 255, (45, 27, 3), dtype=np.uint8),
            'c_gray.png': rng.integers(0, 255, (20, 36), dtype=np.uint8),
            'd_large.png': rng.integers(0, 255, (150, 70, 3), dtype=np.uint8)}
  for name, image in images.items():
    PIL.Image.fromarray(image).save(folder / name)
  PIL.Image.fromarray(images['b.jpg']).save(folder / 'a.tif')  # stem of a.png, read later
  (folder / 'notes.txt').write_text('not an image\n')
  return images


def test_predict_writes_a_palette_mask_and_an_overlay_per_image(smoke_run, tmp_path,
                                                              monkeypatch):
  config, workdir, _ = smoke_run
  config = config.copy_and_resolve_references()
  config.eval.max_side, config.eval.pad_multiple = 64, 32
  images = _write_images(tmp_path / 'images')
  warnings = []
  monkeypatch.setattr(inference.logging, 'warning',
                      lambda message, *args: warnings.append(message % args))
  out = tmp_path / 'out'
  written = inference.predict_folder(config, workdir, supervised, str(tmp_path / 'images'),
                                     str(out))
  assert sorted(os.path.basename(p) for p in written) == ['a.png', 'b.png', 'c_gray.png',
                                                          'd_large.png']
  assert len(warnings) == 2
  assert warnings[0].startswith('predict: skipping a.tif: a.png already gave the mask a.png')
  assert warnings[1].startswith('predict: skipping notes.txt: not a JPEG or PNG image')
  for name, image in images.items():
    stem = os.path.splitext(name)[0]
    mask = PIL.Image.open(out / f'{stem}.png')
    assert mask.mode == 'P' and mask.size == (image.shape[1], image.shape[0])
    np.testing.assert_array_equal(np.asarray(mask.getpalette(), np.uint8).reshape(-1, 3),
                                  figures.label_palette())
    overlay = PIL.Image.open(out / inference.OVERLAY_DIR / f'{stem}.jpg')
    assert overlay.size == mask.size
  # a.png needs no shrinking and no padding: its mask is the model's argmax on it.
  model = models.make_model(config.model, config.dataset.num_classes)
  variables = supervised.trained_predictor(config, workdir, train.make_mesh(1)).variables
  logits = model.apply(variables, pipeline.normalize(images['a.png'], config.input)[None])
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / 'a.png')),
                                np.argmax(logits[0], axis=-1))


def test_overlay_keeps_the_background_and_blends_the_classes():
  image = np.full((1, 2, 3), 100, np.uint8)
  mask = np.array([[0, 1]])
  got = inference.overlay(image, mask, background_class=0)
  np.testing.assert_array_equal(got[0, 0], image[0, 0])
  np.testing.assert_array_equal(got[0, 1],
                                np.round(0.5 * 100 + 0.5 * figures.colorize(mask)[0, 1]))
  assert not np.array_equal(inference.overlay(image, mask, None)[0, 0], image[0, 0])
