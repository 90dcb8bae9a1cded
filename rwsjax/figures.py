"""PNG figures written into the workdir (matplotlib, no display needed)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)
import numpy as np  # noqa: E402

from rwsjax.losses import IGNORE_LABEL  # noqa: E402


def label_palette(num_colors=256):
  """The PASCAL VOC colour map: (num_colors, 3) uint8, class k -> colour k; 255 is white."""
  palette = np.zeros((num_colors, 3), np.uint8)
  for k in range(num_colors):
    c, r, g, b = k, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette[k] = (r, g, b)
  if num_colors > IGNORE_LABEL:
    palette[IGNORE_LABEL] = 255
  return palette


def colorize(labels):
  """(H, W) integer labels -> (H, W, 3) uint8 RGB."""
  return label_palette()[np.clip(np.asarray(labels), 0, 255).astype(np.int64)]


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def save_grid(path, columns, titles):
  """A grid figure: `columns` is a list of equal-length lists of images (rows = examples)."""
  rows = len(columns[0])
  fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows),
                           squeeze=False)
  for j, (column, title) in enumerate(zip(columns, titles)):
    for i, image in enumerate(column):
      ax = axes[i, j]
      ax.imshow(image, cmap="jet" if np.ndim(image) == 2 else None, vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(title, fontsize=9)
  _save(fig, path)


def save_predictions(path, images, labels, predictions):
  """Image | ground truth | prediction, one row per example (uint8 images, integer maps)."""
  save_grid(path, [list(images), [colorize(l) for l in labels], [colorize(p) for p in predictions]],
            ["image", "ground truth", "prediction"])


def save_per_class_iou(path, results, class_names):
  """Grouped bars of per-class IoU; `results` maps a run name to its {class: IoU or None}."""
  x = np.arange(len(class_names))
  width = 0.8 / max(len(results), 1)
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(class_names)), 3.5))
  for k, (name, per_class) in enumerate(results.items()):
    values = [per_class.get(c) or 0.0 for c in class_names]
    ax.bar(x + k * width - 0.4 + width / 2, values, width, label=name)
  ax.set_xticks(x)
  ax.set_xticklabels(class_names, rotation=45, ha="right")
  ax.set_ylabel("IoU")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  _save(fig, path)
