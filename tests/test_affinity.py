"""Tests for isimjax.affinity against brute-force loops and hand-computed values, and AffinityNet
against its definition."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from isimjax import affinity
from isimjax import crf


def _psa_search_dist(radius):
  """PSA's own loop (pyutils.get_indices_of_pairs), the reference order."""
  dist = [(0, x) for x in range(1, radius)]
  for y in range(1, radius):
    for x in range(-radius + 1, radius):
      if x * x + y * y < radius * radius:
        dist.append((y, x))
  return dist


def test_pair_offsets_radius5_has_34_in_psa_order():
  offsets = affinity.pair_offsets(5)
  assert offsets.shape == (34, 2)
  assert [tuple(o) for o in offsets.tolist()] == _psa_search_dist(5)


@pytest.mark.parametrize('radius', [2, 3, 4, 5, 6, 7])
def test_pair_offsets_one_of_each_pair_within_radius(radius):
  got = {tuple(o) for o in affinity.pair_offsets(radius).tolist()}
  within = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx < radius * radius]
  for dy, dx in within:
    assert ((dy, dx) in got) != ((-dy, -dx) in got)
  assert got == {(dy, dx) for dy, dx in within if dy > 0 or (dy == 0 and dx > 0)}


def _region(h, w, radius):
  """PSA's from pixels: rows [0, h - r + 1), columns [r - 1, w - r + 1)."""
  return [(y, x) for y in range(h - radius + 1) for x in range(radius - 1, w - radius + 1)]


@pytest.mark.parametrize('radius,shape', [(3, (6, 8)), (5, (7, 10))])
def test_pair_affinities_match_brute_force_over_pixel_pairs(radius, shape):
  rng = np.random.default_rng(0)
  h, w = shape
  features = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  offsets = affinity.pair_offsets(radius)
  aff = np.asarray(affinity.pair_affinities(features, offsets))
  hc, wc = h - radius + 1, w - 2 * (radius - 1)
  assert aff.shape == (2, len(offsets), hc, wc)
  for n in range(2):
    expected = {}
    for y0, x0 in _region(h, w, radius):
      for y1 in range(h):
        for x1 in range(w):
          d2 = (y1 - y0) ** 2 + (x1 - x0) ** 2
          later = y1 > y0 or (y1 == y0 and x1 > x0)
          if later and d2 < radius * radius:
            diff = np.abs(features[n, y0, x0].astype(np.float64) - features[n, y1, x1])
            expected[(y0, x0, y1, x1)] = math.exp(-diff.mean())
    got = {}
    for p, (dy, dx) in enumerate(offsets.tolist()):
      for y in range(hc):
        for x in range(wc):
          x0 = x + radius - 1
          got[(y, x0, y + dy, x0 + dx)] = aff[n, p, y, x]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
      assert got[key] == pytest.approx(value, rel=1e-5)


def test_pair_affinities_too_small_map_raises():
  with pytest.raises(ValueError, match='too small'):
    affinity.pair_affinities(np.zeros((1, 4, 20, 2), np.float32), affinity.pair_offsets(5))


def test_pair_labels_match_brute_force():
  rng = np.random.default_rng(1)
  labels = rng.choice(np.array([0, 1, 2, 255]), size=(2, 6, 9)).astype(np.int32)
  radius = 3
  offsets = affinity.pair_offsets(radius)
  bg_pos, fg_pos, neg = (np.asarray(m) for m in affinity.pair_labels(labels, offsets))
  for n in range(2):
    for p, (dy, dx) in enumerate(offsets.tolist()):
      for y in range(6 - radius + 1):
        for x in range(9 - 2 * (radius - 1)):
          a = labels[n, y, x + radius - 1]
          b = labels[n, y + dy, x + radius - 1 + dx]
          ignored = a == 255 or b == 255
          assert bg_pos[n, p, y, x] == (a == 0 and b == 0)
          assert fg_pos[n, p, y, x] == (not ignored and a == b and a != 0)
          assert neg[n, p, y, x] == (not ignored and a != b)


