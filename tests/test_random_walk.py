"""Tests for isimjax.random_walk against plain numpy references written independently."""
import numpy as np
import pytest

from isimjax import affinity
from isimjax import random_walk


def _numpy_affinity(features, radius):
  """(n, n) float64 affinities by looping over PSA's pairs (from pixel in the crop region)."""
  h, w, _ = features.shape
  matrix = np.zeros((h * w, h * w))
  for y0 in range(h - radius + 1):
    for x0 in range(radius - 1, w - radius + 1):
      for y1 in range(h):
        for x1 in range(w):
          later = y1 > y0 or (y1 == y0 and x1 > x0)
          if later and (y1 - y0) ** 2 + (x1 - x0) ** 2 < radius * radius:
            diff = np.abs(features[y0, x0].astype(np.float64) - features[y1, x1])
            i, j = y0 * w + x0, y1 * w + x1
            matrix[i, j] = matrix[j, i] = np.exp(-diff.mean())
  return matrix


def _numpy_walk(cams, matrix, beta, logt):
  """PSA's infer_aff in numpy: A^beta, self loops, column-normalise, cams @ T^(2^logt)."""
  powered = matrix ** beta
  np.fill_diagonal(powered, 1.0)
  trans = powered / powered.sum(axis=0, keepdims=True)
  flat = cams.reshape(cams.shape[0], -1).astype(np.float64)
  return (flat @ np.linalg.matrix_power(trans, 2 ** logt)).reshape(cams.shape)


def _features_and_affinities(shape, radius, seed):
  rng = np.random.default_rng(seed)
  features = rng.normal(scale=0.3, size=(1,) + shape + (4,)).astype(np.float32)
  offsets = affinity.pair_offsets(radius)
  return features[0], np.asarray(affinity.pair_affinities(features, offsets))[0], offsets


def test_dense_affinity_matrix_matches_loop_reference():
  features, aff, offsets = _features_and_affinities((5, 7), 3, seed=0)
  got = np.asarray(random_walk.dense_affinity_matrix(aff, offsets, (5, 7)))
  np.testing.assert_allclose(got, _numpy_affinity(features, 3), rtol=1e-5, atol=1e-7)


def test_dense_walk_matches_numpy_matrix_power():
  features, aff, offsets = _features_and_affinities((5, 7), 3, seed=1)
  cams = np.random.default_rng(1).uniform(size=(3, 5, 7)).astype(np.float32)
  trans = random_walk.transition_matrix(
      random_walk.dense_affinity_matrix(aff, offsets, (5, 7)), beta=8.0)
  got = np.asarray(random_walk.random_walk_dense(cams, trans, logt=5))
  expected = _numpy_walk(cams, _numpy_affinity(features, 3), beta=8.0, logt=5)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_repeated_squaring_equals_repeated_multiplication():
  rng = np.random.default_rng(2)
  trans = rng.uniform(size=(12, 12))
  trans /= trans.sum(axis=0, keepdims=True)
  cams = rng.uniform(size=(2, 3, 4))
  got = np.asarray(random_walk.random_walk_dense(cams.astype(np.float32),
                                                 trans.astype(np.float32), logt=4))
  expected = cams.reshape(2, -1)
  for _ in range(16):
    expected = expected @ trans
  np.testing.assert_allclose(got, expected.reshape(2, 3, 4), rtol=1e-5)


@pytest.mark.parametrize('radius,shape,logt', [(3, (6, 8), 8), (5, (9, 12), 6)])
def test_dense_and_sparse_walks_agree(radius, shape, logt):
  _, aff, offsets = _features_and_affinities(shape, radius, seed=3)
  cams = np.random.default_rng(3).uniform(size=(4,) + shape).astype(np.float32)
  trans = random_walk.transition_matrix(
      random_walk.dense_affinity_matrix(aff, offsets, shape), beta=8.0)
  dense = np.asarray(random_walk.random_walk_dense(cams, trans, logt=logt))
  sparse = np.asarray(random_walk.random_walk_sparse(cams, aff, offsets, beta=8.0, logt=logt))
  np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-7)


