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
import os

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
from rwsjax import segcam
from rwsjax import slices
from rwsjax import supervised
from rwsjax import train
from rwsjax.data import pipeline
from rwsjax.progress import MetricWriter, Progress, cached_json, write_json


def default_config():
  """config.rws: every RWS setting and ablation switch (docs/methods.md RWS), with its default."""
  c = ml_collections.ConfigDict()
  c.stage1_steps = 600          # global model (stage 1)
  c.stage2_steps = 300          # local model on weak slices, per round
  c.stage3_steps = 300          # refined global model, per round
  c.stage3_init = "stage1"      # stage1: fine-tune the current global model | fresh: from init
  c.stage3_lr = 0.01            # initial lr of stage 3's poly schedule
  c.slice_size = 128            # window side in pixels (paper Fig. 10)
  c.slice_stride = 64
  c.local_size = 0              # side the slice crops are resized to; 0 = slice_size
  c.local_batch_size = 16       # global batch of stage 2
  c.local_init = "init"         # local model starts from the global model's initialisation
                                # (init) or from the current trained global model (global)
  c.attention = "last"          # window attention from A_layer4 (last) or Gamma (gamma)
  c.max_classes = 6             # Seg-Grad-CAM class slots per image (most frequent GT classes)
  c.weak_rule = "curve"         # curve: T from the IoU-attention curve | fixed: T = t_fixed
  c.t_fixed = 0.3
  c.t_bins = 20
  c.t_slope = 0.02
  c.t_min_windows = 10          # windows a class needs to take part in T
  c.min_pixels = 1              # GT pixels of a class for it to be present in a window
  c.slices = "weak"             # weak | arbitrary (ablation: random windows, same count)
  c.weak_classes = "all"        # all | foreground: class 0 takes no part in T or weak slices
  c.select_omega = True         # eq. 5 selection; False = integrate every weak-slice pixel
  c.weighted_lambda = True      # eq. 7 lambda; False = n 0.5
  c.eps = 1e-3                  # omega threshold of eq. 5
  c.fuse_layers = (1, 2, 3, 4)  # stage outputs fused in stage 3; () = plain fine-tuning
  c.max_slices = 4              # weak slices per image fused in one stage-3 batch
  c.max_rounds = 4
  c.min_weak_delta = 20         # stop when the weak-slice count changes less than this
  c.baseline = True             # also train the equal-budget supervised baseline
  return c


def paper_config(*, dataset, num_classes, crop_size, batch_size, eval_pad_size, lr,
                 weight_decay, iterations, max_classes, max_slices=4, eval_batch_size=None):
  """A full experiment config with the RWS paper's section V settings for a real dataset.

  DeepLabv3 on ResNet-101 at output stride 8, SGD with momentum 0.9 and poly decay at `lr`
  and `weight_decay`, 128 x 128 slices at stride 64. The paper gives one iteration count for
  its three training stages: it is stage 1's here, and stages 2 and 3 of each round run a
  third of it each. `eval_batch_size` defaults to `batch_size`.
  """
  config = config_lib.base_config()
  config.method = "rws"
  config.dataset.name = dataset
  config.dataset.num_classes = num_classes
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
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
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
  config.rws.slice_size = 16
  config.rws.slice_stride = 8
  config.rws.local_batch_size = 4
  config.rws.t_min_windows = 1
  config.rws.max_rounds = 1
  return config


CHOICES = {"stage3_init": ("stage1", "fresh"), "local_init": ("init", "global"),
           "attention": ("last", "gamma"),
           "weak_rule": ("curve", "fixed"), "slices": ("weak", "arbitrary"),
           "weak_classes": ("all", "foreground")}


def check_config(config):
  """Raises one clear ValueError for an RWS setting no stage could use."""
  rws = config.rws
  for key, choices in CHOICES.items():
    if rws[key] not in choices:
      raise ValueError(f"config.rws.{key}={rws[key]!r}; expected one of {choices}.")
  if any(i not in (1, 2, 3, 4) for i in rws.fuse_layers):
    raise ValueError(f"config.rws.fuse_layers={tuple(rws.fuse_layers)}; expected a subset of "
                     "(1, 2, 3, 4).")
  crop = pipeline.pair(config.input.crop_size)
  fusion.check_geometry(*crop, rws.slice_size, rws.slice_stride,
                        models.feature_strides(config.model))
  local = local_size(rws)
  if local % max(models.feature_strides(config.model).values()):
    raise ValueError(f"config.rws.local_size={local} must be a multiple of the largest feature "
                     "stride.")


