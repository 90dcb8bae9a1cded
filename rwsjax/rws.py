"""Refined Weak Slices: the three-stage pipeline in rounds (paper 000, docs/methods.md RWS 1-10).

Stage 1 trains the global model. Each round then (a) scores every sliding window of the
training images with the global model's Seg-Grad-CAM attention and IoU, derives the threshold
T from the IoU-vs-attention curve and lists the weak slices, (b) trains a local model of the
same architecture and initialisation on the weak-slice crops (stage 2), and (c) retrains the
global model with the selected local features fused into its four stage outputs (stage 3).
Stage 3 computes everything per batch inside one jitted step: the frozen global model's
attention on the augmented crop, that crop's weak windows under the saved T, the frozen local
model's features and attention on them, selection, and the fused forward pass. Nothing per
image is stored but the (example, window) pairs of stage 2.

Every stage checkpoints; rerunning the command resumes at the stage and step where a killed run
stopped, and finished stages and analyses are read back from the workdir.
"""
import functools
import json
import os
from typing import NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import figures
from rwsjax import fusion
from rwsjax import losses
from rwsjax import models
from rwsjax import preflight
from rwsjax import record
from rwsjax import segcam
from rwsjax import slices
from rwsjax import supervised
from rwsjax import train
from rwsjax.data import pipeline
from rwsjax.progress import MetricWriter, Progress, cached_json, median_seconds


def default_config():
  """config.rws: every RWS setting and ablation switch (docs/methods.md RWS), with its default."""
  c = ml_collections.ConfigDict()
  c.stage1_steps = 600          # global model (stage 1)
  c.stage2_steps = 300          # local model on weak slices, per round
  c.stage3_steps = 300          # refined global model, per round
  c.stage3_init = "stage1"      # stage1: continue the global model's weights and optimizer
                                # state after a warm-up from its final rate | fresh: from the
                                # initial weights with a full schedule
  c.stage3_lr = 0.01            # stage 3's peak rate (after the warm-up; fresh: initial rate)
  c.stage3_warmup = 0           # steps of the linear warm-up (stage3_init=stage1)
  c.slice_size = 128            # window side in pixels (paper Fig. 10)
  c.slice_stride = 64
  c.local_scale = 2.0           # slices are resized by this factor for the local model
  c.local_size = 0              # side the slice crops are resized to; 0 = local_scale * size
  c.local_batch_size = 16       # global batch of stage 2
  c.local_init = "global"       # local model fine-tuned from the current global model, so
                                # its features share the global model's channels (global) |
                                # trained from the global model's initialisation (init)
  c.attention_region = "prediction"  # A_i^c restricted to the predicted (eq. 2) or the
                                     # ground-truth region of c (training only)
  c.attention = "last"          # window attention from A_layer4 (last) or Gamma (gamma)
  c.max_classes = 6             # Seg-Grad-CAM class slots per image (most frequent classes)
  c.weak_rule = "curve"         # curve: T from the IoU-attention curve | fixed: T = t_fixed
  c.t_fixed = 0.3
  c.t_rule = "first_flat"       # first_flat: lowest flat point (paper) | last_flat
  c.t_bins = 20
  c.t_slope = 0.02
  c.t_slope_unit = "attention"  # slope per unit of attention | per bin step
  c.t_min_share = 0.01          # share of a class's windows a bin needs to be on the curve
  c.t_min_windows = 10          # windows a class needs to take part in T
  c.min_pixels = 1              # region pixels of a class for it to count in a window
  c.slices = "weak"             # weak | arbitrary (ablation: random windows, same count)
  c.weak_classes = "foreground"  # foreground: config.dataset.background_class takes no part
                                 # in T or the weak decision | all
  c.select_omega = True         # eq. 5 selection; False = integrate every weak-slice pixel
  c.weighted_lambda = True      # eq. 7 lambda; False = n 0.5
  c.eps = 1e-3                  # omega threshold of eq. 5
  c.fuse_layers = (1, 2, 3, 4)  # stage outputs fused in stage 3; () = plain fine-tuning
  c.max_slices = 4              # weak slices per image fused in one batch
  c.max_rounds = 4
  c.min_weak_delta = 20         # stop when the weak-slice count changes less than this
  c.inference = "fused"         # the RWS network (fused) | the refined network alone (plain)
  c.baseline = True             # also train the equal-budget supervised baseline
  return c


