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


def _windows_for_curve(curve, repeat=3, bins=10, spread=0.01):
  """Windows at the bin centres whose IoU averages to curve[bin] (nan = empty bin): IoU
  value - spread, value, value + spread (spread 0: a noise-free curve)."""
  att, iou = [], []
  for j, value in enumerate(curve):
    if not np.isnan(value):
      att += [(j + 0.5) / bins] * repeat
      iou += [value - spread, value, value + spread][:repeat]
  return np.asarray(att), np.asarray(iou)


def _curve_arrays(curves, bins=10, repeat=3, spread=0.01):
  """Stack per-class window lists into (M, K) arrays with a present mask."""
  columns = [_windows_for_curve(c, repeat, bins, spread) for c in curves]
  m = max(len(a) for a, _ in columns)
  att = np.zeros((m, len(curves)))
  iou = np.zeros((m, len(curves)))
  present = np.zeros((m, len(curves)), bool)
  for k, (a, i) in enumerate(columns):
    att[:len(a), k], iou[:len(a), k], present[:len(a), k] = a, i, True
  return att, iou, present


NAN = np.nan
# T_c by first_flat (lowest kept bin whose slope to the next kept bin is below 0.02) and, where
# it differs, by last_flat (start of the last flat run; left out when the last slope is steep).
HAND_CURVES = [
    [0.1, 0.3, 0.5, 0.6, 0.6, 0.601, 0.6, 0.6, 0.6, 0.6],  # flat from bin 3: T = 0.35
    [NAN, 0.2, NAN, NAN, 0.5, NAN, NAN, NAN, 0.5, 0.5],  # empty bins skipped: T = 0.45
    [0.5, 0.5, 0.4, 0.45, 0.5, 0.7, 0.7, 0.7, 0.7, 0.7],  # flat at once: 0.05; last_flat 0.55
    [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.5],  # flat at bin 2: 0.25; last_flat: out
    [NAN, NAN, 0.3, NAN, NAN, NAN, NAN, NAN, NAN, 0.3],  # too few windows: left out
    [NAN, NAN, NAN, NAN, 0.3, 0.3, 0.3, NAN, NAN, NAN],  # flat from its first bin: 0.45
]


# More noise-free curves for the robust rule: T_c by first_flat.
MORE_CURVES = [
    [0.1, 0.3, 0.295, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],  # a dip at bin 1, then a rise: 0.15
    list(np.linspace(0.1, 1.0, 10)),  # never flattens: its highest kept bin, 0.95
    [0.4] * 10,  # flat from the start: its lowest kept bin, 0.05
]


def _hand_curve_arrays(spread=0.01, more=()):
  att, iou, present = _curve_arrays(HAND_CURVES + list(more), spread=spread)
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
  np.testing.assert_allclose(whole[2], parts[0][2] + parts[1][2])
  ones = np.ones((4, 1))
  counts, _, _ = slices.curve_histogram(ones, ones, ones > 0, bins=10)
  assert counts[0, 9] == 4


def test_histogram_squares_are_per_bin_sums_of_squares():
  rng = np.random.default_rng(3)
  att = rng.uniform(size=(500, 3))
  iou = rng.uniform(size=(500, 3))
  present = rng.uniform(size=(500, 3)) < 0.8
  counts, sums, squares = slices.curve_histogram(att, iou, present, bins=7)
  for c in range(3):
    for b in range(7):
      inside = present[:, c] & (np.minimum(np.floor(att[:, c] * 7), 6) == b)
      assert counts[c, b] == inside.sum()
      assert sums[c, b] == pytest.approx(np.sum(iou[inside, c]), rel=1e-12)
      assert squares[c, b] == pytest.approx(np.sum(iou[inside, c] ** 2), rel=1e-12)
  batches = [slices.curve_histogram(att[s], iou[s], present[s], bins=7)
             for s in (slice(0, 123), slice(123, 400), slice(400, None))]
  for whole, parts in zip((counts, sums, squares), zip(*batches)):
    np.testing.assert_allclose(whole, sum(parts), rtol=1e-12)


