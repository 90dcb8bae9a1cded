"""Confusion-matrix mIoU against a brute-force pixel count."""
import numpy as np
import pytest

from rwsjax import evaluate


def brute_force_iou(labels, preds, num_classes):
  ious = []
  for c in range(num_classes):
    tp = fp = fn = 0
    for y, p in zip(labels.ravel(), preds.ravel()):
      if y == 255:
        continue
      tp += (y == c) and (p == c)
      fp += (y != c) and (p == c)
      fn += (y == c) and (p != c)
    ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
  return np.array(ious)


def test_confusion_and_miou_match_brute_force():
  rng = np.random.default_rng(0)
  k = 5
  labels = rng.integers(0, k - 1, size=(3, 7, 9))  # class k-1 never in GT ...
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = rng.integers(0, k - 1, size=labels.shape)  # ... nor predicted: its IoU is nan
  confusion = np.asarray(evaluate.confusion_matrix(labels, preds, k))
  expected = np.zeros((k, k), np.int64)
  for y, p in zip(labels.ravel(), preds.ravel()):
    if y != 255:
      expected[y, p] += 1
  np.testing.assert_array_equal(confusion, expected)
  oracle = brute_force_iou(labels, preds, k)
  np.testing.assert_allclose(evaluate.iou_from_confusion(confusion), oracle, equal_nan=True)
  assert np.isnan(oracle[k - 1])
  assert np.isclose(evaluate.miou_from_confusion(confusion), np.nanmean(oracle))


def test_weights_drop_padded_examples_and_summary():
  labels = np.array([[0, 1], [1, 1]])
  preds = np.array([[0, 1], [0, 0]])
  weights = np.array([[1, 1], [0, 0]])  # second row is padding
  confusion = np.asarray(evaluate.confusion_matrix(labels, preds, 2, weights=weights))
  np.testing.assert_array_equal(confusion, [[1, 0], [0, 1]])
  counted = np.asarray(evaluate.confusion_matrix(labels, preds, 2, weights=2 * weights + 1))
  np.testing.assert_array_equal(counted, [[3, 0], [2, 3]])  # a weight w counts a pixel w times
  summary = evaluate.summarize(confusion, ['bg', 'fg'])
  assert summary['miou'] == 1.0 and summary['per_class_iou'] == {'bg': 1.0, 'fg': 1.0}
  assert summary['pixel_accuracy'] == 1.0


def test_miou_table_rows_and_absent_classes():
  result = {'miou': 0.5, 'per_class_iou': {'bg': 0.75, 'cat': None, 'dog': 0.25}}
  table = evaluate.miou_table('validation', [('model', result)], ['bg', 'cat', 'dog'])
  assert table == ('| validation | mIoU | bg | cat | dog |\n'
                   '|---|---|---|---|---|\n'
                   '| model | 0.5000 | 0.750 | - | 0.250 |')


def test_binned_auc_is_the_pairwise_win_rate_on_bin_values():
  rng = np.random.default_rng(3)
  bins = 20
  positive = (rng.integers(0, bins, 40) + 0.5) / bins  # scores at bin centres: exact
  negative = (rng.integers(0, bins, 30) + 0.5) / bins
  wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
  auc = evaluate.binned_auc(evaluate.score_histogram(positive, bins),
                            evaluate.score_histogram(negative, bins))
  assert auc == pytest.approx(wins / (40 * 30), abs=1e-12)


def test_score_histogram_edges_and_auc_extremes():
  counts = evaluate.score_histogram(np.array([0.0, 0.05, 0.1, 0.999, 1.0]), bins=10)
  assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
  high, low = evaluate.score_histogram([0.9, 1.0], 10), evaluate.score_histogram([0.1], 10)
  assert evaluate.binned_auc(high, low) == 1.0
  assert evaluate.binned_auc(low, high) == 0.0
  assert np.isnan(evaluate.binned_auc(high, np.zeros(10)))


def test_classification_metrics_by_hand():
  logits = np.array([[2.0, -1.0, 0.5], [-0.5, 3.0, -2.0], [1.0, 1.0, -1.0],
                     [-3.0, -0.1, 0.2]])
  targets = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
  metrics = evaluate.classification_metrics(logits, targets)
  # Decisions logit > 0: rows 1 and 2 all right; row 3 wrong on class 2; row 4 on class 3.
  assert metrics['exact_match'] == 0.5
  assert metrics['label_accuracy'] == 10 / 12
  # Class 1: positives ranked 1, 2 -> AP 1. Class 2: the positive is ranked 1 -> AP 1.
  # Class 3: the positive (0.5) is ranked 1 of scores 0.5, 0.2, -1, -2 -> AP 1.
  assert metrics['map'] == 1.0
  assert evaluate.average_precision([0.9, 0.8, 0.7], [0, 1, 1]) == pytest.approx(
      (1 / 2 + 2 / 3) / 2)
  assert np.isnan(evaluate.average_precision([0.1, 0.2], [0, 0]))


def test_label_confusion_matches_a_bincount_over_images_of_any_size():
  rng = np.random.default_rng(0)
  pairs = [(rng.integers(0, 4, size), rng.integers(0, 4, size))
           for size in ((3, 5), (7, 2), (4, 4), (1, 9))]
  pairs[0][0][0, 0] = 255
  expected = np.zeros((4, 4), np.int64)
  for gt, pred in pairs:
    keep = gt != 255
    np.add.at(expected, (gt[keep], pred[keep]), 1)
  np.testing.assert_array_equal(evaluate.label_confusion(iter(pairs), 4, chunk=16), expected)
