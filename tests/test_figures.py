"""rwsjax.figures: PNGs are written, class maps get a legend naming the classes shown and
value maps a colour bar."""
import numpy as np
import PIL.Image

from rwsjax import figures

NAMES = ['background', 'cat', 'dog', 'bird']


def rgb(seed, shape=(8, 8)):
  return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def legend_entries(fig):
  """[(label, RGB colour in 0..255)] of the figure's class legend."""
  (legend,) = fig.legends
  return [(text.get_text(), tuple(np.round(np.asarray(patch.get_facecolor()[:3]) * 255)))
          for text, patch in zip(legend.get_texts(), legend.get_patches())]


def colorbar_labels(fig):
  return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == '<colorbar>']


def test_predictions_name_the_classes_shown_in_their_colours(tmp_path):
  labels = [np.array([[0, 1], [255, 1]], np.uint8), np.array([[0, 0], [0, 3]], np.uint8)]
  preds = [np.array([[0, 1], [1, 1]], np.int32), np.array([[0, 0], [0, 1]], np.int32)]
  path = tmp_path / 'predictions.png'
  fig = figures.save_predictions(str(path), [rgb(0, (2, 2)), rgb(1, (2, 2))], labels, preds,
                                 NAMES)
  palette = figures.label_palette()
  assert legend_entries(fig) == [(NAMES[k], tuple(palette[k])) for k in (0, 1, 3)] + [
      ('ignore', (255, 255, 255))]
  assert colorbar_labels(fig) == []
  assert PIL.Image.open(path).size[0] > 0


def test_heatmaps_have_an_attention_colour_bar_and_a_class_legend(tmp_path):
  label = np.zeros((8, 8), np.int32)
  label[2:5, 2:5] = 2
  attention = {f'layer{i}': np.random.default_rng(i).random((1, 8, 8), np.float32)
               for i in range(1, 5)}
  gamma = np.max(np.stack(list(attention.values())), axis=0)
  path = tmp_path / 'heatmaps.png'
  fig = figures.save_heatmaps(str(path), [rgb(0)], [label], attention, gamma, NAMES)
  assert colorbar_labels(fig) == ['attention']
  assert [name for name, _ in legend_entries(fig)] == ['background', 'dog']
  assert [ax.get_title() for ax in fig.axes[:7]] == [
      'image', 'ground truth', 'A layer1', 'A layer2', 'A layer3', 'A layer4', 'Gamma (eq. 3)']
  assert PIL.Image.open(path).size[0] > 0


def test_grid_without_names_labels_classes_by_index(tmp_path):
  fig = figures.save_grid(str(tmp_path / 'grid.png'),
                          [[np.array([[0, 2]], np.uint8)], [np.array([[0.0, 1.0]], np.float32)]],
                          ['label', 'CAM'], value_label='CAM')
  assert [name for name, _ in legend_entries(fig)] == ['0', '2']
  assert colorbar_labels(fig) == ['CAM']


def test_threshold_curve_has_error_bars_of_one_standard_error_and_the_knee(tmp_path):
  curve = {'centres': [0.125, 0.375, 0.625, 0.875],
           'mean_iou': [[0.2, 0.5, 0.6, 0.55], [0.3, 0.3, -1.0, 0.4]],
           'counts': [[40, 30, 20, 1], [10, 10, 0, 10]],
           'kept': [[True, True, True, False], [True, True, False, True]],
           'se': [[0.02, 0.03, 0.05, -1.0], [-1.0, -1.0, -1.0, -1.0]],
           'knee': [0.5, None]}
  path = tmp_path / 'curve.png'
  fig = figures.save_threshold_curve(str(path), curve, 0.3, [0.375, 0.125], NAMES[:2])
  ax = fig.axes[0]
  (bars,) = ax.containers  # class 1 has no standard errors
  segments = np.asarray(bars.lines[2][0].get_segments())
  np.testing.assert_allclose(segments[:, :, 0], [[0.125] * 2, [0.375] * 2, [0.625] * 2])
  np.testing.assert_allclose(segments[:, :, 1], [[0.18, 0.22], [0.47, 0.53], [0.55, 0.65]])
  (knee,) = [line for line in ax.lines if line.get_marker() == 'v']
  np.testing.assert_allclose(np.ravel(knee.get_xydata()), [0.5, 0.55])  # on the kept curve
  assert PIL.Image.open(path).size[0] > 0
