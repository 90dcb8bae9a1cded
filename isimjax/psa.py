"""The PSA half of the ISIM pipeline (docs/methods.md, ISIM steps 9-11; paper Sec. 4.1.6-4.1.7).

The trained DeepLabCAM's multi-scale CAMs of the training split give affinity labels,
AffinityNet learns pixel affinities from them, the random walk propagates the CAMs on those
affinities into pseudo labels, and a segmentation network is trained on the pseudo labels.
`isimjax.isim.STAGES` runs the functions below as stages after ISIM training:

  affinity_labels     psa_affinity_labels: CAMs -> affinity labels at image size
  train_affinity      psa_affinity_train: AffinityNet on them (checkpoints in psa_affinity/)
  random_walk_labels  psa_random_walk: CAMs + affinities -> ISIM + RW, ISIM + RW + dCRF labels
  walk_premise_result psa_walk_premise: the walk part by part (isimjax.walk_premise)
  train_final         psa_final: DeepLabv3 / v2 on those labels, evaluated on the eval split

CAMs go from the accelerator straight to the host workers (dense CRF) instead of being
exported to disk (VOC trainaug's would take gigabytes); the two stages that need them compute
them again. Label stores (<workdir>/psa/<name>) and checkpoints make every stage resumable
after a kill. Ground-truth pixel labels are read only by measurements: the walk's
(psa_walk_premise, training split) and the final model's evaluation.

Each training stage runs on `stage_config(config, part)`: the experiment config with the
model, input and train fields of config.psa.<part> in place of its own.
"""
import copy
import dataclasses
import functools
import os

import jax
import numpy as np
import PIL.Image

from isimjax import affinity
from isimjax import config as isim_config
from isimjax import crf
from isimjax import pseudo
from isimjax import random_walk
from isimjax import self_train
from isimjax import walk_premise
from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import models
from rwsjax import progress
from rwsjax import stages
from rwsjax import train
from rwsjax.data import pipeline

AFFINITY_STAGE = 'psa_affinity'  # checkpoint directory of AffinityNet
FINAL_STAGE = 'psa_final'  # checkpoint directory of the final model
AFFINITY_LABELS = 'affinity_labels'
WALK_LABELS = ('rw', 'rw_crf')
PSA_PAIRWISE = crf.CrfParams(bilateral_sxy=80.0, bilateral_srgb=13.0)  # PSA's crf_inference
_SEEDS = {AFFINITY_STAGE: 11, FINAL_STAGE: 12}  # folded into config.seed's key


def stage_config(config, part):
  """A copy of `config` whose model, input and train fields are overridden by those of
  config.psa.<part> ('affinity' or 'final')."""
  derived = copy.deepcopy(config)
  with derived.unlocked():
    for section in ('model', 'input', 'train'):
      derived[section].update(config.psa[part][section].to_dict())
  return derived


def check_config(config):
  """Stops before any training on PSA settings that a later stage would reject."""
  psa = config.psa
  config_lib.check_switches(psa, isim_config.PSA_FIELDS, 'psa')
  if not 0.0 <= psa.aff_bg <= psa.aff_fg:
    raise ValueError(f'Expected 0 <= config.psa.aff_bg <= config.psa.aff_fg; got '
                     f'{psa.aff_bg} and {psa.aff_fg}.')
  trained = psa.affinity.input
  if trained.scale_mode == 'ratio' and not (
      trained.scale_range[0] <= psa.walk_scale <= trained.scale_range[1]):
    raise ValueError(f'config.psa.walk_scale={psa.walk_scale} enlarges the images AffinityNet '
                     'walks on beyond those it trains on: config.psa.affinity.input.scale_range='
                     f'{tuple(trained.scale_range)}; include {psa.walk_scale} in it.')
  if psa.radius < 2:
    raise ValueError(f'config.psa.radius={psa.radius}; expected at least 2 (no pairs below).')
  for part in ('affinity', 'final'):
    if psa[part].epochs <= 0:
      raise ValueError(f'config.psa.{part}.epochs={psa[part].epochs}; expected > 0.')
  sub = stage_config(config, 'affinity')
  affinity.make_affinity_net(sub.model)
  grid = random_walk.feature_grid(sub.input.crop_size, affinity.FEATURE_STRIDE)
  if not affinity.has_pairs(grid, affinity.pair_offsets(psa.radius)):
    raise ValueError(f'config.psa.affinity.input.crop_size={tuple(sub.input.crop_size)} gives '
                     f'a {grid} feature map at stride 8, too small for pairs of '
                     f'config.psa.radius={psa.radius}.')
  try:
    models.make_model(stage_config(config, 'final').model, config.dataset.num_classes)
  except ValueError as e:
    raise ValueError(f'config.psa.final.model: {e}') from None


