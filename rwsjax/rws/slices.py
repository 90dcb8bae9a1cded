"""Sliding-window slices: scores, the weak-slice threshold T and selection (docs/methods.md
RWS 3-4).

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

from rwsjax import config as config_lib
from rwsjax.losses import IGNORE_LABEL
from rwsjax.rws import config as rws_config


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
  """Sliding windows (docs/methods.md RWS 3): int32 (W, 4) rows (y0, x0, y1, x1), row-major."""
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

  attention: mean attention over the window's pixels of class c's region (0 if none).
  present: the window has at least `min_pixels` pixels of c's region.
  pixels: number of pixels of c's region in the window.
  iou: IoU of prediction vs ground truth for c inside the window (0 where the union is
    empty; None when no labels and predictions were given).
  """
  attention: jax.Array
  present: jax.Array
  pixels: jax.Array
  iou: jax.Array | None


@functools.partial(jax.jit, static_argnames=('num_classes', 'size', 'stride', 'min_pixels'))
def score_windows(attention, regions, labels=None, preds=None, *, num_classes, size, stride,
                  min_pixels=1):
  """Window attention per class region, and window IoU per class (docs/methods.md RWS 3).

  Args:
    attention: (N, H, W) per-pixel attention, A_last or Gamma (docs/methods.md RWS 2).
    regions: (N, H, W) the class map that defines c's region: the prediction (switch
      `attention_region: prediction`, needs no ground truth) or the ground truth. Values
      outside [0, num_classes), such as the ignore label 255, belong to no region.
    labels, preds: optional (N, H, W) ground truth and predicted classes for the IoU;
      ignored pixels (255) count nowhere, not even in the prediction's pixel counts.
    num_classes: K.
    size, stride: window geometry (`window_boxes`).
    min_pixels: region pixels a class needs in a window to be present there.

  Returns:
    `WindowScores` with (N, W, K) arrays.
  """
  ones = jnp.ones(regions.shape, jnp.float32)
  sums = class_window_sums(regions, jnp.stack([ones, attention.astype(jnp.float32)], -1),
                           num_classes, size, stride)
  pixels = sums[..., 0]
  present = pixels >= max(min_pixels, 1) - 0.5
  mean_attention = jnp.where(present, sums[..., 1] / jnp.maximum(pixels, 1.0), 0.0)
  iou = None
  if labels is not None and preds is not None:
    iou = window_iou(labels, preds, num_classes, size, stride)
  return WindowScores(mean_attention, present, jnp.round(pixels).astype(jnp.int32), iou)


def window_iou(labels, preds, num_classes, size, stride):
  """(N, W, K) IoU of `preds` vs `labels` for each class inside each window.

  Pixels labelled 255 count nowhere; 0 where the union is empty.
  """
  labels = jnp.where(labels == IGNORE_LABEL, -1, labels)
  ones = jnp.ones(labels.shape, jnp.float32)
  gt = class_window_sums(labels, jnp.stack([ones, (labels == preds).astype(jnp.float32)], -1),
                         num_classes, size, stride)
  predicted = class_window_sums(jnp.where(labels >= 0, preds, -1), ones[..., None],
                                num_classes, size, stride)[..., 0]
  union = gt[..., 0] + predicted - gt[..., 1]
  return jnp.where(union > 0.5, gt[..., 1] / jnp.maximum(union, 1.0), 0.0)


def curve_histogram(attention, iou, present, *, bins=20):
  """Window count, IoU sum and IoU sum of squares per class and attention bin (host numpy,
  paper Fig. 2; the squares give the within-bin variance of `threshold_from_histogram`'s
  robust rule).

  Bins are `bins` equal bins on [0, 1] (attention 1 falls in the last one). Histograms of
  several batches add up, so a dataset is accumulated without keeping every window.

  Args:
    attention, iou, present: (..., K) arrays from `score_windows`.
    bins: number of attention bins.

  Returns:
    counts (K, bins) int64, iou_sums (K, bins) float64 and iou_squares (K, bins) float64.
  """
  attention = np.asarray(attention, np.float64)
  num_classes = attention.shape[-1]
  present = np.asarray(present, bool)
  index = np.clip(np.floor(attention * bins).astype(np.int64), 0, bins - 1)
  index = (index + bins * np.arange(num_classes))[present]
  size = num_classes * bins
  counts = np.bincount(index, minlength=size).reshape(num_classes, bins)
  iou = np.asarray(iou, np.float64)[present]
  sums = np.bincount(index, weights=iou, minlength=size)
  squares = np.bincount(index, weights=iou * iou, minlength=size)
  return counts, sums.reshape(num_classes, bins), squares.reshape(num_classes, bins)


