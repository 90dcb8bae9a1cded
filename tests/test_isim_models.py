"""DeepLabCAM / UNetCAM: parameter groups, output shapes, and the CAM branch against its
definition (global average pooling then a bias-free 1x1 conv; CAM = ReLU of the 1x1 conv)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from isimjax import models

NUM_CLASSES = 4


def model_cfg(**overrides):
  cfg = dict(name='deeplabv3', backbone='resnet18', output_stride=8, width=0.125,
             head_channels=8, upsample='bilinear')
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def init(model, shape=(2, 32, 32, 3)):
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), jnp.zeros(shape))
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


@pytest.fixture(scope='module')
def deeplab():
  model = models.make_cam_model(model_cfg(), NUM_CLASSES)
  return model, init(model)


def test_parameter_tree_has_one_part_per_learning_rate_group(deeplab):
  _, variables = deeplab
  params = variables['params']
  assert set(params) == {'backbone', 'head', 'classifier'}
  assert set(params['classifier']) == {'kernel'}
  assert params['classifier']['kernel'].shape == (1, 1, 64, NUM_CLASSES - 1)


def test_outputs_and_branch_against_pool_then_conv(deeplab):
  model, variables = deeplab
  images = jax.random.normal(jax.random.key(1), (2, 32, 40, 3))
  seg, class_logits = model.apply(variables, images)
  assert seg.shape == (2, 32, 40, NUM_CLASSES) and seg.dtype == jnp.float32
  layer4 = model.apply(variables, images, method=lambda m, x: m.backbone(x)['layer4'])
  assert layer4.shape[1:3] == (4, 5)
  kernel = np.asarray(variables['params']['classifier']['kernel'][0, 0])
  pooled_then_conv = np.asarray(layer4).mean(axis=(1, 2)) @ kernel
  np.testing.assert_allclose(class_logits, pooled_then_conv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model.apply(variables, images, method='classify'),
                             pooled_then_conv, rtol=1e-4, atol=1e-5)
  maps = model.apply(variables, images, method='class_maps')
  np.testing.assert_allclose(np.maximum(maps, 0),
                             np.maximum(np.einsum('nhwc,ck->nhwk', layer4, kernel), 0),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name, upsample', [('deeplabv3plus', 'bilinear'),
                                            ('unet', 'bilinear'), ('unet', 'learnable')])
def test_other_decoders(name, upsample):
  model = models.make_cam_model(model_cfg(name=name, upsample=upsample), NUM_CLASSES)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  seg, class_logits = jax.eval_shape(model.apply, variables, images)
  assert seg.shape == (1, 32, 32, NUM_CLASSES)
  assert class_logits.shape == (1, NUM_CLASSES - 1)
  assert set(variables['params']) == {'backbone', 'head', 'classifier'}
  transposed = [k for k in variables['params']['head'] if k.startswith('up')]
  assert bool(transposed) == (upsample == 'learnable')


def test_classify_trains_without_touching_the_head(deeplab):
  model, variables = deeplab
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))

  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                            images, train=True, method='classify', mutable=['batch_stats'])
    return logits.sum()

  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert all(not np.any(g) for g in jax.tree.leaves(grads['head']))
  assert any(np.any(g) for g in jax.tree.leaves(grads['backbone']))


def test_names_without_a_cam_variant_are_rejected():
  with pytest.raises(ValueError, match="config.model.name='fcn'"):
    models.make_cam_model(model_cfg(name='fcn'), NUM_CLASSES)
  with pytest.raises(ValueError, match='num_classes=1'):
    models.make_cam_model(model_cfg(), 1)


@pytest.mark.parametrize('impl,convolutions', [('lax', 1), ('matmul', 0)])
def test_branch_conv_follows_conv_impl(deeplab, impl, convolutions):
  """config.model.conv_impl reaches the branch's 1x1 conv, as the backbone's and the head's:
  with 'matmul' it is a matrix product, with the same scores."""
  reference, variables = deeplab
  model = models.make_cam_model(model_cfg(conv_impl=impl), NUM_CLASSES)
  assert model.conv_impl == impl
  layer4 = jax.random.normal(jax.random.key(3), (2, 4, 4, 64))
  branch = lambda m, f: m.classifier(f)
  jaxpr = str(jax.make_jaxpr(lambda f: model.apply(variables, f, method=branch))(layer4))
  assert jaxpr.count('conv_general_dilated') == convolutions
  np.testing.assert_allclose(model.apply(variables, layer4, method=branch),
                             reference.apply(variables, layer4, method=branch), rtol=1e-5,
                             atol=1e-5)