def local_size(rws_cfg):
  return rws_cfg.local_size or rws_cfg.slice_size


def fused_layers(rws_cfg):
  return tuple(f"layer{i}" for i in sorted(set(rws_cfg.fuse_layers)))


def attention_maps(model, variables, images, labels, num_classes, max_classes):
  """Seg-Grad-CAM on the ground-truth classes, restricted to their regions (eq. 1-3).

  Returns (result, A: layer -> (N, H, W), Gamma (N, H, W)).
  """
  classes, _ = segcam.present_classes(labels, num_classes, max_classes)
  result = segcam.seg_grad_cam(model, variables, images, classes=classes)
  attention = segcam.gt_attention(result.heatmaps, result.class_ids, result.class_mask, labels)
  gamma, _ = segcam.gamma_and_omega(attention)
  return result, attention, gamma


def window_attention(attention, gamma, rws_cfg):
  """The per-pixel map windows are scored with: A of the last stage, or Gamma (switch)."""
  return attention["layer4"] if rws_cfg.attention == "last" else gamma


def scored_classes(scores, result, num_classes, weak_classes="all"):
  """Window scores where only the classes that take part count as present.

  A class beyond the `max_classes` Seg-Grad-CAM slots has unknown attention, not low
  attention, so it must not look weak; with `weak_classes='foreground'` the background class 0
  takes no part either (in T nor in the weak slices).
  """
  slotted = jnp.any((result.class_ids[..., None] == jnp.arange(num_classes))
                    & result.class_mask[..., None], axis=1)
  if weak_classes == "foreground":
    slotted = slotted.at[:, 0].set(False)
  return scores._replace(present=scores.present & slotted[:, None, :])


def make_scorer(model, config):
  """Jitted (variables, images, labels) -> window scores over the whole image (docs/methods.md 3)."""
  rws, k = config.rws, config.dataset.num_classes

  @jax.jit
  def score(variables, images, labels):
    result, attention, gamma = attention_maps(model, variables, images, labels, k,
                                              rws.max_classes)
    preds = jnp.argmax(result.logits, axis=-1)
    scores = slices.score_windows(window_attention(attention, gamma, rws), labels, preds,
                                  num_classes=k, size=rws.slice_size, stride=rws.slice_stride,
                                  min_pixels=rws.min_pixels)
    scores = scored_classes(scores, result, k, rws.weak_classes)
    return scores.attention, scores.iou, scores.present
  return score