T_RULES = rws_config.FIELDS['t_rule'].values
SLOPE_UNITS = rws_config.FIELDS['t_slope_unit'].values
# Grid points per bin width on which `hinge_knee` scans the knee; bin centres lie on the grid.
KNEE_STEPS = 20
# A bin's within-bin sum of squares below this share of its sum of squares is rounding error
# of Q - S^2 / n: windows of equal IoU give s = 0 exactly (`pooled_within_sd`).
ROUNDING = 1e-9


def _next_kept(kept):
  """Per bin, the index of the next kept bin to its right (`bins` where there is none)."""
  bins = kept.shape[1]
  position = np.where(kept, np.arange(bins), bins)
  later = np.minimum.accumulate(position[:, ::-1], axis=1)[:, ::-1]
  return np.concatenate([later[:, 1:], np.full((kept.shape[0], 1), bins)], axis=1)


def _steps(kept, unit):
  """Per bin: the next kept bin (`bins` where none), whether the bin is kept and has one, and
  the run to it: in attention ('attention', both axes on [0, 1]) or in bin steps ('bin')."""
  bins = kept.shape[1]
  following = _next_kept(kept)
  has_next = kept & (following < bins)
  run = (np.minimum(following, bins - 1) - np.arange(bins)).astype(np.float64)
  if unit == 'attention':
    run = run / bins
  return following, has_next, np.where(has_next, run, 1.0)


def _slopes(mean_iou, kept, unit):
  """Slope from each kept bin to the next kept bin (nan where there is none), whether that
  next bin exists, and its index (`_steps`). unit 'attention': IoU per unit of attention;
  'bin': IoU per bin step."""
  bins = kept.shape[1]
  following, has_next, run = _steps(kept, unit)
  rise = np.take_along_axis(mean_iou, np.minimum(following, bins - 1), axis=1) - mean_iou
  with np.errstate(invalid='ignore'):
    slope = np.where(has_next, rise / run, np.nan)
  return slope, has_next, following


def _first_or_highest(flat, kept):
  """Per class, the lowest bin where `flat` holds, else the highest kept bin (-1: none)."""
  bins = kept.shape[1]
  first = np.where(flat.any(axis=1), np.argmax(flat, axis=1), bins)
  highest = np.max(np.where(kept, np.arange(bins), -1), axis=1)
  return np.where(first < bins, first, highest)


def first_flat(mean_iou, kept, slope, unit):
  """T_c = the lowest kept bin whose slope to the next kept bin is below `slope` (paper Fig. 2:
  "the minimum attention value on the curve with a slope below 0.02"); a class whose curve
  never flattens takes its highest kept bin. Returns bin indices (K,), -1 without kept bins."""
  slopes, has_next, _ = _slopes(mean_iou, kept, unit)
  return _first_or_highest(has_next & (slopes < slope), kept)


def last_flat(mean_iou, kept, slope, unit):
  """The earlier reading (switch `t_rule: last_flat`): T_c starts the last flat run, the
  lowest kept bin from which every later slope is below `slope`; a class whose last slope is
  still steep is left out (-1)."""
  bins = kept.shape[1]
  slopes, has_next, following = _slopes(mean_iou, kept, unit)
  steep = has_next & (slopes >= slope)
  last_steep = np.max(np.where(steep, np.arange(bins), -1), axis=1)
  first_kept = np.where(kept.any(axis=1), np.argmax(kept, axis=1), -1)
  start = np.where(last_steep >= 0, following[np.arange(len(kept)), last_steep], first_kept)
  highest = np.max(np.where(kept, np.arange(bins), -1), axis=1)
  return np.where(start != highest, start, -1)


