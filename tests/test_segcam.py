"""Seg-Grad-CAM against a per-class jax.grad loop, a closed form and hand-computed maps; with a
padding mask against the unpadded image of a model that cannot see zero padding."""
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwsjax.rws import network
from rwsjax.rws import segcam
from rwsjax.models import LAYER_NAMES, layer_output, make_model


class _Backbone(nn.Module):
  """Four named layers following the rwsjax model convention (perturb + sow per layer)."""
  strides: tuple

  @nn.compact
  def __call__(self, x, train, layer_hook):
    features = {}
    for i, (channels, stride) in enumerate(zip((4, 6, 6, 8), self.strides)):
      name = f'layer{i + 1}'
      x = nn.Conv(channels, (3, 3), strides=stride, name=f'conv{i + 1}')(x)
      if i == 1:
        x = nn.BatchNorm(use_running_average=not train)(x)
      x = jnp.tanh(x)
      x = layer_hook(name, x) if layer_hook else x
      x = self.perturb(name, x)
      self.sow('intermediates', name, x)
      features[name] = x
    return x, features


class TinySeg(nn.Module):
  """A few convs with named layers, a 1x1-conv head and optional bilinear upsampling."""
  num_classes: int = 4
  strides: tuple = (1, 2, 1, 2)
  upsample: bool = True

  @nn.compact
  def __call__(self, images, train=False, layer_hook=None, return_features=False):
    x, features = _Backbone(self.strides, name='backbone')(images, train, layer_hook)
    logits = nn.Conv(self.num_classes, (1, 1), name='head')(x)
    if self.upsample:
      logits = jax.image.resize(logits, logits.shape[:1] + images.shape[1:3] + logits.shape[3:],
                                'bilinear')
    return (logits, features) if return_features else logits


class PadFreeSeg(nn.Module):
  """A model that cannot see zero padding at the bottom and right of an image.

  Every 3x3 convolution reads the input, whose zero padding is then the convolution's own
  'SAME' zero padding; the layers chain through 1x1 convolutions; no bias, no normalisation,
  no pooling, stride 1, ReLU, logits at input size. A pixel's features and logits depend on the
  input within one pixel of it only, so on the image they are those of the unpadded image.
  (A 3x3 convolution of a layer output would read the padding's nonzero features next to the
  image, which the unpadded image's convolution sees as zeros.)
  """
  num_classes: int = 4
  channels: int = 12

  @nn.compact
  def __call__(self, images, *, train=False, layer_hook=None):
    del train
    x = None
    for name in LAYER_NAMES:
      y = nn.Conv(self.channels, (3, 3), use_bias=False, name=f'{name}_input')(images)
      if x is not None:
        y = y + nn.Conv(self.channels, (1, 1), use_bias=False, name=f'{name}_chain')(x)
      x = layer_output(self, name, nn.relu(y), layer_hook)
    return nn.Conv(self.num_classes, (1, 1), use_bias=False, name='head')(x)


def padfree_variables(model, seed):
  """Random variables of a `PadFreeSeg` whose head never predicts class 0 where a pixel has
  any feature: column 0 of the head is below every other column in every channel, and the
  features are >= 0. Where all features are 0 (all of the padding beyond one pixel from the
  image) every logit is 0 and the argmax is class 0."""
  variables, _ = setup_model(model, n=1, size=8, seed=seed)
  kernel = np.array(variables['params']['head']['kernel'])
  kernel[..., 0] = kernel[..., 1:].min(axis=-1) - 1.0
  variables['params']['head']['kernel'] = jnp.asarray(kernel)
  return variables


def pad_bottom_right(x, height, width, value=0):
  """(N, h, w, ...) padded with `value` at the bottom and right to (N, height, width, ...)."""
  pads = [(0, 0), (0, height - x.shape[1]), (0, width - x.shape[2])] + [(0, 0)] * (x.ndim - 3)
  return jnp.pad(x, pads, constant_values=value)


