"""Convolutions computed as matrix products where XLA:CPU's convolutions are slow.

A drop-in for `lax.conv_general_dilated` (flax `nn.Conv(conv_general_dilated=...)`, same
parameters) with five rewrites that change results only by float rounding (BENCHMARKS.md, train
step profile):

- a 1x1 convolution without padding is a matrix product over channels (after a strided slice
  when it has a stride), whose kernel gradient is a 2-D product that transposes the smaller
  operand (`pointwise_kernel_grad`);
- a stride-1 convolution whose kernel taps mostly read zero padding (atrous convolutions with
  a dilation near or above the feature map size: DeepLabv3's ASPP rates 12, 24, 36 on 32x32
  maps) is a sum over its taps of matrix products, each on the part of the input the tap
  reaches: taps that reach only padding are skipped, and no product with padding is computed
  (`use_tap_sum` says when: one tap left, or a large enough saving);
- a large stride-1 3x3 convolution padded by its dilation ('SAME': layer3-4's dense and atrous
  3x3 convolutions at output stride 8, DeepLabv3's head) is Winograd's minimal filtering
  F(4x4, 3x3) (`winograd`): the dilated convolution split into d x d undilated ones on the
  polyphase components of its input, each cut into 6x6 tiles that overlap by 2, and 36 matrix
  products over channels where the plain convolution takes 144 per tile of 4x4 outputs. Its
  gradients are JAX's transposes of the same products. Rounding grows to about 2e-5 of the
  output's scale in float32 (the transform's coefficients reach 8 and 1/24), against about
  1e-6 for the plain convolution; `use_winograd` says when;
- any other large stride-1 convolution (a 3x3 of fewer channels on large maps, other kernel
  sizes and paddings) keeps `lax.conv_general_dilated` for its output, and takes its kernel
  gradient as a matrix product per tap: the input window the tap reads against the output
  gradient, contracted over batch and space (`use_tap_kernel_grad` says when). XLA:CPU's
  kernel-gradient convolution is the slow part of such a layer's training;
- every stride-1 convolution left to lax takes its input gradient as a convolution of the
  output gradient with the kernel flipped and its channels swapped, written in the canonical
  NHWC/HWIO form (`input_grad`). lax's own transpose names the swapped channels through the
  dimension numbers; XLA:CPU turns that form into a fast convolution at the top level of a
  program only, and inside a loop or a branch (`lax.map`, `lax.cond`: the local model's
  Seg-Grad-CAM in chunks) leaves it a plain loop nest, several times slower (BENCHMARKS.md,
  RWS inference). At the top level both give the same gradients to the bit.

`impl` picks the path (config.model.conv_impl): 'lax' always `lax.conv_general_dilated`;
'matmul' the rewrites wherever they apply; 'auto' (the default) 'matmul' when JAX's default
backend is the CPU, 'lax' otherwise, so GPU and TPU programs are unchanged.
"""
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from rwsjax import config as config_lib

