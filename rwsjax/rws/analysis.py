"""The weak-slice analysis of a round (docs/methods.md RWS 3-4, 8): every window of the
training split scored by the global model, the threshold T from the IoU-vs-attention curve,
the weak boxes written for stage 2, and the round's figures.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from rwsjax import figures
from rwsjax import hosts
from rwsjax import stages
from rwsjax import train
from rwsjax.data import pipeline as input_pipeline
from rwsjax.progress import Progress
from rwsjax.rws import network
from rwsjax.rws import slices

WEAK_BOXES = 'weak_boxes.npz'  # a round's weak slices, in its folder
_ARBITRARY_STREAM = 0  # folded into the seed's key for the windows of slices: arbitrary


def make_scorer(model, config):
  """Jitted (variables, images, labels, valid) -> window attention, IoU and presence (N, W, K)
  over the whole image (docs/methods.md RWS 3)."""
  rws, k = config.rws, config.dataset.num_classes
  background = config.dataset.background_class

  @jax.jit
  def score(variables, images, labels, valid):
    attention = network.attention_maps(
        model, variables, images, num_classes=k, max_classes=rws.max_classes,
        labels=network.region_labels(rws, labels), valid=valid)
    scores = network.window_scores(attention, rws, k, background, labels=labels)
    return scores.attention, scores.iou, scores.present
  return score


def threshold(counts, sums, squares, rws_cfg, background=None):
  """T, the threshold of each class, per-class T_c and the curves from the dataset's histogram
  (`slices.curve_histogram`, docs/methods.md RWS 4).

  Every class is held to T, the mean of the T_c that take part; with `weak_classes:
  own_threshold` the background class takes no part in T and is held to its own T_c (0, never
  weak, where it takes no part). With `weak_rule: fixed` every threshold is `t_fixed` and the
  curve is still reported. Returns (T, (K,) thresholds, (K,) T_c, curves).
  """
  t, per_class, curves = slices.threshold_from_histogram(
      counts, sums, squares, rule=rws_cfg.t_rule, slope=rws_cfg.t_slope,
      slope_unit=rws_cfg.t_slope_unit, min_share=rws_cfg.t_min_share,
      min_windows=rws_cfg.t_min_windows, z=rws_cfg.t_noise_z)
  own = rws_cfg.weak_classes == 'own_threshold' and background is not None
  if own:
    foreground = np.delete(per_class, background)
    t = float(np.nanmean(foreground)) if np.isfinite(foreground).any() else 0.0
  if rws_cfg.weak_rule == 'fixed':
    t = float(rws_cfg.t_fixed)
  thresholds = np.full(len(per_class), t)
  if own and rws_cfg.weak_rule == 'curve':
    thresholds[background] = np.nan_to_num(per_class[background], nan=0.0)
  return t, thresholds, per_class, curves


def network_threshold(record):
  """The (K,) class thresholds of a round's analysis record, as the RWS network holds them."""
  return jnp.asarray(record['class_thresholds'], jnp.float32)


def weak_windows(entries, num_images, num_windows, thresholds, num_classes):
  """Weak windows from the scored (image, window, class, attention) entries of a split.

  A window is weak when a class that takes part in it has attention below its class's
  threshold, (K,) `thresholds` (docs/methods.md RWS 4). Returns the (num_images, num_windows)
  weak mask and, per class, the windows where it takes part and those where it is weak.
  """
  image, window, cls, attention = entries
  weak_entry = attention < thresholds[cls]
  weak = np.zeros((num_images, num_windows), bool)
  weak[image[weak_entry], window[weak_entry]] = True
  scored = np.bincount(cls, minlength=num_classes)
  weak_per_class = np.bincount(cls[weak_entry], minlength=num_classes)
  return weak, scored, weak_per_class


def _share(part, whole):
  return float(part / whole) if whole else None