def setup_model(model, n=2, size=16, seed=0):
  """Random images and variables; weights drawn in numpy (compiling `model.init` is slow)."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  flat = traverse_util.flatten_dict({k: shapes[k] for k in ('params', 'batch_stats')
                                     if k in shapes})
  variables = {}
  for path, leaf in flat.items():
    if path[-1] in ('scale', 'var'):
      value = np.ones(leaf.shape)
    elif path[-1] in ('bias', 'mean'):
      value = 0.1 * rng.normal(size=leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    variables[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(variables), images


def _bilinear_1d(n_in, n_out):
  """Half-pixel bilinear interpolation matrix with edge clamping (independent oracle)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
    lo = int(np.floor(src))
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1.0 - (src - lo)
    m[i, hi] += src - lo
  return m


def _normalize_oracle(raw, size, cells=None):
  """ReLU, min-max, resize of one 2-D map in numpy; with `cells` (h, w) bool the range is that
  of the valid cells and the other cells are clipped to [0, 1] before the resize."""
  cam = np.maximum(raw, 0.0)
  inside = cam if cells is None else cam[cells]
  span = inside.max() - inside.min()
  cam = (cam - inside.min()) / span if span > 0 else np.zeros_like(cam)
  if cells is not None:
    cam = np.clip(cam, 0.0, 1.0)
  return _bilinear_1d(cam.shape[0], size[0]) @ cam @ _bilinear_1d(cam.shape[1], size[1]).T


def _cells_oracle(valid, shape):
  """valid[s*y + s//2, s*x + s//2] of one (H, W) mask for a grid with H = s h, W = s w."""
  sy, sx = valid.shape[0] // shape[0], valid.shape[1] // shape[1]
  cells = np.zeros(shape, bool)
  for y in range(shape[0]):
    for x in range(shape[1]):
      cells[y, x] = valid[sy * y + sy // 2, sx * x + sx // 2]
  return cells


def _oracle_classes(pred, num_classes, max_classes):
  counts = np.bincount(pred.ravel(), minlength=num_classes)
  order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
  return [c for c in order[:max_classes] if counts[c] > 0]


def _brute_force(model, variables, images, classes_per_image, layers=segcam.LAYERS, valid=None):
  """One jax.grad of S_c per image and class, everything else in numpy loops; with `valid`
  (N, H, W) S_c, alpha and the min-max range see the valid pixels and cells only."""

  def score(perturbations, image, c, region):
    logits = model.apply({**variables, 'perturbations': perturbations}, image)
    return jnp.sum(jnp.where(region, jnp.take(logits, c, axis=-1), 0.0))

  grad_fn = jax.jit(jax.grad(score))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
      model.init, jax.random.key(0), images[:1])['perturbations'])
  out = []
  for n, classes in enumerate(classes_per_image):
    image = images[n:n + 1]
    mask = np.ones(image.shape[1:3], bool) if valid is None else np.asarray(valid[n])
    logits, feats = jax.jit(model.apply, static_argnames='return_features')(
        variables, image, return_features=True)
    pred = np.asarray(jnp.argmax(logits, -1))
    maps = {}
    for c in classes:
      grads = grad_fn(zeros, image, c, jnp.asarray((pred == c) & mask))['backbone']
      for name in layers:
        g = np.asarray(grads[name][0], np.float64)
        f = np.asarray(feats[name][0], np.float64)
        cells = _cells_oracle(mask, f.shape[:2])
        alpha = g[cells].mean(axis=0)
        raw = np.zeros(f.shape[:2])
        for k in range(f.shape[-1]):
          raw += alpha[k] * f[..., k]
        heat = _normalize_oracle(raw, image.shape[1:3], None if valid is None else cells)
        maps[(name, c)] = np.where(mask, heat, 0.0)
    out.append(maps)
  return out


@pytest.mark.parametrize('chunking', [{}, {'pair_chunk': 1}, {'pair_chunk': 3},
                                      {'class_chunk': 1}, {'class_chunk': 4}])
