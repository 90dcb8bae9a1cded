"""Windows, window scores, the threshold T and slice selection against loops and hand curves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwsjax.rws import slices


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


def _naive_scores(attention, regions, labels, preds, boxes, num_classes, min_pixels):
  n = labels.shape[0]
  shape = (n, len(boxes), num_classes)
  att, iou, present = np.zeros(shape), np.zeros(shape), np.zeros(shape, bool)
  for i in range(n):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      reg = regions[i, y0:y1, x0:x1]
      lab = labels[i, y0:y1, x0:x1]
      pre = preds[i, y0:y1, x0:x1]
      a = attention[i, y0:y1, x0:x1]
      for c in range(num_classes):
        region_c = reg == c
        present[i, w, c] = region_c.sum() >= min_pixels
        if present[i, w, c]:
          att[i, w, c] = a[region_c].mean()
        gt_c = lab == c
        pr_c = (pre == c) & (lab != 255)
        union = (gt_c | pr_c).sum()
        if union:
          iou[i, w, c] = (gt_c & pr_c).sum() / union
  return att, iou, present


@pytest.mark.parametrize('min_pixels,size,stride,region', [
    (1, 5, 3, 'labels'), (3, 5, 3, 'preds'), (1, 3, 5, 'labels'), (2, 11, 4, 'preds')])
def test_score_windows_matches_loop(min_pixels, size, stride, region):
  rng = np.random.default_rng(min_pixels + size)
  labels = rng.choice([0, 1, 2, 3, 255], p=[0.4, 0.2, 0.2, 0.1, 0.1], size=(2, 13, 11))
  preds = rng.integers(0, 4, size=(2, 13, 11))
  attention = rng.uniform(size=(2, 13, 11)).astype(np.float32)
  regions = labels if region == 'labels' else preds
  scores = slices.score_windows(jnp.asarray(attention), jnp.asarray(regions),
                                jnp.asarray(labels), jnp.asarray(preds), num_classes=4,
                                size=size, stride=stride, min_pixels=min_pixels)
  boxes = slices.window_boxes(13, 11, size, stride)
  att, iou, present = _naive_scores(attention, regions, labels, preds, boxes, 4, min_pixels)
  np.testing.assert_array_equal(scores.present, present)
  np.testing.assert_allclose(scores.attention, att, atol=1e-6)
  np.testing.assert_allclose(scores.iou, iou, atol=1e-6)
  for i in range(2):
    for w, (y0, x0, y1, x1) in enumerate(boxes):
      counts = np.bincount(regions[i, y0:y1, x0:x1].ravel(), minlength=256)[:4]
      np.testing.assert_array_equal(scores.pixels[i, w], counts)
  no_iou = slices.score_windows(jnp.asarray(attention), jnp.asarray(regions), num_classes=4,
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


def _hand_curve_arrays():
  att, iou, present = _curve_arrays(HAND_CURVES)
  present[:, 4] = False
  present[[0, 3], 4] = True
  return att, iou, present


def test_threshold_first_flat_on_hand_curves():
  att, iou, present = _hand_curve_arrays()
  t, per_class, curves = slices.threshold_from_curve(att, iou, present, bins=10, slope=0.02,
                                                     min_windows=5)
  # Lowest kept bin whose slope to the next kept bin is below 0.02 (paper Fig. 2); the dip of
  # curve 2 starts flat, the plateau of curve 3 counts although the curve rises again later.
  np.testing.assert_allclose(per_class, [0.35, 0.45, 0.05, 0.25, NAN, 0.45])
  assert t == pytest.approx((0.35 + 0.45 + 0.05 + 0.25 + 0.45) / 5)
  np.testing.assert_allclose(curves['centres'], np.arange(10) / 10 + 0.05)
  np.testing.assert_allclose(curves['mean_iou'][0], HAND_CURVES[0])
  np.testing.assert_array_equal(curves['counts'][1], [0, 3, 0, 0, 3, 0, 0, 0, 3, 3])
  np.testing.assert_array_equal(curves['kept'][1], curves['counts'][1] > 0)


def test_threshold_last_flat_is_the_earlier_reading():
  att, iou, present = _hand_curve_arrays()
  t, per_class, _ = slices.threshold_from_curve(att, iou, present, bins=10, slope=0.02,
                                                min_windows=5, rule='last_flat', min_share=0)
  np.testing.assert_allclose(per_class, [0.35, 0.45, 0.55, NAN, NAN, 0.45])
  assert t == pytest.approx((0.35 + 0.45 + 0.55 + 0.45) / 4)


def test_threshold_sparse_bins_never_flatten_and_slope_units():
  # Curve of 200 windows: a bin with 1 window (0.5% < 1%) at 0.15 would make the start flat.
  att = np.concatenate([[0.15], np.repeat([0.05, 0.25, 0.35, 0.45], [49, 50, 50, 50])])
  iou = np.concatenate([[0.1], np.repeat([0.1, 0.5, 0.7, 0.7], [49, 50, 50, 50])])
  present = np.ones((200, 1), bool)
  args = (att[:, None], iou[:, None], present)
  _, kept_share, curves = slices.threshold_from_curve(*args, bins=10)
  assert not curves['kept'][0, 1] and curves['counts'][0, 1] == 1
  np.testing.assert_allclose(kept_share, [0.35])
  _, every_bin, _ = slices.threshold_from_curve(*args, bins=10, min_share=0)
  np.testing.assert_allclose(every_bin, [0.05])
  # Never flat: the class takes its highest kept bin instead of being dropped.
  rising = np.linspace(0.1, 1.0, 10)
  att, iou, present = _curve_arrays([rising])
  _, per_class, _ = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=1)
  np.testing.assert_allclose(per_class, [0.95])
  # A rise of 0.01 per bin step of 0.1: slope 0.1 per unit of attention, 0.01 per bin.
  gentle = 0.5 + 0.01 * np.arange(10)
  att, iou, present = _curve_arrays([gentle])
  _, per_attention, _ = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=1)
  _, per_bin, _ = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=1,
                                              slope_unit='bin')
  np.testing.assert_allclose(per_attention, [0.95])
  np.testing.assert_allclose(per_bin, [0.05])
  with pytest.raises(ValueError, match='t_rule'):
    slices.threshold_from_curve(att, iou, present, rule='middle')


def test_threshold_finds_the_knee_of_noisy_curves():
  """10,000 windows per class, IoU rising linearly to a plateau at a known knee, noise sd 0.2."""
  knees = np.array([0.3, 0.35, 0.4, 0.45, 0.5])
  rng = np.random.default_rng(0)
  att = rng.uniform(size=(10_000, len(knees)))
  iou = 0.8 * np.minimum(att / knees, 1.0) + rng.normal(0, 0.2, att.shape)
  present = np.ones(att.shape, bool)
  t, per_class, _ = slices.threshold_from_curve(att, iou, present, bins=20)
  assert abs(t - knees.mean()) <= 0.1
  assert np.all(per_class > knees - 0.05) and np.all(per_class < knees + 0.25)
  assert np.sum(np.abs(per_class - knees) <= 0.1) >= 4
  old, old_per_class, _ = slices.threshold_from_curve(att, iou, present, bins=20,
                                                      rule='last_flat', min_share=0)
  assert old > 0.7  # the start of the last flat run lands far beyond the knees


def test_threshold_degenerate_and_accumulated():
  att, iou, present = _curve_arrays([[0.3] + [NAN] * 9])
  t, per_class, _ = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=1)
  assert t == 0.0 and np.isnan(per_class).all()  # one bin: no curve, no evidence
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
