"""Supervised segmentation: the baseline pipeline (a pipeline module as `rwsjax.stages` describes).
"""
import os

from absl import logging
import jax

from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import figures
from rwsjax import models
from rwsjax import provenance
from rwsjax import record
from rwsjax import stages
from rwsjax import train
from rwsjax.data import pipeline


def check_config(config):
  """The supervised pipeline reads only the fields that `preflight` checks for every
  pipeline."""
  del config


def stage_table(config):
  """The stages (`provenance.Stage`): training, and the evaluation of the trained model."""
  del config
  return {'supervised': provenance.training_stage(
              'supervised', ('seed', 'dataset', 'input', 'model', 'train')),
          'evaluation': provenance.Stage(('dataset', 'input', 'model'), ('supervised',))}


def trained_predictor(config, workdir, mesh):
  """The `Predictor` of the finished run in `workdir`: the trained model."""
  model = models.make_model(config.model, config.dataset.num_classes)
  steps = config.train.steps
  variables = train.finished_variables(
      workdir=workdir, stage='supervised', model=model,
      tx=train.make_optimizer(config.train, steps), total_steps=steps,
      image_shape=(1, *pipeline.pair(config.input.crop_size), 3),
      rng=jax.random.key(config.seed), mesh=mesh)
  return stages.Predictor(stages.model_predict_fn(model), variables,
                          f'supervised ({steps} steps)', config)


def run(config, workdir, recompute_from=()):
  """Trains the configured model on the train split, evaluates on the eval split, and writes
  summary.json, results.md, metrics.jsonl and figures into `workdir`; stages 'supervised'
  (training) and 'evaluation' (`stage_runner.Runner`: a rerun resumes after a kill; the stages
  `recompute_from` names, and those consuming them, are computed again)."""
  started = stages.start_run(config, workdir, stage_table(config), check_config,
                             recompute_from)
  runner, mesh, train_source, eval_source, model, rng, writer = started
  state = runner.train(
      'supervised', loss_fn=train.supervised_loss(model),
      tx=train.make_optimizer(config.train, config.train.steps),
      variables=stages.initial_variables(model, config, rng),
      batches=stages.train_batches(train_source, config, mesh, seed=config.seed),
      total_steps=config.train.steps, train_cfg=config.train, mesh=mesh,
      rng=jax.random.fold_in(rng, 1), writer=writer)
  names, split = data.class_names(config.dataset), config.dataset.eval_split
  result = runner.run('evaluation', lambda: evaluate_lib.summarize(
      stages.evaluate_model(model, state.variables, eval_source, config, mesh), names))
  table = evaluate_lib.miou_table(split, [(f'supervised ({config.train.steps} steps)', result)],
                                  names)
  if jax.process_index() == 0:
    figures.save_per_class_iou(os.path.join(workdir, 'per_class_iou.png'),
                               {'supervised': result['per_class_iou']}, names)
    stages.save_prediction_figure(os.path.join(workdir, 'predictions.png'), model,
                                  state.variables, eval_source, config)
  summary = record.write_results(workdir, config, {'method': 'supervised',
                                                   'steps': config.train.steps, split: result},
                                 table, made=runner.made_record())
  logging.info('Results:\n%s', table)
  return summary
