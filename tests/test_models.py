"""Tests for rwsjax.models: parameter counts, strides and shapes, hooks, perturbations, BN."""
import functools
import re

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rwsjax import models
from rwsjax.models import resnet

import profile_step

# torchvision's ResNet table, written out independently of rwsjax.models.resnet.
TORCHVISION_BLOCKS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
# Published torchvision parameter counts minus the ImageNet fc layer (512 or 2048 -> 1000).
TORCHVISION_NO_FC = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
    152: 60_192_808 - 2_049_000,
}
STRIDES = {8: (4, 8, 8, 8), 16: (4, 8, 16, 16)}
HEADS = ('deeplabv3', 'deeplabv3plus', 'fcn', 'unet', 'deeplabv2')


def make_cfg(**overrides):
  cfg = dict(name='fcn', backbone='resnet18', output_stride=8, width=0.125, head_channels=16)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def abstract_init(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def init(model, shape):
  # rbg keys: far cheaper initialisation on CPU than the default threefry.
  variables = model.init(jax.random.key(0, impl='rbg'), jnp.zeros(shape))
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


def images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def channels(n, width):
  return max(1, round(n * width))


def resnet_count(depth, width):
  """ResNet parameters without fc, by hand: conv weights (no bias) + 2 per BN channel."""
  kind, blocks = TORCHVISION_BLOCKS[depth]
  stem = channels(64, width)
  total, cin = 3 * 49 * stem + 2 * stem, stem
  for stage, n in enumerate(blocks):
    planes = channels(64 * 2**stage, width)
    out = planes if kind == 'basic' else 4 * planes
    for block in range(n):
      if kind == 'basic':
        total += 9 * cin * planes + 9 * planes * planes + 4 * planes
      else:
        total += cin * planes + 9 * planes * planes + planes * out + 4 * planes + 2 * out
      if block == 0 and cin != out:
        total += cin * out + 2 * out
      cin = out
  return total


def aspp_count(cin, ch, rates=3):
  """1x1 + atrous + pooling branches (conv + BN each), then the 1x1 projection + BN."""
  return 2 * cin * ch + rates * 9 * cin * ch + (rates + 2) * ch * ch + 2 * ch * (rates + 3)


def head_count(name, c1, c4, ch, k):
  """Head parameters by hand; c1/c4 = layer1/layer4 channels, ch = head channels, k classes."""
  if name == 'deeplabv3':
    return aspp_count(c4, ch) + 9 * ch * ch + 2 * ch + ch * k + k
  if name == 'deeplabv3plus':
    low = ch * 48 // 256
    return (aspp_count(c4, ch) + c1 * low + 2 * low + 9 * (ch + low) * ch + 9 * ch * ch
            + 4 * ch + ch * k + k)
  if name == 'fcn':
    return 9 * c4 * (c4 // 4) + 2 * (c4 // 4) + (c4 // 4) * k + k
  if name == 'deeplabv2':
    return 4 * (9 * c4 * k + k)
  raise ValueError(name)


def test_deeplabv3_resnet50_matches_torchvision_count():
  for output_stride in (8, 16):
    cfg = dict(name='deeplabv3', backbone='resnet50', output_stride=output_stride, width=1.0,
               head_channels=256)  # torchvision's deeplabv3_resnet50
    variables = abstract_init(models.make_model(cfg, 21), (1, 64, 64, 3))
    assert count(variables['params']) == 39_638_869
    assert count(variables['params']['backbone']) == 23_508_032


@pytest.mark.parametrize('depth', sorted(TORCHVISION_BLOCKS))
def test_resnet_counts_closed_form(depth):
  assert resnet_count(depth, 1.0) == TORCHVISION_NO_FC[depth]
  for width in (1.0, 0.125):
    variables = abstract_init(resnet.ResNet(depth, width=width), (1, 32, 32, 3))
    assert count(variables['params']) == resnet_count(depth, width)


def test_resnet18_count_by_hand():
  stem = 3 * 49 * 64 + 2 * 64
  layer1 = 2 * (2 * 9 * 64 * 64 + 4 * 64)
  layer2 = (9 * 64 * 128 + 9 * 128 * 128 + 4 * 128 + 64 * 128 + 2 * 128
            + 2 * 9 * 128 * 128 + 4 * 128)
  layer3 = (9 * 128 * 256 + 9 * 256 * 256 + 4 * 256 + 128 * 256 + 2 * 256
            + 2 * 9 * 256 * 256 + 4 * 256)
  layer4 = (9 * 256 * 512 + 9 * 512 * 512 + 4 * 512 + 256 * 512 + 2 * 512
            + 2 * 9 * 512 * 512 + 4 * 512)
  assert stem + layer1 + layer2 + layer3 + layer4 == 11_176_512
  variables = abstract_init(resnet.ResNet(18), (1, 32, 32, 3))
  assert count(variables['params']) == 11_176_512


@pytest.mark.parametrize('name', ('deeplabv3', 'deeplabv3plus', 'fcn', 'deeplabv2'))
@pytest.mark.parametrize('backbone,c1,c4', (('resnet18', 8, 64), ('resnet50', 32, 256)))
def test_head_counts_closed_form(name, backbone, c1, c4):
  cfg = make_cfg(name=name, backbone=backbone, head_channels=32)
  variables = abstract_init(models.make_model(cfg, 5), (1, 32, 32, 3))
  assert count(variables['params']['head']) == head_count(name, c1, c4, 32, 5)


def torchvision_block_plan(depth, output_stride):
  """(stride, dilation) per block, transcribed from torchvision's ResNet._make_layer."""
  replace = {8: (False, True, True), 16: (False, False, True)}[output_stride]
  dilation, plan = 1, []
  for stage, n in enumerate(TORCHVISION_BLOCKS[depth][1]):
    stride = 1 if stage == 0 else 2
    previous = dilation
    if stage > 0 and replace[stage - 1]:
      dilation *= stride
      stride = 1
    plan.append(tuple([(stride, previous)] + [(1, dilation)] * (n - 1)))
  return tuple(plan)


@pytest.mark.parametrize('output_stride', (8, 16))
@pytest.mark.parametrize('depth', sorted(TORCHVISION_BLOCKS))
def test_block_plan_matches_torchvision(depth, output_stride):
  plan = resnet.block_plan(output_stride, TORCHVISION_BLOCKS[depth][1])
  assert plan == torchvision_block_plan(depth, output_stride)


@pytest.mark.parametrize('output_stride', (8, 16))
@pytest.mark.parametrize('backbone', sorted(models.BACKBONES))
def test_backbone_feature_shapes(backbone, output_stride):
  depth = int(backbone[len('resnet'):])
  expansion = 1 if depth < 50 else 4
  cfg = make_cfg(backbone=backbone, output_stride=output_stride)
  model = models.make_backbone(cfg)
  variables = abstract_init(model, (2, 64, 64, 3))
  feats = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert feats['stem'].shape == (2, 32, 32, 8)
  assert models.feature_strides(cfg) == dict(zip(models.LAYER_NAMES, STRIDES[output_stride]))
  for i, (name, stride) in enumerate(zip(models.LAYER_NAMES, STRIDES[output_stride])):
    assert feats[name].shape == (2, 64 // stride, 64 // stride, 8 * 2**i * expansion)


HEAD_CASES = [(n, 'bilinear') for n in HEADS] + [('unet', 'learnable')]


@pytest.mark.parametrize('output_stride', (8, 16))
@pytest.mark.parametrize('name,upsample', HEAD_CASES)
def test_model_and_head_shapes(name, upsample, output_stride):
  cfg = make_cfg(name=name, upsample=upsample, output_stride=output_stride)
  model = models.make_model(cfg, 5)
  for size in (64, 50):
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = abstract_init(model, x.shape)
    logits, feats = jax.eval_shape(
        functools.partial(model.apply, return_features=True), variables, x)
    assert logits.shape == (2, size, size, 5) and logits.dtype == jnp.float32
    assert set(feats) == {'stem', *models.LAYER_NAMES}
    head = models.make_head(cfg, 5)
    head_vars = {c: variables[c].get('head', {}) for c in ('params', 'batch_stats')}
    out = jax.eval_shape(head.apply, head_vars, feats)
    source = {'fcn': 'layer4', 'deeplabv3': 'layer4', 'deeplabv2': 'layer4',
              'deeplabv3plus': 'layer1', 'unet': 'stem'}[name]
    assert out.shape == feats[source].shape[:3] + (5,)


def test_unet_upsample_modes_differ_by_transposed_convs():
  shape = (1, 64, 64, 3)
  bilinear = abstract_init(models.make_model(make_cfg(name='unet'), 3), shape)['params']['head']
  learn = abstract_init(models.make_model(make_cfg(name='unet', upsample='learnable'), 3),
                        shape)['params']['head']
  # OS 8: layer4 -> layer3 and layer3 -> layer2 keep the size; then x2 to layer1 and stem.
  assert set(learn) - set(bilinear) == {'up2', 'up3'}
  assert learn['up2']['kernel'].shape[:2] == (2, 2)


@pytest.mark.parametrize('key,value', [
    ('name', 'pspnet'), ('backbone', 'resnet20'), ('output_stride', 32), ('dtype', 'float16'),
    ('upsample', 'nearest'), ('width', 0), ('head_channels', 0), ('head_channels', 1.5)])
def test_make_model_rejects_bad_config(key, value):
  """A bad value of a field the model reads (upsample by the UNet head, head_channels by the
  DeepLab heads)."""
  name = {'upsample': {'name': 'unet'}, 'head_channels': {'name': 'deeplabv3'}}.get(key, {})
  with pytest.raises(ValueError, match=rf'config\.model\.{key}='):
    models.make_model(make_cfg(**name, **{key: value}), 5)


def test_make_model_error_lists_choices_and_accepts_dict():
  with pytest.raises(ValueError, match="'resnet18', 'resnet34', 'resnet50'"):
    models.make_model({'name': 'fcn', 'backbone': 'vgg16', 'output_stride': 8}, 5)
  with pytest.raises(ValueError, match=r'config\.model\.output_stride'):
    models.feature_strides({'output_stride': 4})


def torch_bilinear_upsample(x, size):
  """PyTorch bilinear upsampling with align_corners=False, NHWC, written with loops."""
  n, h, w, c = x.shape
  out = np.zeros((n, size, size, c))

  def taps(i, scale, length):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(np.floor(src)), length - 1)
    return i0, min(i0 + 1, length - 1), src - i0

  for i in range(size):
    y0, y1, ly = taps(i, h / size, h)
    for j in range(size):
      x0, x1, lx = taps(j, w / size, w)
      out[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                      + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
  return out


@pytest.fixture(scope='module')
def tiny():
  """A tiny ResNet-18 FCN (3 classes) and its variables, shared by the compute tests."""
  model = models.make_model(make_cfg(), 3)
  return model, init(model, (1, 32, 32, 3))


def test_logits_are_bilinearly_upsampled_like_pytorch(tiny):
  model, variables = tiny
  logits, state = model.apply(variables, images((1, 32, 32, 3)), capture_intermediates=True)
  head_out = np.asarray(state['intermediates']['head']['__call__'][0])
  assert head_out.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(logits, torch_bilinear_upsample(head_out, 32), rtol=1e-5, atol=1e-5)


def class_score(model, variables, x, **kwargs):
  """Seg-Grad-CAM-style score: summed class-1 logits."""
  return jnp.sum(model.apply(variables, x, **kwargs)[..., 1])


def test_perturbation_gradients_equal_hook_gradients(tiny):
  model, variables = tiny
  x = images((1, 32, 32, 3))
  _, feats = model.apply(variables, x, return_features=True)
  zeros = {name: jnp.zeros_like(feats[name]) for name in models.LAYER_NAMES}

  def by_perturbation(perturbations):
    return class_score(model, {**variables, 'perturbations': {'backbone': perturbations}}, x)

  def by_hook(deltas):
    return class_score(model, variables, x, layer_hook=lambda name, f: f + deltas[name])

  grads = jax.jit(jax.grad(by_perturbation))(zeros)
  oracle = jax.grad(by_hook)(zeros)
  for name in models.LAYER_NAMES:
    scale = float(jnp.abs(oracle[name]).max())
    assert scale > 0
    np.testing.assert_allclose(grads[name], oracle[name], rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(by_perturbation(zeros), class_score(model, variables, x), rtol=1e-6)


def test_layer_hook_output_feeds_the_next_layer(tiny):
  model, variables = tiny
  calls = []

  def hook(name, f):
    calls.append(name)
    return jnp.full_like(f, 0.5) if name == 'layer3' else f

  def apply(x):
    return model.apply(variables, x, layer_hook=hook, return_features=True,
                       mutable=['intermediates'])

  (logits_a, feats_a), state = apply(images((1, 32, 32, 3), seed=1))
  (logits_b, feats_b), _ = apply(images((1, 32, 32, 3), seed=2))
  assert calls == list(models.LAYER_NAMES) * 2
  assert not np.allclose(feats_a['layer2'], feats_b['layer2'])
  np.testing.assert_array_equal(feats_a['layer3'], 0.5)
  np.testing.assert_allclose(feats_a['layer4'], feats_b['layer4'], rtol=1e-6)
  np.testing.assert_allclose(logits_a, logits_b, rtol=1e-6)
  for name in models.LAYER_NAMES:
    np.testing.assert_array_equal(state['intermediates']['backbone'][name][0], feats_a[name])


def test_frozen_bn_keeps_running_stats_and_trains_scale(tiny):
  _, variables = tiny
  x = images((1, 32, 32, 3))
  stats = jax.tree.map(lambda a: a + 0.1, variables['batch_stats']['backbone'])
  backbone_vars = {'params': variables['params']['backbone'], 'batch_stats': stats}

  def changed(new_stats):
    return jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, new_stats))

  live = resnet.ResNet(18, width=0.125)
  _, new = live.apply(backbone_vars, x, train=True, mutable=['batch_stats'])
  assert all(changed(new['batch_stats']))

  frozen = resnet.ResNet(18, width=0.125, frozen_bn=True)

  def loss(params):
    feats, new = frozen.apply({**backbone_vars, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
    return jnp.sum(feats['layer4'] ** 2), (feats, new['batch_stats'])

  grads, (feats, new_stats) = jax.grad(loss, has_aux=True)(backbone_vars['params'])
  assert float(jnp.abs(grads['bn1']['scale']).max()) > 0
  assert float(jnp.abs(grads['layer4_1']['bn2']['bias']).max()) > 0
  assert not any(changed(new_stats))
  np.testing.assert_allclose(feats['layer4'], live.apply(backbone_vars, x)['layer4'],
                             rtol=1e-4, atol=1e-5)


def test_dropout_needs_rng_in_training(tiny):
  model, variables = tiny
  x = images((1, 32, 32, 3))

  def train(rng):
    return model.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': rng})[0]

  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, x, train=True, mutable=['batch_stats'])


def test_bfloat16_compute_float32_params_and_logits(tiny):
  model32, variables = tiny
  x = images((1, 32, 32, 3))
  model16 = models.make_model(make_cfg(dtype='bfloat16'), 3)
  shapes16 = jax.tree.map(lambda a: (a.shape, a.dtype), abstract_init(model16, x.shape))
  assert shapes16['params'] == jax.tree.map(lambda a: (a.shape, a.dtype), variables['params'])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits16, feats16 = model16.apply(variables, x, return_features=True)
  logits32 = model32.apply(variables, x)
  assert logits16.dtype == jnp.float32 and feats16['layer4'].dtype == jnp.bfloat16
  error = float(jnp.abs(logits16 - logits32).max() / jnp.abs(logits32).max())
  assert 0 < error < 0.1


def test_residual_relu_is_relu_in_value_and_gradient():
  x = jnp.array([-jnp.inf, -2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, jnp.inf, jnp.nan])
  np.testing.assert_array_equal(resnet.residual_relu(x), flax.linen.relu(x))
  grad = jax.vmap(jax.grad(resnet.residual_relu))(x[:-1])
  np.testing.assert_array_equal(grad, jax.vmap(jax.grad(flax.linen.relu))(x[:-1]))
  np.testing.assert_array_equal(grad, [0, 0, 0, 0, 0, 1, 1, 1])


def test_each_bottleneck_output_is_computed_once():
  """In the compiled ResNet-50, no fusion holds the last BatchNorm of more than one block: with
  `nn.relu` ending the blocks, XLA:CPU recomputed each block's residual stream from the
  layer's first block inside the next block's fusion."""
  model = resnet.ResNet(depth=50, width=0.25)
  images = jnp.zeros((1, 64, 64, 3))
  variables = model.init(jax.random.key(0), images)
  text = jax.jit(lambda v, x: model.apply(v, x)['layer4']).lower(variables, images).compile()
  for name, (_, fused) in profile_step.parse_hlo(text.as_text()).items():
    blocks = {m for line in fused for m in re.findall(r'/(layer\d_\d+)/bn3/', line)}
    assert len(blocks) <= 1, (name, sorted(blocks))
