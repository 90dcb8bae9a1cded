"""Segmentation losses shared by every pipeline (ignore label 255)."""
import jax
import jax.numpy as jnp

IGNORE_LABEL = 255


def cross_entropy(logits, labels, ignore_label=IGNORE_LABEL):
  """Mean softmax cross-entropy over the pixels whose label is not `ignore_label`.

  Args:
    logits: (..., K) unnormalised class scores.
    labels: (...) integer labels in [0, K) or `ignore_label`.
    ignore_label: label value excluded from the mean.

  Returns:
    A scalar; 0 when every pixel is ignored.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1)
