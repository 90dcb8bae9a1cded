"""benchmarks/voc_hours.py: the work it counts against closed forms, and the hours it derives
from the work."""

import flax.linen as nn
import jax
import jax.numpy as jnp

import voc_hours


def test_flops_of_a_matrix_product_are_two_per_multiply_add():
  a = jax.ShapeDtypeStruct((64, 96), jnp.float32)
  b = jax.ShapeDtypeStruct((96, 40), jnp.float32)
  assert voc_hours.flops(jnp.matmul, a, b) == 2 * 64 * 96 * 40


class _Conv(nn.Module):
  """A 3x3 convolution without bias, 3 -> 16 channels, and a 1x1 to 5 classes."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Conv(5, (1, 1), use_bias=False)(nn.Conv(16, (3, 3), use_bias=False)(x))


def test_forward_and_train_work_of_a_model_against_the_multiply_adds():
  """The 3x3 convolution counts only the taps inside the image (SAME padding): 34 of the 36
  row offsets of 12 rows, 58 of the 60 column offsets of 20 columns."""
  model, size = _Conv(), (12, 20)
  conv3 = 2 * (12 * 3 - 2) * (20 * 3 - 2) * 3 * 16
  conv1 = 2 * 12 * 20 * 16 * 5
  assert voc_hours.forward_flops(model, size) == conv3 + conv1
  # Train: the forward pass, both kernels' gradients and the 1x1's input gradient (the
  # images take none), and the loss's few elementwise operations.
  products = 2 * conv3 + 3 * conv1
  assert products <= voc_hours.train_flops(model, size, voc_hours.segmentation_loss) < (
      1.05 * products)


def test_walk_work_in_closed_form():
  assert voc_hours.walk_flops(10, 3, 2) == 2 * 2 * 1000 + 2 * 3 * 100


def test_training_uses_at_most_the_global_batch_of_accelerators():
  rate, work, images = 1e12, 3.6e15, 100  # 1e18 FLOP of work over 1e12/s: 1e6 s / 3600
  one = voc_hours.hours(work, images, True, rate, 1, 16)
  assert one == 100.0
  assert voc_hours.hours(work, images, True, rate, 8, 16) == one / 8
  assert voc_hours.hours(work, images, True, rate, 64, 16) == one / 16
  assert voc_hours.hours(work, images, False, rate, 64, 16) == one / 64


def test_table_takes_the_longer_of_accelerator_and_crf_and_sums_the_stages():
  rows = [('a', 3.6e15, 100, False, 50.0), ('b', 3.6e15, 100, True, 0.0)]
  lines = voc_hours.table(rows, 1e12, 16).splitlines()
  assert lines[2] == '| a | 360 | 100.00 | 12.50 | 1.56 |'  # accelerator, then CRF, then CRF
  assert lines[3] == '| b | 360 | 100.00 | 12.50 | 6.25 |'
  assert lines[4] == '| **all** | | **200.0** | **25.0** | **7.8** |'