def test_matches_per_class_grad_loop(chunking):
  """The vmapped backward pass over slots, a pass per filled slot (`pair_chunk`), and passes
  over groups of slots that skip the groups no image fills (`class_chunk`)."""
  model = TinySeg()
  variables, images = setup_model(model)
  result = segcam.seg_grad_cam(model, variables, images, max_classes=6, **chunking)
  pred = np.asarray(jnp.argmax(result.logits, -1))
  classes = [_oracle_classes(pred[n], 4, 6) for n in range(len(pred))]
  assert max(len(c) for c in classes) >= 2  # and at least two of the six slots stay empty
  expected = _brute_force(model, variables, images, classes)
  for n, image_classes in enumerate(classes):
    assert list(np.asarray(result.class_ids[n][result.class_mask[n]])) == image_classes
    for j, c in enumerate(image_classes):
      for name in segcam.LAYERS:
        np.testing.assert_allclose(result.heatmaps[name][n, j], expected[n][(name, c)],
                                   atol=2e-5)


@pytest.mark.parametrize('pair_chunk', [None, 2])
def test_valid_mask_matches_per_class_grad_loop(pair_chunk):
  """Slots, S_c, alpha and the min-max range over the image only, on strided layers (1, 2, 2,
  4), against the loop with the cells valid[s*y + s//2, s*x + s//2]."""
  model = TinySeg()
  variables, images = setup_model(model, seed=2)
  valid = np.zeros((2, 16, 16), bool)
  valid[0, :11, :13] = True
  valid[1, :, :7] = True
  result = segcam.seg_grad_cam(model, variables, images, max_classes=4,
                               valid=jnp.asarray(valid), pair_chunk=pair_chunk)
  pred = np.asarray(jnp.argmax(result.logits, -1))
  classes = [_oracle_classes(pred[n][valid[n]], 4, 4) for n in range(2)]
  assert min(len(c) for c in classes) >= 2
  expected = _brute_force(model, variables, images, classes, valid=valid)
  plain = segcam.seg_grad_cam(model, variables, images, max_classes=4)
  for n, image_classes in enumerate(classes):
    assert list(np.asarray(result.class_ids[n][result.class_mask[n]])) == image_classes
    for j, c in enumerate(image_classes):
      for name in segcam.LAYERS:
        np.testing.assert_allclose(result.heatmaps[name][n, j], expected[n][(name, c)],
                                   atol=2e-5)
  # The mask changes the maps: the same computation over the whole image differs.
  assert not all(np.allclose(result.heatmaps[name], plain.heatmaps[name], atol=1e-3)
                 for name in segcam.LAYERS)


def test_feature_cells_take_the_centre_pixel():
  rng = np.random.default_rng(4)
  valid = rng.uniform(size=(2, 24, 12)) < 0.5
  for stride in (1, 2, 3, 4, 6):
    shape = (24 // stride, 12 // stride)
    got = np.asarray(segcam.feature_cells(jnp.asarray(valid), shape))
    for n in range(2):
      np.testing.assert_array_equal(got[n], _cells_oracle(valid[n], shape))


def _padfree_case(seed=0):
  """A `PadFreeSeg`, two 12x10 images, their copies zero-padded to 24x24 and the mask."""
  model = PadFreeSeg()
  variables = padfree_variables(model, seed)
  images = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 12, 10, 3)), jnp.float32)
  valid = pad_bottom_right(jnp.ones((2, 12, 10), bool), 24, 24, False)
  return model, variables, images, pad_bottom_right(images, 24, 24), valid