def paper_config(*, dataset, num_classes, crop_size, batch_size, eval_pad_size, lr,
                 weight_decay, iterations, max_classes, background_class=None, max_slices=4,
                 eval_batch_size=None):
  """A full experiment config with the RWS paper's section V settings for a real dataset.

  DeepLabv3 on ResNet-101 at output stride 8, SGD with momentum 0.9 and poly decay at `lr`
  and `weight_decay`, 128 x 128 slices at stride 64. The paper gives one iteration count for
  its three training stages: it is stage 1's here, and stages 2 and 3 of each round run a
  third of it each. `background_class` is the dataset's background (VOC: 0; None where class
  0 is a real class). `eval_batch_size` defaults to `batch_size`.
  """
  config = config_lib.base_config()
  config.method = "rws"
  config.dataset.name = dataset
  config.dataset.num_classes = num_classes
  config.dataset.background_class = background_class
  config.input.crop_size = crop_size
  config.input.batch_size = batch_size
  config.input.eval_batch_size = eval_batch_size or batch_size
  config.input.eval_pad_size = eval_pad_size
  config.model.name = "deeplabv3"
  config.model.backbone = "resnet101"
  config.model.output_stride = 8
  config.model.width = 1.0
  config.model.head_channels = 256
  config.train.optimizer = "sgd"
  config.train.momentum = 0.9
  config.train.lr = lr
  config.train.weight_decay = weight_decay
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.rws = default_config()
  config.rws.stage1_steps = iterations
  config.rws.stage2_steps = iterations // 3
  config.rws.stage3_steps = iterations // 3
  config.rws.stage3_lr = lr
  config.rws.stage3_warmup = iterations // 30
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
  config.rws.min_pixels = 128 * 128 // 16
  config.rws.local_batch_size = 16
  config.rws.max_classes = max_classes
  config.rws.max_slices = max_slices
  return config


def shrink_for_smoke(config):
  """`rwsjax.config.shrink_for_smoke` plus one round of two-step stages on 16 x 16 slices of
  a ResNet-18: seconds on a CPU core."""
  config_lib.shrink_for_smoke(config)
  config.model.backbone = "resnet18"
  config.rws.stage1_steps = 2
  config.rws.stage2_steps = 2
  config.rws.stage3_steps = 2
  config.rws.stage3_warmup = 1
  config.rws.slice_size = 16
  config.rws.slice_stride = 8
  config.rws.min_pixels = 16 * 16 // 16
  config.rws.local_batch_size = 4
  config.rws.t_min_windows = 1
  config.rws.max_rounds = 1
  return config


CHOICES = {"stage3_init": ("stage1", "fresh"), "local_init": ("global", "init"),
           "attention_region": ("prediction", "ground_truth"), "attention": ("last", "gamma"),
           "weak_rule": ("curve", "fixed"), "t_rule": slices.T_RULES,
           "t_slope_unit": slices.SLOPE_UNITS, "slices": ("weak", "arbitrary"),
           "weak_classes": ("foreground", "all"), "inference": ("fused", "plain")}


def check_config(config):
  """Raises one clear ValueError for an RWS setting no stage could use."""
  rws = config.rws
  for key, choices in CHOICES.items():
    if rws[key] not in choices:
      raise ValueError(f"config.rws.{key}={rws[key]!r}; expected one of {tuple(choices)}.")
  if any(i not in (1, 2, 3, 4) for i in rws.fuse_layers):
    raise ValueError(f"config.rws.fuse_layers={tuple(rws.fuse_layers)}; expected a subset of "
                     "(1, 2, 3, 4).")
  background = config.dataset.get("background_class")
  if background is not None and not 0 <= background < config.dataset.num_classes:
    raise ValueError(f"config.dataset.background_class={background} is not a class of the "
                     f"{config.dataset.num_classes} classes; use None when there is none.")
  if not 0 <= rws.t_min_share < 1:
    raise ValueError(f"config.rws.t_min_share={rws.t_min_share}; expected a share in [0, 1).")
  if rws.local_scale <= 0:
    raise ValueError(f"config.rws.local_scale={rws.local_scale} must be positive.")
  strides = models.feature_strides(config.model)
  sizes = [pipeline.pair(config.input.crop_size)]
  if config.input.get("eval_pad_size") is not None:
    sizes.append(pipeline.pair(config.input.eval_pad_size))
  for height, width in sizes:
    fusion.check_geometry(height, width, rws.slice_size, rws.slice_stride, strides)
  if local_size(rws) % max(strides.values()):
    raise ValueError(f"The local model's input side {local_size(rws)} (config.rws.local_scale "
                     f"x slice_size, or local_size) must be a multiple of the largest feature "
                     f"stride {max(strides.values())}.")


