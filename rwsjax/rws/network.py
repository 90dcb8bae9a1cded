"""The RWS network (docs/methods.md RWS 2-7, 11): one batch's prediction-region attention,
weak windows under T, the local model on them and the fused forward pass. Stage 3 (on
augmented batches) and inference call the same `fusion_plans`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rwsjax import models
from rwsjax.rws import fusion
from rwsjax.rws import segcam
from rwsjax.rws import slices


def local_size(rws_cfg):
  """Side of the slices as the local model sees them (docs/methods.md RWS 5)."""
  return rws_cfg.local_size or int(round(rws_cfg.slice_size * rws_cfg.local_scale))


def fused_layers(rws_cfg):
  return tuple(f'layer{i}' for i in sorted(set(rws_cfg.fuse_layers)))


class Attention(NamedTuple):
  """Seg-Grad-CAM of a batch restricted to class regions (eq. 1-3).

  result: the `segcam.SegCamResult`.
  regions: (N, H, W) the class map that restricts each heatmap: the prediction, or the
    ground truth (switch `attention_region`).
  maps: layer -> A_i (N, H, W).
  gamma: Gamma (N, H, W), eq. 3.
  """
  result: segcam.SegCamResult
  regions: jax.Array
  maps: dict
  gamma: jax.Array


def attention_maps(model, variables, images, *, num_classes, max_classes, labels=None,
                   valid=None):
  """A_i and Gamma of a batch (eq. 1-3, docs/methods.md RWS 2).

  Without `labels` (switch `attention_region: prediction`, and always at test time) the
  slots hold the classes present in the prediction and H_i^c is kept where c is predicted;
  with `labels` (`ground_truth`) the slots hold the ground-truth classes and H_i^c is kept on
  c's ground truth. `valid` (N, H, W), False on padding, keeps predicted regions on the image
  and makes padding invisible to Seg-Grad-CAM (`segcam.seg_grad_cam`) on both paths.
  """
  if labels is None:
    result = segcam.seg_grad_cam(model, variables, images, max_classes=max_classes, valid=valid)
    regions = jnp.argmax(result.logits, axis=-1)
    if valid is not None:
      regions = jnp.where(valid, regions, -1)
  else:
    classes, _ = segcam.present_classes(labels, num_classes, max_classes)
    result = segcam.seg_grad_cam(model, variables, images, classes=classes, valid=valid)
    regions = labels
  maps = segcam.region_attention(result.heatmaps, result.class_ids, result.class_mask, regions)
  gamma, _ = segcam.gamma_and_omega(maps)
  return Attention(result, regions, maps, gamma)


def region_labels(rws_cfg, labels):
  """The labels `attention_maps` restricts attention with: None for the prediction."""
  return labels if rws_cfg.attention_region == 'ground_truth' else None


def taking_part(result, num_classes, rws_cfg, background_class):
  """(N, K) bool: the classes of each image whose windows count for T and the weak decision.

  A class without a Seg-Grad-CAM slot has unknown attention, not low attention, so it takes
  no part; nor does the background class (`config.dataset.background_class`) unless
  `weak_classes='all'` (docs/methods.md RWS 4).
  """
  slotted = jnp.any((result.class_ids[..., None] == jnp.arange(num_classes))
                    & result.class_mask[..., None], axis=1)
  if rws_cfg.weak_classes == 'foreground' and background_class is not None:
    slotted = slotted.at[:, background_class].set(False)
  return slotted


def window_scores(attention, rws_cfg, num_classes, background_class, labels=None):
  """Window scores (docs/methods.md RWS 3) where only the classes that take part are present.

  Windows are scored with A of the last layer or with Gamma (switch `attention`) over each
  class's region; the IoU against `labels` is computed when they are given.
  """
  per_pixel = attention.maps['layer4'] if rws_cfg.attention == 'last' else attention.gamma
  preds = None if labels is None else jnp.argmax(attention.result.logits, axis=-1)
  scores = slices.score_windows(per_pixel, attention.regions, labels, preds,
                                num_classes=num_classes, size=rws_cfg.slice_size,
                                stride=rws_cfg.slice_stride, min_pixels=rws_cfg.min_pixels)
  part = taking_part(attention.result, num_classes, rws_cfg, background_class)
  return scores._replace(present=scores.present & part[:, None, :])


def choose_slices(scores, threshold, rws_cfg, rng):
  """Up to `max_slices` windows per image: the weakest under T, or as many random windows
  (switch `slices: arbitrary`). Returns index (N, S) and valid (N, S)."""
  weak = slices.weak_mask(scores.attention, scores.present, threshold)
  if rws_cfg.slices == 'arbitrary':
    return slices.select_arbitrary(rng, weak.any(-1), rws_cfg.max_slices)
  return slices.select_top_weak(scores.attention, weak, rws_cfg.max_slices)


def fusion_plans(model, frozen, images, config, rng, labels=None, valid=None):
  """Everything the RWS network adds to a forward pass (docs/methods.md RWS 6, 7, 11).

  The frozen global model's attention on `images`, the weak windows under T, the frozen local
  model's features and attention on those windows (resized by `local_scale`, then brought
  back to the window's footprint on each layer's feature grid), and the selection and weights
  of eq. 5-7. Stage 3 (on augmented batches) and inference call this same function.

  Args:
    model: the segmentation model (all three roles share its architecture).
    frozen: {'global': variables giving A_i, 'local': variables giving F^s and A^s,
      'threshold': T}.
    images: (N, H, W, 3).
    config: the experiment config.
    rng: key for `slices: arbitrary`.
    labels: (N, H, W) ground truth, only with `attention_region: ground_truth` in training.
    valid: optional (N, H, W) bool, False on padding: no window is weak for padding pixels.

  Returns:
    (layer -> `fusion.FusionPlan`, stats {'weak_slices': per image, 'selected': share}).
  """
  rws, k = config.rws, config.dataset.num_classes
  background = config.dataset.background_class
  layers = fused_layers(rws)
  if not layers:
    return {}, {}
  n, height, width = images.shape[:3]
  size, local = rws.slice_size, local_size(rws)
  strides = models.feature_strides(config.model)
  attention = attention_maps(model, frozen['global'], images, num_classes=k,
                             max_classes=rws.max_classes, labels=labels, valid=valid)
  scores = window_scores(attention, rws, k, background)
  index, valid = choose_slices(scores, frozen['threshold'], rws, rng)
  boxes = jnp.asarray(slices.window_boxes(height, width, size, rws.slice_stride))[index]
  crops = slices.crop_windows(images, boxes, size).reshape((-1, size, size, 3))
  crop_labels = None
  if labels is not None:
    crop_labels = slices.crop_windows(labels, boxes, size).reshape((-1, size, size))
  if local != size:
    crops = jax.image.resize(crops, (crops.shape[0], local, local, 3), 'bilinear')
    if crop_labels is not None:
      crop_labels = jax.image.resize(crop_labels, (crops.shape[0], local, local), 'nearest')
  local_attention = attention_maps(model, frozen['local'], crops, num_classes=k,
                                   max_classes=rws.max_classes, labels=crop_labels)

  def on_window(x, name):
    """(N*S, h', w', ...) at the local resolution -> (N, S, h, w, ...) on the window's grid."""
    side = size // strides[name]
    x = x.reshape((n, rws.max_slices) + x.shape[1:])
    if x.shape[2] != side:
      x = jax.image.resize(x, x.shape[:2] + (side, side) + x.shape[4:], 'bilinear')
    return x

  global_maps = segcam.feature_attention(attention.maps, attention.gamma,
                                         attention.result.features)
  local_maps = segcam.feature_attention(local_attention.maps, local_attention.gamma,
                                        local_attention.result.features)
  plans = fusion.fusion_plans(
      global_maps,
      {name: tuple(on_window(m, name) for m in local_maps[name]) for name in layers},
      {name: on_window(local_attention.result.features[name], name) for name in layers},
      boxes, valid, strides, layers=layers, eps=rws.eps, select_omega=rws.select_omega,
      weighted_lambda=rws.weighted_lambda)
  stats = {'weak_slices': jnp.sum(valid) / n,
           'selected': jnp.mean(jnp.stack([p.selected.mean() for p in plans.values()]))}
  return plans, stats