def test_padding_is_invisible_with_valid():
  """A padded image with its mask gives the unpadded image's slots, logits and heatmaps."""
  model, variables, images, padded, valid = _padfree_case()
  plain = segcam.seg_grad_cam(model, variables, images, max_classes=3)
  masked = segcam.seg_grad_cam(model, variables, padded, max_classes=3, valid=valid)
  pred = np.asarray(jnp.argmax(plain.logits, -1))
  assert not (pred == 0).any()  # `padfree_variables`: class 0 is never predicted on the image
  assert all(len(np.unique(p)) >= 2 for p in pred)
  np.testing.assert_array_equal(masked.class_ids, plain.class_ids)
  np.testing.assert_array_equal(masked.class_mask, plain.class_mask)
  np.testing.assert_allclose(masked.logits[:, :12, :10], plain.logits, atol=1e-5)
  for name in segcam.LAYERS:
    np.testing.assert_allclose(masked.heatmaps[name][:, :, :12, :10], plain.heatmaps[name],
                               atol=1e-5)
    assert float(masked.heatmaps[name][:, :, 12:].max()) == 0.0
    assert float(masked.heatmaps[name][:, :, :, 10:].max()) == 0.0
    assert float(plain.heatmaps[name].max()) == 1.0
  # Without the mask the padding beyond one pixel from the image (433 of 576 pixels, all
  # logits 0) is predicted as class 0, the most frequent class: it takes the first slot.
  blind = segcam.seg_grad_cam(model, variables, padded, max_classes=3)
  np.testing.assert_array_equal(blind.class_ids[:, 0], 0)
  assert not (np.asarray(plain.class_ids) == 0).any()


def test_attention_maps_ignore_padding_on_both_region_paths():
  """network.attention_maps with `valid`: A_i and Gamma of the padded image are those of the
  unpadded one, with the prediction and with the ground truth (255 on padding) as regions."""
  model, variables, images, padded, valid = _padfree_case(seed=1)
  labels = np.random.default_rng(3).choice([1, 2, 3, 255], size=(2, 12, 10))
  padded_labels = pad_bottom_right(jnp.asarray(labels), 24, 24, 255)
  for plain_labels, masked_labels in ((None, None), (jnp.asarray(labels), padded_labels)):
    plain = network.attention_maps(model, variables, images, num_classes=4, max_classes=3,
                                   labels=plain_labels)
    masked = network.attention_maps(model, variables, padded, num_classes=4, max_classes=3,
                                    labels=masked_labels, valid=valid)
    np.testing.assert_array_equal(masked.result.class_ids, plain.result.class_ids)
    np.testing.assert_allclose(masked.gamma[:, :12, :10], plain.gamma, atol=1e-5)
    assert float(masked.gamma[:, 12:].max()) == float(masked.gamma[:, :, 10:].max()) == 0.0
    assert float(plain.gamma.max()) > 0.5
    for name in segcam.LAYERS:
      np.testing.assert_allclose(masked.maps[name][:, :12, :10], plain.maps[name], atol=1e-5)


def test_registry_model_matches_per_class_grad_loop():
  model = make_model({'name': 'deeplabv3', 'backbone': 'resnet18', 'output_stride': 8,
                      'width': 0.125, 'head_channels': 16}, num_classes=5)
  variables, images = setup_model(model, n=1, size=32, seed=7)
  result = segcam.seg_grad_cam(model, variables, images, max_classes=3)
  classes = _oracle_classes(np.asarray(jnp.argmax(result.logits, -1))[0], 5, 3)
  assert len(classes) >= 2
  expected = _brute_force(model, variables, images, [classes])[0]
  for j, c in enumerate(classes):
    for name in segcam.LAYERS:
      np.testing.assert_allclose(result.heatmaps[name][0, j], expected[(name, c)], atol=1e-4)