def epoch_steps(sub, source, epochs):
  """Steps of `epochs` passes over the global training split at sub.input.batch_size."""
  per_epoch = stages.steps_per_epoch(source, sub.input.batch_size, 'config.psa')
  return max(1, int(round(epochs * per_epoch)))


def label_store(ctx, name):
  """The labels <workdir>/psa/<name> of this process's part of the training split."""
  return self_train.label_store(os.path.join(ctx.workdir, 'psa', name), ctx.train_source)


def label_crf_fn(psa_cfg):
  """The affinity labels' `crf_fn` of config.psa.label_crf (see isimjax.config)."""
  if config_lib.switch(psa_cfg, isim_config.PSA_FIELDS, 'psa', 'label_crf') == 'isim':
    return affinity.hard_label_crf
  return functools.partial(crf.crf_refine_probs, params=PSA_PAIRWISE)


def walk_crf_fn(psa_cfg):
  """The CRF after the random walk: a score unary, the pairwise terms of psa.label_crf and
  psa.rw_crf_iterations iterations."""
  pairwise = crf.CrfParams() if psa_cfg.label_crf == 'isim' else PSA_PAIRWISE
  params = dataclasses.replace(pairwise, iterations=psa_cfg.rw_crf_iterations)
  return functools.partial(crf.crf_refine_probs, params=params)


def _example_batches(ctx, indices):
  """Image batches of the training examples `indices`, by size (`self_train.size_order`)."""
  order = self_train.size_order(np.asarray(indices, np.int64), ctx.train_sizes)
  return self_train.example_batches(ctx.train_source, order, ctx.config.isim.cam_batch_size)


def affinity_labels(ctx, isim_variables):
  """Stage psa_affinity_labels: affinity labels of every training image at image size
  (`affinity.affinity_labels_from_cams` on the ISIM model's CAMs, CRF in
  config.isim.crf_workers processes), in the store 'affinity_labels'."""
  psa_cfg = ctx.config.psa
  store = label_store(ctx, AFFINITY_LABELS)
  bound = ctx.cams.bind(isim_variables)
  make = functools.partial(affinity.affinity_labels_from_cams, fg_threshold=psa_cfg.aff_fg,
                           bg_threshold=psa_cfg.aff_bg, crf_fn=label_crf_fn(psa_cfg),
                           stride=1)
  missing = store.missing()

  def tasks():
    for indices, images, labels in _example_batches(ctx, missing):
      cams = bound(images, labels)
      for j, index in enumerate(indices):
        yield int(index), functools.partial(make, cams[j], labels[j], image=images[j])

  pseudo.stream_to_store(tasks(), store, num_workers=ctx.config.isim.crf_workers,
                         total=len(missing))
  return store


def affinity_batches(source, sub, mesh, *, seed, label_source):
  """`batches(start_step)` of augmented images whose affinity labels are scaled, cropped and
  flipped with them at image size, then reduced to stride 8 (`affinity.downsample_labels`)."""
  batches = stages.train_batches(source, sub, mesh, seed=seed, label_source=label_source)

  def reduce(batch):
    return dict(batch, segmentation=affinity.downsample_labels(batch['segmentation'],
                                                               affinity.FEATURE_STRIDE))

  return lambda start: map(reduce, batches(start))


def _affinity_setup(ctx):
  """(stage config, AffinityNet, optimizer, total steps) of the AffinityNet stage: SGD (or the
  configured optimizer) with poly decay, the new layers at psa.head_lr_mult times the rate."""
  sub = stage_config(ctx.config, 'affinity')
  model = affinity.make_affinity_net(sub.model)
  total = epoch_steps(sub, ctx.train_source, ctx.config.psa.affinity.epochs)
  lr = sub.train.lr
  tx = train.make_optimizer(sub.train, total,
                            group_lrs={'encoder': lr, 'decoder': lr * ctx.config.psa.head_lr_mult},
                            label_fn=self_train.param_groups)
  return sub, model, tx, total


