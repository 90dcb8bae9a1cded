"""benchmarks/train_step.py: the work count that splits a speed ratio into work and rate."""

import jax
from jax import lax
import jax.numpy as jnp

import train_step

from rwsjax.models import conv

N, H, W, C, D = 2, 6, 5, 3, 4


def conv3x3(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=conv.NHWC)


def flops(fn, *args):
  return train_step.product_flops(jax.make_jaxpr(fn)(*args))


def test_convolutions_and_products_count_twice_their_multiply_adds():
  x, w = jnp.ones((N, H, W, C)), jnp.ones((3, 3, C, D))
  forward = 2 * N * H * W * D * 9 * C  # each output element: 9 taps of C channels
  assert flops(conv3x3, x, w) == forward
  a, b = jnp.ones((7, 11)), jnp.ones((11, 13))
  assert flops(lambda a, b: jnp.tanh(a @ b), a, b) == 2 * 7 * 11 * 13
  # The gradients with respect to both: an input-gradient and a kernel-gradient convolution,
  # each as much work as the forward pass (lax's transpose, other dimension numbers).
  assert flops(jax.grad(lambda x, w: jnp.sum(conv3x3(x, w)), (0, 1)), x, w) == 3 * forward


def test_nested_programs_count_where_they_run():
  x, w = jnp.ones((N, H, W, C)), jnp.ones((1, 1, C, D))
  pointwise = 2 * N * H * W * C * D
  # The 1x1 rewrite is a custom_vjp call around a channel product; its gradient has two
  # products of the same size.
  matmul = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)),
                                                  dimension_numbers=conv.NHWC, impl='matmul')
  assert flops(jax.jit(matmul), x, w) == pointwise
  assert flops(jax.grad(lambda x, w: jnp.sum(matmul(x, w)), (0, 1)), x, w) == 3 * pointwise
  # A loop's body counts once per iteration.
  xs = jnp.ones((5, N, H, W, C))
  assert flops(lambda xs: lax.map(lambda x: matmul(x, w), xs), xs) == 5 * pointwise