def test_robust_is_first_flat_on_noise_free_hand_curves():
  """Every window of a bin with the same IoU: s = 0, no step is ambiguous, the paper's rule."""
  att, iou, present = _hand_curve_arrays(spread=0.0, more=MORE_CURVES)
  first = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=5)
  robust = slices.threshold_from_curve(att, iou, present, bins=10, min_windows=5, rule='robust')
  np.testing.assert_allclose(first[1], [0.35, 0.45, 0.05, 0.25, NAN, 0.45, 0.15, 0.95, 0.05])
  np.testing.assert_array_equal(robust[1], first[1])
  assert robust[0] == first[0]
  kept = robust[2]['kept']
  assert np.all(robust[2]['se'][kept] == 0) and np.isnan(robust[2]['se'][~kept]).all()


def test_robust_is_first_flat_on_random_noise_free_curves():
  """Random kept bins, counts and IoU steps (some exactly at the limit, 0.001 per bin of
  0.05): windows anywhere in their bin, all of a bin with one IoU."""
  rng = np.random.default_rng(11)
  num_classes, bins = 300, 20
  counts = np.where(rng.uniform(size=(num_classes, bins)) < 0.7,
                    rng.integers(1, 40, (num_classes, bins)), 0)
  steps = rng.choice([-0.002, -0.001, 0.0, 0.0005, 0.001, 0.0015, 0.003, 0.02, 0.05],
                     (num_classes, bins))
  values = np.clip(rng.uniform(0, 0.3, (num_classes, 1)) + np.cumsum(steps, axis=1), 0, 1)
  att = np.zeros((counts.sum(axis=1).max(), num_classes))
  iou = np.zeros_like(att)
  present = np.zeros(att.shape, bool)
  for c in range(num_classes):
    m = counts[c].sum()
    position = np.repeat(np.arange(bins), counts[c]) + rng.uniform(0.05, 0.95, m)
    att[:m, c], iou[:m, c], present[:m, c] = position / bins, np.repeat(values[c], counts[c]), True
  for min_share, unit in ((0.0, 'attention'), (0.01, 'attention'), (0.05, 'bin')):
    kwargs = dict(bins=bins, min_share=min_share, slope_unit=unit, min_windows=1)
    first = slices.threshold_from_curve(att, iou, present, **kwargs)
    robust = slices.threshold_from_curve(att, iou, present, rule='robust', **kwargs)
    np.testing.assert_array_equal(robust[1], first[1])
    assert robust[0] == first[0] and np.all(robust[2]['se'][robust[2]['kept']] == 0)


def test_pooled_standard_error_against_per_bin_variances():
  rng = np.random.default_rng(4)
  att = rng.uniform(size=(400, 3))
  iou = rng.normal(0.5, 0.1 * (1 + np.arange(3)), (400, 3))
  present = rng.uniform(size=(400, 3)) < 0.9
  _, _, curves = slices.threshold_from_curve(att, iou, present, bins=8, min_share=0.1,
                                             rule='robust', min_windows=1)
  for c in range(3):
    index = np.minimum(np.floor(att[present[:, c], c] * 8), 7)
    values = iou[present[:, c], c]
    kept = [b for b in range(8) if curves['kept'][c, b]]
    within = sum(np.sum((values[index == b] - values[index == b].mean()) ** 2) for b in kept)
    dof = sum(np.sum(index == b) for b in kept) - len(kept)
    for b in kept:
      assert curves['se'][c, b] == pytest.approx(np.sqrt(within / dof / np.sum(index == b)))
    assert np.isnan(curves['se'][c, [b for b in range(8) if b not in kept]]).all()


