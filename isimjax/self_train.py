"""ISIM iterative self-training (docs/methods.md, ISIM steps 3-6; paper Algorithm 1).

Training runs in chunks of `rwsjax.train.fit` that end where pseudo labels may be
regenerated. Classification-only epochs come first; at the end of a regeneration epoch the
model's multi-scale CAMs are thresholded and CRF-refined into a `LabelStore` (one per round,
streamed to disk), and the following epochs train the classification branch and the decoder
on those labels. Everything is resumable: the model is checkpointed at every chunk end, the
rounds decided so far are recorded in `<workdir>/<stage>/rounds.json`, and a round whose
store is incomplete resumes its generation. No ground-truth pixel label enters a loss or a
pseudo label: the loader reads each example's mask with its image, the classification-only
epochs use only the image-level labels, and from the first round on the round's pseudo labels
replace the mask in the batches (`label_source`).
"""
import json
import os

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np

from isimjax import config as isim_config
from isimjax import losses
from isimjax import pseudo
from rwsjax import config as config_lib
from rwsjax import models
from rwsjax import stages
from rwsjax import train
from rwsjax.progress import write_json

GROUPS = {'backbone': 'encoder', 'head': 'decoder', 'classifier': 'classifier'}


def param_groups(params):
  """The learning-rate group of every parameter (docs/methods.md, ISIM step 5): the top-level
  'backbone', 'head' and 'classifier' parts are 'encoder', 'decoder' and 'classifier'."""
  unknown = sorted(set(params) - set(GROUPS))
  if unknown:
    raise ValueError(f'Parameter group of {unknown[0]!r} is unknown; expected top-level '
                     f'parameters {sorted(GROUPS)}.')
  return {name: jax.tree.map(lambda _, g=GROUPS[name]: g, tree) for name, tree in params.items()}


def make_optimizer(config, total_steps):
  """SGD with per-group poly learning rates config.isim.lr_{encoder,decoder,classifier}
  (docs/methods.md, ISIM step 5), momentum and weight decay from config.train."""
  group_lrs = {'encoder': config.isim.lr_encoder, 'decoder': config.isim.lr_decoder,
               'classifier': config.isim.lr_classifier}
  return train.make_optimizer(config.train, total_steps, group_lrs=group_lrs,
                              label_fn=param_groups)


def classification_loss(model):
  """Loss of the classification-only epochs and baseline: soft margin on the branch alone."""
  def loss_fn(params, batch_stats, batch, rng, extra):
    del extra
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                  batch['image'], train=True, method='classify',
                                  mutable=['batch_stats'], rngs={'dropout': rng})
    loss = losses.multilabel_soft_margin(logits, batch['labels'])
    return loss, (updates['batch_stats'], {'cls_loss': loss})
  return loss_fn


def isim_loss(model):
  """Loss once pseudo labels exist: soft margin + modified cross-entropy (ISIM step 4)."""
  def loss_fn(params, batch_stats, batch, rng, extra):
    del extra
    (seg_logits, class_logits), updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    loss, metrics = losses.isim_loss(class_logits, batch['labels'], seg_logits,
                                     batch['segmentation'])
    return loss, (updates['batch_stats'], metrics)
  return loss_fn


def regeneration_epochs(epochs, first, every):
  """Epochs after which `regen: fixed` makes pseudo labels: first, first + every, ... < epochs."""
  if first < 1 or every < 1:
    raise ValueError(f'config.isim.first_regen_epoch={first} and regen_every={every} must be '
                     'at least 1.')
  return list(range(first, epochs, every))


def plateaued(epoch_losses, tol, patience):
  """The `regen: converge` rule on the epoch-mean losses L_1..L_n since the last round.

  True when n > patience and each of the last `patience` epochs k failed to lower the
  running minimum by more than the fraction `tol`: L_k >= (1 - tol) * min(L_1..L_{k-1}).
  """
  values = np.asarray(epoch_losses, np.float64)
  if values.size <= patience:
    return False
  previous_min = np.minimum.accumulate(values)[:-1]
  stalled = values[1:] >= (1.0 - tol) * previous_min
  return bool(np.all(stalled[-patience:]))


