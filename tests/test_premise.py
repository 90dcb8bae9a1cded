"""The part-by-part measurement of an RWS round (rwsjax.rws.premise) against loops over the
windows of each image."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs_util import load_config
from rwsjax import evaluate
from rwsjax import models
from rwsjax import train
from rwsjax.rws import fusion
from rwsjax.rws import network
from rwsjax.rws import premise
from rwsjax.rws import slices


@pytest.fixture(scope='module')
def setting():
  config = load_config('shapes_rws', 'smoke').copy_and_resolve_references()
  config.rws.slice_chunk = 4
  k = config.dataset.num_classes
  model = models.make_model(config.model, k)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  labels = np.zeros((4, 32, 32), np.int32)
  labels[:, 8:24, 4:20] = 3
  labels[1, 20:, 20:] = 5
  labels[2, :12, 18:30] = 1
  labels[3, 16:, :] = 2
  labels[0, :2] = 255
  nets = [train.random_variables(model, (1, 32, 32, 3), jax.random.key(i)) for i in (1, 2, 3)]
  glob = nets[0]
  # The background bias that makes the global model predict background on about half of the
  # pixels, so that some objects are missed.
  for bias in np.linspace(0, 20, 81):
    params = jax.tree.map(lambda x: x, glob['params'])
    params['head']['classifier']['bias'] = glob['params']['head']['classifier']['bias'].at[0].add(
        bias)
    background = float((model.apply({**glob, 'params': params}, images, train=False).argmax(-1)
                         == 0).mean())
    if background > 0.4:
      break
  nets[0] = {**glob, 'params': params}
  return config, model, images, labels, dict(zip(('global', 'local', 'model'), nets))


def _by_hand(config, model, images, labels, net, threshold):
  """The premise rows with loops over images and windows (docs/methods.md RWS 12)."""
  rws, k = config.rws, config.dataset.num_classes
  size, side = rws.slice_size, network.local_size(rws)
  apply = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
  attention = network.attention_maps(model, net['global'], jnp.asarray(images), num_classes=k,
                                     max_classes=rws.max_classes)
  scores = network.window_scores(attention, rws, k, 0)
  present = np.asarray(scores.present)
  mean = np.asarray(scores.attention)
  boxes = slices.window_boxes(32, 32, size, rws.slice_stride)
  glob = np.asarray(jnp.argmax(attention.result.logits, -1))
  plans, _ = network.fusion_plans(model, {**net, 'threshold': jnp.float32(threshold)},
                                  jnp.asarray(images), config, jax.random.key(0))
  hook = fusion.layer_hook(plans)
  full = {'global': glob,
          'integrated': np.asarray(jnp.argmax(model.apply(net['global'], images, train=False,
                                                          layer_hook=hook), -1)),
          'rws_plain': np.asarray(jnp.argmax(model.apply(net['model'], images, train=False), -1)),
          'rws_fused': np.asarray(jnp.argmax(model.apply(net['model'], images, train=False,
                                                         layer_hook=hook), -1))}
  windows = {name: np.zeros((k, k), np.int64) for name in premise.ON_WINDOWS}
  probabilities = np.zeros(labels.shape + (k,))
  reachable = np.zeros(labels.shape, bool)
  count = 0

  def add(confusion, truth, pred):
    for t, p in zip(truth.ravel(), pred.ravel()):
      if t != 255:
        confusion[t, p] += 1

  for n in range(len(images)):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      if present[n, w].any():
        reachable[n, y0:y1, x0:x1] = True
      if not (present[n, w] & (mean[n, w] < threshold)).any():
        continue
      count += 1
      truth = labels[n, y0:y1, x0:x1]
      for name, pred in full.items():
        add(windows[name], truth, pred[n, y0:y1, x0:x1])
      crop = images[n, y0:y1, x0:x1][None]
      zoomed = jax.image.resize(crop, (1, side, side, 3), 'bilinear')
      shrink = lambda logits: jax.image.resize(logits, (1, size, size, k), 'bilinear')
      local = shrink(apply(net['local'], zoomed))
      views = {'local_zoom': local, 'global_zoom': shrink(apply(net['global'], zoomed)),
               'global_bare': apply(net['global'], crop)}
      for name, logits in views.items():
        add(windows[name], truth, np.asarray(jnp.argmax(logits, -1))[0])
      probabilities[n, y0:y1, x0:x1] += np.asarray(jax.nn.softmax(local, -1))[0]
  covered = probabilities.sum(-1) > 0
  pasted = np.where(covered, probabilities.argmax(-1), glob)
  split = {}
  for name, pred in (('global', glob), ('pasted', pasted), ('integrated', full['integrated'])):
    split[name] = np.zeros((k, k), np.int64)
    add(split[name], labels, pred)
  outside = {}
  for name in premise.OUTSIDE_WINDOWS:
    outside[name] = np.zeros((k, k), np.int64)
    add(outside[name], np.where(covered, 255, labels), full[name])
  scored, was_right, is_right = labels != 255, glob == labels, full['rws_fused'] == labels
  flips = {}
  for where, region in (('inside', covered), ('outside', ~covered)):
    flips[f'fixed_{where}'] = int((scored & region & ~was_right & is_right).sum())
    flips[f'broken_{where}'] = int((scored & region & was_right & ~is_right).sum())
  missed = (labels > 0) & (labels != 255) & (glob == 0)
  return (windows, split, count, int(missed.sum()), int((missed & ~reachable).sum()), outside,
          flips)


def test_premise_matches_loops_over_windows(setting):
  config, model, images, labels, net = setting
  rws, k = config.rws, config.dataset.num_classes
  attention = network.attention_maps(model, net['global'], jnp.asarray(images), num_classes=k,
                                     max_classes=rws.max_classes)
  scores = network.window_scores(attention, rws, k, 0)
  values = np.sort(np.asarray(scores.attention)[np.asarray(scores.present)])
  threshold = float(values[len(values) // 3] + values[len(values) // 3 + 1]) / 2
  windows, split, count, missed, unreachable, outside, flips = _by_hand(
      config, model, images, labels, net, threshold)
  assert 0 < count < len(values) and missed > 0  # some windows weak, some objects missed
  mesh = train.make_mesh()
  step = premise.make_premise_step(model, config, mesh)
  batch = {'image': images, 'segmentation': labels, 'valid': np.ones(labels.shape, bool),
           'mask': np.ones(len(images), bool)}
  out = jax.device_get(step({**net, 'threshold': jnp.float32(threshold)},
                            train.to_device(batch, mesh)))
  for name in premise.ON_WINDOWS:
    np.testing.assert_array_equal(out['windows'][name], windows[name], err_msg=name)
  for name in premise.WHOLE_SPLIT:
    np.testing.assert_array_equal(out['split'][name], split[name], err_msg=name)
  assert int(out['counts']['weak_windows']) == int(out['counts']['refined_windows']) == count
  assert int(out['counts']['missed_pixels']) == missed
  assert int(out['counts']['missed_unreachable']) == unreachable
  for name in premise.OUTSIDE_WINDOWS:
    np.testing.assert_array_equal(out['outside'][name], outside[name], err_msg=name)
  assert {name: int(out['counts'][name]) for name in flips} == flips
  assert min(flips.values()) > 0  # the RWS network changes pixels inside and outside
  global_miou = evaluate.miou_from_confusion(out['split']['global'])
  assert global_miou == evaluate.miou_from_confusion(split['global'])
  # A padded batch entry counts nowhere.
  masked = dict(batch, mask=np.array([True, False, True, True]))
  out = jax.device_get(step({**net, 'threshold': jnp.float32(threshold)},
                            train.to_device(masked, mesh)))
  kept = [0, 2, 3]
  windows, split, count, missed, _, outside, flips = _by_hand(
      config, model, images[kept], labels[kept], net, threshold)
  np.testing.assert_array_equal(out['windows']['local_zoom'], windows['local_zoom'])
  np.testing.assert_array_equal(out['split']['pasted'], split['pasted'])
  np.testing.assert_array_equal(out['outside']['rws_fused'], outside['rws_fused'])
  assert int(out['counts']['fixed_outside']) == flips['fixed_outside']
  assert int(out['counts']['weak_windows']) == count


def test_premise_without_fused_layers(setting):
  """With fuse_layers=() (stage 3 as plain fine-tuning) the local model still has its views,
  and the no-retraining network is the global model."""
  config, model, images, labels, net = setting
  config = config.copy_and_resolve_references()
  config.rws.fuse_layers = ()
  threshold = 0.5
  windows, split, count, _, _, outside, flips = _by_hand(config, model, images, labels, net,
                                                         threshold)
  assert count > 0
  mesh = train.make_mesh()
  batch = {'image': images, 'segmentation': labels, 'valid': np.ones(labels.shape, bool),
           'mask': np.ones(len(images), bool)}
  out = jax.device_get(premise.make_premise_step(model, config, mesh)(
      {**net, 'threshold': jnp.float32(threshold)}, train.to_device(batch, mesh)))
  for name in premise.ON_WINDOWS:
    np.testing.assert_array_equal(out['windows'][name], windows[name], err_msg=name)
  np.testing.assert_array_equal(out['windows']['integrated'], out['windows']['global'])
  np.testing.assert_array_equal(out['split']['integrated'], split['global'])
  np.testing.assert_array_equal(out['outside']['rws_fused'], outside['rws_fused'])
  assert {name: int(out['counts'][name]) for name in flips} == flips