CONV_IMPLS = config_lib.MODEL_FIELDS['conv_impl'].values
# The tap sum replaces a convolution that has a single tap left (then it is one matrix
# product), or where at most this fraction of the plain convolution's products read the input
# (measured: 0.56 is faster, 0.84 slower; BENCHMARKS.md) ...
MAX_TAP_FRACTION = 0.7
# ... and that saves at least this many multiply-adds per call: on small maps the several
# small products cost more in compile time and per-op overhead than the padding they skip.
MIN_SAVED_MACS = 10**9
# The per-tap kernel gradient replaces XLA's for a convolution whose kernel gradient takes at
# least this many multiply-adds (measured, forward and backward of one 3x3 layer at batch 4 on
# 2 CPU cores: 512 channels on 32x32 maps 1.6-1.9x faster, 256 channels on 32x32 or 64x64
# 1.3-1.6x; 512 channels on 16x16 (2.4e9) even; 64 channels on 64x64 and 128 on 32x32 (6e8)
# slower).
MIN_KERNEL_GRAD_MACS = 2 * 10**9
# Winograd's F(4x4, 3x3) replaces a 3x3 convolution of at least this many multiply-adds and
# channels in and out. Measured at batch 4 on 2 idle CPU cores (BENCHMARKS.md, train step), a
# forward pass and forward + both gradients: 256 and 512 channels on 32x32 maps 1.9-2.3x and
# 1.6-2.1x faster than before; 128 channels on 32x32 and 64 on 64x64 (6e8 multiply-adds)
# 1.3-1.4x and 1.0-1.1x (the tile transforms cost nearly what the products save). At 256
# channels the shapes configs' models (at most 128 in a 3x3 convolution) compute what they
# computed before.
MIN_WINOGRAD_MACS = 10**9
MIN_WINOGRAD_CHANNELS = 256
# F(4x4, 3x3) (Lavin & Gray, 2016): a tile's 4x4 outputs are A^T [(G g G^T) * (B^T d B)] A for
# its 6x6 input d and the 3x3 kernel g.
WINOGRAD_TILE = 4
WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                        [0, 1, -1, 8, -8, 1]])
NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(impl):
  """'lax' or 'matmul' for `impl` in CONV_IMPLS ('auto': by JAX's default backend)."""
  config_lib.check_value(impl, CONV_IMPLS, 'config.model.conv_impl')
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'lax'
  return impl


def tap_windows(size, kernel, dilation, padding):
  """Per kernel tap along one axis (stride 1): (tap, first output, end output, first input).

  Output i reads input i - low + tap * dilation; the window holds the outputs whose read lands
  inside [0, size). Taps whose window is empty (they read padding only) are left out.
  """
  low, high = padding
  outputs = size + low + high - dilation * (kernel - 1)
  windows = []
  for tap in range(kernel):
    offset = tap * dilation - low
    start, end = max(0, -offset), min(outputs, size - offset)
    if start < end:
      windows.append((tap, start, end, start + offset))
  return windows


def tap_fraction(spatial, kernel_shape, dilation, padding):
  """Products of the tap sum over those of the plain convolution (2-D, stride 1)."""
  taps, plain = 1, 1
  for size, kernel, d, pad in zip(spatial, kernel_shape, dilation, padding):
    windows = tap_windows(size, kernel, d, pad)
    outputs = size + pad[0] + pad[1] - d * (kernel - 1)
    taps *= sum(end - start for _, start, end, _ in windows)
    plain *= kernel * outputs
  return taps / plain


def output_size(lhs_shape, rhs_shape, dilation, padding):
  """(height, width) of a stride-1 NHWC/HWIO convolution's output."""
  return tuple(size + low + high - d * (kernel - 1) for size, kernel, d, (low, high)
               in zip(lhs_shape[1:3], rhs_shape[:2], dilation, padding))


def plain_macs(lhs_shape, rhs_shape, dilation, padding):
  """Multiply-adds of a stride-1 NHWC/HWIO convolution computed plainly (its kernel gradient
  takes as many)."""
  height, width = output_size(lhs_shape, rhs_shape, dilation, padding)
  return lhs_shape[0] * height * width * math.prod(rhs_shape)


def use_tap_sum(lhs_shape, rhs_shape, dilation, padding):
  """Whether the tap sum replaces a stride-1 NHWC/HWIO convolution (see MAX_TAP_FRACTION)."""
  kept = [len(tap_windows(size, kernel, d, pad)) for size, kernel, d, pad
          in zip(lhs_shape[1:3], rhs_shape[:2], dilation, padding)]
  if kept[0] * kept[1] == 1:
    return True
  fraction = tap_fraction(lhs_shape[1:3], rhs_shape[:2], dilation, padding)
  return (fraction <= MAX_TAP_FRACTION
          and (1 - fraction) * plain_macs(lhs_shape, rhs_shape, dilation, padding)
          >= MIN_SAVED_MACS)


def use_tap_kernel_grad(lhs_shape, rhs_shape, dilation, padding):
  """Whether a stride-1 NHWC/HWIO convolution with padding >= 0 takes the per-tap kernel
  gradient (see MIN_KERNEL_GRAD_MACS)."""
  return (min(min(pad) for pad in padding) >= 0
          and min(output_size(lhs_shape, rhs_shape, dilation, padding)) > 0
          and plain_macs(lhs_shape, rhs_shape, dilation, padding) >= MIN_KERNEL_GRAD_MACS)