def local_size(rws_cfg):
  """Side of the slices as the local model sees them (docs/methods.md RWS 5)."""
  return rws_cfg.local_size or int(round(rws_cfg.slice_size * rws_cfg.local_scale))


def fused_layers(rws_cfg):
  return tuple(f"layer{i}" for i in sorted(set(rws_cfg.fuse_layers)))


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
  c's ground truth. `valid` (N, H, W), False on padding, keeps predicted regions on the image.
  """
  if labels is None:
    result = segcam.seg_grad_cam(model, variables, images, max_classes=max_classes)
    regions = jnp.argmax(result.logits, axis=-1)
    if valid is not None:
      regions = jnp.where(valid, regions, -1)
  else:
    classes, _ = segcam.present_classes(labels, num_classes, max_classes)
    result = segcam.seg_grad_cam(model, variables, images, classes=classes)
    regions = labels
  maps = segcam.region_attention(result.heatmaps, result.class_ids, result.class_mask, regions)
  gamma, _ = segcam.gamma_and_omega(maps)
  return Attention(result, regions, maps, gamma)


def region_labels(rws_cfg, labels):
  """The labels `attention_maps` restricts attention with: None for the prediction."""
  return labels if rws_cfg.attention_region == "ground_truth" else None


def taking_part(result, num_classes, rws_cfg, background_class):
  """(N, K) bool: the classes of each image whose windows count for T and the weak decision.

  A class without a Seg-Grad-CAM slot has unknown attention, not low attention, so it takes
  no part; nor does the background class (`config.dataset.background_class`) unless
  `weak_classes='all'` (docs/methods.md RWS 4).
  """
  slotted = jnp.any((result.class_ids[..., None] == jnp.arange(num_classes))
                    & result.class_mask[..., None], axis=1)
  if rws_cfg.weak_classes == "foreground" and background_class is not None:
    slotted = slotted.at[:, background_class].set(False)
  return slotted


def window_scores(attention, rws_cfg, num_classes, background_class, labels=None):
  """Window scores (docs/methods.md RWS 3) where only the classes that take part are present.

  Windows are scored with A of the last stage or with Gamma (switch `attention`) over each
  class's region; the IoU against `labels` is computed when they are given.
  """
  per_pixel = attention.maps["layer4"] if rws_cfg.attention == "last" else attention.gamma
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
  if rws_cfg.slices == "arbitrary":
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
  background = config.dataset.get("background_class")
  layers = fused_layers(rws)
  if not layers:
    return {}, {}
  n, height, width = images.shape[:3]
  size, local = rws.slice_size, local_size(rws)
  strides = models.feature_strides(config.model)
  attention = attention_maps(model, frozen["global"], images, num_classes=k,
                             max_classes=rws.max_classes, labels=labels, valid=valid)
  scores = window_scores(attention, rws, k, background)
  index, valid = choose_slices(scores, frozen["threshold"], rws, rng)
  boxes = jnp.asarray(slices.window_boxes(height, width, size, rws.slice_stride))[index]
  crops = slices.crop_windows(images, boxes, size).reshape((-1, size, size, 3))
  crop_labels = None
  if labels is not None:
    crop_labels = slices.crop_windows(labels, boxes, size).reshape((-1, size, size))
  if local != size:
    crops = jax.image.resize(crops, (crops.shape[0], local, local, 3), "bilinear")
    if crop_labels is not None:
      crop_labels = jax.image.resize(crop_labels, (crops.shape[0], local, local), "nearest")
  local_attention = attention_maps(model, frozen["local"], crops, num_classes=k,
                                   max_classes=rws.max_classes, labels=crop_labels)

  def on_window(x, name):
    """(N*S, h', w', ...) at the local resolution -> (N, S, h, w, ...) on the window's grid."""
    side = size // strides[name]
    x = x.reshape((n, rws.max_slices) + x.shape[1:])
    if x.shape[2] != side:
      x = jax.image.resize(x, x.shape[:2] + (side, side) + x.shape[4:], "bilinear")
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
  stats = {"weak_slices": jnp.sum(valid) / n,
           "selected": jnp.mean(jnp.stack([p.selected.mean() for p in plans.values()]))}
  return plans, stats


