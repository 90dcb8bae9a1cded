"""The random walk's premise, measured part by part on the training split (docs/methods.md,
ISIM step 10, "Measured").

The walk raises the pseudo labels only if three things hold: the affinity labels say which
pairs are of one class, AffinityNet learns affinities that tell those pairs apart where the
labels are silent (near boundaries), and the walk's settings suit the feature grid. Each is
measured against the ground truth of the training split (read for measurement only, as the
train-split mIoU tables do):

  affinity labels   pair precision and recall of "same class" and "different classes"
                    (`affinity.pair_agreement`) at the pair radius and stride 8
  affinities        ROC AUC of AffinityNet's pair affinities as a score for "same class", over
                    all ground-truth pairs, the pairs the affinity labels cover (what it was
                    trained on) and the others, these split by whether a cell of the pair
                    straddles an object boundary (`affinity.mixed_cells`); the share of such
                    cells
  labels            mIoU of the CAM labels (threshold background), the walk's input scores
                    pooled to the grid and upsampled without walking, the walk on the ground
                    truth affinities (1 for a pair of one class, 0 across or at an ignored
                    pixel: what perfect affinities give at this grid) and the walk on
                    AffinityNet's affinities (the RW row)
  sweep             the walk's mIoU for each (beta, logt) of a grid, on AffinityNet's
                    affinities, from which the walk's settings can be chosen
"""
import functools
import itertools

import numpy as np

from isimjax import affinity
from isimjax import pseudo
from isimjax import random_walk
from rwsjax import evaluate as evaluate_lib
from rwsjax import hosts
from rwsjax.evaluate import percent

LABEL_ROWS = {'cam': 'CAM labels (threshold background)',
              'pooled': 'walk input, pooled to the grid and upsampled, no walk',
              'walk_truth': 'walked on ground-truth affinities',
              'walk': 'walked on AffinityNet affinities (the RW row)'}
AUC_PARTS = ('all', 'labelled', 'unlabelled', 'unlabelled_pure', 'unlabelled_mixed')
AUC_TITLES = {'all': 'all pairs', 'labelled': 'labelled pairs', 'unlabelled': 'unlabelled pairs',
              'unlabelled_pure': 'unlabelled pairs of two single-class cells',
              'unlabelled_mixed': 'unlabelled pairs with a boundary-straddling cell'}


def pair_summary(agreement):
  """Precision and recall of "same" and "different" pairs from a `pair_agreement` matrix (None
  where nothing is counted)."""
  agreement = np.asarray(agreement, np.float64)

  def ratio(numerator, denominator):
    return float(numerator / denominator) if denominator else None

  return {'same_precision': ratio(agreement[0, 0], agreement[0].sum()),
          'same_recall': ratio(agreement[0, 0], agreement[:, 0].sum()),
          'different_precision': ratio(agreement[1, 1], agreement[1].sum()),
          'different_recall': ratio(agreement[1, 1], agreement[:, 1].sum()),
          'coverage': ratio(agreement[:2].sum(), agreement.sum())}


