"""Tests for rwsjax.models.conv: the matrix-product convolutions equal lax's, forward and
gradients, and the models built with either give the same outputs and gradients."""
import itertools
import re

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rwsjax import losses
from rwsjax import models
from rwsjax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def reads(size, kernel, dilation, padding):
  """Brute force: per tap, the outputs whose input read lands in [0, size), and the first."""
  low, high = padding
  outputs = size + low + high - dilation * (kernel - 1)
  found = []
  for tap in range(kernel):
    inside = [i for i in range(outputs) if 0 <= i - low + tap * dilation < size]
    if inside:
      found.append((tap, inside[0], inside[-1] + 1, inside[0] - low + tap * dilation))
      assert inside == list(range(inside[0], inside[-1] + 1))
  return found


@pytest.mark.parametrize('size,kernel,dilation,padding', [
    (1, 3, 1, (1, 1)), (5, 3, 2, (2, 2)), (7, 3, 6, (6, 6)), (7, 3, 7, (7, 7)),
    (32, 3, 36, (36, 36)), (9, 5, 3, (6, 6)), (10, 3, 4, (1, 7)), (6, 7, 1, (3, 3)),
    (4, 3, 2, (0, 0)), (8, 3, 5, (5, 0))])
def test_tap_windows_match_brute_force(size, kernel, dilation, padding):
  assert conv.tap_windows(size, kernel, dilation, padding) == reads(size, kernel, dilation,
                                                                    padding)


def test_tap_fraction():
  # ASPP on a 32x32 map: rate 12 keeps (32 + 20 + 20)^2 of 9 * 32^2 products, rate 36 one tap.
  assert conv.tap_fraction((32, 32), (3, 3), (12, 12), ((12, 12),) * 2) == pytest.approx(
      72**2 / (9 * 32**2))
  assert conv.tap_fraction((32, 32), (3, 3), (36, 36), ((36, 36),) * 2) == pytest.approx(1 / 9)
  assert conv.tap_fraction((5, 5), (3, 3), (1, 1), ((0, 0),) * 2) == 1.0


def convolve(impl, stride, padding, dilation, lhs_dilation=(1, 1), groups=1, dims=NHWC):
  def fn(x, w):
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, dims)
    return conv.conv_general_dilated(x, w, (stride, stride), padding, lhs_dilation,
                                     (dilation, dilation), numbers, groups, impl=impl)
  return fn


def values_and_grads(fn, x, w):
  y, vjp = jax.vjp(fn, x, w)
  cotangent = jax.random.normal(jax.random.key(3), y.shape)
  return (y,) + vjp(cotangent)


def inputs(h, w, kernel, cin=5, cout=4, seed=0):
  kx, kw = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kx, (2, h, w, cin)),
          jax.random.normal(kw, (kernel, kernel, cin, cout)))


# (height, width, kernel, stride, dilation, path): PyTorch-style symmetric padding
# dilation * (kernel - 1) / 2, odd and even sizes, dilations below, at and above the size.
CASES = [
    (9, 6, 1, 1, 1, 'matmul'), (9, 7, 1, 2, 1, 'matmul'), (5, 5, 1, 3, 1, 'matmul'),
    (7, 5, 3, 1, 6, 'matmul'), (5, 5, 3, 1, 12, 'matmul'), (11, 13, 3, 1, 8, 'matmul'),
    (4, 4, 3, 1, 3, 'matmul'), (3, 4, 3, 1, 1, 'matmul'), (2, 2, 7, 1, 1, 'matmul'),
    (9, 11, 3, 1, 2, 'conv'), (12, 12, 3, 1, 1, 'conv'), (13, 9, 3, 2, 1, 'conv'),
    (10, 10, 3, 2, 4, 'conv'), (16, 16, 7, 2, 1, 'conv'),
]


@pytest.fixture
def small_taps(monkeypatch):
  """Lets the tap sum replace convolutions of any size (the default skips small ones)."""
  monkeypatch.setattr(conv, 'MIN_SAVED_MACS', 0)