def _brute_force_knee(mean_iou, counts, kept, bins, steps=slices.KNEE_STEPS):
  """The knee by a loop of constrained weighted least-squares fits, one per grid point."""
  x = (np.arange(bins) + 0.5) / bins
  x, y, w = x[kept], mean_iou[kept], counts[kept].astype(float)
  flat = np.sum(w * (y - np.average(y, weights=w)) ** 2)
  best, knee = flat, x[0]
  for g in np.arange(x[0] * bins * steps, x[-1] * bins * steps + 0.5) / (bins * steps):
    design = np.stack([np.ones_like(x), -np.maximum(g - x, 0.0)], axis=1)
    (p, a), *_ = np.linalg.lstsq(design * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)
    error = np.sum(w * (y - p + a * np.maximum(g - x, 0.0)) ** 2) if a > 0 else flat
    if error < best - 1e-12:
      best, knee = error, g
  return knee


def test_hinge_knee_against_a_brute_force_fit():
  rng = np.random.default_rng(6)
  bins = 10
  x = (np.arange(bins) + 0.5) / bins
  counts = rng.integers(5, 60, (8, bins))
  counts[:, [0, 9]] *= rng.uniform(size=(8, 2)) < 0.5  # some classes start or end later
  kept = counts > 0
  knees = np.array([0.415, 0.2, 0.6, 0.3, 0.5, 0.45, 0.7, 0.35])
  mean_iou = 0.7 - 0.8 * np.maximum(knees[:, None] - x, 0) + rng.normal(0, 0.03, (8, bins))
  found = slices.hinge_knee(mean_iou, counts, kept)
  for c in range(8):
    assert found[c] == pytest.approx(_brute_force_knee(mean_iou[c], counts[c], kept[c], bins))
  exact = slices.hinge_knee(0.7 - 0.8 * np.maximum(knees[:, None] - x, 0), counts, kept)
  np.testing.assert_allclose(exact, knees)  # every knee lies on the grid
  first = np.array([x[kept[c]][0] for c in range(8)])
  np.testing.assert_allclose(slices.hinge_knee(mean_iou, counts, kept, min_gain=np.inf), first)
  falling = slices.hinge_knee(0.7 - 0.1 * x + np.zeros((8, 1)), counts, kept)
  np.testing.assert_allclose(falling, first)  # a >= 0: a falling curve is flat


def test_robust_rule_needs_the_squares():
  counts, sums, _ = slices.curve_histogram(*_hand_curve_arrays(), bins=10)
  with pytest.raises(ValueError, match='t_noise_z'):
    slices.threshold_from_histogram(counts, sums, rule='robust')
  with pytest.raises(ValueError, match='t_noise_z'):
    slices.threshold_from_histogram(counts, sums, sums, rule='robust', z=-1.0)


def _beta_2_1p5_density(x):
  return 3.75 * x * np.sqrt(1 - x)  # Beta(2, 1.5): B(2, 1.5) = 4 / 15


# Attention of the windows: uniform, or Beta(2, 1.5) with a sparse low-attention end (its first
# bin of 20 holds 0.5% of the windows, the next 1.4%).
ATTENTION = {'uniform': (lambda rng, shape: rng.uniform(size=shape), np.ones_like),
             'beta': (lambda rng, shape: rng.beta(2, 1.5, size=shape), _beta_2_1p5_density)}


def _knee_curve(attention, knee, low, high):
  """IoU rising linearly from `low` at attention 0 to `high` at the knee, flat after it."""
  return low + (high - low) * np.minimum(attention / knee, 1.0)


def _noise_free_first_flat(density, knee, low, high, bins, fine=200):
  """The paper's T_c on each draw's expected curve: bin shares and means of the knee curve
  integrated over the attention density on `fine` points per bin, then `first_flat`."""
  x = (np.arange(bins * fine) + 0.5) / (bins * fine)
  weight = density(x).reshape(bins, fine)
  mean = (_knee_curve(x, knee[:, None], low[:, None], high[:, None]).reshape(-1, bins, fine)
          * weight).sum(axis=2) / weight.sum(axis=1)
  counts = np.broadcast_to(1e9 * weight.sum(axis=1) / weight.sum(), mean.shape)
  return slices.threshold_from_histogram(counts, counts * mean, min_windows=1)[1]


