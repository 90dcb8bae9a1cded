"""Pretraining a backbone on the synthetic classification corpus (a pipeline module as
`rwsjax.stages` describes; docs/methods.md, shared building blocks: pretrained weights).

The configured backbone (config.model: backbone, width, output_stride, ...) with torchvision's
classification head, global average pooling of layer4 and one linear layer (`Classifier`),
learns the single class of each image of config.dataset (the corpus `shapes_corpus`,
`rwsjax.data.corpus`) by softmax cross-entropy, on the project's trainer and input pipeline
(augmentation by config.input: random rescaling, flip, crop). Stages (`stage_runner.Runner`: a rerun
resumes after a kill): 'pretrain' (training), 'evaluation' (top-1 and per-class accuracy on
config.dataset.eval_split) and 'export': the backbone's params and BatchNorm statistics as a
torchvision state dict, `<workdir>/backbone.npz` (`models.backbone_state_dict`, with the
classifier as `fc.*`), which config.model.pretrained of a segmentation config reads as it
reads an ImageNet file.

The pipeline has no `trained_predictor`: its product is that file, not a segmentation model,
so launch.py's --mode=evaluate and --mode=predict refuse it with `NO_PREDICTOR`.
"""
import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import models
from rwsjax import provenance
from rwsjax import record
from rwsjax import stages
from rwsjax import train
from rwsjax.models import pretrained

_HEAD = ('config.model.backbone and width (the classifier is global average pooling and a '
         'linear layer)')
# Fields a segmentation pipeline reads and this one does not (`preflight.check_overrides`).
UNREAD_FIELDS = {'dataset.shapes': 'config.dataset.corpus', 'model.name': _HEAD,
                 'model.head_channels': _HEAD, 'model.upsample': _HEAD}
NO_PREDICTOR = ('it trains a classifier for the backbone weights it exports to '
                f'<workdir>/{config_lib.EXPORT_NAME} (held-out accuracy in summary.json): give '
                'that file to a segmentation config as config.model.pretrained')


class Classifier(nn.Module):
  """`backbone`'s layer4, global average pooling and a linear layer named `fc` (torchvision's
  ResNet head); logits (N, num_classes) float32. The backbone's variables sit under
  'backbone', as in `models.SegmentationModel`."""
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, images, *, train=False):
    features = self.backbone(images, train=train)['layer4']
    pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, name='fc')(pooled)


def make_classifier(config):
  """The `Classifier` of config.model over the dataset's classes (its label map's classes but
  the background)."""
  return Classifier(models.make_backbone(config.model), data.num_classes(config.dataset) - 1)


def check_config(config):
  """The dataset is the corpus, the one whose images each hold one class ('labels' one-hot),
  and the classifier can be built from config.model; preflight checks the rest."""
  if config.dataset.name != 'shapes_corpus':
    raise ValueError(f'config.dataset.name={config.dataset.name!r}; the pretrain pipeline '
                     "classifies images of one class each, which 'shapes_corpus' holds.")
  make_classifier(config)


def single_labels(batch):
  """The class of each example, from the one-hot image labels of the batch."""
  return jnp.argmax(batch['labels'], axis=-1)


def classification_loss(model):
  """Softmax cross-entropy of the classifier's logits against each image's class; the batch's
  accuracy as a metric."""
  def loss_fn(params, batch_stats, batch, rng, extra):
    del rng, extra
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                                  train=True, mutable=['batch_stats'])
    labels = single_labels(batch)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (updates['batch_stats'], {'accuracy': accuracy})
  return loss_fn


def make_confusion_step(model, num_classes, mesh):
  """Jitted data-parallel (variables, batch) -> (C, C) confusion matrix of the classifier's
  top-1 class against each image's class (rows ground truth; padding entries masked out)."""
  def step(variables, batch):
    predictions = jnp.argmax(model.apply(variables, batch['image'], train=False), -1)
    return evaluate_lib.confusion_matrix(single_labels(batch), predictions, num_classes,
                                         weights=batch['mask'])
  return jax.jit(step, in_shardings=(train.replicated(mesh), train.data_sharded(mesh)),
                 out_shardings=train.replicated(mesh))