def _with_backbone(variables, donor):
  """`variables` with the backbone params and batch_stats of `donor` (psa.init 'isim')."""
  out = {}
  for collection in ('params', 'batch_stats'):
    own, given = variables[collection]['backbone'], donor[collection]['backbone']
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    if shapes(own) != shapes(given):
      raise ValueError("config.psa.init='isim' starts AffinityNet from the ISIM model's "
                       'backbone: config.psa.affinity.model (backbone, width) must match '
                       'config.model.')
    out[collection] = dict(variables[collection], backbone=given)
  return out


def train_affinity(ctx, isim_variables):
  """Stage psa_affinity_train: AffinityNet trained on the affinity labels (docs/methods.md ISIM
  step 9) from the psa.init weights; checkpoints in <workdir>/psa_affinity."""
  psa_cfg = ctx.config.psa
  sub, model, tx, total = _affinity_setup(ctx)
  if psa_cfg.init == 'isim':
    sub.model.pretrained = None
  rng = jax.random.fold_in(ctx.rng, _SEEDS[AFFINITY_STAGE])
  variables = stages.initial_variables(model, sub, rng)
  if psa_cfg.init == 'isim':
    variables = _with_backbone(variables, isim_variables)
  batches = affinity_batches(ctx.train_source, sub, ctx.mesh, seed=ctx.config.seed,
                             label_source=label_store(ctx, AFFINITY_LABELS))
  state = train.train_stage(
      workdir=ctx.workdir, stage=AFFINITY_STAGE,
      loss_fn=affinity.affinity_train_loss(model, affinity.pair_offsets(psa_cfg.radius)),
      tx=tx, variables=variables, batches=batches, total_steps=total, train_cfg=sub.train,
      mesh=ctx.mesh, rng=rng, writer=ctx.writer)
  return {'steps': int(state.step), 'init': psa_cfg.init}


def trained_affinity(ctx):
  """(AffinityNet, its trained variables) from the finished psa_affinity_train stage."""
  sub, model, tx, total = _affinity_setup(ctx)
  return model, train.finished_variables(
      workdir=ctx.workdir, stage=AFFINITY_STAGE, model=model, tx=tx, total_steps=total,
      image_shape=(1, *sub.input.crop_size, 3), rng=ctx.rng, mesh=ctx.mesh)


def walk_stride(psa_cfg):
  """Image pixels per cell of the walk's grid: AffinityNet's stride 8 over images enlarged
  psa.walk_scale times."""
  return affinity.FEATURE_STRIDE // psa_cfg.walk_scale


def enlarge(images, scale):
  """uint8 images (B, H, W, 3) resized bilinearly by an integer `scale` (1: unchanged), as
  the training pipeline's 'ratio' scaling resizes them."""
  if scale == 1:
    return images
  size = tuple(int(round(n * scale)) for n in images.shape[1:3])
  return np.stack([pipeline.resize(image, size, PIL.Image.BILINEAR) for image in images])


def _walk_inputs(ctx, isim_variables, indices):
  """(index, image, image labels, CAMs, pair affinities or None) of the training examples
  `indices`: the ISIM model's CAMs and the trained AffinityNet's affinities at radius
  psa.radius on the images enlarged psa.walk_scale times, as the random walk takes them."""
  psa_cfg = ctx.config.psa
  offsets = affinity.pair_offsets(psa_cfg.radius)
  model, variables = trained_affinity(ctx)
  features_fn = jax.jit(lambda v, images, sizes, labels: model.apply(v, images),
                        out_shardings=train.data_sharded(ctx.cams.mesh))
  affinity_variables = ctx.cams.bind(variables).variables
  bound = ctx.cams.bind(isim_variables)
  pairs_fn = jax.jit(lambda features: affinity.pair_affinities(features[None], offsets)[0])
  for batch_indices, images, labels in _example_batches(ctx, indices):
    cams = bound(images, labels)
    features = ctx.cams.run(features_fn, affinity_variables,
                            enlarge(images, psa_cfg.walk_scale), labels)
    grid = random_walk.feature_grid(images.shape[1:3], walk_stride(psa_cfg))
    for j, index in enumerate(batch_indices):
      pairs = (pairs_fn(features[j, :grid[0], :grid[1]])
               if affinity.has_pairs(grid, offsets) else None)
      yield int(index), images[j], labels[j], cams[j], pairs


