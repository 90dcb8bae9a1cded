"""The RWS pipeline: round stop rule, config checks, the stage-3 fused loss against its parts,
the RWS network against a hand-composed fused forward pass and on padded images, the analysis
against a naive loop, what each stage starts from, and a smoke run of all stages with
kill-and-resume."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from configs_util import ROOT, load_config
from rwsjax import config as config_lib
from rwsjax import inference
from rwsjax import losses
from rwsjax import models
from rwsjax import parts
from rwsjax import preflight
from rwsjax import provenance
from rwsjax import stage_runner
from rwsjax import stages
from rwsjax.rws import analysis as rws_analysis
from rwsjax.rws import config as rws_config
from rwsjax.rws import network as rws_network
from rwsjax.rws import pipeline as rws_pipeline
from rwsjax.rws import segcam
from rwsjax.rws import slices
from rwsjax import train
from rwsjax.data import pipeline
from test_fusion import _reference as fusion_reference
from test_segcam import PadFreeSeg, TinySeg, pad_bottom_right, padfree_variables, setup_model


def test_should_stop():
  assert rws_analysis.should_stop([0], 20)
  assert not rws_analysis.should_stop([100], 20)
  assert rws_analysis.should_stop([100, 85], 20)
  assert not rws_analysis.should_stop([100, 79], 20)
  assert not rws_analysis.should_stop([100, 121], 20)
  assert rws_analysis.should_stop([100, 50, 0], 20)


def test_weak_share_advice_outside_a_tenth_to_a_half():
  advice = rws_analysis.weak_share_advice
  for share in (None, 0.1, 0.2, 0.5):
    assert advice(share, 'curve') is None
  assert 't_min_share' in advice(0.035, 'curve') and '3.5%' in advice(0.035, 'curve')
  assert 'background_class' in advice(0.99, 'curve') and '99.0%' in advice(0.99, 'curve')
  assert advice(0.99, 'fixed') is None and advice(0.01, 'fixed') is None


def test_every_rws_switch_has_its_default_and_its_line_in_methods():
  """The recipe for an RWS variant (README, Extending): declared once in `rws.config.FIELDS`
  (values, default, doc, when read), `config.rws.<key>: a | b` in docs/methods.md; the run
  refuses another value, and an override of a field its config does not read."""
  defaults = rws_config.default_config()
  with open(os.path.join(ROOT, 'docs/methods.md')) as f:
    methods = ' '.join(f.read().split())
  choices = config_lib.switches(rws_config.FIELDS)
  assert len(choices) == 11 and set(choices) < set(defaults)
  for key, values in choices.items():
    assert defaults[key] in values, key
    assert f'config.rws.{key}: {" | ".join(values)}`' in methods, key
  config = load_config('shapes_rws')
  config.rws.t_rule = 'steepest'
  with pytest.raises(ValueError, match=r"config\.rws\.t_rule='steepest'; expected one of "
                                       r"\('first_flat', 'last_flat', 'robust'\)\."):
    rws_pipeline.check_config(config)
  assert set(rws_pipeline.CONDITIONAL_FIELDS) == {
      'rws.stage3_steps', 'rws.stage3_init', 'rws.stage3_lr', 'rws.stage3_warmup',
      'rws.local_scale', 'rws.t_fixed', 'rws.t_noise_z'}
  config = load_config('shapes_rws')
  with pytest.raises(preflight.UserInputError, match="config.rws.t_rule='robust'"):
    preflight.check_overrides(['rws.t_noise_z'], {}, 'rws', config,
                              rws_pipeline.CONDITIONAL_FIELDS)


def test_fine_testbed_is_shapes_rws_with_small_markers_and_sparser_curve_bins_left_out():
  """configs/shapes_fine_rws.py differs from configs/shapes_rws.py in the fine classes and
  t_min_share only, full size and :smoke."""
  for arg in (None, 'smoke'):
    base, fine = load_config('shapes_rws', arg), load_config('shapes_fine_rws', arg)
    assert (fine.dataset.shapes.fine_classes, fine.rws.t_min_share) == (3, 0.05)
    assert base.rws.t_min_share == 0.01
    fine.dataset.shapes.fine_classes = base.dataset.shapes.fine_classes
    fine.rws.t_min_share = base.rws.t_min_share
    assert fine.to_dict() == base.to_dict()


def test_class_thresholds_hold_the_background_to_its_own_curve():
  """analysis.threshold (docs/methods.md RWS 4): every class is held to T, the mean of the
  T_c; under weak_classes='own_threshold' the background is held to its own T_c and takes no
  part in T; weak_windows compares each entry with its class's threshold."""
  rng = np.random.default_rng(0)
  att = rng.uniform(size=(4000, 3))
  knees = np.array([0.2, 0.5, 0.7])
  iou = 0.1 + 0.6 * np.minimum(att / knees, 1.0)  # noise-free: T_c is the paper's first flat
  hist = slices.curve_histogram(att, iou, np.ones(att.shape, bool))
  rws = rws_config.default_config()
  _, per_class, _ = slices.threshold_from_histogram(*hist)
  assert per_class[0] < per_class[1] < per_class[2]
  rws.weak_classes = 'all'
  t, thresholds, _, _ = rws_analysis.threshold(*hist, rws, background=0)
  assert t == pytest.approx(per_class.mean()) and np.all(thresholds == t)
  rws.weak_classes = 'own_threshold'
  t, thresholds, _, _ = rws_analysis.threshold(*hist, rws, background=0)
  assert t == pytest.approx(per_class[1:].mean())
  np.testing.assert_allclose(thresholds, [per_class[0], t, t])
  rws.weak_rule, rws.t_fixed = 'fixed', 0.4
  assert np.all(rws_analysis.threshold(*hist, rws, background=0)[1] == 0.4)
  entries = (np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), np.array([0, 1, 0, 2]),
             np.array([0.3, 0.3, 0.1, 0.5]))
  weak, scored, weak_per_class = rws_analysis.weak_windows(entries, 3, 2,
                                                           np.array([0.2, 0.4, 0.6]), 3)
  np.testing.assert_array_equal(weak, [[False, True], [False, True], [True, False]])
  np.testing.assert_array_equal(scored, [2, 1, 1])
  np.testing.assert_array_equal(weak_per_class, [1, 1, 1])