def analyze(model, variables, source, config, mesh, directory, names):
  """Scores every window of the training split, computes T and lists the weak slices.

  The curve's histogram (`slices.curve_histogram`: counts, IoU sums and sums of squares) is
  accumulated over batches and summed over processes; each process scores its part of the
  split (`source`, a `parts.Part`). Process 0 writes `directory/<WEAK_BOXES>` (boxes (M, 5)
  rows (split example index, y0, x0, y1, x1) of the whole split, gathered in process order)
  and every process returns a JSON-ready dict: T, per-class T, the curve (with each kept bin's
  standard error 'se', -1 elsewhere, and each class's 'knee'), the weak-slice count over all
  processes and the share of weak windows per class and overall. Only the scored (window,
  class) entries are kept, never a (images, windows, classes) array.
  """
  rws, k = config.rws, config.dataset.num_classes
  score = make_scorer(model, config)
  batches, count = stages.eval_batches(source, config, mesh)
  height, width = batches[0]['segmentation'].shape[1:3]
  boxes = slices.window_boxes(height, width, rws.slice_size, rws.slice_stride)
  hist, entries, indices = None, [], []
  progress = Progress('analysis', count)
  for i in range(count):
    batch = batches[i]
    device = train.to_device({key: batch[key] for key in ('image', 'segmentation', 'valid')}, mesh)
    attention, iou, present = (train.to_host(x, mesh) for x in score(
        variables, device['image'], device['segmentation'], device['valid']))
    keep = batch['mask']
    present = present & keep[:, None, None]
    part = slices.curve_histogram(attention, iou, present, bins=rws.t_bins)
    hist = part if hist is None else tuple(a + b for a, b in zip(hist, part))
    image, window, cls = np.nonzero(present[keep])
    entries.append((image + sum(len(x) for x in indices), window, cls,
                    attention[keep][image, window, cls]))
    indices.append(batch['index'][keep])
    progress.tick(i + 1)
  hist = (hosts.sum_over_processes(x) for x in hist)
  t, thresholds, per_class, curves = threshold(*hist, rws, config.dataset.background_class)
  example = np.concatenate(indices)
  entries = tuple(np.concatenate(column) for column in zip(*entries))
  weak, scored, weak_per_class = weak_windows(entries, len(example), len(boxes), thresholds, k)
  weak = hosts.rows_over_processes(weak)
  example = hosts.rows_over_processes(example + source.start)
  if rws.slices == 'arbitrary':
    weak = np.asarray(slices.arbitrary_windows(
        jax.random.fold_in(jax.random.key(config.seed), _ARBITRARY_STREAM), weak))
  image, window = np.nonzero(weak)
  weak_boxes = np.concatenate([example[image, None], boxes[window]], axis=1).astype(np.int32)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, WEAK_BOXES), boxes=weak_boxes)
  hosts.barrier('rws.analysis')
  totals = hosts.sum_over_processes(np.array([*scored, *weak_per_class], np.int64))
  num_weak, num_windows = len(weak_boxes), weak.size
  scored, weak_per_class = totals[:k], totals[k:]
  return {'threshold': t, 'class_thresholds': thresholds.tolist(),
          'per_class_threshold': [None if np.isnan(v) else float(v) for v in per_class],
          'weak_slices': num_weak, 'windows': num_windows,
          'weak_share': _share(num_weak, num_windows),
          'weak_share_per_class': {name: _share(weak_per_class[c], scored[c])
                                   for c, name in enumerate(names)},
          'curve': {'centres': curves['centres'].tolist(),
                    'mean_iou': np.where(np.isnan(curves['mean_iou']), -1.0,
                                         curves['mean_iou']).tolist(),
                    'counts': curves['counts'].tolist(),
                    'kept': curves['kept'].tolist(),
                    'se': np.where(curves['kept'], curves['se'], -1.0).tolist(),
                    'knee': [None if np.isnan(v) else float(v) for v in curves['knee']]}}


def load_weak_boxes(directory):
  """The weak slices `analyze` wrote into `directory`: boxes (M, 5) over the whole split."""
  path = os.path.join(directory, WEAK_BOXES)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; compute the analysis again '
                            f'(--recompute_from={os.path.basename(directory)}/analysis).')
  return np.load(path)['boxes']


def should_stop(counts, min_weak_delta):
  """Round stop rule (docs/methods.md RWS 8): no weak slices, or the count changed by < delta."""
  if counts[-1] == 0:
    return True
  return len(counts) > 1 and abs(counts[-1] - counts[-2]) < min_weak_delta


def weak_share_advice(share, rule, low=0.1, high=0.5):
  """A sentence for the log when the curve's T leaves a weak share outside [low, high]
  (docs/methods.md RWS 4), else None. The paper's premise is a minority of weak windows."""
  if share is None or rule != 'curve' or low <= share <= high:
    return None
  if share > high:
    return (f'{share:.1%} of the windows are weak: the selection hardly selects (is a '
            'background class set in config.dataset.background_class?).')
  return (f'only {share:.1%} of the windows are weak: T_c may sit in the sparse low-attention '
          'end of a curve (round_N/threshold_curve.png); a larger config.rws.t_min_share '
          'leaves those bins out.')


def save_round_figures(directory, model, variables, source, analysis, config, names):
  """Heatmaps per layer (Fig. 5), this round's weak slices on images, and the T curve (Fig. 2)
  in `directory`; returns {'figures': their file names}."""
  rws, count = config.rws, min(config.figures.num_examples, len(source))
  batch = input_pipeline.eval_dataset(source, config.input, batch_size=count)[0]
  normalized, labels = batch['image'], batch['segmentation']
  images = np.clip(np.round(input_pipeline.denormalize(normalized, config.input)), 0,
                   255).astype(np.uint8)
  fn = jax.jit(functools.partial(network.attention_maps, model,
                                 num_classes=config.dataset.num_classes,
                                 max_classes=rws.max_classes))
  attention = jax.device_get(fn(variables, normalized,
                                labels=network.region_labels(rws, labels),
                                valid=batch['valid']))
  figures.save_heatmaps(os.path.join(directory, 'heatmaps.png'), images, labels, attention.maps,
                        attention.gamma, names)
  boxes = load_weak_boxes(directory)
  figures.save_slices(os.path.join(directory, 'weak_slices.png'), images,
                      [boxes[boxes[:, 0] == i, 1:] for i in range(count)])
  figures.save_threshold_curve(os.path.join(directory, 'threshold_curve.png'), analysis['curve'],
                               analysis['threshold'], analysis['per_class_threshold'], names)
  return {'figures': ['heatmaps.png', 'weak_slices.png', 'threshold_curve.png']}