@pytest.fixture
def small_kernel_grads(monkeypatch):
  """Lets the per-tap kernel gradient replace lax's for convolutions of any size."""
  monkeypatch.setattr(conv, 'MIN_KERNEL_GRAD_MACS', 0)


@pytest.fixture
def small_winograd(monkeypatch):
  """Lets Winograd's F(4x4, 3x3) replace 3x3 convolutions of any size and channels."""
  monkeypatch.setattr(conv, 'MIN_WINOGRAD_MACS', 0)
  monkeypatch.setattr(conv, 'MIN_WINOGRAD_CHANNELS', 0)


def test_use_tap_sum():
  aspp = ((4, 32, 32, 2048), (3, 3, 2048, 256))
  for rate in (12, 24, 36):
    assert conv.use_tap_sum(*aspp, (rate, rate), ((rate, rate),) * 2)
  # layer4 (dilation 4, 84% of the products read the input) keeps the plain convolution.
  assert not conv.use_tap_sum((4, 32, 32, 512), (3, 3, 512, 512), (4, 4), ((4, 4),) * 2)
  # A small map: the saving is too small, unless only one tap is left.
  assert not conv.use_tap_sum((2, 4, 4, 8), (3, 3, 8, 8), (2, 2), ((2, 2),) * 2)
  assert conv.use_tap_sum((2, 4, 4, 8), (3, 3, 8, 8), (4, 4), ((4, 4),) * 2)


@pytest.mark.parametrize('h,w,kernel,stride,dilation,path', CASES)
def test_matmul_path_equals_lax(h, w, kernel, stride, dilation, path, small_taps):
  x, k = inputs(h, w, kernel)
  pad = dilation * (kernel - 1) // 2
  padding = ((pad, pad), (pad, pad))
  fast = convolve('matmul', stride, padding, dilation)
  ops = str(jax.make_jaxpr(fast)(x, k))
  assert ('conv_general_dilated' in ops) == (path == 'conv')
  expected = values_and_grads(convolve('lax', stride, padding, dilation), x, k)
  for got, want in zip(values_and_grads(fast, x, k), expected):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_use_tap_kernel_grad():
  # ResNet-50 at output stride 8 on 256x256, batch 4: layer3 (256 channels, dilation 2) and
  # layer4 (512, dilation 4) on 32x32 maps; layer1's 64 channels on 64x64 stay lax.
  assert conv.use_tap_kernel_grad((4, 32, 32, 512), (3, 3, 512, 512), (4, 4), ((4, 4),) * 2)
  assert conv.use_tap_kernel_grad((4, 32, 32, 256), (3, 3, 256, 256), (2, 2), ((2, 2),) * 2)
  assert not conv.use_tap_kernel_grad((4, 64, 64, 64), (3, 3, 64, 64), (1, 1), ((1, 1),) * 2)
  assert not conv.use_tap_kernel_grad((4, 32, 32, 512), (3, 3, 512, 512), (1, 1),
                                      ((-1, 1), (1, 1)))
  big = jax.ShapeDtypeStruct((4, 32, 32, 512), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 512, 512), jnp.float32)
  for stride, path in (((1, 1), 'winograd'), ((2, 2), None)):
    assert conv.rewrite(big, kernel, stride, ((4, 4), (4, 4)), None, (4, 4), NHWC, 1, 1) == path
  assert conv.rewrite(big, kernel, (1, 1), ((4, 4), (4, 4)), None, (3, 3), NHWC, 1, 1) == (
      'kernel_taps')
  # The ASPP's padding-heavy rates keep the tap sum.
  aspp = jax.ShapeDtypeStruct((4, 32, 32, 2048), jnp.float32)
  assert conv.rewrite(aspp, jax.ShapeDtypeStruct((3, 3, 2048, 256), jnp.float32), (1, 1),
                      ((24, 24), (24, 24)), None, (24, 24), NHWC, 1, 1) == 'taps'