def test_texture_testbed_is_shapes_rws_with_texture_coding_and_quarter_side_windows():
  """configs/shapes_texture_rws.py differs from configs/shapes_rws.py in the coding, the fine
  classes and (full size) windows a quarter of the image side, full size and :smoke; its
  geometry passes the RWS checks."""
  windows = ('slice_size', 'slice_stride', 'min_pixels')
  for arg in (None, 'smoke'):
    base, texture = load_config('shapes_rws', arg), load_config('shapes_texture_rws', arg)
    rws_pipeline.check_config(texture)
    shapes = texture.dataset.shapes
    assert (shapes.coding, shapes.fine_classes) == ('texture', 3)
    assert (base.dataset.shapes.coding, base.dataset.shapes.fine_classes) == ('marker', 0)
    if arg is None:
      assert [texture.rws[k] for k in windows] == [24, 16, 36]
      assert shapes.image_size == 4 * texture.rws.slice_size
      assert texture.rws.stage1_steps == 3000
    for key in (*windows, 'stage1_steps'):
      texture.rws[key] = base.rws[key]
    shapes.coding, shapes.fine_classes = 'marker', 0
    assert texture.to_dict() == base.to_dict()


def test_config_errors():
  config = load_config('shapes_rws', 'smoke')
  rws_pipeline.check_config(config)
  config.rws.slice_size = 48
  with pytest.raises(ValueError, match='config.rws.slice_size = 48 is larger than the crop'):
    rws_pipeline.check_config(config)
  for key, value in (('slices', 'random'), ('attention_region', 'image'), ('t_rule', 'middle'),
                     ('inference', 'both'), ('stage3_init', 'warm')):
    config = load_config('shapes_rws', 'smoke')
    config.rws[key] = value
    with pytest.raises(ValueError, match=f"config.rws.{key}='{value}'; expected one of"):
      rws_pipeline.check_config(config)
  for section, key, value, match in (
      ('rws', 'fuse_layers', (0, 4), 'config.rws.fuse_layers'),
      ('rws', 'slice_stride', 4, 'multiples of the layer2 feature stride 8'),
      ('rws', 'local_scale', 1.25, "local model's input side 20"),
      ('rws', 't_noise_z', -1.0, 'config.rws.t_noise_z=-1.0'),
      ('dataset', 'background_class', 7, 'background_class=7')):
    config = load_config('shapes_rws', 'smoke')
    config[section][key] = value
    with pytest.raises(ValueError, match=match):
      rws_pipeline.check_config(config)
  config.dataset.background_class = None
  rws_pipeline.check_config(config)


@pytest.fixture(scope='module')
def tiny():
  config = load_config('shapes_rws', 'smoke')
  config.rws.fuse_layers = (1, 2, 3, 4)  # every layer's fusion under test
  model = models.make_model(config.model, config.dataset.num_classes)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  labels = np.zeros((2, 32, 32), np.int32)
  labels[:, 8:24, 4:20] = 3
  labels[1, 20:, 20:] = 5
  labels[0, :2] = 255
  batch = {'image': images, 'segmentation': jnp.asarray(labels)}
  glob = train.random_variables(model, (1, 32, 32, 3), jax.random.key(1))
  local = train.random_variables(model, (1, 32, 32, 3), jax.random.key(2))
  return config, model, batch, glob, local


def plain_loss(model, params, batch_stats, batch, rng):
  logits = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                       train=True, mutable=['batch_stats'], rngs={'dropout': rng})[0]
  return losses.cross_entropy(logits, batch['segmentation'])


def test_fused_loss_is_the_plain_loss_without_weak_slices(tiny):
  config, model, batch, glob, local = tiny
  loss_fn = rws_pipeline.fusion_loss(model, config)
  rng = jax.random.key(3)
  _, drop_rng = jax.random.split(rng)
  extra = {'global': glob, 'local': local, 'threshold': jnp.float32(0.0)}
  loss, (_, stats) = loss_fn(glob['params'], glob['batch_stats'], batch, rng, extra)
  assert float(stats['weak_slices']) == 0.0 and float(stats['selected']) == 0.0
  expected = plain_loss(model, glob['params'], glob['batch_stats'], batch, drop_rng)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_fused_loss_mixes_local_features_into_weak_slices(tiny):
  config, model, batch, glob, local = tiny
  config = config.copy_and_resolve_references()
  config.rws.select_omega = False  # every pixel of a weak slice is integrated with n = 0.5
  config.rws.weighted_lambda = False
  config.rws.weak_classes = 'all'  # every predicted class takes part: every window is weak
  config.rws.fuse_layers = (4,)
  rng = jax.random.key(3)
  extra = {'global': glob, 'local': local, 'threshold': jnp.float32(1.01)}
  loss_fn = rws_pipeline.fusion_loss(model, config)
  loss, (_, stats) = loss_fn(glob['params'], glob['batch_stats'], batch, rng, extra)
  windows = len(slices.window_boxes(32, 32, config.rws.slice_size, config.rws.slice_stride))
  assert float(stats['weak_slices']) == windows and float(stats['left_out']) == 0
  assert 0 < float(stats['selected']) <= 1
  config.rws.max_slices = 2
  capped = rws_pipeline.fusion_loss(model, config)(glob['params'], glob['batch_stats'], batch,
                                                   rng, extra)[1][1]
  assert float(capped['weak_slices']) == 2 and float(capped['left_out']) == windows - 2
  _, drop_rng = jax.random.split(rng)
  assert not np.isclose(loss, plain_loss(model, glob['params'], glob['batch_stats'], batch,
                                         drop_rng))
  with_same_local = {'global': glob, 'local': glob, 'threshold': jnp.float32(1.01)}
  same, _ = rws_pipeline.fusion_loss(model, config)(glob['params'], glob['batch_stats'], batch,
                                                    rng, with_same_local)
  assert np.isfinite(same)


