"""Window scoring: jitted `rwsjax.rws.slices.score_windows` vs Python loops over windows.

All compute, per image, window and class, the mean attention over the class's ground-truth
pixels and the window IoU (docs/methods.md RWS 3). Two numpy baselines: the naive loop over
windows and classes (boolean masks per class), and a loop over windows only, vectorised over
classes with bincount. Prints medians after a warm-up and the ratios, for a VOC-like and a
small geometry by default, each case's ratios marked `NOT IDLE` when other processes shared
the cores while it ran (`timing.load_mark`).

  python benchmarks/slices.py
  python benchmarks/slices.py --case 512:128:64:21 --batch 16
"""
import argparse

import jax
import numpy as np

from rwsjax.rws import slices
from rwsjax.losses import IGNORE_LABEL
from rwsjax.progress import median_seconds
from timing import load_mark
from timing import snapshot


def naive_scores(attention, labels, preds, boxes, num_classes):
  """Loop over images, windows and classes: (N, W, K) attention, IoU and presence."""
  shape = (labels.shape[0], len(boxes), num_classes)
  att, iou, present = np.zeros(shape), np.zeros(shape), np.zeros(shape, bool)
  for n in range(labels.shape[0]):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      lab = labels[n, y0:y1, x0:x1]
      pre = preds[n, y0:y1, x0:x1]
      a = attention[n, y0:y1, x0:x1]
      for c in range(num_classes):
        gt = lab == c
        pr = (pre == c) & (lab != IGNORE_LABEL)
        count = gt.sum()
        present[n, w, c] = count > 0
        att[n, w, c] = a[gt].sum() / max(count, 1)
        iou[n, w, c] = (gt & pr).sum() / max((gt | pr).sum(), 1)
  return att, iou, present


def bincount_scores(attention, labels, preds, boxes, num_classes):
  """Loop over images and windows, bincount over classes; same outputs."""
  shape = (labels.shape[0], len(boxes), num_classes)
  att, iou, present = np.zeros(shape), np.zeros(shape), np.zeros(shape, bool)
  for n in range(labels.shape[0]):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      lab = labels[n, y0:y1, x0:x1].ravel()
      keep = lab != IGNORE_LABEL
      lab, pre = lab[keep], preds[n, y0:y1, x0:x1].ravel()[keep]
      a = attention[n, y0:y1, x0:x1].ravel()[keep]
      gt = np.bincount(lab, minlength=num_classes)
      pr = np.bincount(pre, minlength=num_classes)
      inter = np.bincount(lab[lab == pre], minlength=num_classes)
      present[n, w] = gt > 0
      att[n, w] = np.bincount(lab, weights=a, minlength=num_classes) / np.maximum(gt, 1)
      union = gt + pr - inter
      iou[n, w] = inter / np.maximum(union, 1)
  return att, iou, present


def run(size, slice_size, stride, num_classes, batch, repeats, seed=0):
  """Time the implementations on blocky random labels (16x16 regions) and check they agree."""
  rng = np.random.default_rng(seed)
  block = max(1, size // 16)
  coarse = rng.integers(0, num_classes, size=(batch, 16, 16))
  labels = np.repeat(np.repeat(coarse, block, 1), block, 2)[:, :size, :size]
  preds = np.where(rng.uniform(size=labels.shape) < 0.2,
                   rng.integers(0, num_classes, size=labels.shape), labels)
  labels[rng.uniform(size=labels.shape) < 0.05] = IGNORE_LABEL
  attention = rng.uniform(size=(batch, size, size)).astype(np.float32)
  boxes = slices.window_boxes(size, size, slice_size, stride)
  device_attention, device_labels, device_preds = jax.device_put((attention, labels, preds))

  def vectorised():  # the ground truth defines the regions, as in the loops
    return slices.score_windows(device_attention, device_labels, device_labels, device_preds,
                                num_classes=num_classes, size=slice_size, stride=stride)

  fast = vectorised()
  start = snapshot()
  t_fast = median_seconds(vectorised, repeats)
  line = (f'{batch}x{size}x{size}, slice {slice_size}/{stride} ({len(boxes)} windows), '
          f'K={num_classes}: vectorised {t_fast * 1e3:.1f} ms')
  for name, fn in (('naive loop', naive_scores), ('bincount loop', bincount_scores)):
    slow = fn(attention, labels, preds, boxes, num_classes)
    np.testing.assert_allclose(fast.attention, slow[0], atol=1e-5)
    np.testing.assert_allclose(fast.iou, slow[1], atol=1e-5)
    np.testing.assert_array_equal(fast.present, slow[2])
    t_loop = median_seconds(lambda fn=fn: fn(attention, labels, preds, boxes, num_classes),
                            max(1, repeats // 2))
    line += f'; {name} {t_loop * 1e3:.1f} ms, ratio {t_loop / t_fast:.1f}x'
  print(line + load_mark(start, snapshot()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', nargs='+', default=['512:128:64:21', '64:16:8:4'],
                      help='cases as image_side:slice_size:slice_stride:num_classes')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  print(f'devices: {jax.devices()}')
  for case in args.case:
    size, slice_size, stride, num_classes = (int(v) for v in case.split(':'))
    run(size, slice_size, stride, num_classes, args.batch, args.repeats)


if __name__ == '__main__':
  main()