def analyze(model, variables, source, config, mesh, directory):
  """Scores every window of the training split, computes T and lists the weak slices.

  Writes `directory/slices.npz` (boxes (M, 5) rows (example index, y0, x0, y1, x1) of this
  process's part of the split) and returns a JSON-ready dict: T, per-class T, the curve, and the
  weak-slice count over all processes.
  """
  rws = config.rws
  score = make_scorer(model, config)
  batches, count = supervised.eval_batches(source, config, mesh)
  first = batches[0]
  height, width = first["label"].shape[1:3]
  boxes = slices.window_boxes(height, width, rws.slice_size, rws.slice_stride)
  hist = None
  windows_attention, windows_present, indices = [], [], []
  progress = Progress("analysis", count)
  for i in range(count):
    batch = batches[i]
    device = train.to_device({k: batch[k] for k in ("image", "label")}, mesh)
    attention, iou, present = (train.to_host(x, mesh)
                               for x in score(variables, device["image"], device["label"]))
    present = present & batch["mask"][:, None, None]
    counts, sums = slices.curve_histogram(attention, iou, present, bins=rws.t_bins)
    hist = (counts, sums) if hist is None else (hist[0] + counts, hist[1] + sums)
    keep = batch["mask"]
    windows_attention.append(attention[keep].astype(np.float32))
    windows_present.append(present[keep])
    indices.append(batch["index"][keep])
    if (i + 1) % max(1, count // 4) == 0:
      progress.log(i + 1)
  counts, sums = (multihost_utils.process_allgather(x).sum(0) if jax.process_count() > 1 else x
                  for x in hist)
  if rws.weak_rule == "curve":
    threshold, per_class, curves = slices.threshold_from_histogram(
        counts, sums, slope=rws.t_slope, min_windows=rws.t_min_windows)
  else:
    threshold = float(rws.t_fixed)
    _, per_class, curves = slices.threshold_from_histogram(
        counts, sums, slope=rws.t_slope, min_windows=rws.t_min_windows)
  attention = np.concatenate(windows_attention)
  present = np.concatenate(windows_present)
  example = np.concatenate(indices)
  weak = np.asarray(slices.weak_mask(attention, present, threshold)).any(-1)
  if rws.slices == "arbitrary":
    weak = np.asarray(slices.arbitrary_windows(
        jax.random.fold_in(jax.random.key(config.seed), jax.process_index()), weak))
  image, window = np.nonzero(weak)
  weak_boxes = np.concatenate([example[image, None], boxes[window]], axis=1).astype(np.int32)
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, f"slices_process{jax.process_index()}.npz"), boxes=weak_boxes)
  total = int(multihost_utils.process_allgather(np.array(len(weak_boxes))).sum()
              if jax.process_count() > 1 else len(weak_boxes))
  return {"threshold": threshold, "per_class_threshold": [None if np.isnan(t) else float(t)
                                                          for t in per_class],
          "weak_slices": total, "windows": int(present.any(-1).sum()),
          "curve": {"centres": curves["centres"].tolist(),
                    "mean_iou": np.where(np.isnan(curves["mean_iou"]), -1.0,
                                         curves["mean_iou"]).tolist(),
                    "counts": curves["counts"].tolist()}}


def load_weak_boxes(directory):
  return np.load(os.path.join(directory, f"slices_process{jax.process_index()}.npz"))["boxes"]


def fusion_loss(model, config):
  """Stage-3 loss (docs/methods.md RWS 6-7): per batch, weak slices of the augmented crop under T,
  local features, selection and lambda (eq. 5-7), then cross-entropy of the fused network.

  `extra` = {'global': frozen global variables, 'local': frozen local variables,
  'threshold': T}.
  """
  rws, k = config.rws, config.dataset.num_classes
  height, width = pipeline.pair(config.input.crop_size)
  boxes_all = jnp.asarray(slices.window_boxes(height, width, rws.slice_size, rws.slice_stride))
  strides = models.feature_strides(config.model)
  layers = fused_layers(rws)
  size, local = rws.slice_size, local_size(rws)

  def plans_for(batch, extra, rng):
    images, labels = batch["image"], batch["label"]
    n = images.shape[0]
    result, attention, gamma = attention_maps(model, extra["global"], images, labels, k,
                                              rws.max_classes)
    scores = slices.score_windows(window_attention(attention, gamma, rws), labels,
                                  num_classes=k, size=size, stride=rws.slice_stride,
                                  min_pixels=rws.min_pixels)
    scores = scored_classes(scores, result, k, rws.weak_classes)
    weak = slices.weak_mask(scores.attention, scores.present, extra["threshold"])
    if rws.slices == "arbitrary":
      index, valid = slices.select_arbitrary(rng, weak.any(-1), rws.max_slices)
    else:
      index, valid = slices.select_top_weak(scores.attention, weak, rws.max_slices)
    boxes = boxes_all[index]
    crops = slices.crop_windows(images, boxes, size).reshape((-1, size, size, 3))
    crop_labels = slices.crop_windows(labels, boxes, size).reshape((-1, size, size))
    if local != size:
      crops = jax.image.resize(crops, (crops.shape[0], local, local, 3), "bilinear")
      crop_labels = jax.image.resize(crop_labels, (crops.shape[0], local, local), "nearest")
    local_result, local_attention, local_gamma = attention_maps(
        model, extra["local"], crops, crop_labels, k, rws.max_classes)
    global_maps = segcam.feature_attention(attention, gamma, result.features)

    def per_slice(x, name):
      """(N*S, h', w', ...) at local resolution -> (N, S, h, w, ...) on the slice's grid."""
      side = size // strides[name]
      x = x.reshape((n, rws.max_slices) + x.shape[1:])
      if x.shape[2] != side:
        x = jax.image.resize(x, x.shape[:2] + (side, side) + x.shape[4:], "bilinear")
      return x

    local_maps = segcam.feature_attention(local_attention, local_gamma, local_result.features)
    plans = fusion.fusion_plans(
        global_maps,
        {name: tuple(per_slice(m, name) for m in local_maps[name]) for name in layers},
        {name: per_slice(local_result.features[name], name) for name in layers},
        boxes, valid, strides, layers=layers, eps=rws.eps, select_omega=rws.select_omega,
        weighted_lambda=rws.weighted_lambda)
    stats = {"weak_slices": jnp.sum(valid) / n,
             "selected": jnp.mean(jnp.stack([p.selected.mean() for p in plans.values()]))}
    return plans, stats

  def loss_fn(params, batch_stats, batch, rng, extra):
    plan_rng, dropout_rng = jax.random.split(rng)
    plans, stats = plans_for(batch, extra, plan_rng) if layers else ({}, {})
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                  train=True, mutable=["batch_stats"],
                                  rngs={"dropout": dropout_rng},
                                  stage_hook=fusion.stage_hook(plans))
    loss = losses.cross_entropy(logits, batch["label"])
    return loss, (updates.get("batch_stats", batch_stats), stats)

  return loss_fn