def rws_logits(model, variables, images, config, valid=None):
  """The RWS network at inference (docs/methods.md RWS 11): the refined model with the selected
  local features fused into its layer outputs.

  `variables` = {'model': the refined model, 'global', 'local', 'threshold'} (`frozen` of
  `fusion_plans`). Attention is restricted to the prediction: no ground truth is needed. Any
  image size works (`pad_for_windows`); logits have the input's size. `valid` (N, H, W) marks
  the pixels that are image, not padding.
  """
  height, width = images.shape[1:3]
  if valid is None:
    valid = jnp.ones(images.shape[:3], bool)
  images, valid = pad_for_windows(images, config), pad_for_windows(valid, config)
  plans, _ = fusion_plans(model, variables, images, config, jax.random.key(config.seed),
                          valid=valid)
  logits = model.apply(variables['model'], images, train=False,
                       layer_hook=fusion.layer_hook(plans))
  return logits[:, :height, :width]


def pad_for_windows(x, config):
  """Images (N, H, W, 3) or masks (N, H, W) padded at the bottom and right with zeros (the
  normalised mean; False) so that every window lands on every feature grid
  (`fusion.check_geometry`): sides at least `slice_size` and multiples of the largest feature
  stride. Sizes that already fit are left as they are."""
  stride = max(models.feature_strides(config.model).values())
  size = config.rws.slice_size
  pads = [(0, 0)] + [(0, max(size, -(-n // stride) * stride) - n) for n in x.shape[1:3]]
  if not any(p for _, p in pads):
    return x
  return jnp.pad(x, pads + [(0, 0)] * (x.ndim - 3))


def plain_network(variables):
  """The network dict of `rws_logits` for a model without RWS: no window is weak under T = 0,
  so the fused and the plain prediction are both the model's own."""
  return {'model': variables, 'global': variables, 'local': variables,
          'threshold': jnp.float32(0.0)}


def plain_logits(model, variables, images):
  """The refined network alone (switch `inference: plain`)."""
  return model.apply(variables['model'], images, train=False)


def make_predict_fn(model, config, inference):
  """(variables, batch) -> logits of the RWS network ('fused') or the refined one ('plain');
  batch has 'image' and optionally 'valid'."""
  if inference == 'fused':
    return lambda variables, batch: rws_logits(model, variables, batch['image'], config,
                                               batch.get('valid'))
  return lambda variables, batch: plain_logits(model, variables, batch['image'])