def knee_success_rates(distribution, bins=20, seed=0):
  """Per (windows per class, noise sd): the shares of draws whose T_c is within one bin
  width of the noise-free paper T_c, within one bin width of the knee, and in the knee's bin
  or a neighbouring one, robust and first_flat; and the noise-free T_c's largest distance to
  the knee. A draw is a class: knee uniform in [0.2, 0.7], IoU from
  about 0.1 at attention 0 to a plateau of 0.5-0.7 at the knee, Gaussian noise."""
  draw_attention, density = ATTENTION[distribution]
  rng = np.random.default_rng(seed)
  rates, worst = {}, 0.0
  for windows, draws in ((1_000, 400), (10_000, 150), (100_000, 40)):
    knee = rng.uniform(0.2, 0.7, draws)
    low, high = rng.uniform(0.05, 0.15, draws), rng.uniform(0.5, 0.7, draws)
    att = draw_attention(rng, (windows, draws))
    curve = _knee_curve(att, knee, low, high)
    noise = rng.standard_normal(att.shape, dtype=np.float32)
    paper = _noise_free_first_flat(density, knee, low, high, bins)
    worst = max(worst, float(np.max(np.abs(paper - knee))))
    for sd in (0.1, 0.175, 0.25):
      histogram = slices.curve_histogram(att, curve + sd * noise, np.ones(att.shape, bool),
                                         bins=bins)
      rates[windows, sd] = {}
      for rule in ('robust', 'first_flat'):
        t_c = slices.threshold_from_histogram(*histogram, rule=rule, min_windows=1)[1]
        rates[windows, sd][rule] = (
            np.mean(np.abs(t_c - paper) <= 1 / bins + 1e-9),
            np.mean(np.abs(t_c - knee) <= 1 / bins + 1e-9),
            np.mean(np.abs(np.floor(t_c * bins) - np.floor(knee * bins)) <= 1))
  return rates, worst


@pytest.mark.parametrize('distribution', ['uniform', 'beta'])
def test_robust_finds_the_first_flat_point_of_noisy_sparse_curves(distribution):
  """Oracles: the knee, and the paper's rule on the noise-free expected curve of each draw.
  That curve's first flat point lies in the knee's bin or the next one, up to 1.5 bin widths
  above the knee (docs/methods.md RWS 4): so T_c is asked to lie in the knee's bin or a
  neighbouring one, and within one bin width of the noise-free T_c (without noise first_flat
  is within one bin width of the knee itself in only about 70% of the draws)."""
  rates, worst = knee_success_rates(distribution)
  assert worst <= 1.5 / 20
  for (windows, sd), rate in rates.items():
    assert rate['robust'][0] >= 0.9, (windows, sd, rate)
    assert rate['robust'][2] >= 0.9, (windows, sd, rate)  # in or next to the knee's bin
    assert rate['first_flat'][1] < 0.75, (windows, sd, rate)  # within a bin of the knee
    if windows == 1_000:  # sparse bins: a few dozen windows each, fewer at the low end
      assert rate['first_flat'][0] < (0.9 if sd == 0.1 else 0.6), (windows, sd, rate)
      assert rate['first_flat'][2] < 0.7, (windows, sd, rate)


def test_robust_on_noisy_straight_rise_and_flat_curves():
  """A straight rise never flattens (the highest kept bin) and a flat curve is flat from the
  start (the lowest kept bin): 10,000 windows per class, noise sd 0.1, 100 draws each."""
  rng = np.random.default_rng(2)
  att = rng.uniform(size=(10_000, 100))
  noise = rng.normal(0, 0.1, att.shape)
  present = np.ones(att.shape, bool)
  rise = slices.threshold_from_curve(att, 0.1 + 0.5 * att + noise, present, rule='robust')[1]
  assert np.mean(rise == 0.975) >= 0.95
  flat, first = (slices.threshold_from_curve(att, 0.5 + noise, present, rule=rule)
                 for rule in ('robust', 'first_flat'))
  assert np.mean(flat[1] == 0.025) >= 0.85 and np.mean(flat[2]['knee'] == 0.025) >= 0.85
  assert np.mean(first[1] == 0.025) < 0.75  # first_flat: a noisy first step is steep


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