def test_closed_form_last_layer_head():
  model = TinySeg(strides=(1, 1, 1, 1), upsample=False)
  variables, images = setup_model(model, size=8, seed=3)
  result = segcam.seg_grad_cam(model, variables, images, max_classes=4, layers=('layer4',))
  kernel = np.asarray(variables['params']['head']['kernel'][0, 0], np.float64)
  features = np.asarray(result.features['layer4'], np.float64)
  pred = np.asarray(jnp.argmax(result.logits, -1))
  for n in range(images.shape[0]):
    for j in range(4):
      if not result.class_mask[n, j]:
        continue
      c = int(result.class_ids[n, j])
      alpha = kernel[:, c] * np.sum(pred[n] == c) / pred[n].size
      raw = np.maximum(np.tensordot(features[n], alpha, axes=([-1], [0])), 0.0)
      span = raw.max() - raw.min()
      expected = (raw - raw.min()) / span if span > 0 else np.zeros_like(raw)
      np.testing.assert_allclose(result.heatmaps['layer4'][n, j], expected, atol=2e-5)


def test_normalize_order_relu_minmax_resize():
  raw = jnp.array([[-1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]])
  out = np.asarray(segcam.normalize_heatmaps(raw, (6, 6)))
  # ReLU then min-max gives a unit peak at the centre and 0 elsewhere; after the half-pixel
  # resize the four central outputs sit at source (0.75, 0.75) etc.: 0.75 * 0.75 = 0.5625.
  assert out.max() == pytest.approx(0.5625)
  np.testing.assert_allclose(out[2:4, 2:4], 0.5625)
  assert out[0, 0] == 0.0 and out[5, 5] == 0.0
  np.testing.assert_allclose(out, _normalize_oracle(np.asarray(raw), (6, 6)), atol=1e-6)
  # Resizing before normalising would stretch the peak back to 1: ReLU and resize give
  # 2 * 0.75 * 0.75 = 1.125 at the four central outputs and 0 at the corners, so min-max
  # afterwards puts 1 there where the fixed order gives 0.5625.
  resized = _bilinear_1d(3, 6) @ np.maximum(np.asarray(raw), 0.0) @ _bilinear_1d(3, 6).T
  np.testing.assert_allclose(resized[2:4, 2:4], 1.125)
  assert resized.min() == 0.0
  resized_first = (resized - resized.min()) / (resized.max() - resized.min())
  np.testing.assert_allclose(resized_first[2:4, 2:4], 1.0)
  assert not np.allclose(out, resized_first, atol=0.1)
  stretched = _bilinear_1d(3, 6) @ ((np.asarray(raw) + 1.0) / 3.0) @ _bilinear_1d(3, 6).T
  assert stretched[0, 4] == pytest.approx(1 / 3) and out[0, 4] == 0.0
  np.testing.assert_array_equal(segcam.normalize_heatmaps(jnp.full((3, 3), 0.7), (6, 6)), 0.0)


def test_present_classes_order_padding_and_ignore():
  labels = np.array([[[2, 2, 2, 255], [1, 1, 0, 255], [3, 3, 0, 255]],
                     [[255, 255, 255, 255], [255, 255, 255, 255], [4, 4, 4, 4]]])
  ids, mask = segcam.present_classes(jnp.asarray(labels), 5, 3)
  for n in range(2):
    expected = _oracle_classes(labels[n][labels[n] != 255], 5, 3)
    assert list(np.asarray(ids[n])) == expected + [-1] * (3 - len(expected))
    assert list(np.asarray(mask[n])) == [True] * len(expected) + [False] * (3 - len(expected))
  ids, mask = segcam.present_classes(jnp.asarray(labels), 5, 7)
  assert ids.shape == (2, 7) and int(mask[1].sum()) == 1 and int(ids[1, 0]) == 4