def should_stop(counts, min_weak_delta):
  """Round stop rule (docs/methods.md RWS 8): no weak slices, or the count changed by < delta."""
  if counts[-1] == 0:
    return True
  return len(counts) > 1 and abs(counts[-1] - counts[-2]) < min_weak_delta


def save_round_figures(directory, model, variables, source, analysis, config, names):
  """Heatmaps per layer (Fig. 5), weak slices on images, and the T curve (Fig. 2)."""
  rws, count = config.rws, min(config.figures.num_examples, len(source))
  batch = pipeline.eval_dataset(source, config.input, batch_size=count)[0]
  normalized, labels = batch["image"], batch["label"]
  images = np.clip(np.round(pipeline.denormalize(normalized, config.input)), 0,
                   255).astype(np.uint8)
  fn = jax.jit(functools.partial(attention_maps, model, num_classes=config.dataset.num_classes,
                                 max_classes=rws.max_classes))
  _, attention, gamma = jax.device_get(fn(variables, normalized, labels))
  figures.save_heatmaps(os.path.join(directory, "heatmaps.png"), images, labels, attention, gamma)
  boxes = load_weak_boxes(directory)
  figures.save_slices(os.path.join(directory, "weak_slices.png"), images,
                      [boxes[boxes[:, 0] == i, 1:] for i in range(count)])
  figures.save_threshold_curve(os.path.join(directory, "threshold_curve.png"), analysis["curve"],
                               analysis["threshold"], analysis["per_class_threshold"], names)


def results_table(summary, names):
  """Markdown: baseline vs RWS mIoU and per-class IoU, then T and weak slices per round."""
  eval_split = summary["eval_split"]
  rows = [("stage 1 only", summary["stage1"]),
          (f"baseline ({summary['total_steps']} steps)", summary.get("baseline")),
          (f"RWS ({summary['total_steps']} steps)", summary["rws"])]
  lines = [f"| {eval_split} | mIoU | " + " | ".join(names) + " |",
           "|---" * (len(names) + 2) + "|"]
  for title, result in rows:
    if result is None:
      continue
    per_class = [result["per_class_iou"].get(n) for n in names]
    lines.append(f"| {title} | {result['miou']:.4f} | "
                 + " | ".join("-" if v is None else f"{v:.3f}" for v in per_class) + " |")
  lines += ["", "| round | T | weak slices | mIoU after round |", "|---|---|---|---|"]
  for r in summary["rounds"]:
    after = r.get("miou_after")
    lines.append(f"| {r['round']} | {r['threshold']:.3f} | {r['weak_slices']} | "
                 + ("-" if after is None else f"{after:.4f}") + " |")
  return "\n".join(lines)