def rws_logits(model, variables, images, config, valid=None):
  """The RWS network at inference (docs/methods.md RWS 11): the refined model with the selected
  local features fused into its stage outputs.

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
  logits = model.apply(variables["model"], images, train=False,
                       stage_hook=fusion.stage_hook(plans))
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
  return {"model": variables, "global": variables, "local": variables,
          "threshold": jnp.float32(0.0)}


def plain_logits(model, variables, images):
  """The refined network alone (switch `inference: plain`)."""
  return model.apply(variables["model"], images, train=False)


def make_predict_fn(model, config, inference):
  """(variables, batch) -> logits of the RWS network ('fused') or the refined one ('plain');
  batch has 'image' and optionally 'valid'."""
  if inference == "fused":
    return lambda variables, batch: rws_logits(model, variables, batch["image"], config,
                                               batch.get("valid"))
  return lambda variables, batch: plain_logits(model, variables, batch["image"])


def fusion_loss(model, config):
  """Stage-3 loss (docs/methods.md RWS 7): cross-entropy of the network with `fusion_plans` applied
  to the augmented batch. `extra` is `fusion_plans`' `frozen`."""
  labelled = config.rws.attention_region == "ground_truth"

  def loss_fn(params, batch_stats, batch, rng, extra):
    plan_rng, dropout_rng = jax.random.split(rng)
    plans, stats = fusion_plans(model, extra, batch["image"], config, plan_rng,
                                labels=batch["label"] if labelled else None,
                                valid=batch.get("valid"))
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                  train=True, mutable=["batch_stats"],
                                  rngs={"dropout": dropout_rng},
                                  stage_hook=fusion.stage_hook(plans))
    loss = losses.cross_entropy(logits, batch["label"])
    return loss, (updates.get("batch_stats", batch_stats), stats)

  return loss_fn


def make_scorer(model, config):
  """Jitted (variables, images, labels, valid) -> window attention, IoU and presence (N, W, K)
  over the whole image (docs/methods.md RWS 3)."""
  rws, k = config.rws, config.dataset.num_classes
  background = config.dataset.get("background_class")

  @jax.jit
  def score(variables, images, labels, valid):
    attention = attention_maps(model, variables, images, num_classes=k,
                               max_classes=rws.max_classes, labels=region_labels(rws, labels),
                               valid=valid)
    scores = window_scores(attention, rws, k, background, labels=labels)
    return scores.attention, scores.iou, scores.present
  return score


def threshold(counts, sums, rws_cfg):
  """T, per-class T_c and the curves from the dataset's histogram (docs/methods.md RWS 4); with
  `weak_rule: fixed` T is `t_fixed` and the curve is still reported."""
  t, per_class, curves = slices.threshold_from_histogram(
      counts, sums, rule=rws_cfg.t_rule, slope=rws_cfg.t_slope,
      slope_unit=rws_cfg.t_slope_unit, min_share=rws_cfg.t_min_share,
      min_windows=rws_cfg.t_min_windows)
  if rws_cfg.weak_rule == "fixed":
    t = float(rws_cfg.t_fixed)
  return t, per_class, curves


def weak_windows(entries, num_images, num_windows, threshold_value, num_classes):
  """Weak windows from the scored (image, window, class, attention) entries of a split.

  A window is weak when a class that takes part in it has attention below T (docs/methods.md RWS
  4). Returns the (num_images, num_windows) weak mask and, per class, the windows where it
  takes part and those where it is weak.
  """
  image, window, cls, attention = entries
  weak_entry = attention < threshold_value
  weak = np.zeros((num_images, num_windows), bool)
  weak[image[weak_entry], window[weak_entry]] = True
  scored = np.bincount(cls, minlength=num_classes)
  weak_per_class = np.bincount(cls[weak_entry], minlength=num_classes)
  return weak, scored, weak_per_class