def accuracy_summary(confusion, class_names):
  """JSON-ready top-1 accuracy, mean per-class accuracy and per-class accuracy (recall) of a
  (C, C) confusion matrix, rows ground truth."""
  confusion = np.asarray(confusion, np.int64)
  counts = confusion.sum(1)
  per_class = np.diag(confusion) / np.maximum(counts, 1)
  return {'top1': float(np.trace(confusion) / confusion.sum()),
          'mean_class_accuracy': float(per_class[counts > 0].mean()),
          'examples': int(confusion.sum()),
          'per_class_accuracy': {name: (float(value) if count else None)
                                 for name, value, count in zip(class_names, per_class, counts)}}


def accuracy_table(split, title, result):
  """Markdown table: top-1 and mean class accuracy, then the accuracy of each class."""
  names = list(result['per_class_accuracy'])
  return '\n'.join([
      f'| {split} | top-1 accuracy | mean class accuracy | ' + ' | '.join(names) + ' |',
      '|---' * (len(names) + 3) + '|',
      f"| {title} | {result['top1']:.4f} | {result['mean_class_accuracy']:.4f} | "
      + ' | '.join('-' if v is None else f'{v:.3f}'
                   for v in result['per_class_accuracy'].values()) + ' |'])


def export_backbone(variables, path, steps):
  """Writes the backbone of the classifier's `variables` (and its `fc` layer) as a torchvision
  state dict to `path` (process 0), each BatchNorm's num_batches_tracked = `steps`; returns
  the record of what was written."""
  state = models.backbone_state_dict(variables, num_batches_tracked=steps)
  fc = jax.tree.map(pretrained.host_array, variables['params']['fc'])
  state.update({'fc.weight': fc['kernel'].T, 'fc.bias': fc['bias']})
  if jax.process_index() == 0:
    models.save_state_dict(path, state)
  logging.info('Backbone exported to %s.', path)
  return {'path': path, 'keys': len(state),
          'backbone_parameters': int(sum(v.size for k, v in state.items()
                                         if not k.startswith('fc.')
                                         and not k.endswith(('running_mean', 'running_var',
                                                             'num_batches_tracked'))))}


def stage_table(config):
  """The stages (`provenance.Stage`): training, the evaluation, and the export of the
  backbone."""
  del config
  return {'pretrain': provenance.training_stage(
              'pretrain', ('seed', 'dataset', 'input', 'model', 'train')),
          'evaluation': provenance.Stage(('dataset', 'input', 'model'), ('pretrain',)),
          'export': provenance.Stage(('model',), ('pretrain',),
                                     outputs=(config_lib.EXPORT_NAME,))}


def run(config, workdir, recompute_from=()):
  """Trains the classifier on the train split, evaluates its top-1 accuracy on the eval split,
  exports the backbone to `<workdir>/backbone.npz`, and writes summary.json, results.md and
  metrics.jsonl into `workdir`; stages 'pretrain', 'evaluation' and 'export' (`stage_runner.Runner`:
  a rerun resumes after a kill; the stages `recompute_from` names, and those consuming them,
  are computed again)."""
  started = stages.start_run(config, workdir, stage_table(config), check_config,
                             recompute_from, make_model=make_classifier)
  runner, mesh, train_source, eval_source, model, rng, writer = started
  steps = config.train.steps
  state = runner.train(
      'pretrain', loss_fn=classification_loss(model),
      tx=train.make_optimizer(config.train, steps),
      variables=stages.initial_variables(model, config, rng),
      batches=stages.train_batches(train_source, config, mesh, seed=config.seed),
      total_steps=steps, train_cfg=config.train, mesh=mesh, rng=jax.random.fold_in(rng, 1),
      writer=writer)
  names = data.class_names(config.dataset)[1:]
  split = config.dataset.eval_split

  def evaluation():
    batches, count = stages.eval_batches(eval_source, config, mesh)
    confusion = train.evaluate(make_confusion_step(model, len(names), mesh), state.variables,
                               batches, mesh, num_batches=count)
    return accuracy_summary(confusion, names)

  result = runner.run('evaluation', evaluation)
  export = runner.run('export', lambda: export_backbone(
      state.variables, os.path.join(workdir, config_lib.EXPORT_NAME), steps))
  table = accuracy_table(split, f'{config.model.backbone} classifier ({steps} steps)', result)
  summary = record.write_results(workdir, config, {'method': 'pretrain', 'steps': steps,
                                                   split: result, 'backbone': export}, table,
                                 made=runner.made_record())
  logging.info('Results:\n%s', table)
  return summary