def measure(examples, *, num_classes, class_names, cam_threshold, radius, alpha, beta, logt,
            sweep=(), stride=8, dense_max_nodes=4096, bins=1000):
  """The measurements of the module docstring over `examples`, summed over processes.

  Args:
    examples: iterable of (cams (C, H, W) in [0, 1], image_labels (C,), affinities
      (P, h', w') or None as `random_walk.walk_scores` takes them, affinity_labels (H, W)
      at image size with 255 unlabelled, truth (H, W) ground truth).
    num_classes, class_names: K and the class names of the summaries.
    cam_threshold: background score of the CAM labels (config.isim.cam_threshold).
    radius, alpha, beta, logt: the walk's settings (config.psa).
    sweep: (beta, logt) pairs of the sweep.
    stride, dense_max_nodes: as `random_walk.walk_scores`.
    bins: score bins of the AUC (`rwsjax.evaluate.score_histogram`).

  Returns:
    JSON-ready {'affinity_labels', 'affinities', 'mixed_cell_share', 'labels', 'sweep'}.
  """
  offsets = affinity.pair_offsets(radius)
  options = dict(radius=radius, alpha=alpha, stride=stride, dense_max_nodes=dense_max_nodes)
  sweep = [tuple(setting) for setting in sweep]
  agreement = np.zeros((3, 2), np.int64)
  histograms = np.zeros((len(AUC_PARTS), 2, bins), np.int64)
  cells = np.zeros(2, np.int64)  # (mixed, all) cells of the walk's grid
  streams = [evaluate_lib.ConfusionStream(num_classes)
             for _ in range(len(LABEL_ROWS) + len(sweep))]
  settings = list(dict.fromkeys([(beta, logt)] + sweep))  # the configured walk, then the sweep
  for cams, image_labels, affinities, affinity_labels, truth in examples:
    walk = functools.partial(random_walk.propagate, cams, image_labels, **options)
    if affinities is None:  # a grid without pairs is not walked
      unwalked = truthful = walk(None, beta=beta, logt=logt)
    else:
      truth_masks = affinity.same_and_different(
          affinity.downsample_labels(truth, stride)[None], offsets)
      label_masks = affinity.same_and_different(
          affinity.downsample_labels(affinity_labels, stride)[None], offsets)
      agreement += affinity.pair_agreement(label_masks, truth_masks)
      same, different = (mask[0] for mask in truth_masks)
      labelled = (label_masks[0] | label_masks[1])[0]
      mixed = affinity.mixed_cells(truth, stride)
      cells += (np.sum(mixed), mixed.size)
      straddling = affinity.either_end(mixed[None], offsets)[0]
      parts = (np.ones_like(labelled), labelled, ~labelled, ~labelled & ~straddling,
               ~labelled & straddling)
      for part, mask in enumerate(parts):
        for column, truth_mask in enumerate((same, different)):
          histograms[part, column] += evaluate_lib.score_histogram(
              np.asarray(affinities)[truth_mask & mask], bins)
      unwalked = walk(np.zeros_like(affinities), beta=beta, logt=logt)
      truthful = walk(same.astype(np.float32), beta=beta, logt=logt)
    walked = {(b, t): walk(affinities, beta=b, logt=t) for b, t in settings}
    predictions = [pseudo.labels_from_cams(cams, image_labels, cam_threshold), unwalked,
                   truthful, walked[beta, logt]] + [walked[setting] for setting in sweep]
    for stream, prediction in zip(streams, predictions):
      stream.add(truth, prediction)
  agreement, histograms, cells = (
      hosts.sum_over_processes(x) for x in (agreement, histograms, cells))
  summaries = [evaluate_lib.summarize(stream.total(), class_names) for stream in streams]
  return {
      'affinity_labels': dict(pair_summary(agreement), counts=agreement.tolist()),
      'affinities': {part: _json_number(evaluate_lib.binned_auc(*histograms[i]))
                     for i, part in enumerate(AUC_PARTS)},
      'mixed_cell_share': float(cells[0] / cells[1]) if cells[1] else None,
      'labels': dict(zip(LABEL_ROWS, summaries)),
      'sweep': [{'beta': b, 'logt': t, 'miou': summary['miou']}
                for (b, t), summary in zip(sweep, summaries[len(LABEL_ROWS):])],
  }


def _json_number(value):
  """None for nan (JSON has no nan; a record read back must equal the one written)."""
  return None if np.isnan(value) else value


def sweep_grid(betas, logts):
  """The (beta, logt) pairs of config.psa.sweep_beta x config.psa.sweep_logt."""
  return list(itertools.product(betas, logts))


def table(result):
  """Markdown tables of a `measure` result (results.md)."""
  pairs, auc = result['affinity_labels'], result['affinities']
  lines = ['The random walk part by part, training split (docs/methods.md ISIM step 10), %', '',
           '| affinity labels: pairs | precision | recall |', '|---|---|---|',
           f"| same class | {percent(pairs['same_precision'])} | "
           f"{percent(pairs['same_recall'])} |",
           f"| different classes | {percent(pairs['different_precision'])} | "
           f"{percent(pairs['different_recall'])} |", '',
           f"Pairs with an affinity label: {percent(pairs['coverage'])}. Cells of the walk's "
           f"grid that straddle a boundary: {percent(result['mixed_cell_share'])}. "
           'AffinityNet\'s affinities as a score for "same class", ROC AUC: '
           + ', '.join(f'{AUC_TITLES[part]} {percent(auc[part])}' for part in AUC_PARTS) + '.',
           '',
           '| pseudo labels (no CRF) | mIoU |', '|---|---|']
  lines += [f"| {title} | {percent(result['labels'][key]['miou'])} |"
            for key, title in LABEL_ROWS.items()]
  if result['sweep']:
    betas = sorted({row['beta'] for row in result['sweep']})
    logts = sorted({row['logt'] for row in result['sweep']})
    found = {(row['beta'], row['logt']): row['miou'] for row in result['sweep']}
    lines += ['', 'The walk on AffinityNet affinities, mIoU by beta (rows) and logt (columns)',
              '', '| beta | ' + ' | '.join(str(t) for t in logts) + ' |',
              '|---' * (len(logts) + 1) + '|']
    lines += [f'| {b} | ' + ' | '.join(percent(found.get((b, t))) for t in logts) + ' |'
              for b in betas]
  return '\n'.join(lines)