def _share(part, whole):
  return float(part / whole) if whole else None


def analyze(model, variables, source, config, mesh, directory, names):
  """Scores every window of the training split, computes T and lists the weak slices.

  Writes `directory/slices_process<i>.npz` (boxes (M, 5) rows (example index, y0, x0, y1, x1)
  of this process's part of the split) and returns a JSON-ready dict: T, per-class T, the
  curve, the weak-slice count over all processes and the share of weak windows per class and
  overall. Only the scored (window, class) entries are kept, never a (images, windows,
  classes) array.
  """
  rws, k = config.rws, config.dataset.num_classes
  score = make_scorer(model, config)
  batches, count = supervised.eval_batches(source, config, mesh)
  height, width = batches[0]["label"].shape[1:3]
  boxes = slices.window_boxes(height, width, rws.slice_size, rws.slice_stride)
  hist, entries, indices = None, [], []
  progress = Progress("analysis", count)
  for i in range(count):
    batch = batches[i]
    device = train.to_device({key: batch[key] for key in ("image", "label", "valid")}, mesh)
    attention, iou, present = (train.to_host(x, mesh) for x in score(
        variables, device["image"], device["label"], device["valid"]))
    keep = batch["mask"]
    present = present & keep[:, None, None]
    counts, sums = slices.curve_histogram(attention, iou, present, bins=rws.t_bins)
    hist = (counts, sums) if hist is None else (hist[0] + counts, hist[1] + sums)
    image, window, cls = np.nonzero(present[keep])
    entries.append((image + sum(len(x) for x in indices), window, cls,
                    attention[keep][image, window, cls]))
    indices.append(batch["index"][keep])
    if (i + 1) % max(1, count // 4) == 0:
      progress.log(i + 1)
  counts, sums = (multihost_utils.process_allgather(x).sum(0) if jax.process_count() > 1 else x
                  for x in hist)
  t, per_class, curves = threshold(counts, sums, rws)
  example = np.concatenate(indices)
  entries = tuple(np.concatenate(column) for column in zip(*entries))
  weak, scored, weak_per_class = weak_windows(entries, len(example), len(boxes), t, k)
  if rws.slices == "arbitrary":
    weak = np.asarray(slices.arbitrary_windows(
        jax.random.fold_in(jax.random.key(config.seed), jax.process_index()), weak))
  image, window = np.nonzero(weak)
  weak_boxes = np.concatenate([example[image, None], boxes[window]], axis=1).astype(np.int32)
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, f"slices_process{jax.process_index()}.npz"), boxes=weak_boxes)
  totals = np.array([len(weak_boxes), weak.size, *scored, *weak_per_class], np.int64)
  if jax.process_count() > 1:
    totals = multihost_utils.process_allgather(totals).sum(0)
  num_weak, num_windows = int(totals[0]), int(totals[1])
  scored, weak_per_class = totals[2:2 + k], totals[2 + k:]
  return {"threshold": t,
          "per_class_threshold": [None if np.isnan(v) else float(v) for v in per_class],
          "weak_slices": num_weak, "windows": num_windows,
          "weak_share": _share(num_weak, num_windows),
          "weak_share_per_class": {name: _share(weak_per_class[c], scored[c])
                                   for c, name in enumerate(names)},
          "curve": {"centres": curves["centres"].tolist(),
                    "mean_iou": np.where(np.isnan(curves["mean_iou"]), -1.0,
                                         curves["mean_iou"]).tolist(),
                    "counts": curves["counts"].tolist(),
                    "kept": curves["kept"].tolist()}}


def load_weak_boxes(directory):
  return np.load(os.path.join(directory, f"slices_process{jax.process_index()}.npz"))["boxes"]


def should_stop(counts, min_weak_delta):
  """Round stop rule (docs/methods.md RWS 8): no weak slices, or the count changed by < delta."""
  if counts[-1] == 0:
    return True
  return len(counts) > 1 and abs(counts[-1] - counts[-2]) < min_weak_delta