def test_pair_agreement_and_same_pairs_match_brute_force():
  rng = np.random.default_rng(4)
  labels = rng.choice(np.array([0, 1, 2, 255]), size=(2, 6, 9)).astype(np.int32)
  truth = rng.choice(np.array([0, 1, 2, 255]), p=[0.4, 0.25, 0.25, 0.1],
                     size=(2, 6, 9)).astype(np.int32)
  radius = 3
  offsets = affinity.pair_offsets(radius)
  truth_masks = affinity.same_and_different(truth, offsets)
  agreement = affinity.pair_agreement(affinity.same_and_different(labels, offsets), truth_masks)
  perfect = truth_masks[0]
  expected = np.zeros((3, 2), np.int64)
  for n in range(2):
    for p, (dy, dx) in enumerate(offsets.tolist()):
      for y in range(6 - radius + 1):
        for x in range(9 - 2 * (radius - 1)):
          pair = [(y, x + radius - 1), (y + dy, x + radius - 1 + dx)]
          a, b = (labels[n][i] for i in pair)
          s, t = (truth[n][i] for i in pair)
          assert perfect[n, p, y, x] == (s == t != 255)
          if s == 255 or t == 255:
            continue
          row = 2 if 255 in (a, b) else int(a != b)
          expected[row, int(s != t)] += 1
  np.testing.assert_array_equal(agreement, expected)
  assert expected.min() > 0  # every cell is exercised


def test_mixed_cells_and_either_end_match_loops():
  rng = np.random.default_rng(5)
  labels = rng.choice(np.array([0, 1, 255]), p=[0.7, 0.2, 0.1], size=(2, 10, 13))
  labels[0, :4, :4] = 1  # a single-class cell
  labels[0, 4:8, 4:8] = 255  # an ignored cell: not mixed
  mixed = affinity.mixed_cells(labels, stride=4)
  assert mixed.shape == (2, 3, 4)
  for n in range(2):
    for y in range(3):
      for x in range(4):
        block = labels[n, 4 * y:4 * y + 4, 4 * x:4 * x + 4]
        assert mixed[n, y, x] == (len(set(block[block != 255].tolist())) > 1)
  assert not mixed[0, 0, 0] and not mixed[0, 1, 1] and mixed.any()
  radius = 2
  offsets = affinity.pair_offsets(radius)
  ends = affinity.either_end(mixed, offsets)
  for n in range(2):
    for p, (dy, dx) in enumerate(offsets.tolist()):
      for y in range(3 - radius + 1):
        for x in range(4 - 2 * (radius - 1)):
          assert ends[n, p, y, x] == (mixed[n, y, x + radius - 1]
                                      or mixed[n, y + dy, x + radius - 1 + dx])


def _pixel_label(values, present, bg_score):
  """Per-pixel oracle: first present class with the largest CAM, if above bg_score."""
  best, best_class = bg_score, 0
  for c, v in enumerate(values):
    if present[c] and v > best:
      best, best_class = v, c + 1
  return best_class


def _oracle_affinity_labels(la, lb, stride):
  h, w = la.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  out = np.full((out_h, out_w), 255, np.uint8)
  for y in range(out_h):
    for x in range(out_w):
      py, px = stride * y + stride // 2, stride * x + stride // 2
      if py < h and px < w:
        if lb[py, px] == 0:
          out[y, x] = 0
        elif la[py, px] != 0:
          out[y, x] = la[py, px]
  return out


def test_affinity_labels_without_crf_match_per_pixel_loop():
  rng = np.random.default_rng(2)
  cams = rng.uniform(0, 0.6, size=(4, 10, 13)).astype(np.float32)
  cams[:, :4, :5] *= 0.2
  present = np.array([1, 0, 1, 1])
  stride = 4
  got = affinity.affinity_labels_from_cams(cams, present, stride=stride)
  la = np.zeros((10, 13), np.uint8)
  lb = np.zeros((10, 13), np.uint8)
  for y in range(10):
    for x in range(13):
      la[y, x] = _pixel_label(cams[:, y, x], present, 0.3)
      lb[y, x] = _pixel_label(cams[:, y, x], present, 0.1)
  expected = _oracle_affinity_labels(la, lb, stride)
  assert got.shape == (3, 4)
  np.testing.assert_array_equal(got, expected)
  full = affinity.affinity_labels_from_cams(cams, present, stride=1)
  assert set(np.unique(full).tolist()) == {0, 1, 3, 4, 255}
  np.testing.assert_array_equal(full, _oracle_affinity_labels(la, lb, 1))


