"""Tests for rwsjax.models.pretrained against fake torchvision state dicts and a NumPy ResNet."""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from rwsjax import models
from rwsjax.models import resnet

# torchvision's ResNet table, written out independently of rwsjax.models.resnet.
TORCHVISION_BLOCKS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
                      50: ('bottleneck', (3, 4, 6, 3))}
WIDTH = 0.125


def bn_shapes(prefix, c):
  return {f'{prefix}.weight': (c,), f'{prefix}.bias': (c,), f'{prefix}.running_mean': (c,),
          f'{prefix}.running_var': (c,), f'{prefix}.num_batches_tracked': ()}


def torchvision_shapes(depth, width):
  """Key -> shape of torchvision's resnet{depth} state dict with channels scaled by width."""
  kind, blocks = TORCHVISION_BLOCKS[depth]
  ch = lambda n: max(1, round(n * width))  # noqa: E731
  shapes = {'conv1.weight': (ch(64), 3, 7, 7), **bn_shapes('bn1', ch(64))}
  cin = ch(64)
  for stage, n in enumerate(blocks):
    planes = ch(64 * 2**stage)
    out = planes if kind == 'basic' else 4 * planes
    for b in range(n):
      p = f'layer{stage + 1}.{b}'
      if kind == 'basic':
        convs = [(planes, cin, 3), (planes, planes, 3)]
      else:
        convs = [(planes, cin, 1), (planes, planes, 3), (out, planes, 1)]
      for i, (o, c, k) in enumerate(convs, start=1):
        shapes[f'{p}.conv{i}.weight'] = (o, c, k, k)
        shapes.update(bn_shapes(f'{p}.bn{i}', o))
      if b == 0 and (stage > 0 or cin != out):
        shapes[f'{p}.downsample.0.weight'] = (out, cin, 1, 1)
        shapes.update(bn_shapes(f'{p}.downsample.1', out))
      cin = out
  shapes.update({'fc.weight': (1000, cin), 'fc.bias': (1000,)})
  return shapes