def _cross_entropy_numpy(logits, labels, ignore=255):
  """Mean softmax cross-entropy over the labelled pixels, in float64 numpy."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  shifted = logits - logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  keep = labels != ignore
  picked = np.take_along_axis(log_softmax, np.where(keep, labels, 0)[..., None], -1)[..., 0]
  return -picked[keep].mean()


def _small_rws(monkeypatch, model, strides, num_classes):
  """The smoke config for a test model of test_segcam (layer strides `strides`) on 16x16
  images: 8-pixel windows at stride 4 (8 with stride-1 layers), seen at 8 pixels by the local
  model, every class but the background taking part, fused into every layer;
  `models.feature_strides` gives `strides`."""
  monkeypatch.setattr(models, 'feature_strides', lambda model_cfg: dict(strides))
  config = load_config('shapes_rws', 'smoke')
  config.dataset.num_classes = num_classes
  config.rws.slice_size, config.rws.local_scale = 8, 1.0
  config.rws.slice_stride = max(4, max(strides.values()))
  config.rws.min_pixels = 4
  config.rws.fuse_layers = (1, 2, 3, 4)  # every layer's fusion under test
  return config, model


def test_fused_loss_equals_a_hand_composed_forward_pass(monkeypatch):
  """Stage 3's loss (docs/methods.md RWS 7) against its parts: the plans of
  network.fusion_plans on the batch (with its padding mask), eq. 6 written out in a layer hook
  of a training-mode forward pass (BatchNorm statistics of the batch), and the cross-entropy
  in numpy."""
  config, model = _small_rws(monkeypatch, TinySeg(num_classes=5),
                             {'layer1': 1, 'layer2': 2, 'layer3': 2, 'layer4': 4}, 5)
  config.rws.weak_classes = 'all'
  glob, images = setup_model(model, n=2, size=16, seed=21)
  local, _ = setup_model(model, n=2, size=16, seed=22)
  valid = np.ones((2, 16, 16), bool)
  valid[1, 12:] = valid[1, :, 14:] = False
  labels = np.random.default_rng(23).choice([0, 1, 2, 3, 4, 255], size=(2, 16, 16))
  labels = np.where(valid, labels, 255)
  batch = {'image': images, 'segmentation': jnp.asarray(labels), 'valid': jnp.asarray(valid)}
  extra = {'global': glob, 'local': local, 'threshold': jnp.float32(0.6)}
  rng = jax.random.key(5)

  @jax.jit
  def both(batch, extra):
    """The loss, and its parts composed by hand (one compilation for both)."""
    loss, (batch_stats, stats) = rws_pipeline.fusion_loss(model, config)(
        glob['params'], glob['batch_stats'], batch, rng, extra)
    plan_rng, dropout_rng = jax.random.split(rng)
    plans, _ = rws_network.fusion_plans(model, extra, batch['image'], config, plan_rng,
                                        valid=batch['valid'])

    def hook(name, x):
      plan = plans[name]
      return plan.weight * x + (1 - plan.weight) * plan.local

    logits, updates = model.apply(glob, batch['image'], train=True, mutable=['batch_stats'],
                                  rngs={'dropout': dropout_rng}, layer_hook=hook)
    plain = model.apply(glob, batch['image'], train=True, mutable=['batch_stats'])[0]
    selected = {name: p.selected.any() for name, p in plans.items()}
    return loss, batch_stats, stats, logits, updates['batch_stats'], plain, selected

  loss, batch_stats, stats, logits, updates, plain, selected = both(batch, extra)
  assert 0 < float(stats['weak_slices']) and all(map(bool, selected.values()))
  np.testing.assert_allclose(float(loss), _cross_entropy_numpy(logits, labels), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(batch_stats), jax.tree.leaves(updates)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert abs(float(loss) - _cross_entropy_numpy(plain, labels)) > 1e-4


def _attention_by_hand(result, regions):
  """A_i(m, n) = H_i^{c(m, n)}(m, n) by a loop over pixels (eq. 2), and Gamma (eq. 3)."""
  heat = {k: np.asarray(v) for k, v in result.heatmaps.items()}
  ids, mask = np.asarray(result.class_ids), np.asarray(result.class_mask)
  regions = np.asarray(regions)
  maps = {k: np.zeros(regions.shape, np.float32) for k in heat}
  for n, y, x in np.ndindex(regions.shape):
    slot = [s for s in range(ids.shape[1]) if mask[n, s] and ids[n, s] == regions[n, y, x]]
    for k in heat:
      maps[k][n, y, x] = heat[k][n, slot[0], y, x] if slot else 0.0
  return maps, np.max(np.stack(list(maps.values())), axis=0)


def _window_entries(result, regions, per_pixel, boxes, num_classes, background, min_pixels=1):
  """{(image, window): {class: mean attention}} over the classes that take part (a loop)."""
  ids, mask = np.asarray(result.class_ids), np.asarray(result.class_mask)
  regions = np.asarray(regions)
  out = {}
  for n in range(regions.shape[0]):
    slotted = {int(c) for c, m in zip(ids[n], mask[n]) if m} - {background}
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      region = regions[n, y0:y1, x0:x1]
      values = per_pixel[n, y0:y1, x0:x1]
      out[n, w] = {c: float(values[region == c].mean()) for c in range(num_classes)
                   if c in slotted and (region == c).sum() >= min_pixels}
  return out


@pytest.mark.parametrize('max_slices, chunk, pair_chunk', [(0, 32, 0), (0, 3, 2), (2, 32, 16)])
def test_rws_network_equals_a_hand_composed_fused_forward_pass(tiny, max_slices, chunk,
                                                                pair_chunk):
  """rws_logits against the steps of docs/methods.md RWS 11 composed by hand: prediction-region
  attention, weak windows under T (weakest first; every one, or at most `max_slices`), the
  local model on the enlarged slices (`slice_chunk` at a time, its Seg-Grad-CAM over all
  class slots or per filled one, `pair_chunk`), eq. 5-7 per pixel (test_fusion's loop
  reference) and the fused forward pass."""
  config, model, batch, glob, local = tiny
  config = config.copy_and_resolve_references()
  config.rws.max_slices, config.rws.slice_chunk = max_slices, chunk
  config.rws.pair_chunk = pair_chunk
  rws_cfg, k = config.rws, config.dataset.num_classes
  refined = train.random_variables(model, (1, 32, 32, 3), jax.random.key(4))
  images = batch['image']
  n = images.shape[0]
  glob_cam = segcam.seg_grad_cam(model, glob, images, max_classes=rws_cfg.max_classes)
  preds = np.asarray(jnp.argmax(glob_cam.logits, -1))
  maps, gamma = _attention_by_hand(glob_cam, preds)
  boxes = slices.window_boxes(32, 32, rws_cfg.slice_size, rws_cfg.slice_stride)
  entries = _window_entries(glob_cam, preds, maps['layer4'], boxes, k, 0, rws_cfg.min_pixels)
  values = sorted(v for e in entries.values() for v in e.values())
  # T halfway between two neighbouring attention values near the 20th percentile, so that float
  # rounding (jitted or not) cannot move a window across it.
  m = len(values) // 5
  m = next(i for i in range(m, len(values)) if values[i] - values[i - 1] > 1e-4)
  threshold = (values[m - 1] + values[m]) / 2
  slots = max_slices or len(boxes)
  chosen, valid = np.zeros((n, slots), np.int32), np.zeros((n, slots), bool)
  weak_windows = 0
  for i in range(n):
    weak = sorted((min(v for v in entries[i, w].values() if v < threshold), w)
                  for w in range(len(boxes))
                  if any(v < threshold for v in entries[i, w].values()))
    weak_windows += len(weak)
    for s, (_, w) in enumerate(weak[:slots]):
      chosen[i, s], valid[i, s] = w, True
  assert 0 < weak_windows < n * len(boxes)
  if max_slices:
    assert valid.sum() == n * max_slices < weak_windows  # the cap leaves weak windows out
  else:
    assert valid.sum() == weak_windows
  size, side = rws_cfg.slice_size, rws_network.local_size(rws_cfg)
  box = boxes[chosen]
  crops = np.stack([np.asarray(images)[i, y0:y1, x0:x1] for i in range(n)
                    for y0, x0, y1, x1 in box[i]])
  crops = jax.image.resize(crops, (len(crops), side, side, 3), 'bilinear')
  local_cam = segcam.seg_grad_cam(model, local, crops, max_classes=rws_cfg.max_classes)
  local_maps, local_gamma = _attention_by_hand(local_cam, jnp.argmax(local_cam.logits, -1))
  strides = models.feature_strides(config.model)
  offsets = {}
  for name, stride in strides.items():
    h = 32 // stride
    a = jax.image.resize(maps[name], (n, h, h), 'bilinear')
    g = jax.image.resize(gamma, (n, h, h), 'bilinear')
    w = size // stride
    f = local_cam.features[name]
    la = jax.image.resize(jax.image.resize(local_maps[name], (len(crops), *f.shape[1:3]),
                                           'bilinear'), (len(crops), w, w), 'bilinear')
    lg = jax.image.resize(jax.image.resize(local_gamma, (len(crops), *f.shape[1:3]),
                                           'bilinear'), (len(crops), w, w), 'bilinear')
    lf = jax.image.resize(f, (len(crops), w, w, f.shape[-1]), 'bilinear')
    split = lambda x: np.asarray(x).reshape((n, slots) + x.shape[1:])
    weight, _, local_part = fusion_reference(
        np.asarray(a), np.asarray(g), box, valid, split(lf), split(la), split(lg),
        np.zeros((n, h, h, f.shape[-1]), np.float32), stride, rws_cfg.eps, True, True)
    offsets[name] = (weight[..., None], local_part)

  def hook(name, x):
    weight, local_part = offsets[name]
    return weight * x + local_part

  expected = model.apply(refined, images, train=False, layer_hook=hook)
  network = {'model': refined, 'global': glob, 'local': local,
             'threshold': jnp.float32(threshold)}
  got = jax.jit(lambda v, x: rws_network.rws_logits(model, v, x, config))(network, images)
  np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
  plain = rws_network.plain_logits(model, network, images)
  assert not np.allclose(got, plain, atol=1e-3)
  network['threshold'] = jnp.float32(0.0)
  np.testing.assert_allclose(rws_network.rws_logits(model, network, images, config), plain,
                             atol=1e-5)


def test_rws_network_pads_any_image_size(tiny, monkeypatch):
  """Shapes of the padded network; then its values: for a model that cannot see zero padding
  (test_segcam.PadFreeSeg) and windows tiling the image (slice_stride = slice_size, sides
  multiples of it), an image padded at the bottom and right with its valid mask gives the
  image's own fused logits on the image. The padding adds only windows wholly in the padding,
  which are never weak; with other window geometry the padded image has other windows (the
  last row and column move to the edge), and no equality is claimed (docs/methods.md RWS 11)."""
  config, model, batch, glob, local = tiny
  network = {'model': glob, 'global': glob, 'local': local, 'threshold': jnp.float32(1.01)}
  images = batch['image'][:, :27, :13]
  logits = jax.eval_shape(lambda x: rws_network.rws_logits(model, network, x, config), images)
  assert logits.shape == (2, 27, 13, config.dataset.num_classes)
  assert rws_network.pad_for_windows(images, config).shape == (2, 32, 16, 3)
  assert rws_network.pad_for_windows(batch['image'], config).shape == (2, 32, 32, 3)

  config, model = _small_rws(monkeypatch, PadFreeSeg(num_classes=5),
                             dict.fromkeys(models.LAYER_NAMES, 1), 5)
  config.rws.slice_stride, config.rws.max_slices = 8, 6
  images = jnp.asarray(np.random.default_rng(31).normal(size=(2, 16, 24, 3)), jnp.float32)
  padded = pad_bottom_right(images, 32, 32)
  valid = pad_bottom_right(jnp.ones((2, 16, 24), bool), 32, 32, False)
  network = {name: padfree_variables(model, seed)
             for name, seed in (('model', 32), ('global', 33), ('local', 34))}
  attention = rws_network.attention_maps(model, network['global'], images, num_classes=5,
                                         max_classes=config.rws.max_classes)
  scores = rws_network.window_scores(attention, config.rws, 5, 0)
  values = np.sort(np.asarray(scores.attention)[np.asarray(scores.present)])
  gaps = np.nonzero(np.diff(values) > 1e-3)[0]
  middle = gaps[np.argmin(np.abs(gaps - len(values) // 2))]
  network['threshold'] = jnp.float32((values[middle] + values[middle + 1]) / 2)
  weak = np.asarray(slices.weak_mask(scores.attention, scores.present, network['threshold']))
  assert 0 < weak.sum() < weak.size  # 6 windows per image, some weak and some not
  fused = jax.jit(lambda v, x, m: rws_network.rws_logits(model, v, x, config, m))
  on_image = fused(network, images, None)
  on_padded = fused(network, padded, valid)
  np.testing.assert_allclose(on_padded[:, :16, :24], on_image, atol=1e-4, rtol=1e-4)
  blind = fused(network, padded, jnp.ones_like(valid))  # padding taken for image
  assert not np.allclose(blind[:, :16, :24], on_image, atol=1e-2)
  assert not np.allclose(on_image, rws_network.plain_logits(model, network, images), atol=1e-3)


def _naive_threshold(attention_by_class, iou_by_class, bins, slope, min_share, min_windows):
  """first_flat T (docs/methods.md RWS 4) with loops over classes and bins."""
  per_class = []
  for att, iou in zip(attention_by_class, iou_by_class):
    index = [min(int(a * bins), bins - 1) for a in att]
    kept = [b for b in range(bins) if index.count(b) and index.count(b) >= min_share * len(att)]
    if len(att) < min_windows or len(kept) < 2:
      per_class.append(np.nan)
      continue
    mean = {b: np.mean([v for i, v in zip(index, iou) if i == b]) for b in kept}
    flat = [b for b, nxt in zip(kept, kept[1:]) if (mean[nxt] - mean[b]) * bins / (nxt - b)
            < slope]
    per_class.append((min(flat) if flat else max(kept)) / bins + 0.5 / bins)
  taking_part = [t for t in per_class if not np.isnan(t)]
  return (float(np.mean(taking_part)) if taking_part else 0.0), per_class


def test_analyze_matches_a_naive_loop(tiny, tmp_path):
  config, model, _, glob, _ = tiny
  config = config.copy_and_resolve_references()
  config.input.eval_batch_size = 4
  config.rws.t_min_windows = 2
  rng = np.random.default_rng(5)
  pixels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  images = ((pixels - np.float32(config.input.mean)) / np.float32(config.input.std)).astype(
      np.float32)
  # Labels agree with the model's prediction but for a random block and an ignored row, so
  # that the window IoUs, and with them the curve, vary.
  agree = np.asarray(jnp.argmax(model.apply(glob, jnp.asarray(images), train=False), -1))
  source = []
  for pixel, label in zip(pixels, agree.astype(np.uint8)):
    label[rng.integers(0, 16):, rng.integers(0, 20):] = rng.integers(1, 7)
    label[rng.integers(0, 32), :] = 255
    source.append({'image': pixel, 'segmentation': label[..., None],
                   'labels': np.bincount(label.ravel(), minlength=256)[1:7] > 0})
  names = [f'c{i}' for i in range(7)]
  mesh = train.make_mesh()
  analysis = rws_analysis.analyze(model, glob, parts.Part(source, 0, len(source)), config, mesh,
                                  str(tmp_path), names)
  boxes = slices.window_boxes(32, 32, config.rws.slice_size, config.rws.slice_stride)
  labels = np.stack([s['segmentation'][..., 0] for s in source]).astype(np.int32)
  cam = segcam.seg_grad_cam(model, glob, jnp.asarray(images), max_classes=config.rws.max_classes)
  preds = np.asarray(jnp.argmax(cam.logits, -1))
  maps, _ = _attention_by_hand(cam, preds)
  entries = _window_entries(cam, preds, maps['layer4'], boxes, 7, 0, config.rws.min_pixels)
  by_class = {c: ([], []) for c in range(7)}
  for (i, w), per in entries.items():
    y0, x0, y1, x1 = boxes[w]
    lab, pre = labels[i, y0:y1, x0:x1], preds[i, y0:y1, x0:x1]
    for c, a in per.items():
      gt, pr = lab == c, (pre == c) & (lab != 255)
      union = (gt | pr).sum()
      by_class[c][0].append(a)
      by_class[c][1].append((gt & pr).sum() / union if union else 0.0)
  t, per_class = _naive_threshold([by_class[c][0] for c in range(7)],
                                  [by_class[c][1] for c in range(7)], config.rws.t_bins,
                                  config.rws.t_slope, config.rws.t_min_share, 2)
  assert analysis['threshold'] == pytest.approx(t, abs=1e-6)
  bins, curve = config.rws.t_bins, analysis['curve']
  for c in range(7):  # each kept bin's standard error from the pooled within-bin sd (this
    # random model's window IoU is constant within each bin: s = 0)
    index = np.minimum((np.asarray(by_class[c][0]) * bins).astype(int), bins - 1)
    iou = np.asarray(by_class[c][1])
    kept = [b for b in range(bins) if curve['kept'][c][b]]
    within = sum(np.sum((iou[index == b] - iou[index == b].mean()) ** 2) for b in kept)
    dof = sum(np.sum(index == b) for b in kept) - len(kept)
    sd = np.sqrt(within / dof) if dof > 0 else 0.0
    np.testing.assert_allclose(curve['se'][c], [sd / np.sqrt(np.sum(index == b)) if b in kept
                                                else -1.0 for b in range(bins)], atol=1e-5)
    assert (curve['knee'][c] is None) == (not kept)
  np.testing.assert_allclose([np.nan if v is None else v
                              for v in analysis['per_class_threshold']], per_class, atol=1e-6)
  weak = sorted((i, *boxes[w]) for (i, w), per in entries.items()
                if any(a < t for a in per.values()))
  # The comparison means something: the IoUs vary, T > 0, some windows are weak, some not.
  assert len({round(v, 6) for c in by_class for v in by_class[c][1]}) > 1
  assert t > 0 and 0 < len(weak) < 6 * len(boxes)
  assert sorted(map(tuple, rws_analysis.load_weak_boxes(str(tmp_path)).tolist())) == weak
  assert analysis['weak_slices'] == len(weak) and analysis['windows'] == 6 * len(boxes)
  assert analysis['weak_share'] == pytest.approx(len(weak) / (6 * len(boxes)))
  for c in range(1, 7):
    scored = by_class[c][0]
    expected = sum(a < t for a in scored) / len(scored) if scored else None
    assert analysis['weak_share_per_class'][names[c]] == pytest.approx(expected)
  assert analysis['weak_share_per_class']['c0'] is None  # the background takes no part


def smoke_config(data_dir, changes=None):
  """The RWS smoke config on `data_dir` with stage 3 (integration=retrain, so that every
  stage runs), checkpointing every step, with `changes` ({dotted field: value})."""
  config = load_config('shapes_rws', 'smoke')
  config.rws.integration = 'retrain'
  config.dataset.data_dir = str(data_dir)
  config.train.checkpoint_every = 1
  for field, value in (changes or {}).items():
    *parents, key = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[key] = value
  return config


def run_smoke(workdir, data_dir, monkeypatch=None, fail_stage=None, changes=None):
  config = smoke_config(data_dir, changes)
  if fail_stage is not None:
    original = train.Checkpointer.save

    def save_then_fail(self, step, state):
      original(self, step, state)
      if fail_stage in str(self.manager.directory) and step == 1:
        raise KeyboardInterrupt('killed')

    monkeypatch.setattr(train.Checkpointer, 'save', save_then_fail)
    with pytest.raises(KeyboardInterrupt):
      rws_pipeline.run(config, str(workdir))
    monkeypatch.undo()
    return None
  return rws_pipeline.run(config, str(workdir))


def metric_rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _adam_count(opt_state):
  return int(opt_state[0].count)


def test_smoke_run_resumes_after_a_kill(tmp_path, monkeypatch):
  """All stages on the smoke config; a run killed in stage 3 resumes there (rerun with
  another train.log_every, which changes no result), with stage 3's checkpointed optimizer
  state, and ends as the uninterrupted run; its run record says which stages it read back.
  With stage3_init=stage1, stage 3 starts from stage 1's final optimizer state (its step
  count goes on)."""
  data_dir = tmp_path / 'tfds'
  run_smoke(tmp_path / 'killed', data_dir, monkeypatch, fail_stage='round_1/stage3')
  rows = metric_rows(tmp_path / 'killed')
  assert [r['step'] for r in rows if r['stage'] == 'round_1/stage3'] == [1]
  calls = {}
  original = train.train_stage

  def recording(**kwargs):
    state = original(**kwargs)
    calls.setdefault(kwargs['stage'], []).append((kwargs.get('opt_state'), state))
    return state

  monkeypatch.setattr(train, 'train_stage', recording)
  full = run_smoke(tmp_path / 'full', data_dir)
  resumed = run_smoke(tmp_path / 'killed', data_dir, changes={'train.log_every': 3})
  made = resumed['run']['stages']
  before_kill = ['stage1', 'stage1/eval', 'round_1/analysis', 'round_1/figures',
                 'round_1/stage2']
  assert list(made) == list(full['run']['stages'])
  assert [name for name in made if made[name]['status'] == 'read back'] == before_kill
  for name, entry in made.items():
    assert entry['fingerprint'] == full['run']['stages'][name]['fingerprint'], name
    assert entry['computed_in'] == str(tmp_path / 'killed'), name
  assert resumed['run']['fingerprint'] == full['run']['fingerprint']
  assert resumed['run']['config']['train']['log_every'] == 3
  rows = metric_rows(tmp_path / 'killed')
  for stage, steps in (('stage1', 2), ('round_1/stage2', 2), ('round_1/stage3', 2),
                       ('baseline', 6)):
    assert [r['step'] for r in rows if r['stage'] == stage] == list(range(1, steps + 1)), stage
  for key in ('rws', 'rws_plain', 'rws_fused', 'baseline', 'stage1'):
    assert resumed[key]['miou'] == pytest.approx(full[key]['miou'], abs=1e-6), key
  assert resumed['rounds'] == full['rounds']
  assert full['total_steps'] == 6 and full['rounds'][0]['trained']
  assert full['rws'] == full['rws_fused']
  assert set(full['inference_ms_per_image']) == {'plain', 'fused', 'batch'}
  for name in ('summary.json', 'results.md', 'per_class_iou.png', 'predictions.png',
               'round_1/heatmaps.png', 'round_1/weak_slices.png', 'round_1/threshold_curve.png'):
    assert os.path.exists(tmp_path / 'full' / name), name
  saved = json.load(open(tmp_path / 'full' / 'summary.json'))['run']['config']
  assert saved['rws']['slices'] == 'weak' and saved['seed'] == 0
  assert 'RWS fused' in open(tmp_path / 'full' / 'results.md').read()
  smoke = smoke_config(tmp_path / 'tfds')
  network = rws_pipeline.finished_network(smoke, str(tmp_path / 'full'),
                                          models.make_model(smoke.model, 7), train.make_mesh())
  (_, stage3_full), _ = calls['round_1/stage3']
  for key, state in (('model', stage3_full), ('global', calls['stage1'][0][1]),
                     ('local', calls['round_1/stage2'][0][1])):
    for a, b in zip(jax.tree.leaves(network[key]), jax.tree.leaves(state.variables)):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(network['threshold'], full['rounds'][0]['threshold'])
  (_, stage1), _ = calls['stage1']
  (given, stage3), (_, stage3_resumed) = calls['round_1/stage3']
  assert _adam_count(given) == _adam_count(stage1.opt_state) == 2
  for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(stage1.opt_state)):
    np.testing.assert_array_equal(a, b)
  assert _adam_count(stage3.opt_state) == _adam_count(stage3_resumed.opt_state) == 4
  for a, b in zip(jax.tree.leaves(stage3_resumed), jax.tree.leaves(stage3)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  config = smoke_config(data_dir)
  for kind, key in (('fused', 'rws_fused'), ('plain', 'rws_plain')):
    config.rws.inference = kind
    evaluated = inference.evaluate_run(config, str(tmp_path / 'full'), rws_pipeline)
    assert evaluated['eval_validation'] == full[key], kind
    assert evaluated['network'] == rws_pipeline.NETWORK_TITLES[kind]
  rows = [json.loads(line) for line in open(tmp_path / 'full' / 'metrics.jsonl')]
  stage3_rates = [r['lr'] for r in rows if r['stage'] == 'round_1/stage3']
  cfg, offset, warmup_from = rws_pipeline.schedule_config(config, 1, 'stage1')
  schedule = train.learning_rate_schedule(cfg.lr, cfg, 2, warmup_from=warmup_from,
                                          offset=offset)
  assert stage3_rates == pytest.approx([float(schedule(offset + t)) for t in range(2)])
  # predict uses the RWS network by default: a 40 x 24 image needs no padding at
  # pad_multiple 8, so its mask is the argmax of rws_logits on it.
  image = np.random.default_rng(0).integers(0, 255, (40, 24, 3), dtype=np.uint8)
  (tmp_path / 'images').mkdir()
  PIL.Image.fromarray(image).save(tmp_path / 'images' / 'x.png')
  config = smoke_config(data_dir)
  config.eval.pad_multiple = 8
  [mask] = inference.predict_folder(config, str(tmp_path / 'full'), rws_pipeline,
                                    str(tmp_path / 'images'), str(tmp_path / 'masks'))
  model = models.make_model(config.model, 7)
  logits = rws_network.rws_logits(model, network,
                                  pipeline.normalize(image, config.input)[None], config)
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(mask)), np.argmax(logits[0], -1))


class _StopBeforeStage3(Exception):
  """Ends a recorded smoke run where round 1's stage 3 would start training."""