def test_affinity_labels_with_crf_map_kept_channels_back_to_class_ids():
  rng = np.random.default_rng(3)
  cams = rng.uniform(0, 0.6, size=(4, 9, 11)).astype(np.float32)
  present = np.array([0, 1, 0, 1])
  image = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
  calls = []

  def fake_crf(img, scores):
    """Makes the least likely kept channel win: differs from the argmax, so conflicts occur."""
    calls.append(scores.shape)
    np.testing.assert_array_equal(img, image)
    return -scores

  got = affinity.affinity_labels_from_cams(cams, present, crf_fn=fake_crf, image=image,
                                           stride=2)
  assert calls == [(3, 9, 11), (3, 9, 11)]
  ids = [0, 2, 4]
  la = np.zeros((9, 11), np.uint8)
  lb = np.zeros((9, 11), np.uint8)
  for y in range(9):
    for x in range(11):
      la[y, x] = ids[int(np.argmin([0.3, cams[1, y, x], cams[3, y, x]]))]
      lb[y, x] = ids[int(np.argmin([0.1, cams[1, y, x], cams[3, y, x]]))]
  assert np.any((la > 0) & (lb == 0))
  np.testing.assert_array_equal(got, _oracle_affinity_labels(la, lb, 2))


def test_affinity_labels_with_the_dense_crf():
  rng = np.random.default_rng(4)
  cams = rng.uniform(0, 0.6, size=(3, 12, 16)).astype(np.float32)
  present = np.array([1, 0, 1])
  image = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
  got = affinity.affinity_labels_from_cams(cams, present, crf_fn=crf.crf_refine_probs,
                                           image=image, stride=1)
  ids = np.array([0, 1, 3])
  maps = []
  for bg_score in (0.3, 0.1):
    scores = np.stack([np.full((12, 16), bg_score, np.float32), cams[0], cams[2]])
    maps.append(ids[np.argmax(crf.crf_refine_probs(image, scores), axis=0)])
  np.testing.assert_array_equal(got, _oracle_affinity_labels(*maps, 1))


def test_hard_label_crf_is_the_label_crf_of_the_argmax_one_hot():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
  scores = rng.uniform(size=(3, 9, 12)).astype(np.float32)
  got = affinity.hard_label_crf(image, scores)
  expected = crf.crf_refine_labels(image, scores.argmax(axis=0), 3, class_ids=[0, 1, 2])
  assert got.shape == (3, 9, 12) and set(np.unique(got).tolist()) == {0.0, 1.0}
  np.testing.assert_array_equal(got.argmax(axis=0), expected)
  np.testing.assert_array_equal(got.sum(axis=0), 1.0)


def test_affinity_labels_input_errors():
  cams = np.zeros((3, 8, 8), np.float32)
  with pytest.raises(ValueError, match=r'image labels \(C,\), got \(3, 8, 8\) and \(4,\)'):
    affinity.affinity_labels_from_cams(cams, np.ones(4))
  with pytest.raises(ValueError, match='aff_bg'):
    affinity.affinity_labels_from_cams(cams, np.ones(3), fg_threshold=0.1, bg_threshold=0.3)
  with pytest.raises(ValueError, match='image'):
    affinity.affinity_labels_from_cams(cams, np.ones(3), crf_fn=lambda i, p: p.argmax(0))


def test_downsample_labels_hand_example():
  labels = np.arange(5 * 6).reshape(5, 6)
  got = affinity.downsample_labels(labels, stride=4)
  np.testing.assert_array_equal(got, [[14, 255], [255, 255]])
  np.testing.assert_array_equal(affinity.downsample_labels(labels, stride=2),
                                [[7, 9, 11], [19, 21, 23], [255, 255, 255]])


def test_affinity_loss_hand_values():
  aff = np.array([[0.9, 0.5, 0.2, 0.7]], np.float32)
  bg_pos = np.array([[1, 0, 0, 0]], bool)
  fg_pos = np.array([[0, 1, 0, 0]], bool)
  neg = np.array([[0, 0, 1, 1]], bool)
  # -log 0.9 / 4 - log 0.5 / 4 - (log 0.8 + log 0.3) / 2 / 2, each count with +1e-5.
  assert float(affinity.affinity_loss(aff, bg_pos, fg_pos, neg)) == pytest.approx(0.55641,
                                                                                  abs=1e-4)
  only_neg = affinity.affinity_loss(aff, np.zeros_like(bg_pos), np.zeros_like(fg_pos), neg)
  assert float(only_neg) == pytest.approx(-(math.log(0.8) + math.log(0.3)) / 2 / 2, rel=1e-4)


def _net_cfg(**overrides):
  cfg = dict(backbone='resnet18', output_stride=8, width=0.125, frozen_bn=False)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope='module')