def save_round_figures(directory, model, variables, source, analysis, config, names):
  """Heatmaps per layer (Fig. 5), this round's weak slices on images, and the T curve (Fig. 2)."""
  rws, count = config.rws, min(config.figures.num_examples, len(source))
  batch = pipeline.eval_dataset(source, config.input, batch_size=count)[0]
  normalized, labels = batch["image"], batch["label"]
  images = np.clip(np.round(pipeline.denormalize(normalized, config.input)), 0,
                   255).astype(np.uint8)
  fn = jax.jit(functools.partial(attention_maps, model, num_classes=config.dataset.num_classes,
                                 max_classes=rws.max_classes))
  attention = jax.device_get(fn(variables, normalized, labels=region_labels(rws, labels),
                                valid=batch["valid"]))
  figures.save_heatmaps(os.path.join(directory, "heatmaps.png"), images, labels, attention.maps,
                        attention.gamma, names)
  boxes = load_weak_boxes(directory)
  figures.save_slices(os.path.join(directory, "weak_slices.png"), images,
                      [boxes[boxes[:, 0] == i, 1:] for i in range(count)])
  figures.save_threshold_curve(os.path.join(directory, "threshold_curve.png"), analysis["curve"],
                               analysis["threshold"], analysis["per_class_threshold"], names)


NETWORK_TITLES = {"plain": "RWS plain: refined network alone",
                  "fused": "RWS fused: the RWS network"}  # config.rws.inference -> title


def results_table(summary, names):
  """Markdown: stage 1, baseline and RWS (plain and fused) mIoU and per-class IoU, the
  inference cost, then T, weak slices and their share per round."""
  total = summary["total_steps"]
  rows = [("stage 1 only", summary["stage1"]),
          (f"baseline ({total} steps)", summary.get("baseline")),
          (f"{NETWORK_TITLES['plain']} ({total} steps)", summary["rws_plain"]),
          (f"{NETWORK_TITLES['fused']} ({total} steps)", summary["rws_fused"])]
  lines = [evaluate_lib.miou_table(summary["eval_split"],
                                   [(title, r) for title, r in rows if r is not None], names)]
  cost = summary["inference_ms_per_image"]
  lines += ["", f"Inference: {cost['plain']:.1f} ms per image plain, {cost['fused']:.1f} ms "
            f"fused ({cost['fused'] / cost['plain']:.2f}x), batch {cost['batch']}.",
            "", "| round | T | weak slices | weak share | mIoU after round (plain / fused) |",
            "|---|---|---|---|---|"]
  for r in summary["rounds"]:
    after = ("-" if "miou_plain" not in r
             else f"{r['miou_plain']:.4f} / {r['miou_fused']:.4f}")
    share = "-" if r["weak_share"] is None else f"{r['weak_share']:.1%}"
    lines.append(f"| {r['round']} | {r['threshold']:.3f} | {r['weak_slices']} | {share} | "
                 f"{after} |")
  return "\n".join(lines)


def inference_cost(eval_steps, network, batch, mesh, repeats=3):
  """Milliseconds per image of each jitted eval step (plain and fused network) on one eval
  batch: median of `repeats` timed calls after a warm-up call, measured one after another in
  this process."""
  device = train.to_device(batch, mesh)
  cost = {name: 1000 * median_seconds(lambda step=step: step(network, device), repeats)
          / len(batch["image"]) for name, step in eval_steps.items()}
  return dict(cost, batch=len(batch["image"]))


def schedule_config(config, round_index, stage3_init):
  """(train config, optimizer offset, warm-up start rate) of round `round_index`'s stage 3.

  `stage1` continues the previous model's optimizer, whose step count goes on: the schedule
  is shifted by the steps before it and warms up linearly from the previous rate to
  `stage3_lr`, then decays (docs/methods.md RWS 7). `fresh` restarts with a full poly schedule.
  """
  rws = config.rws
  if stage3_init == "fresh":
    return _with(config.train, lr=rws.stage3_lr), 0, 0.0
  offset = rws.stage1_steps + (round_index - 1) * rws.stage3_steps
  if round_index == 1:
    previous = train.poly_schedule(config.train.lr, rws.stage1_steps, config.train.poly_power,
                                   config.train.warmup_steps)(rws.stage1_steps - 1)
  else:
    previous = train.poly_schedule(rws.stage3_lr, rws.stage3_steps, config.train.poly_power,
                                   rws.stage3_warmup)(rws.stage3_steps - 1)
  cfg = _with(config.train, lr=rws.stage3_lr, warmup_steps=rws.stage3_warmup)
  return cfg, offset, float(previous)