@pytest.fixture(scope='module')
def stage_starts(tmp_path_factory):
  """What each training stage of the smoke pipeline receives, for two settings: a list of
  {stage: (Runner.train's keyword arguments, the state it returned)}. The first run uses the
  defaults (local_init=global, stage3_init=stage1); the second, in the same workdir, uses
  local_init=init and stage3_init=fresh, reads stage 1 and the analysis back from the first
  and recomputes stage 2 (`recompute_from`: its settings changed). Both end where stage 3
  would start training; the rest of the pipeline is the smoke test's."""
  root = tmp_path_factory.mktemp('stage_starts')
  original = stage_runner.Runner.train
  runs = []

  def recording(self, name, **kwargs):
    if name.endswith('stage3'):
      runs[-1][name] = (kwargs, None)
      raise _StopBeforeStage3(name)
    state = original(self, name, **kwargs)
    runs[-1][name] = (kwargs, state)
    return state

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(stage_runner.Runner, 'train', recording)
    for local_init, stage3_init in (('global', 'stage1'), ('init', 'fresh')):
      config = load_config('shapes_rws', 'smoke')
      config.dataset.data_dir = str(root / 'tfds')
      config.rws.integration = 'retrain'
      config.rws.local_init, config.rws.stage3_init = local_init, stage3_init
      runs.append({})
      with pytest.raises(_StopBeforeStage3):
        rws_pipeline.run(config, str(root / 'run'),
                         recompute_from=('round_1/stage2',) if len(runs) == 2 else ())
  config = load_config('shapes_rws', 'smoke')
  model = models.make_model(config.model, config.dataset.num_classes)
  init = stages.initial_variables(model, config, jax.random.key(config.seed))
  return runs, init


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _differs(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_stage2_starts_from_local_init(stage_starts):
  """local_init=global: stage 2 starts from stage 1's final weights; init: from the weights
  stage 1 started from, `stages.initial_variables` (docs/methods.md RWS 5)."""
  (default, switched), init = stage_starts
  (stage1_given, stage1), (stage2_given, _) = default['stage1'], default['round_1/stage2']
  _assert_same_tree(stage1_given['variables'], init)
  assert _differs(stage1.variables, init)  # stage 1 trained: the two starts differ
  _assert_same_tree(stage2_given['variables'], stage1.variables)
  _assert_same_tree(switched['stage1'][1].variables, stage1.variables)  # read back
  _assert_same_tree(switched['round_1/stage2'][0]['variables'], init)
  for run in (default, switched):
    assert run['round_1/stage2'][0].get('opt_state') is None


def test_stage3_starts_from_stage3_init(stage_starts):
  """stage3_init=stage1: stage 3 starts from stage 1's final weights and optimizer state;
  fresh: from the initial weights and a new optimizer (docs/methods.md RWS 7). Either way
  its frozen networks are stage 1's model and the round's local model."""
  (default, switched), init = stage_starts
  stage1 = default['stage1'][1]
  continued, _ = default['round_1/stage3']
  _assert_same_tree(continued['variables'], stage1.variables)
  _assert_same_tree(continued['opt_state'], stage1.opt_state)
  fresh, _ = switched['round_1/stage3']
  _assert_same_tree(fresh['variables'], init)
  assert fresh['opt_state'] is None
  for run in (default, switched):
    given, _ = run['round_1/stage3']
    _assert_same_tree(given['extra']['global'], stage1.variables)
    _assert_same_tree(given['extra']['local'], run['round_1/stage2'][1].variables)


def test_stage3_schedule_warms_up_from_stage1s_final_rate():
  config = load_config('shapes_rws', 'smoke')
  cfg, offset, warmup_from = rws_pipeline.schedule_config(config, 1, 'stage1')
  assert offset == 2 and cfg.lr == config.rws.stage3_lr and cfg.warmup_steps == 1
  assert warmup_from == pytest.approx(float(train.poly_schedule(config.train.lr, 2)(1)))
  schedule = train.learning_rate_schedule(cfg.lr, cfg, 2, warmup_from=warmup_from,
                                          offset=offset)
  assert float(schedule(2)) == pytest.approx(warmup_from)  # stage 3's first step, count 2
  assert float(schedule(3)) == pytest.approx(cfg.lr)  # after the one-step warm-up
  fresh, offset, warmup_from = rws_pipeline.schedule_config(config, 1, 'fresh')
  assert offset == 0 and warmup_from == 0.0 and fresh.lr == config.rws.stage3_lr


def test_classes_without_a_segcam_slot_take_no_part():
  result = segcam.SegCamResult({}, jnp.array([[0, 2], [3, -1]]), jnp.array([[True, True],
                                                                            [True, False]]),
                               None, {})
  cfg = load_config('shapes_rws', 'smoke').rws
  expected = np.zeros((2, 4), bool)
  expected[0, [0, 2]] = True
  expected[1, 3] = True
  cfg.weak_classes = 'all'
  np.testing.assert_array_equal(rws_network.taking_part(result, 4, cfg, 0), expected)
  cfg.weak_classes = 'foreground'
  np.testing.assert_array_equal(rws_network.taking_part(result, 4, cfg, None), expected)
  expected[:, 0] = False
  np.testing.assert_array_equal(rws_network.taking_part(result, 4, cfg, 0), expected)


def test_no_fused_layers_is_plain_fine_tuning(tiny):
  config, model, batch, glob, local = tiny
  config = config.copy_and_resolve_references()
  config.rws.fuse_layers = ()
  rws_pipeline.check_config(config)
  rng = jax.random.key(3)
  extra = {'global': glob, 'local': local, 'threshold': jnp.float32(1.01)}
  loss_fn = rws_pipeline.fusion_loss(model, config)
  loss, _ = loss_fn(glob['params'], glob['batch_stats'], batch, rng, extra)
  _, drop_rng = jax.random.split(rng)
  np.testing.assert_allclose(loss, plain_loss(model, glob['params'], glob['batch_stats'], batch,
                                              drop_rng), rtol=1e-6)


@pytest.fixture(scope='module')
def killed_in_stage2(tmp_path_factory):
  """(data_dir, workdir) of a smoke run killed after stage 2's first step: stage 1, the
  analysis and the round's figures finished, stage 2 started."""
  root = tmp_path_factory.mktemp('killed_in_stage2')
  with pytest.MonkeyPatch.context() as patch:
    run_smoke(root / 'run', root / 'tfds', patch, fail_stage='round_1/stage2')
  return root / 'tfds', root / 'run'


def _files(workdir):
  return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
          for d, _, names in os.walk(workdir) for n in names}