def pooled_within_sd(counts, iou_sums, iou_squares, kept):
  """(K,) pooled within-bin standard deviation s of each class's window IoU over its kept
  bins (docs/methods.md RWS 4, `t_rule: robust`): s^2 = sum over kept bins of
  (Q_i - S_i^2 / n_i) / (N - B), N windows in kept bins, B kept bins; s = 0 when N - B <= 0.
  A bin's Q_i - S_i^2 / n_i below `ROUNDING` of Q_i counts as 0."""
  counts = np.asarray(counts, np.float64)
  squares = np.asarray(iou_squares, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    within = squares - np.asarray(iou_sums, np.float64) ** 2 / counts
  within = np.where(kept & (within > ROUNDING * squares), within, 0.0)
  dof = np.sum(np.where(kept, counts, 0.0), axis=1) - kept.sum(axis=1)
  return np.sqrt(np.where(dof > 0, within.sum(axis=1) / np.maximum(dof, 1.0), 0.0))


def hinge_knee(mean_iou, counts, kept, min_gain=0.0, steps=KNEE_STEPS):
  """(K,) knee k of a rising-then-flat fit to each class's kept curve (docs/methods.md RWS 4):
  weighted least squares (weights n_i) of y_i ~ p - a max(k - x_i, 0) with a >= 0, k scanned
  on a grid of `steps` points per bin width from the first to the last kept bin centre.

  The fit with the knee lowers the squared error of the flat fit (a = 0) by a^2 Sxx, Sxx the
  weighted sum of squares of max(k - x_i, 0) about its mean; the knee is the k of the largest
  drop, where that drop exceeds `min_gain` (K,) (with noise sd s, (z s)^2 asks the rise a to
  be z standard errors s / sqrt(Sxx) above 0). Where no k gives such a drop the curve is
  flat and k is the first kept centre; nan without kept bins.
  """
  bins = kept.shape[1]
  centres = (np.arange(bins) + 0.5) / bins
  grid = (np.arange((bins - 1) * steps + 1) / steps + 0.5) / bins
  weight = np.where(kept, counts, 0).astype(np.float64)
  weighted_iou = weight * np.where(kept, mean_iou, 0.0)
  total = np.maximum(weight.sum(axis=1, keepdims=True), 1.0)
  hinge = np.maximum(grid[:, None] - centres[None, :], 0.0)  # (grid, bins)
  sum_h = weight @ hinge.T  # (K, grid)
  sxx = weight @ (hinge * hinge).T - sum_h ** 2 / total
  sxy = weighted_iou @ hinge.T - sum_h * weighted_iou.sum(axis=1, keepdims=True) / total
  rising = (sxy < 0) & (sxx > 0)  # the fitted a = -sxy / sxx is positive
  with np.errstate(invalid='ignore', divide='ignore'):
    gain = np.where(rising, sxy ** 2 / np.where(rising, sxx, 1.0), 0.0)
  gain = np.where(gain > np.reshape(min_gain, (-1, 1)), gain, 0.0)
  first = np.where(kept.any(axis=1), np.argmax(kept, axis=1), bins)
  last = np.max(np.where(kept, np.arange(bins), -1), axis=1)
  inside = (grid >= centres[np.minimum(first, bins - 1)][:, None]) & (
      grid <= centres[np.maximum(last, 0)][:, None])
  knee = grid[np.argmax(np.where(inside, gain, -1.0), axis=1)]
  return np.where(kept.any(axis=1), knee, np.nan)


def robust_flat(mean_iou, kept, slope, unit, se, knee, z):
  """T_c by the noise-aware reading of the first flat point (switch `t_rule: robust`,
  docs/methods.md RWS 4); returns bin indices (K,), -1 without kept bins.

  A step from kept bin b to the next kept bin b' is clearly flat when its slope plus
  z se_r / run is below `slope`, clearly steep when its slope minus that is at least `slope`,
  and ambiguous otherwise (se_r = sqrt(se_b^2 + se_b'^2), se_b = s / sqrt(n_b) with s
  from `pooled_within_sd`); an ambiguous step counts as flat when x_b is at or after the
  class's `knee` (`hinge_knee`, whose rise must be z standard errors above 0).
  T_c is the first flat bin, else the highest kept bin: a curve that never flattens takes
  its highest kept bin, one flat from the start its lowest. With se = 0 this is `first_flat`.
  """
  bins = kept.shape[1]
  slopes, has_next, following = _slopes(mean_iou, kept, unit)
  run = _steps(kept, unit)[2]
  se_next = np.take_along_axis(se, np.minimum(following, bins - 1), axis=1)
  band = np.where(has_next, z * np.sqrt(se ** 2 + se_next ** 2) / run, 0.0)
  clearly_flat = has_next & (slopes + band < slope)
  clearly_steep = has_next & (slopes - band >= slope)
  centres = (np.arange(bins) + 0.5) / bins
  after_knee = centres[None, :] >= knee[:, None]
  return _first_or_highest(clearly_flat | (has_next & ~clearly_steep & after_knee), kept)


def threshold_from_histogram(counts, iou_sums, iou_squares=None, *, rule='first_flat',
                             slope=0.02, slope_unit='attention', min_share=0.01,
                             min_windows=10, z=2.0):
  """Weak-slice threshold T from the IoU vs attention curve (paper Fig. 2, docs/methods.md RWS 4).

  Per class the curve is the mean IoU per kept bin at the bin centres; a bin is kept when it
  holds at least `min_share` of the class's windows (and at least one), and slopes join
  consecutive kept bins. T_c comes from `rule`: `first_flat` (the paper's reading),
  `last_flat`, or `robust` (`robust_flat`: the first flat point judged against the curve's
  noise, equal to `first_flat` on noise-free curves). A class takes part when it has at least
  `min_windows` windows and two kept bins (and, for `last_flat`, a curve that ends flat); T is
  the mean of the T_c that take part, and with none there is no evidence of weak slices and
  T = 0 (no window is weak).

  Args:
    counts, iou_sums, iou_squares: (K, bins) from `curve_histogram` (summed over a dataset);
      `iou_squares` is needed by `robust` and gives the 'se' of the curves.
    rule: 'first_flat', 'last_flat' or 'robust' (switch `t_rule`).
    slope: slope limit (switch `t_slope`).
    slope_unit: 'attention' (IoU per unit of attention) or 'bin' (IoU per bin step).
    min_share: share of a class's windows a bin needs to be kept (switch `t_min_share`).
    min_windows: windows a class needs to take part.
    z: width of the noise band in standard errors (switch `t_noise_z`; `robust` only).

  Returns:
    T (float), per-class T_c (K,) with nan for classes that take no part, and the curves as a
    dict with 'centres' (bins,), 'mean_iou' (K, bins) (nan in empty bins), 'counts' (K, bins),
    'kept' (K, bins) bool, 'se' (K, bins) the standard error of each kept bin's mean (nan
    elsewhere, and everywhere without `iou_squares`) and 'knee' (K,) the knee of the
    rising-then-flat fit (`hinge_knee`, nan without kept bins).
  """
  config_lib.check_value(rule, T_RULES, 'config.rws.t_rule')
  config_lib.check_value(slope_unit, SLOPE_UNITS, 'config.rws.t_slope_unit')
  if rule == 'robust' and (iou_squares is None or not 0 <= z < np.inf):
    raise ValueError(f'config.rws.t_rule=robust needs the IoU sums of squares and a finite '
                     f'config.rws.t_noise_z >= 0 (got {z}).')
  counts = np.asarray(counts)
  bins = counts.shape[1]
  centres = (np.arange(bins) + 0.5) / bins
  total = counts.sum(axis=1, keepdims=True)
  kept = (counts > 0) & (counts >= min_share * total)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_iou = np.where(counts > 0, np.asarray(iou_sums, np.float64) / counts, np.nan)
  sd = (np.zeros(len(counts)) if iou_squares is None
        else pooled_within_sd(counts, iou_sums, iou_squares, kept))
  with np.errstate(invalid='ignore', divide='ignore'):
    se = np.where(kept & (iou_squares is not None), sd[:, None] / np.sqrt(counts), np.nan)
  knee = hinge_knee(mean_iou, counts, kept, min_gain=(z * sd) ** 2)
  if rule == 'robust':
    index = robust_flat(mean_iou, kept, slope, slope_unit, se, knee, z)
  else:
    index = (first_flat if rule == 'first_flat' else last_flat)(mean_iou, kept, slope,
                                                                 slope_unit)
  usable = (total[:, 0] >= min_windows) & (kept.sum(axis=1) >= 2) & (index >= 0)
  per_class = np.where(usable, centres[np.clip(index, 0, bins - 1)], np.nan)
  threshold = float(np.nanmean(per_class)) if usable.any() else 0.0
  return threshold, per_class, {'centres': centres, 'mean_iou': mean_iou, 'counts': counts,
                                'kept': kept, 'se': se, 'knee': knee}


def threshold_from_curve(attention, iou, present, *, bins=20, **kwargs):
  """T from window scores in one call: `curve_histogram` then `threshold_from_histogram`."""
  return threshold_from_histogram(*curve_histogram(attention, iou, present, bins=bins), **kwargs)


def weak_mask(attention, present, threshold):
  """(N, W, K) weak windows per class: present and mean attention < T (docs/methods.md RWS 4);
  `threshold` is T or one threshold per class (K,).

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
