"""Confusion-matrix mIoU, binned ROC AUC and multi-label classification metrics (docs/methods.md,
shared building blocks)."""
import functools

import jax
import numpy as np
import jax.numpy as jnp

from rwsjax import hosts
from rwsjax.losses import IGNORE_LABEL


def confusion_matrix(labels, preds, num_classes, ignore_label=IGNORE_LABEL, weights=None):
  """(K, K) counts, rows = ground truth, columns = prediction; ignored pixels are skipped.

  Args:
    labels: integer array of ground-truth labels (any shape).
    preds: integer array of predictions, same shape.
    num_classes: K.
    ignore_label: label value that is not counted.
    weights: optional integer array broadcastable to `labels`: how many times each pixel
      counts (0 drops it, e.g. padding; 2 counts a pixel of two overlapping windows twice).
  """
  labels = jnp.asarray(labels).astype(jnp.int32)
  preds = jnp.asarray(preds).astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  counts = valid.astype(jnp.int32)
  if weights is not None:
    counts = counts * jnp.broadcast_to(weights, labels.shape).astype(jnp.int32)
  index = jnp.where(valid, labels * num_classes + jnp.clip(preds, 0, num_classes - 1), 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index.ravel()].add(
      counts.ravel())
  return counts.reshape(num_classes, num_classes)


@functools.lru_cache(maxsize=None)
def _chunk_confusion(num_classes):
  """`confusion_matrix` for `num_classes`, jitted once per class count."""
  return jax.jit(lambda gt, pred: confusion_matrix(gt, pred, num_classes))


class ConfusionStream:
  """The (K, K) confusion matrix of (ground truth, prediction) label maps of any sizes, added
  one map at a time: pixels go through `confusion_matrix` in fixed-size chunks of `chunk`
  (one compilation for every stream of K classes)."""

  def __init__(self, num_classes, chunk=1 << 18):
    self.num_classes, self.chunk = num_classes, chunk
    self._counts = np.zeros((num_classes, num_classes), np.int64)
    self._gt, self._pred, self._size = [], [], 0

  def _flush(self, size):
    gt, pred = np.concatenate(self._gt), np.concatenate(self._pred)
    step = _chunk_confusion(self.num_classes)
    pad = self.chunk - size
    self._counts += np.asarray(step(np.pad(gt[:size], (0, pad), constant_values=IGNORE_LABEL),
                                    np.pad(pred[:size], (0, pad))), np.int64)
    self._gt, self._pred, self._size = [gt[size:]], [pred[size:]], gt.size - size

  def add(self, gt, pred):
    """Counts one (ground truth, prediction) pair of label maps of one shape."""
    self._gt.append(np.ravel(gt).astype(np.int32))
    self._pred.append(np.ravel(pred).astype(np.int32))
    self._size += self._gt[-1].size
    while self._size >= self.chunk:
      self._flush(self.chunk)

  def total(self):
    """The confusion matrix of every pair added, summed over processes."""
    if self._size:
      self._flush(self._size)
    return hosts.sum_over_processes(self._counts)


def label_confusion(pairs, num_classes, chunk=1 << 18):
  """(K, K) confusion matrix of (ground truth, prediction) label maps of any sizes, summed
  over processes (`ConfusionStream`)."""
  stream = ConfusionStream(num_classes, chunk)
  for gt, pred in pairs:
    stream.add(gt, pred)
  return stream.total()


def iou_from_confusion(confusion):
  """Per-class IoU = TP / (TP + FP + FN); nan for a class absent from GT and prediction."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / union, np.nan)


def miou_from_confusion(confusion):
  """Mean IoU over the classes present in ground truth or prediction (nan-mean)."""
  iou = iou_from_confusion(confusion)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan')


def summarize(confusion, class_names=None):
  """JSON-ready dict: mIoU, per-class IoU, pixel accuracy."""
  confusion = np.asarray(confusion, np.int64)
  iou = iou_from_confusion(confusion)
  names = class_names or [str(k) for k in range(len(iou))]
  total = confusion.sum()
  return {
      'miou': miou_from_confusion(confusion),
      'pixel_accuracy': float(np.trace(confusion) / total) if total else float('nan'),
      'per_class_iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
  }


def score_histogram(scores, bins=1000):
  """(bins,) int64 counts of scores in [0, 1] over equal bins (1 falls in the last), the
  streaming input of `binned_auc`."""
  index = np.clip(np.floor(np.ravel(scores) * bins).astype(np.int64), 0, bins - 1)
  return np.bincount(index, minlength=bins).astype(np.int64)


def binned_auc(positive_counts, negative_counts):
  """ROC AUC from `score_histogram`s of positive and negative scores: the chance that a
  positive scores in a higher bin than a negative, plus half the chance of the same bin
  (the Mann-Whitney statistic; exact when the scores are the bins' values). nan without
  positives or negatives."""
  positive = np.asarray(positive_counts, np.float64)
  negative = np.asarray(negative_counts, np.float64)
  pairs = positive.sum() * negative.sum()
  if not pairs:
    return float('nan')
  below = np.cumsum(negative) - negative
  return float(np.sum(positive * (below + 0.5 * negative)) / pairs)


def average_precision(scores, targets):
  """AP of one class: the mean, over the positives, of the precision at each positive's rank
  when examples are sorted by decreasing score; nan without positives."""
  order = np.argsort(-np.asarray(scores), kind='stable')
  hits = np.asarray(targets, np.float64)[order]
  if not hits.sum():
    return float('nan')
  precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
  return float((precision * hits).sum() / hits.sum())


def classification_metrics(logits, targets):
  """Paper Table 1 as three numbers: exact-match accuracy (every class decided right with
  sigmoid > 0.5, i.e. logit > 0), per-label accuracy, and mAP over classes with a positive."""
  logits = np.asarray(logits, np.float64)
  predicted = logits > 0
  targets = np.asarray(targets) > 0.5
  correct = predicted == targets
  ap = [average_precision(logits[:, c], targets[:, c]) for c in range(targets.shape[1])]
  return {'exact_match': float(correct.all(axis=1).mean()),
          'label_accuracy': float(correct.mean()),
          'map': float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float('nan'),
          'images': int(len(targets))}


def percent(value):
  """'12.34' for 0.1234; '-' for None or nan (tables)."""
  return '-' if value is None or np.isnan(value) else f'{100 * value:.2f}'


def miou_table(split, rows, class_names):
  """Markdown table of `summarize` results: one row per (title, result), mIoU then the IoU
  of each class ('-' where the class is absent from ground truth and prediction)."""
  lines = [f'| {split} | mIoU | ' + ' | '.join(class_names) + ' |',
           '|---' * (len(class_names) + 2) + '|']
  for title, result in rows:
    per_class = [result['per_class_iou'].get(n) for n in class_names]
    lines.append(f"| {title} | {result['miou']:.4f} | "
                 + ' | '.join('-' if v is None else f'{v:.3f}' for v in per_class) + ' |')
  return '\n'.join(lines)