def test_padded_and_explicit_class_slots():
  model = TinySeg(num_classes=7)
  variables, images = setup_model(model, size=8, seed=5)
  auto = segcam.seg_grad_cam(model, variables, images, max_classes=8)
  assert not bool(auto.class_mask[:, 7:].any())
  for name in segcam.LAYERS:
    assert float(jnp.abs(jnp.where(auto.class_mask[:, :, None, None], 0.0,
                                   auto.heatmaps[name])).max()) == 0.0
  pred = np.asarray(jnp.argmax(auto.logits, -1))
  absent = [c for c in range(7) if not (pred[0] == c).any()]
  first = int(auto.class_ids[0, 0])
  explicit = np.full((2, 3), -1)
  explicit[0, :2] = [absent[0], first]
  explicit[1, 0] = int(auto.class_ids[1, 0])
  result = segcam.seg_grad_cam(model, variables, images, classes=explicit)
  np.testing.assert_array_equal(result.class_mask, explicit >= 0)
  for name in segcam.LAYERS:
    np.testing.assert_array_equal(result.heatmaps[name][0, 0], 0.0)
    np.testing.assert_allclose(result.heatmaps[name][0, 1], auto.heatmaps[name][0, 0],
                               atol=1e-6)
    np.testing.assert_allclose(result.heatmaps[name][1, 0], auto.heatmaps[name][1, 0],
                               atol=1e-6)
    np.testing.assert_array_equal(result.heatmaps[name][:, 2], 0.0)
  chunked = segcam.seg_grad_cam(model, variables, images, max_classes=8, class_chunk=3)
  for name in segcam.LAYERS:
    np.testing.assert_allclose(chunked.heatmaps[name], auto.heatmaps[name], atol=1e-6)


def test_user_errors_are_clear():
  model = TinySeg()
  variables, images = setup_model(model)
  with pytest.raises(ValueError, match='max_classes'):
    segcam.seg_grad_cam(model, variables, images)
  with pytest.raises(ValueError, match='layers'):
    segcam.seg_grad_cam(model, variables, images, max_classes=2, layers=('layer5',))


def test_region_attention_gamma_omega():
  rng = np.random.default_rng(0)
  heat = {name: rng.uniform(size=(2, 3, 4, 5)).astype(np.float32) for name in ('a', 'b')}
  ids = np.array([[0, 2, -1], [1, 0, 2]])
  mask = ids >= 0
  mask[1, 2] = False
  labels = rng.choice([0, 1, 2, 3, 255], size=(2, 4, 5))
  attention = segcam.region_attention({k: jnp.asarray(v) for k, v in heat.items()},
                                     jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels))
  for name in heat:
    expected = np.zeros((2, 4, 5), np.float32)
    for n in range(2):
      for y in range(4):
        for x in range(5):
          for j in range(3):
            if mask[n, j] and ids[n, j] == labels[n, y, x]:
              expected[n, y, x] = heat[name][n, j, y, x]
    np.testing.assert_array_equal(attention[name], expected)
  gamma, omega = segcam.gamma_and_omega(attention)
  np.testing.assert_array_equal(gamma, np.maximum(attention['a'], attention['b']))
  for name in heat:
    np.testing.assert_array_equal(omega[name], gamma - attention[name])


def test_feature_attention_keeps_order_and_constants():
  rng = np.random.default_rng(1)
  a1 = jnp.asarray(rng.uniform(size=(2, 8, 8)), jnp.float32)
  a2 = jnp.asarray(rng.uniform(size=(2, 8, 8)), jnp.float32)
  gamma, _ = segcam.gamma_and_omega({'layer1': a1, 'layer2': a2})
  features = {'layer1': jnp.zeros((2, 4, 4, 3)), 'layer2': jnp.zeros((2, 2, 2, 5))}
  out = segcam.feature_attention({'layer1': a1, 'layer2': a2}, gamma, features)
  for name, (a, g) in out.items():
    assert a.shape == g.shape == (2,) + features[name].shape[1:3]
    assert bool(jnp.all(a <= g + 1e-6))
  const = segcam.feature_attention({'layer1': jnp.full((1, 8, 8), 0.3)}, jnp.full((1, 8, 8), 0.6),
                                   {'layer1': jnp.zeros((1, 2, 2, 1))})
  np.testing.assert_allclose(const['layer1'][0], 0.3, rtol=1e-6)
  np.testing.assert_allclose(const['layer1'][1], 0.6, rtol=1e-6)