def use_winograd(lhs_shape, rhs_shape, dilation, padding):
  """Whether `winograd` replaces a stride-1 NHWC/HWIO convolution: a 3x3 kernel padded by its
  dilation on every side, and enough work and channels (see MIN_WINOGRAD_MACS)."""
  return (tuple(rhs_shape[:2]) == (3, 3)
          and tuple(padding) == tuple((d, d) for d in dilation)
          and min(rhs_shape[2:]) >= MIN_WINOGRAD_CHANNELS
          and plain_macs(lhs_shape, rhs_shape, dilation, padding) >= MIN_WINOGRAD_MACS)


def polyphase(x, dilation):
  """(N, H, W, C) -> (N * dy * dx, ceil(H / dy), ceil(W / dx), C): the components x[:, i::dy,
  j::dx] as a batch (zero-padded to whole multiples). A 3x3 convolution dilated by (dy, dx)
  is the undilated one on each component."""
  (n, h, w, c), (dy, dx) = x.shape, dilation
  hp, wp = -(-h // dy), -(-w // dx)
  x = jnp.pad(x, ((0, 0), (0, hp * dy - h), (0, wp * dx - w), (0, 0)))
  x = x.reshape(n, hp, dy, wp, dx, c).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(n * dy * dx, hp, wp, c)


def unpolyphase(y, dilation, height, width):
  """The inverse of `polyphase`: (N * dy * dx, h, w, D) -> (N, height, width, D)."""
  (b, h, w, d), (dy, dx) = y.shape, dilation
  y = y.reshape(b // (dy * dx), dy, dx, h, w, d).transpose(0, 3, 1, 4, 2, 5)
  return y.reshape(-1, h * dy, w * dx, d)[:, :height, :width]


def winograd(lhs, rhs, dilation, precision=None, preferred_element_type=None):
  """3x3 NHWC/HWIO convolution, stride 1, padded by `dilation`, as Winograd's F(4x4, 3x3) on the
  polyphase components (module docstring). The three transforms are matrix products with the
  Kronecker products of WINOGRAD_BT, WINOGRAD_G and WINOGRAD_AT over the 36 (or 16) positions
  of a tile: XLA:CPU runs those several times faster than the same sums written elementwise.
  Its ops are named 'winograd' (`jax.named_scope`) for profiles."""
  with jax.named_scope('winograd'):
    return _winograd(lhs, rhs, dilation, precision, preferred_element_type)


def _winograd(lhs, rhs, dilation, precision, preferred_element_type):
  m = WINOGRAD_TILE
  a = m + 2
  n, height, width, channels = lhs.shape
  x = polyphase(lhs, dilation)
  b, h, w, _ = x.shape
  th, tw = -(-h // m), -(-w // m)
  x = jnp.pad(x, ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - w), (0, 0)))
  tiles = jnp.stack([x[:, i:i + m * th:m, j:j + m * tw:m] for i in range(a) for j in range(a)])
  v = lax.dot(jnp.asarray(np.kron(WINOGRAD_BT, WINOGRAD_BT), lhs.dtype),
              tiles.reshape(a * a, -1), precision=precision)
  u = lax.dot(jnp.asarray(np.kron(WINOGRAD_G, WINOGRAD_G), rhs.dtype),
              rhs.reshape(9, -1), precision=precision)
  products = lax.dot_general(
      v.reshape(a * a, b * th * tw, channels), u.reshape(a * a, channels, -1),
      (((2,), (1,)), ((0,), (0,))), precision=precision,
      preferred_element_type=preferred_element_type)
  out = lax.dot(jnp.asarray(np.kron(WINOGRAD_AT, WINOGRAD_AT), products.dtype),
                products.reshape(a * a, -1), precision=precision)
  out = out.reshape(m, m, b, th, tw, -1).transpose(2, 3, 0, 4, 1, 5)
  out = out.reshape(b, th * m, tw * m, -1)[:, :h, :w]
  return unpolyphase(out, dilation, height, width)


def _matmul(x, w, precision, preferred_element_type):
  """Channel product (..., C) x (C, D) -> (..., D)."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def pointwise(lhs, kernel, precision=None, preferred_element_type=None):
  """1x1 stride-1 convolution as a channel product (N, H, W, C) x (C, D), whose kernel
  gradient is `pointwise_kernel_grad`."""
  return _matmul(lhs, kernel, precision, preferred_element_type)


def _pointwise_fwd(lhs, kernel, precision, preferred_element_type):
  return pointwise(lhs, kernel, precision, preferred_element_type), (lhs, kernel)


def pointwise_kernel_grad(lhs, cotangent, precision=None):
  """dL/dW (C, D) of a 1x1 convolution: x^T g, the input (N, H, W, C) and the output gradient
  (N, H, W, D) flattened to N*H*W rows, as a 2-D product whose transposed operand is the one
  of fewer channels. JAX's own transpose of the channel product contracts the 4-D arrays over
  three axes, which XLA:CPU computed by first copying the output gradient, fused with
  BatchNorm's backward pass, into a transposed layout: the slowest copies of the train step
  (BENCHMARKS.md, train step profile)."""
  x = lhs.reshape(-1, lhs.shape[-1])
  g = cotangent.reshape(-1, cotangent.shape[-1])
  if x.shape[1] <= g.shape[1]:
    return lax.dot(x.T, g, precision=precision)
  return lax.dot(g.T, x, precision=precision).T


def _pointwise_bwd(precision, preferred_element_type, residuals, cotangent):
  lhs, kernel = residuals
  return (_matmul(cotangent, kernel.T, precision, None).astype(lhs.dtype),
          pointwise_kernel_grad(lhs, cotangent, precision).astype(kernel.dtype))


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def tap_sum(lhs, rhs, padding, dilation, precision=None, preferred_element_type=None):
  """Stride-1 NHWC/HWIO convolution as a sum of per-tap matrix products (module docstring)."""
  rows = tap_windows(lhs.shape[1], rhs.shape[0], dilation[0], padding[0])
  cols = tap_windows(lhs.shape[2], rhs.shape[1], dilation[1], padding[1])
  out_h, out_w = output_size(lhs.shape, rhs.shape, dilation, padding)
  dtype = preferred_element_type or lhs.dtype
  total = jnp.zeros((lhs.shape[0], out_h, out_w, rhs.shape[-1]), dtype)
  for ty, y0, y1, iy in rows:
    for tx, x0, x1, ix in cols:
      window = lhs[:, iy:iy + y1 - y0, ix:ix + x1 - x0]
      part = _matmul(window, rhs[ty, tx], precision, preferred_element_type)
      total = total + jnp.pad(part, ((0, 0), (y0, out_h - y1), (x0, out_w - x1), (0, 0)))
  return total


def _lax_stride1(lhs, rhs, padding, dilation, precision, preferred_element_type):
  return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, rhs_dilation=dilation,
                                  dimension_numbers=NHWC, precision=precision,
                                  preferred_element_type=preferred_element_type)


def tap_kernel_grad(lhs, cotangent, padding, dilation, kernel, precision=None):
  """dL/dW (kh, kw, C, D) of a stride-1 NHWC/HWIO convolution from its output gradient
  `cotangent` (N, H', W', D): per tap (i, j), the padded input window it reads, rows
  i * dilation[0] + [0, H'), contracted with the cotangent over batch and space."""
  padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  (h, w), (dy, dx) = cotangent.shape[1:3], dilation
  contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
  taps = [lax.dot_general(padded[:, i * dy:i * dy + h, j * dx:j * dx + w], cotangent, contract,
                          precision=precision)
          for i in range(kernel[0]) for j in range(kernel[1])]
  return jnp.stack(taps).reshape(*kernel, lhs.shape[-1], cotangent.shape[-1])


def input_grad(cotangent, rhs, padding, dilation, precision=None):
  """dL/dx (N, H, W, C) of a stride-1 NHWC/HWIO convolution from its output gradient
  `cotangent` (N, H', W', D): the convolution of the cotangent with the kernel flipped in space
  and with its channels swapped, (kh, kw, D, C), padded by dilation * (kernel - 1) - padding,
  in the canonical NHWC/HWIO form. lax's own transpose names the swapped kernel through its
  dimension numbers instead, a form XLA:CPU rewrites to a fast convolution only at the top
  level of a program: inside a loop or a branch (`lax.map`, `lax.cond`) it stays a slow one."""
  kernel = jnp.flip(rhs, (0, 1)).swapaxes(2, 3)
  padding = [(d * (k - 1) - low, d * (k - 1) - high)
             for k, d, (low, high) in zip(rhs.shape[:2], dilation, padding)]
  return _lax_stride1(cotangent, kernel, padding, dilation, precision, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_stride1(lhs, rhs, padding, dilation, tap_kernel, precision=None,
                 preferred_element_type=None):
  """`lax.conv_general_dilated` (stride 1, NHWC/HWIO) whose input gradient is `input_grad` and
  whose kernel gradient is `tap_kernel_grad` (`tap_kernel`) or lax's."""
  return _lax_stride1(lhs, rhs, padding, dilation, precision, preferred_element_type)


def _stride1_fwd(lhs, rhs, padding, dilation, tap_kernel, precision, preferred_element_type):
  out = conv_stride1(lhs, rhs, padding, dilation, tap_kernel, precision, preferred_element_type)
  return out, (lhs, rhs)


def _stride1_bwd(padding, dilation, tap_kernel, precision, preferred_element_type, residuals,
                 cotangent):
  lhs, rhs = residuals
  if tap_kernel:
    kernel_grad = tap_kernel_grad(lhs, cotangent, padding, dilation, rhs.shape[:2], precision)
  else:
    _, kernel_vjp = jax.vjp(lambda w: _lax_stride1(lhs, w, padding, dilation, precision,
                                                   preferred_element_type), rhs)
    kernel_grad = kernel_vjp(cotangent)[0]
  return (input_grad(cotangent, rhs, padding, dilation, precision).astype(lhs.dtype),
          kernel_grad.astype(rhs.dtype))


conv_stride1.defvjp(_stride1_fwd, _stride1_bwd)


def rewrite(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count):
  """'pointwise', 'taps', 'winograd', 'kernel_taps', 'stride1' or None: which rewrite applies to
  this convolution ('stride1': lax's output with `input_grad`)."""
  if (lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1
      or isinstance(padding, str) or any(d != 1 for d in lhs_dilation or (1, 1))
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)):
    return None
  padding = tuple(tuple(p) for p in padding)
  dilation = tuple(rhs_dilation or (1, 1))
  if rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    return 'pointwise'
  if tuple(window_strides) != (1, 1):
    return None
  if use_tap_sum(lhs.shape, rhs.shape, dilation, padding):
    return 'taps'
  if use_winograd(lhs.shape, rhs.shape, dilation, padding):
    return 'winograd'
  if use_tap_kernel_grad(lhs.shape, rhs.shape, dilation, padding):
    return 'kernel_taps'
  return 'stride1'


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None, *,
                         impl='auto'):
  """`lax.conv_general_dilated`, or its matrix-product rewrite (module docstring)."""
  path = None
  if resolve_impl(impl) == 'matmul':
    path = rewrite(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, batch_group_count)
  if path == 'pointwise':
    sy, sx = window_strides
    return pointwise(lhs[:, ::sy, ::sx], rhs[0, 0], precision, preferred_element_type)
  if path is not None:
    padding, dilation = tuple(tuple(p) for p in padding), tuple(rhs_dilation or (1, 1))
    if path == 'taps':
      return tap_sum(lhs, rhs, padding, dilation, precision, preferred_element_type)
    if path == 'winograd':
      return winograd(lhs, rhs, dilation, precision, preferred_element_type)
    return conv_stride1(lhs, rhs, padding, dilation, path == 'kernel_taps', precision,
                        preferred_element_type)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
