"""Tests for isimjax.crf: input checks, determinism, label-id mapping and synthetic oracles."""
import numpy as np
import pydensecrf.densecrf as dcrf
import pytest

from isimjax import crf


def _stripes(colours, height=48, width_per_stripe=32):
  """An image of vertical colour stripes and its clean label map (stripe index)."""
  image = np.concatenate(
      [np.full((height, width_per_stripe, 3), c, np.uint8) for c in colours], axis=1)
  labels = np.repeat(np.arange(len(colours)), width_per_stripe)[None].repeat(height, 0)
  return image, labels


def _with_noise(labels, values, fraction, seed):
  rng = np.random.default_rng(seed)
  noisy = labels.copy()
  flip = rng.random(labels.shape) < fraction
  noisy[flip] = rng.choice(values, size=int(flip.sum()))
  return noisy


def test_noisy_labels_are_cleaned_to_colour_regions():
  image, clean = _stripes([(200, 40, 40), (40, 40, 200)])
  noisy = _with_noise(clean, [0, 1], 0.2, seed=0)
  assert (noisy != clean).mean() > 0.05
  np.testing.assert_array_equal(crf.crf_refine_labels(image, noisy, 2), clean)


def _direct_crf(image, compact, n):
  """docs/methods.md step 3 CRF written directly against pydensecrf, labels unary by hand."""
  direct = dcrf.DenseCRF2D(image.shape[1], image.shape[0], n)
  unary = np.full((n, compact.size), -np.log(0.3 / (n - 1)), np.float32)
  unary[compact.ravel(), np.arange(compact.size)] = -np.log(0.7)
  direct.setUnaryEnergy(unary)
  direct.addPairwiseGaussian(sxy=3, compat=3)
  direct.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
  return np.argmax(np.asarray(direct.inference(10)).reshape(n, *image.shape[:2]), 0)


def test_class_ids_are_mapped_to_a_compact_crf_and_back():
  image, stripe = _stripes([(200, 40, 40), (40, 200, 40), (40, 40, 200)])
  ids = np.array([0, 5, 12])
  noisy = _with_noise(ids[stripe], ids, 0.2, seed=1)
  out = crf.crf_refine_labels(image, noisy, 21)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, ids[stripe])


def test_equals_a_direct_pydensecrf_run_on_compact_labels():
  rng = np.random.default_rng(6)
  ids = np.array([0, 5, 12])
  image = np.clip(rng.normal(128, 12, size=(40, 48, 3)), 0, 255).astype(np.uint8)
  compact = rng.integers(0, 3, size=(40, 48))
  out = crf.crf_refine_labels(image, ids[compact], 21)
  expected = ids[_direct_crf(image, compact, 3)]
  assert len(np.unique(expected)) == 3
  np.testing.assert_array_equal(out, expected)


def test_class_ids_with_an_absent_class():
  image, stripe = _stripes([(200, 40, 40), (40, 40, 200)])
  labels = np.array([0, 12])[stripe]
  out = crf.crf_refine_labels(image, labels, 21, class_ids=[0, 7, 12])
  np.testing.assert_array_equal(out, labels)
  # A noisy map that only uses 0 and 12 stays in {0, 12}: class 7 has no support.
  noisy = _with_noise(labels, [0, 12], 0.2, seed=2)
  out = crf.crf_refine_labels(image, noisy, 21, class_ids=[0, 7, 12])
  assert set(np.unique(out)) <= {0, 12}


def test_single_label_is_returned_unchanged():
  image, _ = _stripes([(10, 20, 30), (200, 100, 0)])
  labels = np.full(image.shape[:2], 4)
  out = crf.crf_refine_labels(image, labels, 21)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, labels)