def run(config, workdir):
  """All RWS stages and rounds, the equal-budget baseline, the table, summary.json, figures."""
  check_config(config)
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

  def train_supervised(stage, variables, batches, steps, lr):
    tx = train.make_optimizer(_with_lr(config.train, lr), steps)
    return train.train_stage(workdir=workdir, stage=stage, loss_fn=train.supervised_loss(model),
                             tx=tx, variables=variables, batches=batches, total_steps=steps,
                             train_cfg=config.train, mesh=mesh, rng=step_rng, writer=writer)

  def evaluation(name, variables):
    def compute():
      confusion = supervised.evaluate_model(model, variables, eval_source, config, mesh)
      return evaluate_lib.summarize(confusion, names)
    return cached_json(os.path.join(workdir, name, "eval.json"), compute)

  batches = supervised.train_batches(train_source, config, mesh, seed=config.seed)
  state = train_supervised("stage1", init, batches, rws.stage1_steps, config.train.lr)
  global_variables = state.variables
  stage1_eval = evaluation("stage1", global_variables)
  total_steps, rounds, counts = rws.stage1_steps, [], []
  for r in range(1, rws.max_rounds + 2):
    directory = os.path.join(workdir, f"round_{r}")
    analysis = cached_json(
        os.path.join(directory, "analysis.json"),
        lambda: analyze(model, global_variables, train_source, config, mesh, directory))
    counts.append(analysis["weak_slices"])
    logging.info("Round %d: T = %.3f, %d weak slices.", r, analysis["threshold"], counts[-1])
    record = {"round": r, "threshold": analysis["threshold"],
              "per_class_threshold": analysis["per_class_threshold"],
              "weak_slices": analysis["weak_slices"], "windows": analysis["windows"]}
    rounds.append(record)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(directory, "heatmaps.png")):
      save_round_figures(directory, model, global_variables, train_source, analysis, config, names)
    if should_stop(counts, rws.min_weak_delta) or r > rws.max_rounds:
      record["trained"] = False
      break
    weak_boxes = load_weak_boxes(directory)
    crop_batches = pipeline.crop_dataset(
        train_source, weak_boxes, config.input, seed=config.seed + r,
        batch_size=train.local_batch_size(rws.local_batch_size, mesh), out_size=local_size(rws))
    local_start = init if rws.local_init == "init" else global_variables
    local_state = train_supervised(f"round_{r}/stage2", local_start,
                                   lambda start, ds=crop_batches: pipeline.prefetch(ds, start),
                                   rws.stage2_steps, config.train.lr)
    start = global_variables if rws.stage3_init == "stage1" else init
    tx = train.make_optimizer(_with_lr(config.train, rws.stage3_lr), rws.stage3_steps)
    extra = {"global": global_variables, "local": local_state.variables,
             "threshold": jnp.float32(analysis["threshold"])}
    state = train.train_stage(
        workdir=workdir, stage=f"round_{r}/stage3", loss_fn=fusion_loss(model, config), tx=tx,
        variables=start, batches=supervised.train_batches(train_source, config, mesh,
                                                          seed=config.seed + 1000 * r),
        total_steps=rws.stage3_steps, train_cfg=config.train, mesh=mesh, rng=step_rng,
        writer=writer, extra=extra)
    global_variables = state.variables
    total_steps += rws.stage2_steps + rws.stage3_steps
    record.update(trained=True, miou_after=evaluation(f"round_{r}", global_variables)["miou"])
  rws_eval = evaluation("rws", global_variables)
  summary = {"method": "rws", "eval_split": config.dataset.eval_split,
             "total_steps": total_steps, "stage1": stage1_eval, "rws": rws_eval,
             "rounds": rounds, "config": config.rws.to_dict()}
  if rws.baseline:
    baseline = train_supervised("baseline", init, batches, total_steps, config.train.lr)
    summary["baseline"] = evaluation("baseline", baseline.variables)
  table = results_table(summary, names)
  write_json(os.path.join(workdir, "summary.json"), summary)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(table + "\n")
    bars = {"baseline": summary["baseline"]["per_class_iou"]} if rws.baseline else {}
    bars["RWS"] = rws_eval["per_class_iou"]
    figures.save_per_class_iou(os.path.join(workdir, "per_class_iou.png"), bars, names)
    supervised.save_prediction_figure(os.path.join(workdir, "predictions.png"), model,
                                      global_variables, eval_source, config)
  print(table)
  return summary


def _with_lr(train_cfg, lr):
  """A copy of config.train with another initial learning rate."""
  cfg = ml_collections.ConfigDict(train_cfg.to_dict())
  cfg.lr = lr
  return cfg
