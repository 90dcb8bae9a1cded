"""Sliding-window slices: scores, the weak-slice threshold T and selection (docs/methods.md RWS 3-4).

Windows of `size` x `size` pixels start every `stride` pixels; the last row and column of
windows are snapped to the image edge so every pixel is covered. They form a grid of row bands
times column bands, listed row-major (`window_boxes`). The window edges cut the image into a
grid of cells, each window being a block of whole cells: per-window, per-class sums are one
scatter-add of the pixels into (cell, class) bins followed by 0/1 band matrices over the cells.
No (H, W, K) one-hot map is built, and float32 sums stay exact for counts and local for
attention (no image-wide running sum as in an integral image).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rwsjax.losses import IGNORE_LABEL


def window_starts(length, size, stride):
  """Start offsets of the windows along one axis, the last one snapped to `length - size`."""
  starts = list(range(0, length - size + 1, stride))
  if starts[-1] + size < length:
    starts.append(length - size)
  return np.asarray(starts, np.int32)


def _check(height, width, size, stride):
  if size <= 0 or stride <= 0:
    raise ValueError(f'config.rws.slice_size ({size}) and config.rws.slice_stride ({stride}) '
                     'must be positive.')
  if size > height or size > width:
    raise ValueError(f'config.rws.slice_size = {size} is larger than the crop '
                     f'{height}x{width}; expected a slice size no larger than the crop size.')


def window_boxes(height, width, size, stride):
  """Sliding windows (docs/methods.md RWS 3) as an int32 (W, 4) array of (y0, x0, y1, x1), row-major."""
  _check(height, width, size, stride)
  y0, x0 = np.meshgrid(window_starts(height, size, stride), window_starts(width, size, stride),
                       indexing='ij')
  return np.stack([y0, x0, y0 + size, x0 + size], axis=-1).reshape(-1, 4)


# Neighbouring pixels of a row add into different copies of the (cell, class) bins, summed
# afterwards: a run of same-class pixels then does not update one bin serially (CPU) or
# contend for one address (GPU atomics).
_LANES = 8


def _cells(length, size, stride):
  """Cell index of every pixel, window-covers-cell 0/1 matrix (windows, cells), cell count."""
  starts = window_starts(length, size, stride)
  edges = np.unique(np.concatenate([starts, starts + size, [0, length]]))[:-1]
  cell = np.searchsorted(edges, np.arange(length), side='right') - 1
  covers = (edges[None] >= starts[:, None]) & (edges[None] < starts[:, None] + size)
  return cell.astype(np.int32), covers.astype(np.float32), len(edges)


def class_window_sums(classes, weights, num_classes, size, stride):
  """Per window and class, the sum of `weights` over the pixels of that class.

  Args:
    classes: (N, H, W) int class per pixel; values outside [0, num_classes) are dropped.
    weights: (N, H, W, Q) float values to sum.
    num_classes: K.
    size, stride: window geometry (`window_boxes`).

  Returns:
    (N, W, K, Q) float32, windows in `window_boxes` order.
  """
  n, height, width = classes.shape
  _check(height, width, size, stride)
  row_cell, row_covers, rows = _cells(height, size, stride)
  col_cell, col_covers, cols = _cells(width, size, stride)
  lane = np.arange(width) % _LANES
  cell = (row_cell[:, None] * cols + col_cell[None, :]) * _LANES + lane[None, :]
  valid = (classes >= 0) & (classes < num_classes)
  bins = n * rows * cols * _LANES * num_classes
  index = (jnp.arange(n)[:, None, None] * (rows * cols * _LANES) + cell) * num_classes + classes
  index = jnp.where(valid, index, bins).reshape(-1)
  q = weights.shape[-1]
  sums = jnp.zeros((bins, q), jnp.float32).at[index].add(
      weights.reshape(-1, q).astype(jnp.float32), mode='drop')
  sums = sums.reshape(n, rows, cols, _LANES, num_classes, q).sum(axis=3)
  out = jnp.einsum('ay,nyxkq,bx->nabkq', row_covers, sums, col_covers,
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(n, -1, num_classes, q)


class WindowScores(NamedTuple):
  """Per window and class, (N, W, K) each.

  attention: mean attention over the window's class-c ground-truth pixels (0 if none).
  present: the window has at least `min_pixels` class-c ground-truth pixels.
  pixels: number of class-c ground-truth pixels in the window.
  iou: IoU of prediction vs ground truth for c inside the window (0 where the union is
    empty; None when no prediction was given).
  """
  attention: jax.Array
  present: jax.Array
  pixels: jax.Array
  iou: jax.Array | None


@functools.partial(jax.jit, static_argnames=('num_classes', 'size', 'stride', 'min_pixels'))
def score_windows(attention, labels, preds=None, *, num_classes, size, stride, min_pixels=1):
  """Window attention and window IoU per class (docs/methods.md RWS 3).

  Args:
    attention: (N, H, W) per-pixel attention, A_last or Gamma (docs/methods.md RWS 2).
    labels: (N, H, W) ground truth; ignored pixels (255) count nowhere, not even in the
      prediction's pixel counts.
    preds: optional (N, H, W) predicted classes for the IoU.
    num_classes: K.
    size, stride: window geometry (`window_boxes`).
    min_pixels: ground-truth pixels a class needs in a window to be present there.

  Returns:
    `WindowScores` with (N, W, K) arrays.
  """
  labels = jnp.where(labels == IGNORE_LABEL, -1, labels)
  ones = jnp.ones(labels.shape, jnp.float32)
  gt_weights = [ones, attention.astype(jnp.float32)]
  if preds is not None:
    gt_weights.append((labels == preds).astype(jnp.float32))
  gt = class_window_sums(labels, jnp.stack(gt_weights, -1), num_classes, size, stride)
  pixels = gt[..., 0]
  present = pixels >= max(min_pixels, 1) - 0.5
  mean_attention = jnp.where(present, gt[..., 1] / jnp.maximum(pixels, 1.0), 0.0)
  iou = None
  if preds is not None:
    predicted = class_window_sums(jnp.where(labels >= 0, preds, -1), ones[..., None],
                                  num_classes, size, stride)[..., 0]
    union = pixels + predicted - gt[..., 2]
    iou = jnp.where(union > 0.5, gt[..., 2] / jnp.maximum(union, 1.0), 0.0)
  return WindowScores(mean_attention, present, jnp.round(pixels).astype(jnp.int32), iou)


def curve_histogram(attention, iou, present, *, bins=20):
  """Window count and IoU sum per class and attention bin (host numpy, paper Fig. 2).

  Bins are `bins` equal bins on [0, 1] (attention 1 falls in the last one). Histograms of
  several batches add up, so a dataset is accumulated without keeping every window.

  Args:
    attention, iou, present: (..., K) arrays from `score_windows`.
    bins: number of attention bins.

  Returns:
    counts (K, bins) int64 and iou_sums (K, bins) float64.
  """
  attention = np.asarray(attention, np.float64)
  num_classes = attention.shape[-1]
  present = np.asarray(present, bool)
  index = np.clip(np.floor(attention * bins).astype(np.int64), 0, bins - 1)
  index = (index + bins * np.arange(num_classes))[present]
  size = num_classes * bins
  counts = np.bincount(index, minlength=size).reshape(num_classes, bins)
  sums = np.bincount(index, weights=np.asarray(iou, np.float64)[present], minlength=size)
  return counts, sums.reshape(num_classes, bins)


def threshold_from_histogram(counts, iou_sums, *, slope=0.02, min_windows=10):
  """Weak-slice threshold T from the IoU vs attention curve (paper Fig. 2, docs/methods.md RWS 4).

  Per class the curve is the mean IoU per non-empty bin at the bin centres; empty bins are
  skipped, so a slope joins consecutive non-empty bins. T_c is the lowest non-empty bin centre
  from which every later slope is below `slope`. A class is left out (T_c = nan) when it has
  fewer than `min_windows` windows, fewer than two non-empty bins, or when the curve never
  flattens (its last slope is still steep). T is the mean of the remaining T_c; with none
  left there is no evidence of weak slices and T = 0 (no window is weak).

  Args:
    counts, iou_sums: (K, bins) from `curve_histogram` (summed over a dataset).
    slope: slope limit, both axes in [0, 1].
    min_windows: windows a class needs to take part.

  Returns:
    T (float), per-class T_c (K,) with nan for left-out classes, and the curves as a dict with
    'centres' (bins,), 'mean_iou' (K, bins) (nan in empty bins) and 'counts' (K, bins).
  """
  counts = np.asarray(counts)
  num_classes, bins = counts.shape
  centres = (np.arange(bins) + 0.5) / bins
  nonempty = counts > 0
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_iou = np.where(nonempty, np.asarray(iou_sums, np.float64) / counts, np.nan)
  position = np.where(nonempty, np.arange(bins), bins)
  later = np.minimum.accumulate(position[:, ::-1], axis=1)[:, ::-1]
  following = np.concatenate([later[:, 1:], np.full((num_classes, 1), bins)], axis=1)
  has_next = nonempty & (following < bins)
  safe_next = np.minimum(following, bins - 1)
  rise = np.take_along_axis(mean_iou, safe_next, axis=1) - mean_iou
  steep = has_next & (rise / np.where(has_next, centres[safe_next] - centres, 1.0) >= slope)
  last_steep = np.max(np.where(steep, np.arange(bins), -1), axis=1)
  start = np.where(last_steep >= 0, following[np.arange(num_classes), last_steep], later[:, 0])
  last_nonempty = np.max(np.where(nonempty, np.arange(bins), -1), axis=1)
  usable = ((counts.sum(axis=1) >= min_windows) & (nonempty.sum(axis=1) >= 2)
            & (start != last_nonempty))
  per_class = np.where(usable, centres[np.minimum(start, bins - 1)], np.nan)
  threshold = float(np.nanmean(per_class)) if usable.any() else 0.0
  return threshold, per_class, {'centres': centres, 'mean_iou': mean_iou, 'counts': counts}


def threshold_from_curve(attention, iou, present, *, bins=20, slope=0.02, min_windows=10):
  """T from window scores in one call: `curve_histogram` then `threshold_from_histogram`."""
  counts, sums = curve_histogram(attention, iou, present, bins=bins)
  return threshold_from_histogram(counts, sums, slope=slope, min_windows=min_windows)


def weak_mask(attention, present, threshold):
  """(N, W, K) weak windows per class: present and mean attention < T (docs/methods.md RWS 4).

  With `weak_rule: fixed` the threshold is `t_fixed` instead of the curve's T.
  """
  return present & (attention < threshold)


def select_windows(priority, max_slices):
  """Up to `max_slices` windows per image with the lowest finite priority (ties: lower index).

  Args:
    priority: (N, W), +inf for windows that must not be chosen.
    max_slices: S, fixed for jitted code.

  Returns:
    index (N, S) int32 into the windows (0 in padded slots) and valid (N, S) bool.
  """
  k = min(max_slices, priority.shape[-1])
  neg, index = jax.lax.top_k(-priority, k)
  valid = jnp.isfinite(neg)
  pad = ((0, 0), (0, max_slices - k))
  return jnp.pad(jnp.where(valid, index, 0), pad).astype(jnp.int32), jnp.pad(valid, pad)


def select_top_weak(attention, weak, max_slices):
  """Up to `max_slices` weak windows per image, weakest first (docs/methods.md RWS 7).

  A window's weakness is its lowest attention over the classes that are weak in it.

  Returns:
    index (N, S) int32 and valid (N, S) bool, as `select_windows`.
  """
  return select_windows(jnp.min(jnp.where(weak, attention, jnp.inf), axis=-1), max_slices)


def _random_order(key, weak_windows):
  """Uniform scores and the windows whose rank is below the image's weak-window count."""
  scores = jax.random.uniform(key, weak_windows.shape)
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return scores, rank < jnp.sum(weak_windows, axis=-1, keepdims=True)


def arbitrary_windows(key, weak_windows):
  """Ablation `slices: arbitrary`: random windows, as many per image as weak ones (N, W)."""
  return _random_order(key, weak_windows)[1]


def select_arbitrary(key, weak_windows, max_slices):
  """`select_windows` over `arbitrary_windows`, in random order; same outputs."""
  scores, chosen = _random_order(key, weak_windows)
  return select_windows(jnp.where(chosen, scores, jnp.inf), max_slices)


def crop_windows(x, boxes, size):
  """Crops (N, S, size, size, ...) of x (N, H, W, ...) at boxes (N, S, 4) (y0, x0, ...)."""

  def crop(image, box):
    start = (box[0], box[1]) + (0,) * (image.ndim - 2)
    return jax.lax.dynamic_slice(image, start, (size, size) + image.shape[2:])

  return jax.vmap(jax.vmap(crop, (None, 0)), (0, 0))(x, boxes)
