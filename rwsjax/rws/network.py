"""The RWS network (docs/methods.md RWS 2-7, 11): one batch's prediction-region attention,
weak windows under T, the local model on them and the fused forward pass. Stage 3 (on
augmented batches) and inference call the same `fusion_plans`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rwsjax import chunks
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
                   valid=None, pair_chunk=None, class_chunk=None):
  """A_i and Gamma of a batch (eq. 1-3, docs/methods.md RWS 2).

  Without `labels` (switch `attention_region: prediction`, and always at test time) the
  slots hold the classes present in the prediction and H_i^c is kept where c is predicted;
  with `labels` (`ground_truth`) the slots hold the ground-truth classes and H_i^c is kept on
  c's ground truth. `valid` (N, H, W), False on padding, keeps predicted regions on the image
  and makes padding invisible to Seg-Grad-CAM (`segcam.seg_grad_cam`) on both paths;
  `pair_chunk` and `class_chunk` are its ways of running the backward passes.
  """
  if labels is None:
    result = segcam.seg_grad_cam(model, variables, images, max_classes=max_classes, valid=valid,
                                 pair_chunk=pair_chunk, class_chunk=class_chunk)
    regions = jnp.argmax(result.logits, axis=-1)
    if valid is not None:
      regions = jnp.where(valid, regions, -1)
  else:
    classes, _ = segcam.present_classes(labels, num_classes, max_classes)
    result = segcam.seg_grad_cam(model, variables, images, classes=classes, valid=valid,
                                 pair_chunk=pair_chunk, class_chunk=class_chunk)
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
  no part; nor does the background class (`config.dataset.background_class`) under
  `weak_classes='foreground'` (docs/methods.md RWS 4).
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


def slot_count(rws_cfg, num_windows):
  """S, the window slots of an image: every window (`max_slices: 0`, the default: every weak
  window is refined) or at most `max_slices` (docs/methods.md RWS 7)."""
  return min(rws_cfg.max_slices, num_windows) if rws_cfg.max_slices else num_windows


def choose_slices(scores, threshold, rws_cfg, rng):
  """The windows to refine: the weak ones under T, weakest first, or as many random windows
  (switch `slices: arbitrary`), in `slot_count` slots per image.

  Returns index (N, S), valid (N, S) and the number of weak windows of each image (N,), which
  exceeds the valid slots only under a `max_slices` cap.
  """
  weak = slices.weak_mask(scores.attention, scores.present, threshold)
  count = jnp.sum(jnp.any(weak, axis=-1), axis=-1)
  slots = slot_count(rws_cfg, weak.shape[1])
  if rws_cfg.slices == 'arbitrary':
    return (*slices.select_arbitrary(rng, weak.any(-1), slots), count)
  return (*slices.select_top_weak(scores.attention, weak, slots), count)


class WeakSlices(NamedTuple):
  """The windows of a batch that the RWS network refines (docs/methods.md RWS 4, 7, 11).

  attention: the global model's `Attention`.
  boxes: (N, S, 4) int32 window boxes (y0, x0, y1, x1), weakest first.
  valid: (N, S) bool, False on empty slots.
  weak_count: (N,) weak windows of each image; above the valid slots only under a
    `max_slices` cap.
  eligible: (N, W) windows where some class takes part (`window_scores`): only these can be
    weak.
  """
  attention: Attention
  boxes: jax.Array
  valid: jax.Array
  weak_count: jax.Array
  eligible: jax.Array


def weak_slices(model, variables, threshold, images, config, rng, labels=None, valid=None):
  """The global model's attention on `images` and the windows to refine under `threshold`.

  `labels` only with `attention_region: ground_truth` in training; `valid` (N, H, W) False on
  padding, where no region and hence no weak window is."""
  rws, k = config.rws, config.dataset.num_classes
  attention = attention_maps(model, variables, images, num_classes=k,
                             max_classes=rws.max_classes, labels=labels, valid=valid)
  scores = window_scores(attention, rws, k, config.dataset.background_class)
  index, chosen, count = choose_slices(scores, threshold, rws, rng)
  boxes = jnp.asarray(slices.window_boxes(*images.shape[1:3], rws.slice_size,
                                          rws.slice_stride))[index]
  return WeakSlices(attention, boxes, chosen, count, jnp.any(scores.present, axis=-1))


def zoom(crops, side, method='bilinear'):
  """Square crops (M, s, s, ...) resized to (M, side, side, ...) (the local model's view)."""
  if crops.shape[1] == side:
    return crops
  return jax.image.resize(crops, (crops.shape[0], side, side) + crops.shape[3:], method)


def local_outputs(model, variables, crops, config, crop_labels=None, crop_valid=None,
                  with_logits=False):
  """The local model on window crops (docs/methods.md RWS 5-6): per fused layer, A_i^s,
  Gamma_i^s and F_i^s on the window's footprint of that layer's feature grid, and the local
  logits at the window's size. A window holds few classes, so its Seg-Grad-CAM runs one
  backward pass per class slot over the windows of the call and skips the slots that none of
  them fills (`rws.pair_chunk: 0`; `plans_for` orders the windows by their classes in the
  global prediction, `window_classes`), or a forward and backward pass per filled (window,
  class) pair, `rws.pair_chunk` pairs per call; all give the same maps.

  Args:
    crops: (M, s, s, 3) window crops at the global scale (s = slice_size); the model sees them
      resized to `local_size`.
    crop_labels: (M, s, s) ground truth, only with `attention_region: ground_truth`.
    crop_valid: optional (M, s, s) bool, False where a window reaches into padding.

  Returns:
    {'layers': layer -> (A (M, h, w), Gamma (M, h, w), F (M, h, w, ch))}, with 'logits'
    (M, s, s, K) when `with_logits`.
  """
  rws, size = config.rws, config.rws.slice_size
  strides = models.feature_strides(config.model)
  side = local_size(rws)
  if crop_labels is not None:
    crop_labels = zoom(crop_labels, side, 'nearest')
  if crop_valid is not None:
    crop_valid = zoom(crop_valid, side, 'nearest')
  attention = attention_maps(model, variables, zoom(crops, side),
                             num_classes=config.dataset.num_classes,
                             max_classes=rws.max_classes, labels=crop_labels, valid=crop_valid,
                             pair_chunk=rws.pair_chunk or None,
                             class_chunk=None if rws.pair_chunk else 1)
  maps = segcam.feature_attention(attention.maps, attention.gamma, attention.result.features)
  layers = {}
  for name in fused_layers(rws):
    footprint = size // strides[name]
    a, g = (zoom(m, footprint) for m in maps[name])
    layers[name] = (a, g, zoom(attention.result.features[name], footprint))
  out = {'layers': layers}
  if with_logits:
    out['logits'] = zoom(attention.result.logits, size)
  return out


def fusion_plans(model, frozen, images, config, rng, labels=None, valid=None):
  """Everything the RWS network adds to a forward pass (docs/methods.md RWS 6, 7, 11).

  The frozen global model's attention on `images`, the weak windows under T (every one, or
  at most `max_slices` per image), the frozen local model's features and attention on them
  (`local_outputs`, `rws.slice_chunk` windows per call), and the selection and weights of eq.
  5-7. Stage 3 (on augmented batches) and inference call this same function.

  Args:
    model: the segmentation model (all three roles share its architecture).
    frozen: {'global': variables giving A_i, 'local': variables giving F^s and A^s,
      'threshold': T, a scalar or one per class (K,) (`analysis.network_threshold`)}.
    images: (N, H, W, 3).
    config: the experiment config.
    rng: key for `slices: arbitrary`.
    labels: (N, H, W) ground truth, only with `attention_region: ground_truth` in training.
    valid: optional (N, H, W) bool, False on padding: no window is weak for padding pixels.

  Returns:
    (layer -> `fusion.FusionPlan`, stats per image: 'weak_slices' refined, 'left_out' weak
    windows beyond the `max_slices` cap, and 'selected', the share of selected feature pixels).
  """
  if not fused_layers(config.rws):
    return {}, {}
  found = weak_slices(model, frozen['global'], frozen['threshold'], images, config, rng,
                      labels=labels, valid=valid)
  return plans_for(model, frozen['local'], found, images, config, labels, valid)


def window_classes(regions, boxes, config):
  """(N * S,) the classes (at most `rws.max_classes`) of each window's region map (the global
  prediction), the order `plans_for` gives the windows in (time only, not results): a proxy
  for the class slots the local model's Seg-Grad-CAM fills there, which it predicts weakly
  (BENCHMARKS.md, RWS inference)."""
  size, k = config.rws.slice_size, config.dataset.num_classes
  crops = slices.crop_windows(regions, boxes, size).reshape((-1, size, size))
  return jnp.sum(segcam.present_classes(crops, k, config.rws.max_classes)[1], axis=-1)


def plans_for(model, local_variables, found, images, config, labels=None, valid=None,
              with_logits=False):
  """(plans, stats) of `fusion_plans` for the windows `found` (`weak_slices`), and with
  `with_logits` the local logits of each slot (N, S, s, s, K) too. `labels` and `valid` as
  in `fusion_plans`."""
  rws = config.rws
  n, size = images.shape[0], rws.slice_size
  slots = found.boxes.shape[1]
  inputs = {'crops': slices.crop_windows(images, found.boxes, size).reshape((-1, size, size, 3))}
  if labels is not None:
    inputs['labels'] = slices.crop_windows(labels, found.boxes, size).reshape((-1, size, size))
  if valid is not None:
    inputs['valid'] = slices.crop_windows(valid, found.boxes, size).reshape((-1, size, size))
  attention = found.attention
  local = chunks.map_selected(
      lambda x: local_outputs(model, local_variables, x['crops'], config, x.get('labels'),
                              x.get('valid'), with_logits),
      inputs, found.valid.reshape(-1), rws.slice_chunk,
      order_by=window_classes(attention.regions, found.boxes, config))
  per_image = lambda x: x.reshape((n, slots) + x.shape[1:])
  global_maps = segcam.feature_attention(attention.maps, attention.gamma,
                                         attention.result.features)
  layers = {name: tuple(per_image(x) for x in maps) for name, maps in local['layers'].items()}
  plans = fusion.fusion_plans(
      global_maps, {name: maps[:2] for name, maps in layers.items()},
      {name: maps[2] for name, maps in layers.items()}, found.boxes, found.valid,
      models.feature_strides(config.model), layers=tuple(layers), eps=rws.eps,
      select_omega=rws.select_omega, weighted_lambda=rws.weighted_lambda)
  refined = jnp.sum(found.valid, axis=-1)
  stats = {'weak_slices': jnp.mean(refined),
           'left_out': jnp.mean(found.weak_count - jnp.minimum(found.weak_count, refined)),
           'selected': jnp.mean(jnp.stack([p.selected.mean() for p in plans.values()]))
                       if plans else jnp.float32(0)}  # fuse_layers=(): nothing is fused
  if with_logits:
    return plans, stats, per_image(local['logits'])
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


def pad_for_windows(x, config, value=0):
  """Images (N, H, W, 3) or masks (N, H, W) padded at the bottom and right with `value` (0:
  the normalised mean; False) so that every window lands on every feature grid
  (`fusion.check_geometry`): sides at least `slice_size` and multiples of the largest feature
  stride. Sizes that already fit are left as they are."""
  stride = max(models.feature_strides(config.model).values())
  size = config.rws.slice_size
  pads = [(0, 0)] + [(0, max(size, -(-n // stride) * stride) - n) for n in x.shape[1:3]]
  if not any(p for _, p in pads):
    return x
  return jnp.pad(x, pads + [(0, 0)] * (x.ndim - 3), constant_values=value)


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
