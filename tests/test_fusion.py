"""Selective fusion against a per-pixel pure-Python reference (eq. 5-7)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwsjax.rws import fusion, segcam, slices
from test_segcam import TinySeg, setup_model

LEVELS = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)


def _case(seed, n=2, size=8, local=4, channels=3):
  """Quantised maps (ties are likely), a zero-attention block, overlapping and padded slices."""
  rng = np.random.default_rng(seed)
  attention = rng.choice(LEVELS, size=(n, size, size))
  gamma = np.maximum(attention, rng.choice(LEVELS, size=(n, size, size)))
  attention[:, :2, :2] = gamma[:, :2, :2] = 0.0
  boxes = np.array([[[0, 0, 8, 8], [4, 4, 12, 12], [8, 0, 16, 8]],
                    [[2, 2, 10, 10], [0, 2, 8, 10], [8, 8, 16, 16]]], np.int32)
  valid = np.array([[True, True, True], [True, True, False]])
  local_attention = rng.choice(LEVELS, size=(n, 3, local, local))
  local_gamma = np.maximum(local_attention, rng.choice(LEVELS, size=(n, 3, local, local)))
  local_attention[:, 0, :1] = local_gamma[:, 0, :1] = 0.0
  local_features = rng.normal(size=(n, 3, local, local, channels)).astype(np.float32)
  features = rng.normal(size=(n, size, size, channels)).astype(np.float32)
  return (attention, gamma.astype(np.float32), boxes, valid, local_features,
          local_attention.astype(np.float32), local_gamma.astype(np.float32), features)


def _ratio(a, g):
  return np.float32(a) / np.float32(g) if g > 0 else np.float32(0.0)


def _reference(attention, gamma, boxes, valid, local_features, local_attention, local_gamma,
               features, stride, eps, select_omega, weighted_lambda):
  """Loops over images, pixels and slices."""
  n_img, h, w = attention.shape
  hs, ws = local_attention.shape[2:]
  fused = np.array(features)
  weight = np.ones((n_img, h, w), np.float32)
  selected = np.zeros((n_img, h, w), bool)
  for n in range(n_img):
    for y in range(h):
      for x in range(w):
        a, g = attention[n, y, x], gamma[n, y, x]
        r = _ratio(a, g)
        best, best_ratio, best_local = None, -np.inf, None
        for s in range(boxes.shape[1]):
          if not valid[n, s]:
            continue
          ly, lx = y - boxes[n, s, 0] // stride, x - boxes[n, s, 1] // stride
          if not (0 <= ly < hs and 0 <= lx < ws):
            continue
          a_s = local_attention[n, s, ly, lx]
          r_s = _ratio(a_s, local_gamma[n, s, ly, lx])
          ok = (np.float32(g - a) > eps and a_s > a and r_s > r) if select_omega else True
          if ok and r_s > best_ratio:
            best, best_ratio, best_local = s, r_s, local_features[n, s, ly, lx]
        if best is None:
          continue
        if not weighted_lambda:
          lam = 0.5
        elif r + best_ratio > 0:
          lam = r / (r + best_ratio)
        else:
          lam = 0.5
        weight[n, y, x], selected[n, y, x] = lam, True
        fused[n, y, x] = lam * features[n, y, x] + (1 - lam) * best_local
  return weight, selected, fused


@pytest.mark.parametrize('select_omega,weighted_lambda', [(True, True), (False, True),
                                                          (True, False), (False, False)])
@pytest.mark.parametrize('seed', [0, 1])
def test_plan_and_fuse_match_reference(seed, select_omega, weighted_lambda):
  case = _case(seed)
  *maps, features = case
  plan = fusion.fusion_plan(*map(jnp.asarray, maps), stride=2, eps=1e-3,
                            select_omega=select_omega, weighted_lambda=weighted_lambda)
  weight, selected, fused = _reference(*case, stride=2, eps=1e-3, select_omega=select_omega,
                             weighted_lambda=weighted_lambda)
  np.testing.assert_allclose(plan.weight[..., 0], weight, rtol=1e-6)
  np.testing.assert_array_equal(plan.selected, selected)
  np.testing.assert_allclose(fusion.fuse(jnp.asarray(features), plan), fused, rtol=1e-5,
                             atol=1e-6)
  assert 0 < int(plan.selected.sum()) < plan.selected.size


def test_overlap_tie_takes_lower_slice_and_zero_attention_stays():
  attention = np.full((1, 4, 4), 0.25, np.float32)
  gamma = np.ones((1, 4, 4), np.float32)
  attention[0, 0, 0] = gamma[0, 0, 0] = 0.0
  boxes = np.array([[[0, 0, 4, 4], [0, 0, 4, 4]]], np.int32)
  local_attention = np.full((1, 2, 4, 4), 0.5, np.float32)
  local_gamma = np.ones((1, 2, 4, 4), np.float32)
  local_features = np.stack([np.full((4, 4, 1), 10.0), np.full((4, 4, 1), 20.0)])[None]
  plan = fusion.fusion_plan(*map(jnp.asarray, (attention, gamma, boxes, np.ones((1, 2), bool),
                                               local_features.astype(np.float32),
                                               local_attention, local_gamma)), stride=1)
  # Equal local ratios 0.5: slice 0 wins; lambda = 0.25 / (0.25 + 0.5) = 1/3.
  np.testing.assert_allclose(plan.weight[0, 1:, :, 0], 1 / 3, rtol=1e-6)
  np.testing.assert_array_equal(plan.local[0, 1:, :, 0], 10.0)
  # Gamma = 0 there: omega = 0 is not > eps, so the pixel keeps its global feature.
  assert float(plan.weight[0, 0, 0, 0]) == 1.0 and float(plan.local[0, 0, 0, 0]) == 0.0


def test_layer_hook_fuses_only_planned_layers_and_blocks_gradient():
  plan = fusion.FusionPlan(jnp.full((1, 2, 2, 1), 0.25), jnp.full((1, 2, 2, 3), 4.0),
                           jnp.ones((1, 2, 2), bool))
  hook = fusion.layer_hook({'layer2': plan})
  x = jnp.ones((1, 2, 2, 3))
  np.testing.assert_array_equal(hook('layer1', x), x)
  np.testing.assert_allclose(hook('layer2', x), 0.25 + 0.75 * 4.0)
  grads = jax.grad(lambda w, f: jnp.sum(fusion.fuse(x, plan._replace(weight=w, local=f))),
                   argnums=(0, 1))(plan.weight, plan.local)
  np.testing.assert_array_equal(grads[0], 0.0)
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(fusion.fuse(x, plan)))(x), 0.25)


def test_plans_for_selected_layers():
  *maps, _ = _case(3)
  a, g, boxes, valid, lf, la, lg = map(jnp.asarray, maps)
  plans = fusion.fusion_plans({'layer1': (a, g), 'layer4': (a, g)},
                              {'layer1': (la, lg), 'layer4': (la, lg)},
                              {'layer1': lf, 'layer4': lf}, boxes, valid,
                              {'layer1': 2, 'layer4': 2}, layers=('layer4',))
  single = fusion.fusion_plan(a, g, boxes, valid, lf, la, lg, stride=2)
  assert list(plans) == ['layer4']
  np.testing.assert_array_equal(plans['layer4'].weight, single.weight)


def test_geometry_checks():
  strides = {'layer1': 4, 'layer4': 16}
  fusion.check_geometry(128, 128, 64, 32, strides)
  with pytest.raises(ValueError, match='layer4 feature stride 16'):
    fusion.check_geometry(128, 128, 64, 24, strides)
  with pytest.raises(ValueError, match='layer4 feature stride 16'):
    fusion.check_geometry(120, 120, 64, 32, {'layer4': 16})


def test_stage3_batch_composes_with_segcam_and_slices():
  """Per-batch stage 3 (docs/methods.md RWS 7) on a tiny model; fused layer4 against eq. 6."""
  model = TinySeg(num_classes=3)
  variables, images = setup_model(model, n=2, size=16, seed=11)
  local_variables, _ = setup_model(model, n=2, size=16, seed=12)
  labels = jnp.asarray(np.random.default_rng(0).choice([0, 1, 2, 255], size=(2, 16, 16)))
  strides = {'layer1': 1, 'layer2': 2, 'layer3': 2, 'layer4': 4}
  fusion.check_geometry(16, 16, 8, 4, strides)

  def attention_maps(result, label_map):
    attention = segcam.region_attention(result.heatmaps, result.class_ids, result.class_mask,
                                        label_map)
    gamma, _ = segcam.gamma_and_omega(attention)
    return attention, segcam.feature_attention(attention, gamma, result.features)

  glob = segcam.seg_grad_cam(model, variables, images,
                             classes=segcam.present_classes(labels, 3, 3)[0])
  attention, global_maps = attention_maps(glob, labels)
  scores = slices.score_windows(attention['layer4'], labels, num_classes=3, size=8, stride=4)
  weak = slices.weak_mask(scores.attention, scores.present, 1.01)
  index, valid = slices.select_top_weak(scores.attention, weak, 3)
  boxes = jnp.asarray(slices.window_boxes(16, 16, 8, 4))[index]
  crops = slices.crop_windows(images, boxes, 8).reshape(6, 8, 8, 3)
  crop_labels = slices.crop_windows(labels, boxes, 8).reshape(6, 8, 8)
  local = segcam.seg_grad_cam(model, local_variables, crops,
                              classes=segcam.present_classes(crop_labels, 3, 3)[0])
  _, local_maps = attention_maps(local, crop_labels)

  def split(x):
    return x.reshape((2, 3) + x.shape[1:])

  plans = fusion.fusion_plans(
      global_maps, {k: tuple(map(split, v)) for k, v in local_maps.items()},
      {k: split(v) for k, v in local.features.items()}, boxes, valid, strides,
      layers=('layer4',))
  assert bool(valid.all()) and bool(plans['layer4'].selected.any())
  _, fused = model.apply(variables, images, layer_hook=fusion.layer_hook(plans),
                         return_features=True)
  plan = plans['layer4']
  np.testing.assert_allclose(fused['layer4'], plan.weight * glob.features['layer4']
                             + (1 - plan.weight) * plan.local, atol=1e-6)
  for name in ('layer1', 'layer2', 'layer3'):
    np.testing.assert_allclose(fused[name], glob.features[name], atol=1e-6)