@pytest.mark.parametrize('h,w,kernel,dilation,padding', [
    (9, 11, 3, 2, ((2, 2), (2, 2))), (12, 12, 3, 1, ((1, 1), (1, 1))),
    (10, 7, 5, 3, ((6, 6), (6, 6))), (8, 9, 3, 4, ((1, 5), (4, 0))),
    (6, 6, 2, 1, ((0, 1), (1, 0)))])
def test_tap_kernel_grad_equals_lax(h, w, kernel, dilation, padding, small_kernel_grads):
  x, k = inputs(h, w, kernel)
  fast = convolve('matmul', 1, padding, dilation)
  got = values_and_grads(fast, x, k)
  want = values_and_grads(convolve('lax', 1, padding, dilation), x, k)
  # Compiled, the gradients take one convolution (the input gradient; lax's take two) and a
  # matrix product per tap; the output and the input gradient are lax's own, to the bit.
  cotangent = jnp.ones_like(got[0])
  ops = {impl: re.findall(r'= \S+ (convolution|dot)\(', jax.jit(jax.grad(
      lambda x, k, g, f=convolve(impl, 1, padding, dilation): jnp.sum(f(x, k) * g),
      argnums=(0, 1))).lower(x, k, cotangent).compile().as_text()) for impl in ('lax', 'matmul')}
  assert ops['lax'].count('convolution') == 2
  assert ops['matmul'].count('convolution') == 1 and ops['matmul'].count('dot') == kernel**2
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  assert got[2].shape == want[2].shape and got[2].dtype == want[2].dtype
  np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-4)


