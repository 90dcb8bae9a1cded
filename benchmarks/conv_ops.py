"""Single convolutions of DeepLabv3-ResNet-50 (OS 8): lax.conv_general_dilated against the
matrix-product paths of rwsjax.models.conv, forward and forward + both gradients.

One row per kind of convolution in the model at the realistic size (batch 4, 256x256 input:
64x64 maps in layer1, 32x32 from layer2 on). Columns: `lax`; `matmul` (what
`conv_impl='matmul'` computes: a matrix product for 1x1, the tap sum where at most
MAX_TAP_FRACTION of the products read the input, Winograd's F(4x4, 3x3) for large 3x3
convolutions (`conv.use_winograd`), else lax); `taps` (the tap sum forced, for
every stride-1 3x3, to show where the threshold lies); `s2b` (the classic atrous trick for
dilations up to 12: space-to-batch by the dilation, after zero-padding the map to a multiple
of it, a dense 3x3 convolution, batch-to-space); with --vs-torch, torch.nn.functional.conv2d
with autograd. The paths' repeats are interleaved; medians (ms) and the fraction of tap
products that read the input are printed. Outputs and gradients are checked against lax.

  python benchmarks/conv_ops.py
  python benchmarks/conv_ops.py --cases aspp12,aspp24,aspp36 --vs-torch
"""
import argparse
import os

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from rwsjax.models import conv
from timing import interleaved_seconds
from timing import machine

# name: (input size, in channels, out channels, kernel, stride, dilation); layer1..layer4 and
# the head of DeepLabv3-ResNet-50 at output stride 8 on 256x256 images.
CASES = {
    'stem7x7s2': (256, 3, 64, 7, 2, 1),
    'layer1_3x3': (64, 64, 64, 3, 1, 1),
    'layer1_1x1': (64, 256, 64, 1, 1, 1),
    'layer2_3x3s2': (64, 128, 128, 3, 2, 1),
    'layer2_down1x1s2': (64, 256, 512, 1, 2, 1),
    'layer3_3x3d2': (32, 256, 256, 3, 1, 2),
    'layer3_1x1': (32, 1024, 256, 1, 1, 1),
    'layer4_3x3d4': (32, 512, 512, 3, 1, 4),
    'layer4_1x1': (32, 2048, 512, 1, 1, 1),
    'aspp12': (32, 2048, 256, 3, 1, 12),
    'aspp24': (32, 2048, 256, 3, 1, 24),
    'aspp36': (32, 2048, 256, 3, 1, 36),
    'head3x3': (32, 256, 256, 3, 1, 1),
}
BATCH = 4
S2B_MAX_DILATION = 12  # beyond, the padded map is mostly zeros (72x72 cells for 32x32 by 36)


def space_to_batch_conv(x, w, dilation):
  """3x3 stride-1 convolution with dilation d and padding d as space-to-batch by d
  (`conv.polyphase`), a dense 3x3 convolution with padding 1 on each of the d*d sub-maps, and
  batch-to-space."""
  y = lax.conv_general_dilated(conv.polyphase(x, (dilation, dilation)), w, (1, 1),
                               ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return conv.unpolyphase(y, (dilation, dilation), *x.shape[1:3])


def conv_fn(path, stride, dilation, kernel):
  """(x, w) -> y for one path: 'lax', 'matmul', 'taps' or 's2b'."""
  pad = dilation * (kernel - 1) // 2
  padding = ((pad, pad), (pad, pad))
  if path == 'taps':
    return lambda x, w: conv.tap_sum(x, w, padding, (dilation, dilation))
  if path == 's2b':
    return lambda x, w: space_to_batch_conv(x, w, dilation)
  numbers = ('NHWC', 'HWIO', 'NHWC')

  def fn(x, w):
    dims = lax.conv_dimension_numbers(x.shape, w.shape, numbers)
    return conv.conv_general_dilated(x, w, (stride, stride), padding, (1, 1),
                                     (dilation, dilation), dims, impl=path)
  return fn


def jax_calls(path, case, x, w, g):
  """Jitted forward and forward + input and kernel gradients of one path."""
  _, _, _, kernel, stride, dilation = case
  fn = conv_fn(path, stride, dilation, kernel)
  forward = jax.jit(fn)
  both = jax.jit(lambda x, w, g: jax.vjp(fn, x, w)[1](g))
  return (lambda: forward(x, w)), (lambda: both(x, w, g))


def torch_calls(case, x, w, g):
  """torch conv2d forward (no_grad) and forward + autograd.grad of input and kernel."""
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
  _, _, _, kernel, stride, dilation = case
  pad = dilation * (kernel - 1) // 2
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous().requires_grad_()
  wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous().requires_grad_()
  gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous()

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad, dilation=dilation)

  def both():
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad, dilation=dilation)
    return torch.autograd.grad(y, (xt, wt), gt)
  return forward, both


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(CASES))
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--vs-torch', action='store_true', help='also time torch conv2d')
  args = parser.parse_args()

  print(f'{machine()}, jax {jax.__version__}'
        f', XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; median ms of {args.repeats} '
        'interleaved repeats, forward / forward + both gradients')
  rng = np.random.default_rng(0)
  for name in args.cases.split(','):
    case = CASES[name]
    size, cin, cout, kernel, stride, dilation = case
    x = jnp.asarray(rng.normal(size=(BATCH, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)) / np.sqrt(kernel**2 * cin),
                    jnp.float32)
    pad = dilation * (kernel - 1) // 2
    fraction = conv.tap_fraction((size, size), (kernel, kernel), (dilation, dilation),
                                 ((pad, pad), (pad, pad)))
    y = conv_fn('lax', stride, dilation, kernel)(x, w)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    paths = ['lax', 'matmul'] + (['taps'] if kernel > 1 and stride == 1 else [])
    if kernel == 3 and stride == 1 and 1 < dilation <= S2B_MAX_DILATION:
      paths.append('s2b')
    calls = {}
    for path in paths:
      calls[path, 'forward'], calls[path, 'both'] = jax_calls(path, case, x, w, g)
    if args.vs_torch:
      calls['torch', 'forward'], calls['torch', 'both'] = torch_calls(case, x, w, g)
    want = calls['lax', 'both']()
    for path in paths[1:]:
      for got, ref in zip(calls[path, 'both'](), want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    times = {key: np.median(t) * 1e3
             for key, t in interleaved_seconds(calls, args.repeats).items()}
    columns = paths + (['torch'] if args.vs_torch else [])
    print(f'{name:17s} {BATCH}x{size}x{size}x{cin}->{cout} k{kernel} s{stride} d{dilation}, '
          f'tap fraction {fraction:.2f}: ' + ' | '.join(
              f'{p} {times[p, "forward"]:.0f} / {times[p, "both"]:.0f}' for p in columns))


if __name__ == '__main__':
  main()
