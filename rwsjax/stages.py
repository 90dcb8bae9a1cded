"""What every pipeline's stages share (docs/design.md, Packages): the stage `Runner`, the one
way a pipeline resumes; a model's initial variables with pretrained weights, training and
evaluation batches on the device mesh, evaluation and prediction of a model, and the
`Predictor` a finished run provides.

Every pipeline (the contract is in `rwsjax.pipelines`) runs its stages with the `Runner`, and
one that makes a segmentation model gives the finished run as a `Predictor`.
"""
import json
import os
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import numpy as np

from rwsjax import data
from rwsjax import figures
from rwsjax import hosts
from rwsjax import models
from rwsjax import provenance
from rwsjax import train
from rwsjax.data import pipeline
from rwsjax.progress import write_json


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
  """`batches(start_step)` factory of augmented per-process training batches."""
  batch_size = train.local_batch_size(config.input.batch_size, mesh)
  dataset = pipeline.train_dataset(source, config.input, seed=seed, batch_size=batch_size,
                                   label_source=label_source)
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


class Runner:
  """Runs the named stages of one pipeline run in `workdir`, each once (docs/design.md, resume).

  A stage is finished when its record exists: a JSON-ready dict written when it ends, at the
  path its `plan` (`rwsjax.provenance.Plan`) gives, default `<workdir>/stages/<name>.json`. A
  rerun reads finished stages back, with one log line each, and resumes the first unfinished
  one; a training stage resumes from the last checkpoint in `<workdir>/<name>/checkpoints`.
  With a plan, every stage run must be in it: the stage's stamp (`Plan.stamp`) goes into a
  marker beside its record when it starts and into the record when it ends, and `made` lists
  each stage as computed in this process or read back, with its fingerprint and the workdir
  that computed it (the run record of summary.json, `made_record`).
  """

  def __init__(self, workdir, plan=None):
    self.workdir = workdir
    self.plan = plan
    self.made = {}

  def record_path(self, name):
    """Where stage `name`'s record lives."""
    if self.plan is not None:
      return self.plan.record_path(self.workdir, name)
    return os.path.join(self.workdir, 'stages', f'{name}.json')

  def run(self, name, compute):
    """The record of stage `name`: read back when an earlier run finished the stage, else
    `compute()`, a JSON-ready dict, written with its stamp (its wall time goes to the log)."""
    path = self.record_path(name)
    stamp = None if self.plan is None else self.plan.stamp(self.workdir, name)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      saved = record.pop(provenance.KEY, None) or {}
      if stamp is not None and saved.get('fingerprint') not in (None, stamp['fingerprint']):
        raise ValueError(f'Stage {name} in {path} was made with other settings; '
                         'rwsjax.provenance.check stops such a run before it starts.')
      self._note(name, 'read back', saved)
      logging.info('Stage %s: done in an earlier run (%s).', name, path)
      return record
    logging.info('Stage %s.', name)
    if stamp is not None:
      write_json(provenance.started_path(path), {provenance.KEY: stamp})
    self._note(name, 'computed', stamp or {})
    start = time.perf_counter()
    record = compute()
    write_json(path, record if stamp is None else dict(record, **{provenance.KEY: stamp}))
    if stamp is not None and jax.process_index() == 0:
      os.remove(provenance.started_path(path))
    logging.info('Stage %s finished in %.1f s.', name, time.perf_counter() - start)
    return record

  def _note(self, name, how, stamp):
    self.made[name] = {'status': how, 'fingerprint': stamp.get('fingerprint'),
                       'computed_in': stamp.get('workdir')}

  def made_record(self):
    """The run record's part that this runner knows (`record.write_results`' `made`): the
    report's fingerprint and, per stage run, how it was made."""
    return {'fingerprint': self.plan.made[provenance.REPORT].fingerprint,
            'stages': dict(self.made)}

  def train(self, name, **kwargs):
    """Training stage `name`: `train.train_stage(workdir=workdir, stage=name, **kwargs)`, whose
    record holds its step count; returns the final TrainState, from the stage's last
    checkpoint once the stage has finished."""
    state = None

    def compute():
      nonlocal state
      state = train.train_stage(workdir=self.workdir, stage=name, **kwargs)
      return {'steps': int(state.step)}

    self.run(name, compute)
    if state is None:
      state = train.train_stage(workdir=self.workdir, stage=name, **kwargs)
    return state