def run(config, workdir):
  """All RWS stages and rounds, the equal-budget baseline, the table, summary.json, figures."""
  preflight.for_training(config, workdir, check_config)
  rws = config.rws
  mesh = train.make_mesh(config.num_devices)
  train_source = data.get_source(config.dataset, config.dataset.train_split)
  eval_source = data.get_source(config.dataset, config.dataset.eval_split)
  names = data.class_names(config.dataset)
  model = models.build_model(config.model, config.dataset.num_classes)
  rng = jax.random.key(config.seed)
  init = supervised.initial_variables(model, config, rng)
  writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
  step_rng = jax.random.fold_in(rng, 1)
  predict = {name: make_predict_fn(model, config, name) for name in ("plain", "fused")}
  eval_steps = {name: train.make_eval_step(model, config.dataset.num_classes, mesh, fn)
                for name, fn in predict.items()}

  def train_supervised(stage, variables, batches, steps, lr):
    tx = train.make_optimizer(_with(config.train, lr=lr), steps)
    return train.train_stage(workdir=workdir, stage=stage, loss_fn=train.supervised_loss(model),
                             tx=tx, variables=variables, batches=batches, total_steps=steps,
                             train_cfg=config.train, mesh=mesh, rng=step_rng, writer=writer)

  def evaluation(path, network, inference="plain"):
    """The eval split's IoU of `network` (an RWS network dict), cached at workdir/path."""
    def compute():
      batches, count = supervised.eval_batches(eval_source, config, mesh)
      confusion = train.evaluate(eval_steps[inference], network, batches, mesh, count)
      return evaluate_lib.summarize(confusion, names)
    return cached_json(os.path.join(workdir, path), compute)

  batches = supervised.train_batches(train_source, config, mesh, seed=config.seed)
  state = train_supervised("stage1", init, batches, rws.stage1_steps, config.train.lr)
  global_variables = state.variables
  network = plain_network(global_variables)
  stage1_eval = evaluation("stage1/eval.json", network)
  final = {"plain": stage1_eval, "fused": stage1_eval}
  total_steps, rounds, counts = rws.stage1_steps, [], []
  for r in range(1, rws.max_rounds + 1):
    directory = os.path.join(workdir, f"round_{r}")
    analysis = cached_json(
        os.path.join(directory, "analysis.json"),
        lambda: analyze(model, global_variables, train_source, config, mesh, directory, names))
    counts.append(analysis["weak_slices"])
    logging.info("Round %d: T = %.3f, %d weak slices (%.1f%% of the windows).", r,
                 analysis["threshold"], counts[-1], 100 * (analysis["weak_share"] or 0))
    row = {key: analysis[key] for key in ("threshold", "per_class_threshold", "weak_slices",
                                          "windows", "weak_share", "weak_share_per_class")}
    row["round"] = r
    rounds.append(row)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(directory, "heatmaps.png")):
      save_round_figures(directory, model, global_variables, train_source, analysis, config, names)
    if should_stop(counts, rws.min_weak_delta):
      row["trained"] = False
      break
    weak_boxes = load_weak_boxes(directory)
    crop_batches = pipeline.crop_dataset(
        train_source, weak_boxes, config.input, seed=config.seed + r,
        batch_size=train.local_batch_size(rws.local_batch_size, mesh), out_size=local_size(rws))
    local_start = init if rws.local_init == "init" else global_variables
    local_state = train_supervised(f"round_{r}/stage2", local_start,
                                   lambda start, ds=crop_batches: pipeline.prefetch(ds, start),
                                   rws.stage2_steps, config.train.lr)
    stage3_cfg, offset, warmup_from = schedule_config(config, r, rws.stage3_init)
    tx = train.make_optimizer(stage3_cfg, rws.stage3_steps, offset=offset,
                              warmup_from=warmup_from)
    continued = rws.stage3_init == "stage1"
    frozen = {"global": global_variables, "local": local_state.variables,
              "threshold": jnp.float32(analysis["threshold"])}
    state = train.train_stage(
        workdir=workdir, stage=f"round_{r}/stage3", loss_fn=fusion_loss(model, config), tx=tx,
        variables=global_variables if continued else init,
        opt_state=state.opt_state if continued else None,
        batches=supervised.train_batches(train_source, config, mesh,
                                         seed=config.seed + 1000 * r),
        total_steps=rws.stage3_steps, train_cfg=config.train, mesh=mesh, rng=step_rng,
        writer=writer, extra=frozen)
    network = {"model": state.variables, **frozen}
    total_steps += rws.stage2_steps + rws.stage3_steps
    row["trained"] = True
    final = {name: evaluation(f"round_{r}/eval_{name}.json", network, name)
             for name in ("plain", "fused")}
    row.update(miou_plain=final["plain"]["miou"], miou_fused=final["fused"]["miou"])
    global_variables = state.variables
  cost = cached_json(os.path.join(workdir, "inference_cost.json"), lambda: inference_cost(
      eval_steps, network, supervised.eval_batches(eval_source, config, mesh)[0][0], mesh))
  summary = {"method": "rws", "eval_split": config.dataset.eval_split,
             "total_steps": total_steps, "stage1": stage1_eval, "rws_plain": final["plain"],
             "rws_fused": final["fused"], "rws": final[rws.inference],
             "inference_ms_per_image": cost, "rounds": rounds}
  if rws.baseline:
    baseline = train_supervised("baseline", init, batches, total_steps, config.train.lr)
    summary["baseline"] = evaluation("baseline/eval.json", plain_network(baseline.variables))
  table = results_table(summary, names)
  if jax.process_index() == 0:
    bars = {"baseline": summary["baseline"]["per_class_iou"]} if rws.baseline else {}
    bars["RWS plain"] = final["plain"]["per_class_iou"]
    bars["RWS fused"] = final["fused"]["per_class_iou"]
    figures.save_per_class_iou(os.path.join(workdir, "per_class_iou.png"), bars, names)
    supervised.save_prediction_figure(os.path.join(workdir, "predictions.png"), model, network,
                                      eval_source, config, predict[rws.inference])
  summary = record.write_results(workdir, config, summary, table)
  print(table)
  return summary