@pytest.mark.parametrize('field, value, stage, old', [
    ('train.lr', 0.01, 'stage1', '0.003'),
    ('dataset.shapes.seed', 1, 'stage1', '0'),
    ('rws.slice_size', 24, 'round_1/analysis', '16'),
    ('rws.local_init', 'init', 'round_1/stage2', "'global'")])
def test_a_rerun_with_other_settings_is_refused_before_any_work(killed_in_stage2, field, value,
                                                                stage, old):
  """A killed run rerun with a setting that a finished (stage 1, the analysis) or started
  (stage 2) stage read: one sentence naming the stage and the field, and nothing written."""
  data_dir, workdir = killed_in_stage2
  before = _files(workdir)
  with pytest.raises(preflight.UserInputError) as error:
    rws_pipeline.run(smoke_config(data_dir, {field: value}), str(workdir))
  assert str(error.value) == (
      f'{workdir} holds stages made with other settings than this config: {stage} ({field}: '
      f'{old} -> {value!r}); pass --recompute_from={stage} to recompute it and every stage '
      'that consumes it, or another --workdir.')
  assert _files(workdir) == before


class _StopAtStage2(Exception):
  """Ends a run where round 1's stage 2 would start."""


def test_recompute_from_recomputes_that_stage_and_what_consumes_it(killed_in_stage2, tmp_path,
                                                                   monkeypatch):
  """--recompute_from=round_1/analysis under another slice size: stage 1 and its evaluation
  are read back, the analysis and the figures computed again, the started stage 2 cleared."""
  data_dir, killed = killed_in_stage2
  workdir = tmp_path / 'run'
  shutil.copytree(killed, workdir)
  kept = {path: mtime for path, mtime in _files(workdir).items()
          if os.path.relpath(path, workdir).startswith(('stage1', 'stages/stage1'))}
  made = {}
  original = stage_runner.Runner.train

  def stop_at_stage2(self, name, **kwargs):
    if name == 'round_1/stage2':
      made.update(self.made)
      raise _StopAtStage2()
    return original(self, name, **kwargs)

  monkeypatch.setattr(stage_runner.Runner, 'train', stop_at_stage2)
  config = smoke_config(data_dir, {'rws.slice_size': 24})
  with pytest.raises(_StopAtStage2):
    rws_pipeline.run(config, str(workdir), recompute_from=('round_1/analysis',))
  assert {name: entry['status'] for name, entry in made.items()} == {
      'stage1': 'read back', 'stage1/eval': 'read back', 'round_1/analysis': 'computed',
      'round_1/figures': 'computed'}
  assert {path: mtime for path, mtime in _files(workdir).items() if path in kept} == kept
  with open(workdir / 'round_1' / 'analysis.json') as f:
    stamp = json.load(f)['provenance']
  assert stamp['settings']['rws.slice_size'] == 24
  assert stamp['fingerprint'] == provenance.Plan(
      rws_pipeline.stage_table(config), config).made['round_1/analysis'].fingerprint
  assert not os.path.exists(workdir / 'round_1' / 'stage2')
  assert not os.path.exists(workdir / 'stages' / 'round_1' / 'stage2.started.json')


