"""Tests for isimjax.losses against formulas evaluated independently in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isimjax import losses


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _soft_margin_torch_doc(x, y):
  """torch.nn.MultiLabelSoftMarginLoss as written in its documentation, mean over the batch."""
  per_sample = -np.mean(
      y * np.log(1.0 / (1.0 + np.exp(-x))) + (1 - y) * np.log(np.exp(-x) / (1.0 + np.exp(-x))),
      axis=-1)
  return per_sample.mean()


def _soft_margin_binary_ce(x, y):
  """Mean binary cross-entropy of sigmoid probabilities, with explicit probabilities."""
  p = 1.0 / (1.0 + np.exp(-x))
  return np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_soft_margin_hand_computed():
  x = np.array([[1.0, -2.0, 0.5]])
  y = np.array([[1.0, 0.0, 1.0]])
  # log sigmoid(1), log sigmoid(2) (label 0 at -2), log sigmoid(0.5), averaged and negated.
  expected = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-0.5))) / 3
  got = losses.multilabel_soft_margin(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_soft_margin_matches_two_definitions():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 5)) * 3
  y = (rng.random((4, 5)) > 0.5).astype(np.float64)
  got = float(losses.multilabel_soft_margin(jnp.asarray(x, jnp.float32), jnp.asarray(y)))
  np.testing.assert_allclose(got, _soft_margin_torch_doc(x, y), rtol=1e-5)
  np.testing.assert_allclose(got, _soft_margin_binary_ce(x, y), rtol=1e-5)


def test_soft_margin_is_stable_for_large_logits():
  x = jnp.array([[100.0, -100.0]])
  y = jnp.array([[0.0, 1.0]])
  # -log sigmoid(-100) = 100 + log(1 + e^-100) ~= 100 for both entries; the naive formula
  # overflows to inf.
  got = losses.multilabel_soft_margin(x, y)
  np.testing.assert_allclose(got, 100.0, rtol=1e-6)
  grad = jax.grad(losses.multilabel_soft_margin)(x, y)
  np.testing.assert_allclose(grad, [[0.5, -0.5]], rtol=1e-6)


def test_foreground_indicator():
  labels = np.zeros((4, 2, 2), np.int32)
  labels[1, 0, 1] = 3
  labels[2] = 255
  labels[3] = [[0, 255], [255, 7]]
  np.testing.assert_array_equal(losses.foreground_indicator(jnp.asarray(labels)), [0, 1, 0, 1])


def test_modified_cross_entropy_hand_computed():
  logits = np.array([[[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]],
                     [[[1.0, 3.0, 0.0], [0.0, 0.0, 4.0]]]], np.float32)
  labels = np.array([[[0, 0]], [[1, 255]]], np.int32)
  # Image 0 is all background: its logits become 0 and each pixel costs log 3.
  ce_image1 = -_log_softmax(logits[1, 0, 0])[1]
  expected = (2 * np.log(3.0) + ce_image1) / 3
  got = losses.modified_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_modified_cross_entropy_equals_plain_ce_with_foreground():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 3, 3))
  labels[:, 0, 0] = 2
  logp = _log_softmax(logits.astype(np.float64))
  expected = -np.take_along_axis(logp, labels[..., None], -1).mean()
  got = losses.modified_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_modified_cross_entropy_all_ignore_image_adds_nothing():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
  labels = np.array([[[255] * 3] * 2, [[0, 1, 2], [2, 255, 0]]])
  both = losses.modified_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  alone = losses.modified_cross_entropy(jnp.asarray(logits[1:]), jnp.asarray(labels[1:]))
  np.testing.assert_allclose(both, alone, rtol=1e-6)


def test_modified_cross_entropy_zero_gradient_for_all_background():
  rng = np.random.default_rng(3)
  features = jnp.asarray(rng.normal(size=(2, 3, 3, 5)), jnp.float32)
  params = {'w': jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), 'b': jnp.ones(4)}
  background = jnp.zeros((2, 3, 3), jnp.int32)

  def loss_fn(p, labels):
    return losses.modified_cross_entropy(features @ p['w'] + p['b'], labels)

  loss, grads = jax.value_and_grad(loss_fn)(params, background)
  np.testing.assert_allclose(loss, np.log(4.0), rtol=1e-6)
  for g in jax.tree.leaves(grads):
    np.testing.assert_array_equal(g, 0.0)
  with_foreground = background.at[1, 1, 1].set(2)
  grads = jax.grad(loss_fn)(params, with_foreground)
  assert float(jnp.abs(grads['w']).max()) > 1e-3


def test_modified_cross_entropy_gradient_per_image():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)
  labels = jnp.asarray([[[0, 0], [0, 255]], [[1, 0], [2, 0]]])
  grad = jax.grad(losses.modified_cross_entropy)(logits, labels)
  np.testing.assert_array_equal(grad[0], 0.0)
  assert float(jnp.abs(grad[1]).min()) > 0.0


@pytest.mark.parametrize('seg_weight', [0.0, 1.0, 0.5])
def test_isim_loss_is_weighted_sum(seg_weight):
  rng = np.random.default_rng(5)
  class_logits = rng.normal(size=(2, 3)).astype(np.float32)
  targets = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
  seg_logits = rng.normal(size=(2, 2, 2, 4)).astype(np.float32)
  pseudo = np.array([[[0, 1], [1, 255]], [[0, 0], [0, 0]]])
  cls = _soft_margin_torch_doc(class_logits.astype(np.float64), targets)
  logp = _log_softmax(seg_logits[0].astype(np.float64))
  valid0 = pseudo[0] != 255
  nll0 = -np.take_along_axis(logp, np.where(valid0, pseudo[0], 0)[..., None], -1)[..., 0]
  seg = (nll0[valid0].sum() + 4 * np.log(4.0)) / (valid0.sum() + 4)
  loss, parts = losses.isim_loss(jnp.asarray(class_logits), jnp.asarray(targets),
                                 jnp.asarray(seg_logits), jnp.asarray(pseudo),
                                 seg_weight=seg_weight)
  np.testing.assert_allclose(parts['cls_loss'], cls, rtol=1e-5)
  np.testing.assert_allclose(parts['seg_loss'], seg, rtol=1e-5)
  np.testing.assert_allclose(loss, cls + seg_weight * seg, rtol=1e-5)
