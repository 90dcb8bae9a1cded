"""What every pipeline's stages compute with (docs/design.md, Packages): the start of a run
(`start_run`: checks, mesh, sources, model, stage runner), a model's initial variables with
pretrained weights, training and evaluation batches on the device mesh, evaluation and
prediction of a model, and the `Predictor` a finished run provides.

Every pipeline (the contract is in `rwsjax.pipelines`) runs its stages with
`rwsjax.stage_runner.Runner`, and one that makes a segmentation model gives the finished run
as a `Predictor`.
"""
import os
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import numpy as np

from rwsjax import data
from rwsjax import figures
from rwsjax import hosts
from rwsjax import models
from rwsjax import preflight
from rwsjax import provenance
from rwsjax import stage_runner
from rwsjax import train
from rwsjax.data import pipeline
from rwsjax.progress import MetricWriter


class Run(NamedTuple):
  """What a pipeline's run starts from (`start_run`)."""
  runner: Any        # the `stage_runner.Runner` of the run's stage plan
  mesh: Any
  train_source: Any  # this process's `parts.Part` of config.dataset.train_split
  eval_source: Any   # and of config.dataset.eval_split
  model: Any
  rng: Any           # jax.random.key(config.seed)
  writer: Any        # the `MetricWriter` of <workdir>/metrics.jsonl


def segmentation_model(config):
  """The segmentation model of config.model for config.dataset's classes."""
  return models.make_model(config.model, config.dataset.num_classes)


def start_run(config, workdir, table, check_config, recompute_from=(), *,
              make_model=segmentation_model, model_configs=None):
  """The start every pipeline's `run` shares: the checks before any work
  (`preflight.for_training`, the workdir's stages against `table`'s plan, the stages
  `recompute_from` names cleared), then the device mesh, the data sources, the model
  (`make_model(config)`), the seed's key, the metrics writer and the stage runner."""
  plan = provenance.Plan(table, config)
  preflight.for_training(config, workdir, check_config, model_configs, plan=plan,
                         recompute_from=recompute_from)
  return Run(runner=stage_runner.Runner(workdir, plan),
             mesh=train.make_mesh(config.num_devices),
             train_source=data.load_source(config.dataset, config.dataset.train_split),
             eval_source=data.load_source(config.dataset, config.dataset.eval_split),
             model=make_model(config), rng=jax.random.key(config.seed),
             writer=MetricWriter(os.path.join(workdir, 'metrics.jsonl')))


class Predictor(NamedTuple):
  """The final product of a finished run: `predict_fn(variables, batch) -> logits` (N, H, W,
  K) for batches with 'image' (normalised, any size) and optionally 'valid'; its
  `variables`; a `title` for tables; the `config` whose input settings (normalisation, eval
  batch size and padding) it is evaluated with."""
  predict_fn: Callable
  variables: Any
  title: str
  config: Any


def initial_variables(model, config, rng, image_shape=None):
  """Random variables for `model`, with the backbone from config.model.pretrained if given."""
  shape = image_shape or (1, *config.input.crop_size, 3)
  variables = jax.jit(lambda r: train.random_variables(model, shape, r))(rng)
  if config.model.pretrained:
    logging.info('Backbone weights from %s.', config.model.pretrained)
    return models.load_pretrained_backbone(variables, config.model.pretrained, config.model)
  logging.info('No config.model.pretrained file: the backbone starts from random weights.')
  return variables


def train_batches(source, config, mesh, *, seed, label_source=None):
  """`batches(start_step)` factory of augmented per-process training batches.

  `source` and `label_source` (label maps replacing the segmentation, such as a pseudo-label
  store) are this process's `parts.Part`s; the batches come from one stream over their whole
  split, shared by all processes, so a run's numbers do not depend on the process count
  (docs/design.md, multi-host). Waits first until every process has written its part of
  `label_source`."""
  batch_size = train.local_batch_size(config.input.batch_size, mesh)
  if label_source is not None:
    hosts.barrier('stages.train_batches')
  dataset = pipeline.train_dataset(
      source.whole, config.input, seed=seed, batch_size=batch_size,
      label_source=None if label_source is None else label_source.whole,
      shard=hosts.this_process())
  return lambda start: pipeline.prefetch(dataset, start)


def steps_per_epoch(source, batch_size, batch_field):
  """Steps of one pass over the whole split (the sum of all processes' parts; `source` is
  this process's) at global batch size `batch_size`, the config field `batch_field`; at least
  one batch must fit."""
  examples = int(hosts.sum_over_processes(np.int64(len(source))))
  if examples < batch_size:
    raise ValueError(f'The training split has {examples} examples, fewer than the batch size '
                     f'{batch_size} of {batch_field}.')
  return examples // batch_size


def eval_batches(source, config, mesh):
  """(batches, count): the whole split in order, hosts padded to the same number of batches.

  `source` is this process's part of the split; the count comes from the global example count
  (the sum of all parts), so hosts with uneven parts step together (docs/design.md, multi-host).
  """
  batch_size = train.local_batch_size(config.input.eval_batch_size, mesh)
  split_size = int(hosts.sum_over_processes(np.int32(len(source))))
  count = train.num_eval_batches(split_size, config.input.eval_batch_size)
  dataset = pipeline.eval_dataset(source, config.input, batch_size=batch_size, num_batches=count)
  return dataset, count


def evaluate_model(model, variables, source, config, mesh, predict_fn=None):
  """Confusion matrix (K, K) of `model` (or of `predict_fn(variables, batch)`) over every
  example of `source`."""
  eval_step = train.make_eval_step(model, config.dataset.num_classes, mesh, predict_fn)
  batches, count = eval_batches(source, config, mesh)
  return train.evaluate(eval_step, variables, batches, mesh, num_batches=count)


def predict_examples(model, variables, source, indices, config, predict_fn=None):
  """(images uint8, labels, predictions) of a few examples, for figures (process 0).

  `predict_fn(variables, batch) -> logits` defaults to the model."""
  predict_fn = predict_fn or model_predict_fn(model)
  images, labels, preds = [], [], []
  apply = jax.jit(lambda v, x: predict_fn(v, {'image': x}).argmax(-1))
  for i in indices:
    example = source[int(i)]
    image = example['image']
    normalized = pipeline.normalize(image, config.input)[None]
    preds.append(np.asarray(apply(variables, normalized))[0])
    images.append(image)
    labels.append(example['segmentation'][..., 0])
  return images, labels, preds


def save_prediction_figure(path, model, variables, source, config, predict_fn=None):
  """Image, ground truth and prediction of the first examples of `source`, with a legend;
  `predict_fn` as in `predict_examples`."""
  count = min(config.figures.num_examples, len(source))
  images, labels, preds = predict_examples(model, variables, source, range(count), config,
                                           predict_fn)
  figures.save_predictions(path, images, labels, preds, data.class_names(config.dataset))


def model_predict_fn(model):
  """`Predictor.predict_fn` of a segmentation model: its logits of batch['image']."""
  return lambda variables, batch: model.apply(variables, batch['image'], train=False)