def test_transition_matrix_columns_sum_to_one_and_keep_distributions():
  _, aff, offsets = _features_and_affinities((6, 8), 3, seed=4)
  matrix = random_walk.dense_affinity_matrix(aff, offsets, (6, 8))
  trans = np.asarray(random_walk.transition_matrix(matrix, beta=8.0), np.float64)
  np.testing.assert_allclose(trans.sum(axis=0), 1.0, rtol=1e-6)
  scaled = trans * (np.asarray(matrix, np.float64) ** 8 + np.eye(48)).sum(axis=0)
  np.testing.assert_allclose(scaled, scaled.T, rtol=1e-5, atol=1e-12)
  probs = np.random.default_rng(4).uniform(size=(3, 6, 8)).astype(np.float32)
  probs /= probs.sum(axis=0, keepdims=True)
  walked = np.asarray(random_walk.random_walk_dense(probs, trans.astype(np.float32), logt=3))
  np.testing.assert_allclose(walked.sum(axis=0), 1.0, rtol=1e-5)


def test_background_channel_formula():
  cams = np.random.default_rng(5).uniform(size=(3, 4, 5)).astype(np.float32)
  got = np.asarray(random_walk.background_channel(cams, alpha=16.0))
  assert got.shape == (4, 4, 5)
  np.testing.assert_array_equal(got[1:], cams)
  for y in range(4):
    for x in range(5):
      assert got[0, y, x] == pytest.approx((1.0 - max(cams[:, y, x])) ** 16, rel=1e-5)


def _bilinear_upsample(maps, factor):
  """Half-pixel bilinear upsampling by an integer factor with edge clamping (numpy)."""
  _, h, w = maps.shape
  src_y = np.clip((np.arange(h * factor) + 0.5) / factor - 0.5, 0, h - 1)
  src_x = np.clip((np.arange(w * factor) + 0.5) / factor - 0.5, 0, w - 1)
  y0, x0 = np.floor(src_y).astype(int), np.floor(src_x).astype(int)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  wy, wx = (src_y - y0)[:, None], (src_x - x0)[None, :]
  top = maps[:, y0][:, :, x0] * (1 - wx) + maps[:, y0][:, :, x1] * wx
  bottom = maps[:, y1][:, :, x0] * (1 - wx) + maps[:, y1][:, :, x1] * wx
  return top * (1 - wy) + bottom * wy


def _numpy_propagate_scores(cams, present, features, radius, stride, alpha, beta, logt):
  """PSA's infer_aff pipeline in numpy: scores (K, H, W) before the argmax."""
  _, height, width = cams.shape
  fg = cams.astype(np.float64) * present[:, None, None]
  scores = np.concatenate([(1 - fg.max(axis=0, keepdims=True)) ** alpha, fg])
  h, w = features.shape[:2]
  padded = np.zeros((scores.shape[0], h * stride, w * stride))
  padded[:, :height, :width] = scores
  pooled = np.zeros((scores.shape[0], h, w))
  for y in range(h):
    for x in range(w):
      block = padded[:, y * stride:(y + 1) * stride, x * stride:(x + 1) * stride]
      pooled[:, y, x] = block.mean(axis=(1, 2))
  walked = _numpy_walk(pooled, _numpy_affinity(features, radius), beta, logt)
  return _bilinear_upsample(walked, stride)[:, :height, :width]


def _propagate_case(seed):
  rng = np.random.default_rng(seed)
  cams = rng.uniform(size=(4, 21, 30)).astype(np.float32)
  cams[:, :8] *= 0.01
  present = np.array([1, 0, 1, 0])
  features = rng.normal(scale=0.3, size=(1, 6, 8, 4)).astype(np.float32)
  aff = np.asarray(affinity.pair_affinities(features, affinity.pair_offsets(3)))[0]
  return cams, present, features[0], aff