def finished_network(config, workdir, model, mesh):
  """The RWS network of a finished run in `workdir` (`rws_logits`' variables): the refined
  model of the last trained round, the model whose attention that round used, its local
  model and its T; a run whose first round trained nothing gives `plain_network` of stage 1.
  Raises ValueError when stage 1 has not finished."""
  rws = config.rws
  shape = (1, *pipeline.pair(config.input.crop_size), 3)
  rng = jax.random.key(config.seed)

  def restore(stage, steps):
    return train.finished_variables(workdir=workdir, stage=stage, model=model,
                                    tx=train.make_optimizer(config.train, steps),
                                    total_steps=steps, image_shape=shape, rng=rng, mesh=mesh)

  global_variables, network = restore("stage1", rws.stage1_steps), None
  for r in range(1, rws.max_rounds + 1):
    stage3 = os.path.join(workdir, f"round_{r}", "stage3", "checkpoints")
    if not os.path.isdir(stage3):
      break
    with open(os.path.join(workdir, f"round_{r}", "analysis.json")) as f:
      threshold = json.load(f)["threshold"]
    network = {"model": restore(f"round_{r}/stage3", rws.stage3_steps),
               "global": global_variables,
               "local": restore(f"round_{r}/stage2", rws.stage2_steps),
               "threshold": jnp.float32(threshold)}
    global_variables = network["model"]
  return network or plain_network(global_variables)


def trained_predictor(config, workdir, mesh):
  """The `supervised.Predictor` of the finished run in `workdir`: the network of
  config.rws.inference, the RWS network (`finished_network`, default) or the refined network
  alone."""
  model = models.build_model(config.model, config.dataset.num_classes)
  inference = config.rws.inference
  return supervised.Predictor(make_predict_fn(model, config, inference),
                              finished_network(config, workdir, model, mesh),
                              NETWORK_TITLES[inference], config)


def _with(train_cfg, **fields):
  """A copy of config.train with some fields replaced."""
  cfg = ml_collections.ConfigDict(train_cfg.to_dict())
  for key, value in fields.items():
    cfg[key] = value
  return cfg
