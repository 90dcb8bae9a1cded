"""Multi-scale CAMs: valid-region resizing and flips, aggregation against a per-image loop."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from isimjax import cam

STRIDE = 4


@pytest.mark.parametrize('size, out', [((5, 7), (10, 14)), ((10, 14), (5, 7)),
                                       ((12, 9), (7, 20)), ((3, 3), (3, 3)), ((1, 4), (8, 2))])
def test_resize_valid_matches_jax_resize_of_the_unpadded_array(size, out):
  x = np.random.default_rng(0).normal(size=(*size, 2)).astype(np.float32)
  padded = np.full((size[0] + 3, size[1] + 5, 2), 99.0, np.float32)
  padded[:size[0], :size[1]] = x
  result = np.asarray(cam.resize_valid(jnp.asarray(padded), jnp.array(size, jnp.float32),
                                       jnp.array(out, jnp.float32), (out[0] + 4, out[1] + 2)))
  expected = np.asarray(jax.image.resize(x, (*out, 2), 'bilinear'))
  np.testing.assert_allclose(result[:out[0], :out[1]], expected, atol=1e-5)
  assert not result[out[0]:].any() and not result[:, out[1]:].any()


def test_flip_valid_mirrors_only_the_valid_columns():
  x = np.arange(2 * 6 * 1, dtype=np.float32).reshape(2, 6, 1)
  result = np.asarray(cam.flip_valid(jnp.asarray(x), 4))
  expected = np.zeros_like(x)
  expected[:, :4] = x[:, 3::-1]
  np.testing.assert_array_equal(result, expected)


class ToyCam(nn.Module):
  """A pointwise linear map then subsampling by STRIDE: class maps of size ceil(h / STRIDE),
  independent of padding, and not flip-symmetric (the subsampling keeps left columns)."""
  num_labels: int = 3

  def setup(self):
    self.dense = nn.Dense(self.num_labels)

  def class_maps(self, images):
    return self.dense(images)[:, ::STRIDE, ::STRIDE]

  def __call__(self, images):
    return self.class_maps(images)


def loop_cams(maps_fn, image, labels, scales, flip):
  """docs/methods.md ISIM step 2 for one unpadded image, written as a plain loop."""
  height, width = image.shape[:2]
  total = np.zeros((height, width, len(labels)), np.float32)
  for scale in scales:
    size = (max(int(np.round(height * scale)), 1), max(int(np.round(width * scale)), 1))
    scaled = jax.image.resize(image, (*size, 3), 'bilinear')
    for flipped in ([False, True] if flip else [False]):
      view = scaled[:, ::-1] if flipped else scaled
      cams = np.maximum(np.asarray(maps_fn(view[None]))[0], 0)
      cams = cams[:, ::-1] if flipped else cams
      total += np.asarray(jax.image.resize(cams, (height, width, len(labels)), 'bilinear'))
  for c in range(len(labels)):
    total[..., c] = total[..., c] * labels[c] / (total[..., c].max() * labels[c] + 1e-5)
  return total


@pytest.fixture(scope='module')
def toy():
  model = ToyCam()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  return model, variables


def input_cfg():
  return ml_collections.ConfigDict({'mean': (120.0, 110.0, 100.0), 'std': (60.0, 50.0, 40.0)})


@pytest.mark.parametrize('flip', [True, False])
def test_multi_scale_cams_match_a_per_image_loop(toy, flip):
  model, variables = toy
  maps_fn = lambda x: model.apply(variables, x, method='class_maps')
  scales = (1.0, 0.5, 1.5, 2.0)
  rng = np.random.default_rng(1)
  sizes = np.array([[13, 21], [16, 10]], np.int32)
  images = np.zeros((2, 16, 24, 3), np.float32)
  labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
  for i, (h, w) in enumerate(sizes):
    images[i, :h, :w] = rng.normal(size=(h, w, 3))
  result = np.asarray(jax.jit(
      lambda x, s, l: cam.multi_scale_cams(maps_fn, x, s, l, scales=scales, flip=flip,
                                           stride=STRIDE))(images, sizes, labels))
  for i, (h, w) in enumerate(sizes):
    expected = loop_cams(maps_fn, images[i, :h, :w], labels[i], scales, flip)
    np.testing.assert_allclose(result[i, :h, :w], expected, atol=1e-4)
    assert not result[i, h:].any() and not result[i, :, w:].any()
  assert result.max() < 1 and result.min() >= 0


def test_multi_scale_cams_check_the_stride(toy):
  model, variables = toy
  maps_fn = lambda x: model.apply(variables, x, method='class_maps')
  with pytest.raises(ValueError, match='output stride 8'):
    cam.multi_scale_cams(maps_fn, jnp.zeros((1, 16, 16, 3)), jnp.array([[16, 16]]),
                         jnp.ones((1, 3)), scales=(1.0,), flip=False, stride=8)


@pytest.mark.parametrize('bucket', [0, 16])
def test_extractor_equals_the_loop_on_uint8_images(toy, bucket):
  model, variables = toy
  scales = (1.0, 0.5)
  extractor = cam.CamExtractor(model, input_cfg(), scales=scales, flip=True, stride=STRIDE,
                               batch_size=4, bucket=bucket)
  bound = extractor.bind(variables)
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (3, 13, 21, 3), dtype=np.uint8)
  labels = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1]], np.float32)
  result = bound(images, labels)
  assert result.shape == (3, 3, 13, 21)
  maps_fn = lambda x: model.apply(variables, x, method='class_maps')
  normalized = (images - np.array([120.0, 110.0, 100.0])) / np.array([60.0, 50.0, 40.0])
  for i in range(3):
    expected = loop_cams(maps_fn, normalized[i].astype(np.float32), labels[i], scales, True)
    np.testing.assert_allclose(result[i], expected.transpose(2, 0, 1), atol=1e-4)
  logits = bound.class_logits(images, 3)
  expected_logits = np.asarray(maps_fn(normalized.astype(np.float32))).mean(axis=(1, 2))
  np.testing.assert_allclose(logits, expected_logits, atol=1e-4)


def test_extractor_rejects_a_batch_that_does_not_split_over_devices(toy):
  with pytest.raises(ValueError, match='cam_batch_size=3'):
    cam.CamExtractor(toy[0], input_cfg(), scales=(1.0,), flip=False, stride=STRIDE,
                     batch_size=3)


def test_valid_mean_excludes_padding():
  maps = np.random.default_rng(3).normal(size=(2, 4, 5, 2)).astype(np.float32)
  valid = jnp.array([[4, 5], [2, 3]], jnp.float32)
  result = np.asarray(cam.valid_mean(jnp.asarray(maps), valid))
  np.testing.assert_allclose(result[0], maps[0].mean(axis=(0, 1)), atol=1e-6)
  np.testing.assert_allclose(result[1], maps[1, :2, :3].mean(axis=(0, 1)), atol=1e-6)


def test_bucket_size():
  assert cam.bucket_size((13, 64), 32) == (32, 64)
  assert cam.bucket_size((13, 65), 0) == (13, 65)