def affinity_net():
  model = affinity.make_affinity_net(_net_cfg())
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), jnp.zeros((2, 32, 40, 3)))
  return model, {'params': variables['params'], 'batch_stats': variables['batch_stats']}


def _elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def test_affinity_net_is_psa_embedding_on_layers_2_to_4(affinity_net):
  model, variables = affinity_net
  params = variables['params']
  assert set(params) == {'backbone', 'head'}
  head = params['head']
  kernels = [np.asarray(head[f'proj_{n}']['kernel'][0, 0]) for n in affinity.FEATURE_LAYERS]
  assert [k.shape[1] for k in kernels] == [64, 128, 256]
  assert head['embed']['kernel'].shape[2:] == (448, 448)
  assert all(set(head[name]) == {'kernel'} for name in head)  # no biases, as PSA
  images = jax.random.normal(jax.random.key(1), (2, 32, 40, 3))
  got = np.asarray(model.apply(variables, images))
  assert got.shape == (2, 4, 5, 448)
  layers = model.apply(variables, images, method=lambda m, x: m.backbone(x))
  projected = [_elu(np.asarray(layers[n], np.float64) @ k)
               for n, k in zip(affinity.FEATURE_LAYERS, kernels)]
  embed = np.asarray(head['embed']['kernel'][0, 0], np.float64)
  np.testing.assert_allclose(got, _elu(np.concatenate(projected, -1) @ embed), rtol=1e-4,
                             atol=1e-5)


def test_affinity_net_needs_output_stride_8():
  with pytest.raises(ValueError, match='output_stride'):
    affinity.make_affinity_net(_net_cfg(output_stride=16))


def test_affinity_train_loss_matches_a_loop_over_pairs(affinity_net):
  model, variables = affinity_net
  rng = np.random.default_rng(6)
  images = rng.normal(size=(2, 32, 40, 3)).astype(np.float32)
  labels = rng.choice(np.array([0, 0, 1, 2, 255]), size=(2, 4, 5)).astype(np.int32)
  offsets = affinity.pair_offsets(2)
  loss_fn = affinity.affinity_train_loss(model, offsets)
  loss, (_, counts) = loss_fn(variables['params'], variables['batch_stats'],
                              {'image': images, 'segmentation': labels}, None, None)
  features, _ = model.apply(variables, images, train=True, mutable=['batch_stats'])
  features = np.asarray(features, np.float64)
  sums = {'bg': [0.0, 0], 'fg': [0.0, 0], 'neg': [0.0, 0]}
  for n in range(2):
    for y in range(4 - 1):
      for x in range(1, 5 - 1):
        for dy, dx in offsets.tolist():
          a, b = labels[n, y, x], labels[n, y + dy, x + dx]
          aff = math.exp(-np.mean(np.abs(features[n, y, x] - features[n, y + dy, x + dx])))
          if a == 255 or b == 255:
            continue
          kind = ('bg' if a == 0 else 'fg') if a == b else 'neg'
          sums[kind][0] -= math.log(aff + 1e-5) if kind != 'neg' else math.log(1 + 1e-5 - aff)
          sums[kind][1] += 1
  expected = sum(w * s / (c + 1e-5) for w, (s, c) in zip((0.25, 0.25, 0.5), sums.values()))
  assert float(loss) == pytest.approx(expected, rel=1e-4)
  assert {k: float(v) for k, v in counts.items()} == {f'{k}_pairs': c for k, (_, c)
                                                      in sums.items()}


@pytest.mark.parametrize('impl,convolutions', [('lax', 4), ('matmul', 0)])
def test_affinity_head_convs_follow_conv_impl(affinity_net, impl, convolutions):
  """config.model.conv_impl reaches the embedding's four 1x1 convs, as the backbone's: with
  'matmul' they are matrix products (no convolution left in the head), with the same values."""
  model, variables = affinity_net
  net = affinity.make_affinity_net(_net_cfg(conv_impl=impl))
  assert net.head.conv_impl == impl
  images = jax.random.normal(jax.random.key(1), (2, 32, 40, 3))
  layers = model.apply(variables, images, method=lambda m, x: m.backbone(x))
  head = {'params': variables['params']['head']}
  jaxpr = str(jax.make_jaxpr(lambda f: net.head.apply(head, f))(layers))
  assert jaxpr.count('conv_general_dilated') == convolutions
  np.testing.assert_allclose(net.head.apply(head, layers), model.head.apply(head, layers),
                             rtol=1e-5, atol=1e-5)
