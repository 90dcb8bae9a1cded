"""Windows, window scores, the threshold T and slice selection against loops and hand curves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwsjax import slices


def test_window_boxes_cover_and_snap():
  boxes = slices.window_boxes(11, 10, 4, 3)
  ys = sorted({int(b[0]) for b in boxes})
  xs = sorted({int(b[1]) for b in boxes})
  assert ys == [0, 3, 6, 7] and xs == [0, 3, 6]
  assert [tuple(b) for b in boxes[:4]] == [(0, 0, 4, 4), (0, 3, 4, 7), (0, 6, 4, 10),
                                           (3, 0, 7, 4)]
  covered = np.zeros((11, 10), bool)
  for y0, x0, y1, x1 in boxes:
    assert y1 - y0 == 4 and x1 - x0 == 4 and y1 <= 11 and x1 <= 10
    covered[y0:y1, x0:x1] = True
  assert covered.all()
  assert len(slices.window_boxes(8, 8, 8, 64)) == 1


def test_slice_larger_than_crop_is_a_clear_error():
  with pytest.raises(ValueError, match=r'config\.rws\.slice_size = 128 .* 96x160'):
    slices.window_boxes(96, 160, 128, 64)
  with pytest.raises(ValueError, match='slice_stride'):
    slices.window_boxes(96, 96, 32, 0)


def _naive_scores(attention, labels, preds, boxes, num_classes, min_pixels):
  n = labels.shape[0]
  shape = (n, len(boxes), num_classes)
  att, iou, present = np.zeros(shape), np.zeros(shape), np.zeros(shape, bool)
  for i in range(n):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      lab = labels[i, y0:y1, x0:x1]
      pre = preds[i, y0:y1, x0:x1]
      a = attention[i, y0:y1, x0:x1]
      for c in range(num_classes):
        gt_c = lab == c
        pr_c = (pre == c) & (lab != 255)
        count = gt_c.sum()
        present[i, w, c] = count >= min_pixels
        if present[i, w, c]:
          att[i, w, c] = a[gt_c].mean()
        union = (gt_c | pr_c).sum()
        if union:
          iou[i, w, c] = (gt_c & pr_c).sum() / union
  return att, iou, present


@pytest.mark.parametrize('min_pixels,size,stride', [(1, 5, 3), (3, 5, 3), (1, 3, 5), (2, 11, 4)])
def test_score_windows_matches_loop(min_pixels, size, stride):
  rng = np.random.default_rng(min_pixels + size)
  labels = rng.choice([0, 1, 2, 3, 255], p=[0.4, 0.2, 0.2, 0.1, 0.1], size=(2, 13, 11))
  preds = rng.integers(0, 4, size=(2, 13, 11))
  attention = rng.uniform(size=(2, 13, 11)).astype(np.float32)
  scores = slices.score_windows(jnp.asarray(attention), jnp.asarray(labels), jnp.asarray(preds),
                                num_classes=4, size=size, stride=stride, min_pixels=min_pixels)
  boxes = slices.window_boxes(13, 11, size, stride)
  att, iou, present = _naive_scores(attention, labels, preds, boxes, 4, min_pixels)
  np.testing.assert_array_equal(scores.present, present)
  np.testing.assert_allclose(scores.attention, att, atol=1e-6)
  np.testing.assert_allclose(scores.iou, iou, atol=1e-6)
  for i in range(2):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      counts = np.bincount(labels[i, y0:y1, x0:x1].ravel(), minlength=256)[:4]
      np.testing.assert_array_equal(scores.pixels[i, w], counts)
  no_iou = slices.score_windows(jnp.asarray(attention), jnp.asarray(labels), num_classes=4,
                                size=size, stride=stride, min_pixels=min_pixels)
  assert no_iou.iou is None
  np.testing.assert_array_equal(no_iou.attention, scores.attention)


def _windows_for_curve(curve, repeat=3, bins=10):
  """Windows at the bin centres whose IoU averages to curve[bin] (nan = empty bin)."""
  att, iou = [], []
  for j, value in enumerate(curve):
    if not np.isnan(value):
      att += [(j + 0.5) / bins] * repeat
      iou += [value - 0.01, value, value + 0.01][:repeat]
  return np.asarray(att), np.asarray(iou)


def _curve_arrays(curves, bins=10, repeat=3):
  """Stack per-class window lists into (M, K) arrays with a present mask."""
  columns = [_windows_for_curve(c, repeat, bins) for c in curves]
  m = max(len(a) for a, _ in columns)
  att = np.zeros((m, len(curves)))
  iou = np.zeros((m, len(curves)))
  present = np.zeros((m, len(curves)), bool)
  for k, (a, i) in enumerate(columns):
    att[:len(a), k], iou[:len(a), k], present[:len(a), k] = a, i, True
  return att, iou, present


NAN = np.nan
HAND_CURVES = [
    [0.1, 0.3, 0.5, 0.6, 0.6, 0.601, 0.6, 0.6, 0.6, 0.6],  # flat from bin 3: T = 0.35
    [NAN, 0.2, NAN, NAN, 0.5, NAN, NAN, NAN, 0.5, 0.5],  # empty bins skipped: T = 0.45
    [0.5, 0.5, 0.4, 0.45, 0.5, 0.7, 0.7, 0.7, 0.7, 0.7],  # dip, then last rise at bin 4: 0.55
    [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.5],  # never flattens: left out
    [NAN, NAN, 0.3, NAN, NAN, NAN, NAN, NAN, NAN, 0.3],  # too few windows: left out
    [NAN, NAN, NAN, NAN, 0.3, 0.3, 0.3, NAN, NAN, NAN],  # flat from its first bin: 0.45
]


def test_threshold_from_hand_curves():
  att, iou, present = _curve_arrays(HAND_CURVES)
  present[:, 4] = False
  present[[0, 3], 4] = True
  t, per_class, curves = slices.threshold_from_curve(att, iou, present, bins=10, slope=0.02,
                                                     min_windows=5)
  np.testing.assert_allclose(per_class, [0.35, 0.45, 0.55, NAN, NAN, 0.45])
  assert t == pytest.approx((0.35 + 0.45 + 0.55 + 0.45) / 4)
  np.testing.assert_allclose(curves['centres'], np.arange(10) / 10 + 0.05)
  np.testing.assert_allclose(curves['mean_iou'][0], HAND_CURVES[0])
  np.testing.assert_array_equal(curves['counts'][1], [0, 3, 0, 0, 3, 0, 0, 0, 3, 3])


def test_threshold_degenerate_and_accumulated():
  att, iou, present = _curve_arrays([HAND_CURVES[3]])
  t, per_class, _ = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=1)
  assert t == 0.0 and np.isnan(per_class).all()
  att, iou, present = _curve_arrays(HAND_CURVES)
  whole = slices.curve_histogram(att, iou, present, bins=10)
  parts = [slices.curve_histogram(att[s], iou[s], present[s], bins=10)
           for s in (slice(0, 7), slice(7, None))]
  np.testing.assert_array_equal(whole[0], parts[0][0] + parts[1][0])
  np.testing.assert_allclose(whole[1], parts[0][1] + parts[1][1])
  ones = np.ones((4, 1))
  counts, _ = slices.curve_histogram(ones, ones, ones > 0, bins=10)
  assert counts[0, 9] == 4


def test_weak_mask_and_top_weak_selection():
  rng = np.random.default_rng(0)
  attention = rng.uniform(size=(3, 7, 4)).astype(np.float32)
  attention[0, 2, 1] = attention[0, 5, 3] = 0.0
  present = rng.uniform(size=(3, 7, 4)) < 0.6
  present[0, 2, 1] = present[0, 5, 3] = True
  present[2] = False
  weak = slices.weak_mask(jnp.asarray(attention), jnp.asarray(present), 0.5)
  np.testing.assert_array_equal(weak, present & (attention < 0.5))
  index, valid = slices.select_top_weak(jnp.asarray(attention), weak, 3)
  for n in range(3):
    ranked = sorted((min(attention[n, w][np.asarray(weak[n, w])]), w)
                    for w in range(7) if weak[n, w].any())
    expected = [w for _, w in ranked[:3]]
    assert list(np.asarray(index[n][valid[n]])) == expected
    assert not valid[n, len(expected):].any() and (index[n, len(expected):] == 0).all()
  assert list(np.asarray(index[0][:2])) == [2, 5]
  index, valid = slices.select_top_weak(jnp.asarray(attention), weak, 9)
  assert index.shape == (3, 9) and int(valid.sum()) == int(weak.any(-1).sum())


def test_arbitrary_windows_same_count_and_seeded():
  weak = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 30)) < 0.3)
  chosen = slices.arbitrary_windows(jax.random.key(0), weak)
  np.testing.assert_array_equal(chosen.sum(-1), weak.sum(-1))
  np.testing.assert_array_equal(chosen, slices.arbitrary_windows(jax.random.key(0), weak))
  assert not np.array_equal(chosen, slices.arbitrary_windows(jax.random.key(1), weak))
  index, valid = slices.select_arbitrary(jax.random.key(0), weak, 5)
  for n in range(4):
    picked = np.asarray(index[n][valid[n]])
    assert len(picked) == min(5, int(weak[n].sum())) == len(set(picked))
    assert chosen[n][picked].all()


def test_crop_windows():
  x = jnp.arange(2 * 9 * 8 * 3).reshape(2, 9, 8, 3)
  boxes = jnp.asarray([[[0, 0, 4, 4], [5, 4, 9, 8]], [[2, 3, 6, 7], [0, 4, 4, 8]]])
  crops = slices.crop_windows(x, boxes, 4)
  assert crops.shape == (2, 2, 4, 4, 3)
  for n in range(2):
    for s in range(2):
      y0, x0 = int(boxes[n, s, 0]), int(boxes[n, s, 1])
      np.testing.assert_array_equal(crops[n, s], x[n, y0:y0 + 4, x0:x0 + 4])