def test_constant_image_keeps_large_regions_and_drops_a_small_blob():
  size = 128
  image = np.full((size, size, 3), 128, np.uint8)
  halves = np.zeros((size, size), np.int64)
  halves[:, size // 2:] = 1
  out = crf.crf_refine_labels(image, halves, 2)
  wrong_columns = np.nonzero((out != halves).any(axis=0))[0]
  assert (out != halves).mean() < 0.01
  assert np.all(np.abs(wrong_columns - size // 2) <= 2)
  blob = np.zeros((size, size), np.int64)
  blob[60:66, 60:66] = 1
  np.testing.assert_array_equal(crf.crf_refine_labels(image, blob, 2), 0)


def test_deterministic():
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, size=(40, 56))
  first = crf.crf_refine_labels(image, labels, 4)
  np.testing.assert_array_equal(first, crf.crf_refine_labels(image, labels, 4))
  probs = rng.random((3, 40, 56))
  np.testing.assert_array_equal(crf.crf_refine_probs(image, probs),
                                crf.crf_refine_probs(image, probs))


def test_non_contiguous_image_equals_its_copy():
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
  flipped = image[:, ::-1]
  assert not flipped.flags.c_contiguous
  labels = rng.integers(0, 3, size=(32, 40))
  np.testing.assert_array_equal(crf.crf_refine_labels(flipped, labels, 3),
                                crf.crf_refine_labels(flipped.copy(), labels, 3))


def test_probs_refined_to_colour_regions():
  image, clean = _stripes([(200, 40, 40), (40, 40, 200)])
  rng = np.random.default_rng(5)
  probs = np.stack([clean == 0, clean == 1]).astype(np.float32) * 0.6 + 0.2
  probs += rng.uniform(-0.15, 0.15, size=probs.shape)
  q = crf.crf_refine_probs(image, probs)
  assert q.shape == probs.shape and q.dtype == np.float32
  np.testing.assert_allclose(q.sum(0), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.argmax(q, 0), clean)


def test_uniform_probs_stay_uniform():
  image, _ = _stripes([(200, 40, 40), (40, 40, 200)])
  q = crf.crf_refine_probs(image, np.full((4, *image.shape[:2]), 0.3))
  np.testing.assert_allclose(q, 0.25, rtol=1e-5)


def test_params_change_the_result():
  image = np.full((64, 64, 3), 128, np.uint8)
  blob = np.zeros((64, 64), np.int64)
  blob[28:36, 28:36] = 1
  weak = crf.CrfParams(bilateral_compat=0.0, gaussian_compat=0.0)
  np.testing.assert_array_equal(crf.crf_refine_labels(image, blob, 2, params=weak), blob)


@pytest.mark.parametrize('image, message', [
    (np.zeros((8, 8, 3), np.float32), 'uint8'),
    (np.zeros((8, 8), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((8, 8, 4), np.uint8), r'\(H, W, 3\)'),
])
def test_bad_image_raises(image, message):
  with pytest.raises(ValueError, match=message):
    crf.crf_refine_labels(image, np.zeros((8, 8), np.int32), 2)
  with pytest.raises(ValueError, match=message):
    crf.crf_refine_probs(image, np.ones((2, 8, 8)))


@pytest.mark.parametrize('labels, kwargs, message', [
    (np.zeros((8, 7), np.int32), {}, 'shape'),
    (np.zeros((8, 8), np.float32), {}, 'integer'),
    (np.full((8, 8), 3), {}, r'\[0, 3\)'),
    (np.full((8, 8), -1), {}, r'\[0, 3\)'),
    (np.zeros((8, 8), np.int32), {'class_ids': [1, 2]}, 'missing from class_ids'),
    (np.zeros((8, 8), np.int32), {'class_ids': [0, 5]}, r'class_ids must lie in \[0, 3\)'),
    (np.zeros((8, 8), np.int32), {'class_ids': [0, 0, 1]}, 'distinct'),
    (np.zeros((8, 8), np.int32), {'class_ids': []}, 'at least one'),
    (np.zeros((8, 8), np.int32), {'gt_prob': 1.0}, 'gt_prob'),
])
def test_bad_labels_raise(labels, kwargs, message):
  with pytest.raises(ValueError, match=message):
    crf.crf_refine_labels(np.zeros((8, 8, 3), np.uint8), labels, 3, **kwargs)


def test_bad_n_labels_raises():
  with pytest.raises(ValueError, match='n_labels'):
    crf.crf_refine_labels(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32), 256)


@pytest.mark.parametrize('probs, message', [
    (np.ones((2, 8, 7)), 'shape'),
    (np.ones((8, 8)), 'shape'),
    (np.full((2, 8, 8), np.nan), 'finite'),
    (np.full((2, 8, 8), -0.1), 'non-negative'),
])
def test_bad_probs_raise(probs, message):
  with pytest.raises(ValueError, match=message):
    crf.crf_refine_probs(np.zeros((8, 8, 3), np.uint8), probs)
