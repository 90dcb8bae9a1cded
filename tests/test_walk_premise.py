"""Tests for isimjax.walk_premise: the measurement against cases whose answer is known (perfect
affinities and labels, nothing labelled, a grid without pairs)."""
import numpy as np

from isimjax import affinity
from isimjax import walk_premise

STRIDE, RADIUS, K = 4, 3, 4
OPTIONS = dict(num_classes=K, class_names=['bg', 'a', 'b', 'c'], cam_threshold=0.3,
               radius=RADIUS, alpha=4.0, beta=8.0, logt=2, stride=STRIDE, dense_max_nodes=4096)


def _example(rng, shape=(40, 48)):
  """Ground truth with two rectangles of classes 1 and 2, and diffuse noisy CAMs of them (each
  spilling 6 pixels past its object)."""
  truth = np.zeros(shape, np.int32)
  truth[8:21, 8:27], truth[24:36, 28:44] = 1, 2  # the first straddles cells of 4 x 4
  cams = np.zeros((K - 1,) + shape, np.float32)
  cams[0, 2:26, 2:34], cams[1, 18:42, 22:50] = 0.6, 0.6
  cams = np.clip(cams + rng.normal(scale=0.1, size=cams.shape), 0, 1).astype(np.float32)
  return cams, np.array([1, 1, 0]), truth


def _grid(truth):
  return affinity.downsample_labels(truth, STRIDE)[None]


def test_perfect_affinities_and_labels():
  rng = np.random.default_rng(0)
  examples = [_example(rng) for _ in range(3)]
  offsets = affinity.pair_offsets(RADIUS)
  result = walk_premise.measure(
      [(cams, labels, affinity.same_and_different(_grid(truth), offsets)[0][0].astype(np.float32),
        truth, truth)
       for cams, labels, truth in examples],
      sweep=[(8.0, 2), (8.0, 0)], **OPTIONS)
  assert result['labels']['walk'] == result['labels']['walk_truth']
  assert result['sweep'][0]['miou'] == result['labels']['walk']['miou']
  assert result['affinities'] == {'all': 1.0, 'labelled': 1.0, 'unlabelled': None,
                                  'unlabelled_pure': None, 'unlabelled_mixed': None}
  pairs = result['affinity_labels']
  assert [pairs[key] for key in ('same_precision', 'same_recall', 'different_precision',
                                 'different_recall', 'coverage')] == [1.0] * 5
  # The walk on perfect affinities cleans the noisy CAMs: above the unwalked labels.
  assert result['labels']['walk_truth']['miou'] > result['labels']['pooled']['miou'] + 0.05
  assert '| walked on ground-truth affinities |' in walk_premise.table(result)


def test_unlabelled_pairs_and_counts():
  rng = np.random.default_rng(1)
  cams, labels, truth = _example(rng)
  offsets = affinity.pair_offsets(RADIUS)
  scores = rng.random((len(offsets),) + affinity.cropped_shape(_grid(truth).shape[1:], offsets))
  unlabelled = np.full_like(truth, 255)
  result = walk_premise.measure([(cams, labels, scores, unlabelled, truth)], **OPTIONS)
  assert result['affinities']['labelled'] is None
  assert result['affinities']['unlabelled'] == result['affinities']['all']
  assert 0.3 < result['affinities']['all'] < 0.7  # random scores
  counts = np.asarray(result['affinity_labels']['counts'])
  assert counts[:2].sum() == 0
  np.testing.assert_array_equal(counts[2], affinity.pair_agreement(
      *[affinity.same_and_different(_grid(truth), offsets)] * 2)[0:2].sum(axis=0))
  assert result['affinity_labels']['coverage'] == 0.0
  mixed = affinity.mixed_cells(truth, STRIDE)
  assert result['mixed_cell_share'] == mixed.mean() > 0
  # Random scores: every part of the split is near chance.
  assert all(0.3 < result['affinities'][part] < 0.7 for part in walk_premise.AUC_PARTS[2:])


def test_a_grid_without_pairs_is_not_walked():
  rng = np.random.default_rng(2)
  cams, labels, truth = _example(rng, shape=(12, 12))
  result = walk_premise.measure([(cams, labels, None, truth, truth)], sweep=[(4.0, 1)],
                                **OPTIONS)
  rows = result['labels']
  assert rows['pooled'] == rows['walk_truth'] == rows['walk']
  assert result['sweep'][0]['miou'] == rows['walk']['miou']
  assert result['affinities']['all'] is None
  assert result['affinity_labels']['same_precision'] is None