def epoch_mean_losses(metrics_path, stage, steps_per_epoch, first_epoch, last_epoch):
  """Mean training loss of epochs first_epoch..last_epoch from metrics.jsonl rows of `stage`.

  A row holds the mean over the steps since the previous row; rows are weighted by that
  count and belong to the epoch of their last step.
  """
  with open(metrics_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = sorted((r for r in rows if r.get('stage') == stage), key=lambda r: r['step'])
  sums, counts = {}, {}
  previous = 0
  for row in rows:
    epoch = -(-row['step'] // steps_per_epoch)
    weight = row['step'] - previous
    previous = row['step']
    sums[epoch] = sums.get(epoch, 0.0) + weight * row['loss']
    counts[epoch] = counts.get(epoch, 0) + weight
  epochs = range(first_epoch, last_epoch + 1)
  missing = [e for e in epochs if not counts.get(e)]
  if missing:
    raise ValueError(f'{metrics_path} has no {stage!r} loss for epoch {missing[0]}; the '
                     '`converge` schedule needs the losses of every epoch.')
  return [sums[e] / counts[e] for e in epochs]


def steps_per_epoch(config, train_source):
  """config.isim.steps_per_epoch, or the global training-split size // global batch size."""
  if config.isim.steps_per_epoch:
    return int(config.isim.steps_per_epoch)
  return stages.steps_per_epoch(train_source, config.input.batch_size, 'config.input')


def label_store(directory, source):
  """The labels in `directory` of the examples of `source`, this process's `parts.Part` of
  the split: a `pseudo.LabelStorePart` of the split's LabelStore (one file per split index)."""
  return pseudo.LabelStorePart(pseudo.LabelStore(directory, len(source.whole)), source.start,
                               source.stop)


def round_directory(workdir, stage, round_index):
  return os.path.join(workdir, stage, 'pseudo', f'round_{round_index:02d}')


def _stack(items):
  indices, images, labels = zip(*items)
  return np.array(indices), np.stack(images), np.stack(labels)


def _read_ahead(source, indices, read, num_threads):
  """Iterator over read(source[i]) for i in `indices`, in order, read by threads."""
  dataset = grain.MapDataset.source(np.asarray(indices).tolist()).map(
      lambda i: read(int(i), source[int(i)]))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * num_threads)
  return iter(dataset.to_iter_dataset(options))


def image_sizes(source, num_threads=2):
  """(len(source), 2) image heights and widths (one decoding pass)."""
  sizes = _read_ahead(source, np.arange(len(source)),
                      lambda _, example: example['image'].shape[:2], num_threads)
  return np.array(list(sizes), np.int64).reshape(-1, 2)


def size_order(indices, sizes):
  """`indices` sorted by image size (height, then width; stable), so that images of one size
  are consecutive and fill whole CAM batches."""
  indices = np.asarray(indices)
  return indices[np.lexsort((sizes[indices, 1], sizes[indices, 0]))]


def example_batches(source, indices, batch_size, num_threads=2):
  """(indices, uint8 images, image labels) batches of `source[indices]` in the given order,
  read ahead by threads; consecutive examples of one size share a batch of at most
  `batch_size`."""
  read = lambda index, example: (index, example['image'],
                                 np.asarray(example['labels'], np.float32))
  batch = []
  for item in _read_ahead(source, indices, read, num_threads):
    if batch and (len(batch) == batch_size or batch[0][1].shape != item[1].shape):
      yield _stack(batch)
      batch = []
    batch.append(item)
  if batch:
    yield _stack(batch)


def generate_labels(cam_fn, source, store, config, *, crf, sizes=None):
  """Writes the labels missing from `store`: thresholded CAMs, CRF-refined when `crf`, the
  CRF in config.isim.crf_workers processes while `cam_fn` runs (docs/methods.md, ISIM step 3).

  With the images' `sizes` ((len(source), 2), see `image_sizes`) examples go in size order,
  so that datasets of many image sizes still fill the CAM batches; without, in index order.
  """
  isim_cfg = config.isim
  indices = store.missing()
  if sizes is not None:
    indices = size_order(indices, sizes)
  examples = example_batches(source, indices, isim_cfg.cam_batch_size)
  return pseudo.generate_pseudo_labels(examples, cam_fn, store,
                                       threshold=isim_cfg.cam_threshold, crf=crf,
                                       num_workers=isim_cfg.crf_workers if crf else 0)


def cam_stride(config):
  """Output stride of layer4, where the CAMs live."""
  return models.feature_strides(config.model)['layer4']


def _read_rounds(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)['rounds']


def _boundaries(isim_cfg, regenerate):
  """Epochs at which training chunks end: where a round may follow, and the last epoch."""
  epochs = isim_cfg.epochs
  fixed = regeneration_epochs(epochs, isim_cfg.first_regen_epoch, isim_cfg.regen_every)
  if not regenerate or not fixed:
    return [epochs]
  if config_lib.switch(isim_cfg, isim_config.ISIM_FIELDS, 'isim', 'regen') == 'fixed':
    return fixed + [epochs]
  return list(range(isim_cfg.first_regen_epoch, epochs + 1))


def _decide(isim_cfg, epoch, rounds, losses_fn):
  """Whether pseudo labels are regenerated after `epoch` (same answer on every process)."""
  if isim_cfg.regen == 'fixed' or not rounds:
    return epoch in regeneration_epochs(isim_cfg.epochs, isim_cfg.first_regen_epoch,
                                        isim_cfg.regen_every)
  decision = False
  if jax.process_index() == 0:
    decision = plateaued(losses_fn(rounds[-1]['epoch'] + 1, epoch), isim_cfg.converge_tol,
                         isim_cfg.converge_patience)
  if jax.process_count() > 1:
    decision = bool(multihost_utils.broadcast_one_to_all(np.array(decision)))
  return decision


def _round_after(epoch, trained_past, rounds, isim_cfg, losses_fn, round_store, workdir,
                 stage, record_path):
  """The round whose pseudo labels follow `epoch`, or None where none does: its record in
  `rounds`, else a new one in <workdir>/<stage> when the rule decides for one (`_decide`),
  appended and written to `record_path`. Once training went past `epoch` (`trained_past`) no
  round starts there, and a recorded one must be complete (`round_store(record).complete`)."""
  record = next((r for r in rounds if r['epoch'] == epoch), None)
  if trained_past:
    if record is not None and not round_store(record).complete:
      raise ValueError(f'Pseudo labels of round {record["round"]} in {record["directory"]} '
                       f'are incomplete, but training went on past epoch {epoch}; delete '
                       f'{os.path.join(workdir, stage)} to rerun.')
    return None
  if record is None:
    if not _decide(isim_cfg, epoch, rounds, losses_fn):
      return None
    record = {'round': len(rounds) + 1, 'epoch': epoch,
              'directory': round_directory(workdir, stage, len(rounds) + 1)}
    rounds.append(record)
    write_json(record_path, {'rounds': rounds})
  return record


def self_train(config, workdir, *, stage, model, variables, train_source, mesh, rng, writer,
               cams=None, sizes=None, on_round=None):
  """Trains `model` for config.isim.epochs with pseudo-label rounds; resumes after a kill.

  Args:
    config: the experiment config (config.isim, config.train, config.input).
    workdir: run directory; checkpoints go to <workdir>/<stage>/checkpoints and round r's
      labels to <workdir>/<stage>/pseudo/round_rr.
    stage: stage name ('isim'; the classification-only baseline passes cams=None).
    model: an `isimjax.models.CamSegmenter`.
    variables: initial {'params', 'batch_stats'}.
    train_source: this process's training source (images and image-level labels are read).
    mesh: the training mesh.
    rng: base PRNG key of the train steps.
    writer: MetricWriter of metrics.jsonl (also read by `regen: converge`).
    cams: a `CamExtractor`; None trains the classification branch only, with no rounds.
    sizes: optional image sizes of `train_source` (`image_sizes`): CAM batches by size.
    on_round: optional callable(round record, state) after each round's labels are complete
      (figures).

  Returns:
    (final TrainState, rounds: list of {'round', 'epoch', 'directory'}).
  """
  isim_cfg = config.isim
  per_epoch = steps_per_epoch(config, train_source)
  total_steps = isim_cfg.epochs * per_epoch
  tx = make_optimizer(config, total_steps)
  record_path = os.path.join(workdir, stage, 'rounds.json')
  rounds = _read_rounds(record_path)
  loss_fns = {'cls': classification_loss(model), 'isim': isim_loss(model)}
  steps = {}
  losses_fn = lambda first, last: epoch_mean_losses(writer.path, stage, per_epoch, first, last)
  checkpointer = train.Checkpointer(os.path.join(workdir, stage, 'checkpoints'),
                                    every=config.train.checkpoint_every,
                                    max_to_keep=config.train.max_to_keep)
  try:
    state = train.restore_or_init(checkpointer, tx, variables, mesh)
    writer.truncate_after(int(state.step), stage=stage)
    for epoch in _boundaries(isim_cfg, cams is not None):
      stop = epoch * per_epoch
      earlier = [r for r in rounds if r['epoch'] < epoch]
      store = (label_store(earlier[-1]['directory'], train_source) if earlier else None)
      kind = 'isim' if store is not None else 'cls'
      if int(state.step) < stop:
        if kind not in steps:
          steps[kind] = train.make_train_step(loss_fns[kind], tx, mesh)
        batches = stages.train_batches(train_source, config, mesh, seed=config.seed,
                                       label_source=store)
        state = train.fit(state=state, train_step=steps[kind], batches=batches,
                          total_steps=total_steps, rng=rng, checkpointer=checkpointer,
                          writer=writer, stage=stage, log_every=config.train.log_every,
                          stop_at=stop, mesh=mesh)
      if cams is None or epoch >= isim_cfg.epochs:
        continue
      record = _round_after(epoch, int(state.step) > stop, rounds, isim_cfg, losses_fn,
                            round_store=lambda r: label_store(r['directory'], train_source),
                            workdir=workdir, stage=stage, record_path=record_path)
      if record is None:
        continue
      logging.info('Round %d: pseudo labels after epoch %d into %s.', record['round'], epoch,
                   record['directory'])
      generate_labels(cams.bind(state.variables), train_source,
                      label_store(record['directory'], train_source), config,
                      crf=isim_cfg.crf, sizes=sizes)
      if on_round is not None:
        on_round(record, state)
  finally:
    checkpointer.close()
  return state, rounds