def test_tap_kernel_grad_by_hand():
  """The kernel gradient against its definition, summed with loops over taps and outputs."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 6, 3))
  g = rng.normal(size=(2, 5, 4, 2))
  padding, dilation = ((2, 2), (1, 0)), (2, 1)
  padded = np.pad(x, ((0, 0), *padding, (0, 0)))
  want = np.zeros((3, 3, 3, 2))
  for i, j, y, z in itertools.product(range(3), range(3), range(5), range(4)):
    want[i, j] += padded[:, y + 2 * i, z + j].T @ g[:, y, z]
  got = conv.tap_kernel_grad(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32), padding,
                             dilation, (3, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('padding', [((1, 5), (6, 0)), ((2, 3), (3, 3)), ((7, 2), (2, 7))])
def test_tap_sum_with_asymmetric_padding(padding, small_taps):
  x, k = inputs(6, 5, 3)
  fast = convolve('matmul', 1, padding, 5)
  assert 'conv_general_dilated' not in str(jax.make_jaxpr(fast)(x, k))
  expected = values_and_grads(convolve('lax', 1, padding, 5), x, k)
  for got, want in zip(values_and_grads(fast, x, k), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_padding_only_convolution_is_zero(small_taps):
  x, k = inputs(3, 3, 3)
  y = convolve('matmul', 1, ((9, 9), (9, 9)), 10)(x, k)
  np.testing.assert_array_equal(y[:, 3:-3, 3:-3], 0.0)
  np.testing.assert_allclose(y, convolve('lax', 1, ((9, 9), (9, 9)), 10)(x, k), atol=1e-5)


@pytest.mark.parametrize('kwargs', [
    dict(lhs_dilation=(2, 2)), dict(groups=5, cout=5), dict(dims=('NCHW', 'OIHW', 'NCHW'))])
def test_other_convolutions_stay_lax(kwargs):
  cout = kwargs.pop('cout', 4)
  groups = kwargs.get('groups', 1)
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (2, 5, 5, 5))
  w = jax.random.normal(kw, (1, 1, 5 // groups, cout))
  if 'dims' in kwargs:
    w = jnp.transpose(w, (3, 2, 0, 1))
  fast = convolve('matmul', 1, ((0, 0), (0, 0)), 1, **kwargs)
  assert 'conv_general_dilated' in str(jax.make_jaxpr(fast)(x, w))
  np.testing.assert_array_equal(fast(x, w), convolve('lax', 1, ((0, 0), (0, 0)), 1, **kwargs)(x, w))


def test_auto_follows_the_default_backend(monkeypatch):
  assert conv.resolve_impl('auto') == 'matmul'  # the tests run on CPU
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert conv.resolve_impl('auto') == 'lax'
  assert conv.resolve_impl('matmul') == 'matmul'
  with pytest.raises(ValueError, match='conv_impl'):
    conv.resolve_impl('fast')


def test_config_rejects_unknown_conv_impl():
  cfg = ml_collections.ConfigDict(dict(name='deeplabv3', backbone='resnet18', output_stride=8,
                                       width=0.125, head_channels=8, conv_impl='fast'))
  with pytest.raises(ValueError, match='conv_impl'):
    models.make_model(cfg, 3)


@pytest.mark.parametrize('name,backbone,size,winograd', [
    ('deeplabv3', 'resnet50', (37, 45), False), ('deeplabv3', 'resnet50', (37, 45), True),
    ('deeplabv3plus', 'resnet18', (40, 33), False), ('deeplabv2', 'resnet18', (33, 40), False)])
def test_models_agree_across_conv_impls(name, backbone, size, winograd, small_taps,
                                        small_kernel_grads, request):
  """Same parameters, and the same logits and parameter gradients of the cross-entropy (train
  mode) with either path, with the 3x3 convolutions as per-tap kernel gradients or (winograd)
  as Winograd's F(4x4, 3x3). Computed in float64: in float32 the paths' rounding differs by
  about 1e-7 per convolution, which train-mode BatchNorm on these tiny maps amplifies to 1e-2
  in some gradients; in float64 any real difference would still show."""
  calls = []
  if winograd:
    request.getfixturevalue('small_winograd')
    traced = conv.winograd
    request.getfixturevalue('monkeypatch').setattr(
        conv, 'winograd', lambda *args: calls.append(args[0].shape) or traced(*args))
  with jax.enable_x64(True):
    built = {}
    for impl in ('lax', 'matmul'):
      model = models.make_model(ml_collections.ConfigDict(dict(
          name=name, backbone=backbone, output_stride=8, width=0.125, head_channels=8,
          conv_impl=impl)), 3)
      built[impl] = model.clone(backbone=model.backbone.clone(dtype=jnp.float64),
                                head=model.head.clone(dtype=jnp.float64))
    x = jax.random.normal(jax.random.key(0), (2, *size, 3), jnp.float64)
    labels = jax.random.randint(jax.random.key(1), (2, *size), 0, 3)
    variables = jax.jit(built['lax'].init)(jax.random.key(2), x)
    other = jax.jit(built['matmul'].init)(jax.random.key(2), x)
    assert jax.tree.structure(variables) == jax.tree.structure(other)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)
    variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)

    def logits_and_grads(model):
      def loss(params):
        logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                                mutable=['batch_stats'], rngs={'dropout': jax.random.key(4)})
        return losses.cross_entropy(logits.astype(jnp.float64), labels), logits
      return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])

    got, want = logits_and_grads(built['matmul']), logits_and_grads(built['lax'])
    assert bool(calls) == winograd
    for a, b in itertools.zip_longest(jax.tree.leaves(got), jax.tree.leaves(want)):
      scale = float(jnp.max(jnp.abs(b)))
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8 * max(scale, 1.0))


@pytest.mark.parametrize('h,w,kernel,dilation,padding', [
    (9, 11, 3, 2, ((2, 2), (2, 2))), (12, 12, 3, 1, ((1, 1), (1, 1))),
    (10, 7, 5, 3, ((6, 6), (6, 6))), (8, 9, 3, 4, ((1, 5), (4, 0))),
    (6, 6, 2, 1, ((0, 1), (1, 0))), (7, 7, 3, 1, ((0, 0), (0, 0))),
    (9, 8, 3, 1, ((-1, 2), (2, -1)))])
def test_input_grad_equals_lax(h, w, kernel, dilation, padding):
  x, k = inputs(h, w, kernel)
  out, vjp = jax.vjp(lambda x: convolve('lax', 1, padding, dilation)(x, k), x)
  cotangent = jax.random.normal(jax.random.key(5), out.shape)
  got = conv.input_grad(cotangent, k, padding, (dilation, dilation))
  assert got.shape == x.shape
  np.testing.assert_allclose(got, vjp(cotangent)[0], rtol=1e-5, atol=1e-5)


def test_input_grad_by_hand():
  """The input gradient against its definition: each output gradient spread back over the
  inputs its taps read, with loops."""
  rng = np.random.default_rng(1)
  x_shape, kernel = (2, 5, 6, 3), rng.normal(size=(3, 2, 3, 4))
  padding, dilation = ((2, 1), (0, 1)), (2, 1)
  out_h, out_w = conv.output_size(x_shape, kernel.shape, dilation, padding)
  g = rng.normal(size=(2, out_h, out_w, 4))
  want = np.zeros(x_shape)
  for y, z, i, j in itertools.product(range(out_h), range(out_w), range(3), range(2)):
    row, col = y - padding[0][0] + i * dilation[0], z - padding[1][0] + j * dilation[1]
    if 0 <= row < x_shape[1] and 0 <= col < x_shape[2]:
      want[:, row, col] += g[:, y, z] @ kernel[i, j].T
  got = conv.input_grad(jnp.asarray(g, jnp.float32), jnp.asarray(kernel, jnp.float32), padding,
                        dilation)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', ['lax', 'matmul'])
def test_backward_in_a_loop_is_canonical(impl):
  """Inside `lax.map` the matmul path's backward convolutions read their kernel in HWIO order
  (dim_labels ..._01io->...), the form XLA:CPU runs fast there; lax's own transpose reads it
  swapped (01oi), which the test shows is still what lax does, so that it can fail."""
  x, k = inputs(8, 8, 3, cin=4, cout=6)
  conv_fn = convolve(impl, 1, ((2, 2), (2, 2)), 2)
  grad = jax.grad(lambda x: jnp.sum(jnp.tanh(conv_fn(x, k))))
  text = jax.jit(lambda xs: jax.lax.map(grad, xs)).lower(
      jnp.stack([x, x + 1])).compile().as_text()
  labels = re.findall(r'convolution\(.*dim_labels=\w+_(\w+)->', text)
  assert labels
  if impl == 'matmul':
    assert set(labels) == {'01io'}
  else:
    assert '01oi' in labels


@pytest.mark.parametrize('cin,cout', [(3, 7), (7, 3), (4, 4)])
def test_pointwise_gradients_by_einsum(cin, cout):
  """The 1x1 convolution's custom gradients against einsum, in float64; the kernel gradient
  transposes the operand of fewer channels (the input's when they tie)."""
  with jax.enable_x64(True):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 6, cin), jnp.float64)
    w = jax.random.normal(kw, (cin, cout), jnp.float64)
    g = jax.random.normal(kg, (2, 5, 6, cout), jnp.float64)
    y, vjp = jax.vjp(conv.pointwise, x, w)
    dx, dw = vjp(g)
    np.testing.assert_allclose(y, np.einsum('nhwc,cd->nhwd', x, w), rtol=1e-12)
    np.testing.assert_allclose(dx, np.einsum('nhwd,cd->nhwc', g, w), rtol=1e-12)
    np.testing.assert_allclose(dw, np.einsum('nhwc,nhwd->cd', x, g), rtol=1e-12)
    jaxpr = jax.make_jaxpr(conv.pointwise_kernel_grad)(x, g).jaxpr
    transposed, = [e.outvars[0].aval.shape for e in jaxpr.eqns
                   if e.primitive.name == 'transpose' and e.outvars[0].aval.shape[1] == 60]
    assert transposed == (min(cin, cout), 60)


