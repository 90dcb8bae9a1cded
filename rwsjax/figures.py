"""PNG figures written into the workdir (matplotlib, no display needed)."""
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.patches  # noqa: E402  (after selecting the Agg backend)
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
  """Writes `fig` as a PNG and closes it; returns it for inspection."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)
  return fig


def is_class_map(image):
  """Whether a grid panel is a class map: a 2-D integer array (a value map is 2-D float)."""
  return np.ndim(image) == 2 and np.issubdtype(np.asarray(image).dtype, np.integer)


def class_legend(fig, class_maps, class_names=None):
  """A legend below the figure: colour and name of each class in `class_maps` (255: ignore)."""
  present = np.unique(np.concatenate([np.ravel(m) for m in class_maps]))
  palette = label_palette() / 255.0
  names = class_names or [str(k) for k in range(IGNORE_LABEL)]
  handles = [matplotlib.patches.Patch(facecolor=palette[k], edgecolor='black', linewidth=0.5,
                                      label='ignore' if k == IGNORE_LABEL else names[k])
             for k in present]
  return fig.legend(handles=handles, loc='upper center',
                    bbox_to_anchor=(0.5, fig.subplotpars.bottom),
                    ncol=min(len(handles), 6), fontsize=8, frameon=False)


def draw_boxes(ax, boxes):
  """(M, 4) boxes (y0, x0, y1, x1), half-open pixel bounds, drawn as yellow rectangles."""
  for y0, x0, y1, x1 in np.asarray(boxes).reshape(-1, 4):
    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor='yellow', linewidth=1.2))


def save_grid(path, columns, titles, class_names=None, value_label='value', boxes=None):
  """A grid figure: `columns` is a list of equal-length lists of panels (rows = examples).

  A panel is an RGB image (H, W, 3), a class map ((H, W) integers, drawn in `label_palette`
  colours with a legend naming the classes shown, from `class_names`), or a value map ((H, W)
  floats in [0, 1], drawn with the jet colour map and a colour bar labelled `value_label`).
  `boxes`, one (M, 4) array per row, are drawn on the first column (`draw_boxes`).
  Returns the saved figure.
  """
  rows = len(columns[0])
  fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows),
                           squeeze=False)
  class_maps, value_image = [], None
  for j, (column, title) in enumerate(zip(columns, titles)):
    for i, image in enumerate(column):
      ax = axes[i, j]
      if is_class_map(image):
        class_maps.append(np.asarray(image))
        ax.imshow(colorize(image))
      elif np.ndim(image) == 2:
        value_image = ax.imshow(image, cmap='jet', vmin=0, vmax=1)
      else:
        ax.imshow(image)
      if boxes is not None and j == 0:
        draw_boxes(ax, boxes[i])
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(title, fontsize=9)
  if value_image is not None:
    fig.colorbar(value_image, ax=axes.ravel().tolist(), label=value_label, shrink=0.8,
                 fraction=0.03, pad=0.02)
  if class_maps:
    class_legend(fig, class_maps, class_names)
  return _save(fig, path)


def save_predictions(path, images, labels, predictions, class_names=None):
  """Image | ground truth | prediction, one row per example (uint8 images, integer maps),
  with a legend of the classes shown."""
  return save_grid(path, [list(images), list(labels), list(predictions)],
                   ['image', 'ground truth', 'prediction'], class_names)


def save_per_class_iou(path, results, class_names):
  """Grouped bars of per-class IoU; `results` maps a run name to its {class: IoU or None}."""
  x = np.arange(len(class_names))
  width = 0.8 / max(len(results), 1)
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(class_names)), 3.5))
  for k, (name, per_class) in enumerate(results.items()):
    values = [per_class.get(c) or 0.0 for c in class_names]
    ax.bar(x + k * width - 0.4 + width / 2, values, width, label=name)
  ax.set_xticks(x)
  ax.set_xticklabels(class_names, rotation=45, ha='right')
  ax.set_ylabel('IoU')
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  _save(fig, path)


def save_heatmaps(path, images, labels, attention, gamma, class_names=None):
  """RWS Fig. 5: image | ground truth | A_1 .. A_4 | Gamma, one row per example, with a colour
  bar of the attention scale and a legend of the ground-truth classes."""
  columns = [list(images), list(labels)]
  titles = ['image', 'ground truth']
  for name, maps in attention.items():
    columns.append(list(np.asarray(maps)))
    titles.append(f'A {name}')
  columns.append(list(np.asarray(gamma)))
  titles.append('Gamma (eq. 3)')
  return save_grid(path, columns, titles, class_names, value_label='attention')


def save_slices(path, images, boxes):
  """Weak slices drawn on their images; `boxes[i]` is an (M, 4) array of (y0, x0, y1, x1)."""
  fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 2.8), squeeze=False)
  for ax, image, image_boxes in zip(axes[0], images, boxes):
    ax.imshow(image)
    draw_boxes(ax, image_boxes)
    ax.set_title(f'{len(np.asarray(image_boxes).reshape(-1, 4))} weak slices', fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  _save(fig, path)


def save_threshold_curve(path, curve, threshold, per_class_threshold, class_names):
  """RWS Fig. 2: mean window IoU against window attention per class, with T marked; returns
  the saved figure.

  `curve` has 'centres' (bins,), 'mean_iou' (K, bins) with negative values in empty bins,
  'counts' (K, bins) and optionally 'kept' (K, bins), the bins populated enough to be on the
  curve (filled markers; hollow markers are bins left out), 'se' (K, bins), the standard
  error of each kept bin's mean (error bars of +-se; negative or nan: none), and 'knee' (K,)
  per class (None: none), the knee of the rising-then-flat fit (a triangle on the curve).
  Below, the windows per bin.
  """
  centres = np.asarray(curve['centres'])
  mean_iou = np.asarray(curve['mean_iou'], np.float64)
  counts = np.asarray(curve['counts'])
  kept = np.asarray(curve.get('kept', counts > 0), bool)
  se = np.asarray(curve.get('se', np.full(counts.shape, np.nan)), np.float64)
  knees = curve.get('knee', [None] * len(counts))
  fig, (ax, bottom) = plt.subplots(2, 1, figsize=(6, 5.8), sharex=True,
                                   gridspec_kw={'height_ratios': [3, 1.3]})
  for k, name in enumerate(class_names):
    if not (counts[k] > 0).any():
      continue
    t_class = per_class_threshold[k]
    label = name if t_class is None else f'{name} (T_c {t_class:.2f})'
    line, = ax.plot(centres[kept[k]], mean_iou[k, kept[k]], marker='o', markersize=3,
                    linewidth=1, label=label)
    bars = kept[k] & (se[k] >= 0)
    if bars.any():
      ax.errorbar(centres[bars], mean_iou[k, bars], yerr=se[k, bars], linestyle='none',
                  color=line.get_color(), linewidth=0.8, capsize=1.5)
    if knees[k] is not None and kept[k].any():
      ax.plot(knees[k], np.interp(knees[k], centres[kept[k]], mean_iou[k, kept[k]]),
              marker='v', markersize=6, color=line.get_color())
    sparse = (counts[k] > 0) & ~kept[k]
    ax.plot(centres[sparse], mean_iou[k, sparse], linestyle='none', marker='o', markersize=3,
            markerfacecolor='none', color=line.get_color())
    bottom.plot(centres, np.where(counts[k] > 0, counts[k], np.nan), color=line.get_color(),
                linewidth=1)
    if t_class is not None:
      ax.axvline(t_class, color=line.get_color(), linestyle=':', linewidth=0.8)
  for axis in (ax, bottom):
    axis.axvline(threshold, color='red', linewidth=2)
  ax.plot([], [], color='red', linewidth=2, label=f'T = {threshold:.3f}')
  ax.set_ylabel('window IoU (mean per bin)')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7, ncol=2)
  ax.set_title('filled: bins on the curve (bars: +-1 standard error); hollow: too few '
               'windows; triangle: knee of the fit', fontsize=8)
  bottom.set_yscale('log')
  bottom.set_ylabel('windows')
  bottom.set_xlabel('window mean attention')
  return _save(fig, path)