def walk_options(psa_cfg):
  """The keyword arguments of `random_walk.walk_scores` set by config.psa."""
  return dict(radius=psa_cfg.radius, alpha=psa_cfg.alpha, beta=psa_cfg.beta, logt=psa_cfg.logt,
              stride=walk_stride(psa_cfg), dense_max_nodes=psa_cfg.dense_max_nodes)


def random_walk_labels(ctx, isim_variables):
  """Stage psa_random_walk: every training image's CAMs walked on its AffinityNet affinities
  (docs/methods.md ISIM step 10). The argmax goes to the store 'rw' at once, the CRF-refined
  argmax to 'rw_crf' from config.isim.crf_workers processes. Returns {name: store}."""
  psa_cfg = ctx.config.psa
  stores = {name: label_store(ctx, name) for name in WALK_LABELS}
  walk = functools.partial(random_walk.walk_scores, **walk_options(psa_cfg))
  crf_fn = walk_crf_fn(psa_cfg)
  missing = np.union1d(stores['rw'].missing(), stores['rw_crf'].missing())

  def tasks():
    for index, image, labels, cams, pairs in _walk_inputs(ctx, isim_variables, missing):
      scores, class_ids = walk(cams, labels, pairs)
      stores['rw'].write(index, class_ids.astype(np.uint8)[np.argmax(scores, axis=0)])
      yield index, functools.partial(affinity.crf_argmax, crf_fn, image, scores, class_ids)

  pseudo.stream_to_store(tasks(), stores['rw_crf'], num_workers=ctx.config.isim.crf_workers,
                         total=len(missing))
  return stores


def walk_premise_result(ctx, isim_variables):
  """Stage psa_walk_premise: `isimjax.walk_premise.measure` over the training split, with the
  affinity labels of the store 'affinity_labels' and the walk settings of config.psa."""
  psa_cfg, source = ctx.config.psa, ctx.train_source
  store = label_store(ctx, AFFINITY_LABELS)
  indices = np.arange(len(source))
  examples = ((cams, labels, pairs, store[index], source[index]['segmentation'][..., 0])
              for index, _, labels, cams, pairs in progress.logged(
                  _walk_inputs(ctx, isim_variables, indices), 'psa_walk_premise',
                  len(indices)))
  return walk_premise.measure(
      examples, num_classes=ctx.num_classes, class_names=data.class_names(ctx.config.dataset),
      cam_threshold=ctx.config.isim.cam_threshold,
      sweep=walk_premise.sweep_grid(psa_cfg.sweep_beta, psa_cfg.sweep_logt),
      **walk_options(psa_cfg))


def final_title(config):
  """'DeepLabv3 (resnet101)': the final model's name for tables."""
  model_cfg = stage_config(config, 'final').model
  return f'{models.head(model_cfg).title} ({model_cfg.backbone})'


def train_final(ctx):
  """Stage psa_final: the final segmentation model trained fully supervised on the
  psa.final_labels pseudo labels (docs/methods.md ISIM step 11; checkpoints in <workdir>/psa_final)
  and its confusion-matrix mIoU on the eval split (paper Tables 8-11)."""
  config = ctx.config
  sub = stage_config(config, 'final')
  model = models.make_model(sub.model, ctx.num_classes)
  total = epoch_steps(sub, ctx.train_source, config.psa.final.epochs)
  rng = jax.random.fold_in(ctx.rng, _SEEDS[FINAL_STAGE])
  batches = stages.train_batches(ctx.train_source, sub, ctx.mesh, seed=config.seed,
                                 label_source=label_store(ctx, config.psa.final_labels))
  state = train.train_stage(
      workdir=ctx.workdir, stage=FINAL_STAGE, loss_fn=train.supervised_loss(model),
      tx=train.make_optimizer(sub.train, total),
      variables=stages.initial_variables(model, sub, rng), batches=batches,
      total_steps=total, train_cfg=sub.train, mesh=ctx.mesh, rng=rng, writer=ctx.writer)
  confusion = stages.evaluate_model(model, state.variables, ctx.eval_source, sub, ctx.mesh)
  if jax.process_index() == 0:
    stages.save_prediction_figure(os.path.join(ctx.workdir, 'psa_final_predictions.png'),
                                  model, state.variables, ctx.eval_source, sub)
  return {'model': final_title(config), 'labels': config.psa.final_labels,
          'steps': int(state.step),
          config.dataset.eval_split: evaluate_lib.summarize(confusion,
                                                            data.class_names(config.dataset))}