def test_use_winograd():
  # ResNet-50 at output stride 8 on 256x256, batch 4: layer3-4's 3x3 convolutions and the
  # head's; layer1's 64 channels and layer2's 6e8 multiply-adds stay as they were.
  assert conv.use_winograd((4, 32, 32, 512), (3, 3, 512, 512), (4, 4), ((4, 4),) * 2)
  assert conv.use_winograd((4, 32, 32, 256), (3, 3, 256, 256), (2, 2), ((2, 2),) * 2)
  assert conv.use_winograd((4, 32, 32, 256), (3, 3, 256, 256), (1, 1), ((1, 1),) * 2)
  assert not conv.use_winograd((4, 64, 64, 64), (3, 3, 64, 64), (1, 1), ((1, 1),) * 2)
  assert not conv.use_winograd((4, 32, 32, 128), (3, 3, 128, 128), (1, 1), ((1, 1),) * 2)
  # Only 3x3 kernels padded by their dilation on every side.
  assert not conv.use_winograd((4, 32, 32, 512), (3, 3, 512, 512), (4, 4), ((4, 4), (2, 6)))
  assert not conv.use_winograd((4, 32, 32, 512), (3, 3, 512, 512), (4, 4), ((1, 1),) * 2)
  assert not conv.use_winograd((4, 32, 32, 512), (5, 5, 512, 512), (1, 1), ((2, 2),) * 2)