def fake_state_dict(depth, width, seed=0):
  """Random torchvision-layout weights: He-scaled convs, BN stats near (0, 1)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in torchvision_shapes(depth, width).items():
    if key.endswith('num_batches_tracked'):
      state[key] = np.array(100, np.int64)
    elif len(shape) == 4:
      state[key] = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape).astype(np.float32)
    elif key.endswith('running_var') or (key.endswith('.weight') and len(shape) == 1):
      state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state[key] = rng.normal(0, 0.1, shape).astype(np.float32)
  return state


def save_npz(tmp_path, state, name='weights.npz'):
  path = str(tmp_path / name)
  np.savez(path, **state)
  return path


def model_cfg(backbone='resnet18', output_stride=8, width=WIDTH):
  return {'name': 'fcn', 'backbone': backbone, 'output_stride': output_stride, 'width': width}


def random_variables(cfg, size=32):
  model = models.make_model(cfg, 3)
  return model, model.init(jax.random.key(0, impl='rbg'), jnp.zeros((1, size, size, 3)))


def np_conv(x, w, stride=1, pad=0, dilation=1):
  """torch.nn.functional.conv2d (NCHW, OIHW, no bias) by summing shifted strided views."""
  n, _, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
  ow = (wd + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((n, o, oh, ow))
  for i in range(kh):
    for j in range(kw):
      view = xp[:, :, i * dilation:i * dilation + stride * (oh - 1) + 1:stride,
                j * dilation:j * dilation + stride * (ow - 1) + 1:stride]
      out += np.einsum('nchw,oc->nohw', view, w[:, :, i, j])
  return out


def np_bn(x, state, prefix):
  """Eval-mode torch BatchNorm2d (eps 1e-5)."""
  get = lambda name: state[f'{prefix}.{name}'][None, :, None, None]  # noqa: E731
  return (x - get('running_mean')) / np.sqrt(get('running_var') + 1e-5) * get('weight') + get(
      'bias')


def np_maxpool(x):
  """3x3 max pooling, stride 2, padding 1."""
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  oh, ow = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
  return np.max([xp[:, :, i:i + 2 * oh - 1:2, j:j + 2 * ow - 1:2]
                 for i in range(3) for j in range(3)], axis=0)


def np_resnet(x, state, depth, output_stride):
  """torchvision ResNet.forward up to layer4, eval mode, NCHW; replace_stride_with_dilation
  as torchvision's segmentation models. Basic blocks dilate both 3x3 convs (torchvision has
  no dilated basic block)."""
  relu = lambda a: np.maximum(a, 0)  # noqa: E731
  kind, blocks = TORCHVISION_BLOCKS[depth]
  replace = {8: (False, True, True), 16: (False, False, True)}[output_stride]
  x = np_maxpool(relu(np_bn(np_conv(x, state['conv1.weight'], 2, 3), state, 'bn1')))
  dilation, feats = 1, {}
  for stage, n in enumerate(blocks):
    stride, previous = (1 if stage == 0 else 2), dilation
    if stage > 0 and replace[stage - 1]:
      dilation, stride = dilation * stride, 1
    for b in range(n):
      p = f'layer{stage + 1}.{b}'
      d, s = (previous, stride) if b == 0 else (dilation, 1)
      w = lambda name: state[f'{p}.{name}.weight']  # noqa: E731
      if kind == 'basic':
        y = relu(np_bn(np_conv(x, w('conv1'), s, d, d), state, f'{p}.bn1'))
        y = np_bn(np_conv(y, w('conv2'), 1, d, d), state, f'{p}.bn2')
      else:
        y = relu(np_bn(np_conv(x, w('conv1')), state, f'{p}.bn1'))
        y = relu(np_bn(np_conv(y, w('conv2'), s, d, d), state, f'{p}.bn2'))
        y = np_bn(np_conv(y, w('conv3')), state, f'{p}.bn3')
      identity = x
      if f'{p}.downsample.0.weight' in state:
        identity = np_bn(np_conv(x, w('downsample.0'), s), state, f'{p}.downsample.1')
      x = relu(y + identity)
    feats[f'layer{stage + 1}'] = x
  return feats


@pytest.mark.parametrize('backbone', ('resnet18', 'resnet50'))
def test_values_land_transposed_in_place(tmp_path, backbone):
  state = fake_state_dict(int(backbone[6:]), WIDTH)
  cfg = model_cfg(backbone)
  _, variables = random_variables(cfg)
  loaded = models.load_pretrained_backbone(variables, save_npz(tmp_path, state), cfg)
  params, stats = loaded['params']['backbone'], loaded['batch_stats']['backbone']
  hwio = lambda key: state[key].transpose(2, 3, 1, 0)  # noqa: E731
  np.testing.assert_array_equal(params['conv1']['kernel'], hwio('conv1.weight'))
  np.testing.assert_array_equal(params['bn1']['scale'], state['bn1.weight'])
  np.testing.assert_array_equal(params['bn1']['bias'], state['bn1.bias'])
  np.testing.assert_array_equal(stats['bn1']['mean'], state['bn1.running_mean'])
  np.testing.assert_array_equal(stats['bn1']['var'], state['bn1.running_var'])
  np.testing.assert_array_equal(params['layer1_1']['conv2']['kernel'],
                                hwio('layer1.1.conv2.weight'))
  np.testing.assert_array_equal(params['layer3_0']['downsample_conv']['kernel'],
                                hwio('layer3.0.downsample.0.weight'))
  np.testing.assert_array_equal(params['layer3_0']['downsample_bn']['scale'],
                                state['layer3.0.downsample.1.weight'])
  np.testing.assert_array_equal(stats['layer4_1']['bn2']['var'], state['layer4.1.bn2.running_var'])
  # Every backbone value comes from the file: as many leaves as loadable keys, none left at init.
  loadable = [k for k in state if not k.startswith('fc.') and 'num_batches' not in k]
  leaves = jax.tree.leaves((params, stats))
  assert len(leaves) == len(loadable)
  assert sum(leaf.size for leaf in leaves) == sum(state[k].size for k in loadable)
  init_leaves = jax.tree.leaves((variables['params']['backbone'],
                                 variables['batch_stats']['backbone']))
  assert all(not np.array_equal(a, b) for a, b in zip(leaves, init_leaves))
  for collection in ('params', 'batch_stats', 'perturbations'):
    jax.tree.map(np.testing.assert_array_equal, loaded[collection].get('head', {}),
                 variables[collection].get('head', {}))
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)


def test_stem_conv_matches_direct_correlation(tmp_path):
  state = fake_state_dict(18, WIDTH)
  cfg = model_cfg()
  model, variables = random_variables(cfg)
  loaded = models.load_pretrained_backbone(variables, save_npz(tmp_path, state), cfg)
  x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
  _, captured = model.apply(loaded, x, capture_intermediates=True)
  stem = np.asarray(captured['intermediates']['backbone']['conv1']['__call__'][0])
  w = state['conv1.weight']
  padded = np.pad(x[0], ((3, 3), (3, 3), (0, 0)))
  for o in range(w.shape[0]):
    oracle = sum(signal.correlate2d(padded[..., c], w[o, c], mode='valid')
                 for c in range(3))[::2, ::2]
    np.testing.assert_allclose(stem[0, ..., o], oracle, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('backbone,output_stride', (('resnet18', 8), ('resnet18', 16),
                                                    ('resnet50', 8)))
def test_loaded_backbone_matches_numpy_torchvision(tmp_path, backbone, output_stride):
  depth = int(backbone[6:])
  state = fake_state_dict(depth, WIDTH, seed=depth)
  cfg = model_cfg(backbone, output_stride)
  backbone_model = models.make_backbone(cfg)
  x = np.random.default_rng(2).normal(size=(1, 48, 48, 3)).astype(np.float32)
  variables = backbone_model.init(jax.random.key(0, impl='rbg'), x)
  loaded = models.load_pretrained_backbone(variables, save_npz(tmp_path, state), cfg, scope=())
  feats = jax.jit(backbone_model.apply)(loaded, x)
  oracle = np_resnet(x.transpose(0, 3, 1, 2).astype(np.float64), state, depth, output_stride)
  for name in models.LAYER_NAMES:
    got = np.asarray(feats[name]).transpose(0, 3, 1, 2)
    scale = np.abs(oracle[name]).max()
    assert got.shape == oracle[name].shape and scale > 0
    np.testing.assert_allclose(got, oracle[name], rtol=1e-4, atol=1e-4 * scale)


def test_missing_key_is_named(tmp_path):
  state = fake_state_dict(18, WIDTH)
  del state['layer2.0.bn1.running_var']
  cfg = model_cfg()
  _, variables = random_variables(cfg)
  with pytest.raises(ValueError, match=r"lacks key 'layer2\.0\.bn1\.running_var'.*resnet18"):
    models.load_pretrained_backbone(variables, save_npz(tmp_path, state), cfg)


def test_wrong_width_names_key_and_shapes(tmp_path):
  state = fake_state_dict(18, WIDTH)
  cfg = model_cfg(width=0.25)
  _, variables = random_variables(cfg)
  with pytest.raises(ValueError, match=r"'conv1\.weight' has shape \(8, 3, 7, 7\), "
                                       r"expected \(16, 3, 7, 7\)"):
    models.load_pretrained_backbone(variables, save_npz(tmp_path, state), cfg)


def test_deeper_weights_are_unexpected(tmp_path):
  state = fake_state_dict(34, WIDTH)
  cfg = model_cfg()
  _, variables = random_variables(cfg)
  with pytest.raises(ValueError, match=r"has key 'layer1\.2\.bn1\.bias'.*does not have"):
    models.load_pretrained_backbone(variables, save_npz(tmp_path, state), cfg)


def test_file_and_config_errors(tmp_path):
  cfg = model_cfg()
  _, variables = random_variables(cfg)
  with pytest.raises(FileNotFoundError, match='config.model.pretrained'):
    models.load_pretrained_backbone(variables, str(tmp_path / 'absent.npz'), cfg)
  (tmp_path / 'weights.h5').write_bytes(b'')
  with pytest.raises(ValueError, match=r'must end in \.npz, \.pth or \.pt'):
    models.load_pretrained_backbone(variables, str(tmp_path / 'weights.h5'), cfg)
  path = save_npz(tmp_path, fake_state_dict(18, WIDTH))
  with pytest.raises(ValueError, match=r'config\.model\.backbone'):
    models.load_pretrained_backbone(variables, path, model_cfg(backbone='vgg16'))
  with pytest.raises(ValueError, match='no backbone'):
    models.load_pretrained_backbone(variables, path, cfg, scope=('encoder',))


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  cfg = model_cfg()
  _, variables = random_variables(cfg)
  (tmp_path / 'weights.pth').write_bytes(b'')
  with pytest.raises(ImportError, match='needs PyTorch'):
    models.load_pretrained_backbone(variables, str(tmp_path / 'weights.pth'), cfg)


class FakeTensor:
  """The few torch.Tensor methods the loader uses."""

  def __init__(self, array):
    self.array = array

  def detach(self):
    return self

  def cpu(self):
    return self

  def float(self):
    return FakeTensor(self.array.astype(np.float32))

  def numpy(self):
    return self.array


def test_pth_goes_through_torch_load(tmp_path, monkeypatch):
  state = fake_state_dict(18, WIDTH)
  calls = []

  def load(path, map_location, weights_only):
    calls.append((path, map_location, weights_only))
    return {k: FakeTensor(v) for k, v in state.items()}

  monkeypatch.setitem(sys.modules, 'torch', types.SimpleNamespace(load=load))
  path = str(tmp_path / 'weights.pth')
  (tmp_path / 'weights.pth').write_bytes(b'')
  backbone = resnet.ResNet(18, width=WIDTH)
  variables = backbone.init(jax.random.key(0, impl='rbg'), jnp.zeros((1, 32, 32, 3)))
  loaded = models.load_pretrained_backbone(variables, path, model_cfg(), scope=())
  assert calls == [(path, 'cpu', True)]
  np.testing.assert_array_equal(loaded['params']['layer2_0']['downsample_conv']['kernel'],
                                state['layer2.0.downsample.0.weight'].transpose(2, 3, 1, 0))