@pytest.mark.parametrize('dense_max_nodes', [4096, 0])
def test_propagate_matches_numpy_pipeline(dense_max_nodes):
  cams, present, features, aff = _propagate_case(seed=6)
  labels = random_walk.propagate(cams, present, aff, radius=3, stride=4, logt=4,
                                 dense_max_nodes=dense_max_nodes)
  scores = _numpy_propagate_scores(cams, present, features, 3, 4, 16.0, 8.0, 4)
  assert labels.shape == (21, 30) and labels.dtype == np.uint8
  assert set(np.unique(labels).tolist()) <= {0, 1, 3}
  assert set(np.unique(labels).tolist()) >= {0, 1, 3}
  chosen = np.take_along_axis(scores, labels[None].astype(int), axis=0)[0]
  np.testing.assert_allclose(chosen, scores.max(axis=0), rtol=1e-4)


def test_propagate_with_crf_maps_kept_channels_back():
  cams, present, features, aff = _propagate_case(seed=7)
  image = np.zeros((21, 30, 3), np.uint8)

  def fake_crf(img, scores):
    """Makes the least likely kept channel win."""
    assert img.shape == (21, 30, 3) and scores.shape == (3, 21, 30)
    return -scores

  labels = random_walk.propagate(cams, present, aff, radius=3, stride=4, logt=4,
                                 crf_fn=fake_crf, image=image)
  scores = _numpy_propagate_scores(cams, present, features, 3, 4, 16.0, 8.0, 4)[[0, 1, 3]]
  chosen = np.take_along_axis(scores, (labels[None].astype(int) + 1) // 2, axis=0)[0]
  np.testing.assert_allclose(chosen, scores.min(axis=0), rtol=1e-4)


def test_propagate_rejects_affinities_of_the_wrong_size():
  cams, present, _, aff = _propagate_case(seed=8)
  with pytest.raises(ValueError, match='affinities'):
    random_walk.propagate(cams, present, aff[:, 1:], radius=3, stride=4)
  with pytest.raises(ValueError, match=r'Expected CAMs \(C, H, W\) and image labels \(C,\)'):
    random_walk.propagate(cams, present[:3], aff, radius=3, stride=4)


def test_walk_scores_are_the_pipeline_scores_of_the_kept_channels():
  cams, present, features, aff = _propagate_case(seed=9)
  scores, class_ids = random_walk.walk_scores(cams, present, aff, radius=3, stride=4, logt=4)
  expected = _numpy_propagate_scores(cams, present, features, 3, 4, 16.0, 8.0, 4)
  np.testing.assert_array_equal(class_ids, [0, 1, 3])
  np.testing.assert_allclose(scores, expected[[0, 1, 3]], rtol=1e-4, atol=1e-6)


def test_a_grid_without_pairs_is_not_walked():
  rng = np.random.default_rng(10)
  cams = rng.uniform(size=(2, 7, 9)).astype(np.float32)
  present = np.array([1, 1])
  assert random_walk.feature_grid((7, 9), 4) == (2, 3)
  scores, _ = random_walk.walk_scores(cams, present, None, radius=3, stride=4)
  padded = np.zeros((3, 8, 12))
  padded[:, :7, :9] = np.concatenate([(1 - cams.max(axis=0, keepdims=True)) ** 16, cams])
  pooled = padded.reshape(3, 2, 4, 3, 4).mean(axis=(2, 4))
  np.testing.assert_allclose(scores, _bilinear_upsample(pooled, 4)[:, :7, :9], rtol=1e-4,
                             atol=1e-6)
  with pytest.raises(ValueError, match='expected its affinities'):
    random_walk.walk_scores(np.zeros((2, 21, 30), np.float32), present, None, radius=3,
                            stride=4)