def test_integration_without_retraining_fuses_into_stage1(tmp_path):
  """integration=inference (docs/methods.md RWS 7): no stage 3; the refined network is stage 1's
  model, the RWS network fuses the local features into it, and the equal-budget baseline
  counts stage 1 and stage 2. The premise's no-retraining network over the split, computed by
  another path (`plans_for` on unpadded canvases), is the evaluated RWS network."""
  config = load_config('shapes_rws', 'smoke')
  assert config.rws.integration == 'inference'
  config.dataset.data_dir = str(tmp_path / 'tfds')
  summary = rws_pipeline.run(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'round_1' / 'stage3')
  assert summary['total_steps'] == config.rws.stage1_steps + config.rws.stage2_steps
  assert summary['rws_plain'] == summary['stage1']
  premise = summary['rounds'][0]['premise']
  assert premise['counts']['refined_windows'] > 0
  assert premise['whole_split']['integrated']['miou'] == pytest.approx(
      summary['rws_fused']['miou'], abs=1e-6)
  assert premise['whole_split']['global']['miou'] == pytest.approx(summary['stage1']['miou'],
                                                                    abs=1e-6)
  network = rws_pipeline.finished_network(config, str(tmp_path / 'run'),
                                          models.make_model(config.model, 7), train.make_mesh())
  _assert_same_tree(network['model'], network['global'])