def test_winograd_tile_by_hand():
  """F(4, 3) in one dimension, the identity the 2-D tile nests: A^T [(G g) * (B^T d)] is the
  correlation sum_k d[i + k] g[k] of a 6-sample input with a 3-tap kernel, for random values
  and for each unit input (so that every coefficient of the matrices is checked)."""
  rng = np.random.default_rng(0)
  for d in [rng.normal(size=6), *np.eye(6)]:
    g = rng.normal(size=3)
    want = [sum(d[i + k] * g[k] for k in range(3)) for i in range(4)]
    got = conv.WINOGRAD_AT @ ((conv.WINOGRAD_G @ g) * (conv.WINOGRAD_BT @ d))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_polyphase_by_hand():
  x = np.arange(2 * 7 * 5 * 3).reshape(2, 7, 5, 3).astype(np.float32)
  parts = conv.polyphase(jnp.asarray(x), (3, 2))
  assert parts.shape == (12, 3, 3, 3)
  for n, i, j in itertools.product(range(2), range(3), range(2)):
    part = np.zeros((3, 3, 3), np.float32)
    component = x[n, i::3, j::2]
    part[:component.shape[0], :component.shape[1]] = component
    np.testing.assert_array_equal(parts[n * 6 + i * 2 + j], part)
  np.testing.assert_array_equal(conv.unpolyphase(parts, (3, 2), 7, 5), x)


@pytest.mark.parametrize('h,w,dilation', [
    (12, 12, 1), (9, 14, 1), (5, 3, 1), (16, 16, 4), (9, 11, 2), (13, 10, 3), (5, 7, 6)])
def test_winograd_equals_lax(h, w, dilation, small_winograd):
  """Values and gradients against lax's: in float64 to 1e-12 (the algorithm is exact), in
  float32 to the larger rounding of its transforms (module docstring)."""
  padding = ((dilation, dilation),) * 2
  fast = convolve('matmul', 1, padding, dilation)
  x, k = inputs(h, w, 3, cin=6, cout=5)
  assert conv.rewrite(x, k, (1, 1), padding, None, (dilation,) * 2, NHWC, 1, 1) == 'winograd'
  assert 'conv_general_dilated' not in str(jax.make_jaxpr(fast)(x, k))
  for dtype, tolerance in ((jnp.float64, 1e-12), (jnp.float32, 2e-5)):
    with jax.enable_x64(dtype == jnp.float64):
      cast = (x.astype(dtype), k.astype(dtype))
      want = values_and_grads(convolve('lax', 1, padding, dilation), *cast)
      for got, expected in zip(values_and_grads(fast, *cast), want):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=tolerance * float(jnp.max(jnp.abs(expected))))
