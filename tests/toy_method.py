"""A method of one's own, registered as 'majority' when imported: README's recipe (Extending),
run through `launch.py --imports=toy_method` by tests/test_launch.py. It segments every pixel
as the class with the most pixels in the training split."""
import sys

import jax.numpy as jnp
import numpy as np

from rwsjax import data
from rwsjax import evaluate
from rwsjax import hosts
from rwsjax import pipelines
from rwsjax import provenance
from rwsjax import record
from rwsjax import stage_runner
from rwsjax import stages
from rwsjax import train
from rwsjax.losses import IGNORE_LABEL

FIELDS = ('dataset',)  # the config fields its result depends on


def check_config(config):
  if config.dataset.num_classes < 2:
    raise ValueError('config.dataset.num_classes must be at least 2.')


def stage_table(config):
  """Counting the training pixels, and the report."""
  del config
  return {'count': provenance.Stage(FIELDS),
          'report': provenance.report_stage(('count',))}


def class_pixels(source, num_classes):
  """Pixels of each class over `source` (this process's part), summed over processes."""
  counts = np.zeros(num_classes, np.int64)
  for i in range(len(source)):
    labels = source[i]['segmentation'][..., 0]
    counts += np.bincount(labels[labels != IGNORE_LABEL], minlength=num_classes)
  return hosts.sum_over_processes(counts)


def predictor(config, counts):
  """A `stages.Predictor` whose logits are 1 at the majority class of `counts`, everywhere."""
  logits = jnp.eye(config.dataset.num_classes)[int(np.argmax(counts))]
  return stages.Predictor(lambda v, batch: jnp.broadcast_to(
      v, (*batch['image'].shape[:3], len(v))), logits, 'majority', config)


def counted(config, workdir):
  """(runner, pixels per class): the stage 'count' of the run in `workdir`, computed or read
  back (under the settings that made it) by the `stage_runner.Runner` of this config."""
  runner = stage_runner.Runner(workdir, provenance.Plan(stage_table(config), config))
  record = runner.run('count', lambda: {'pixels': class_pixels(
      data.load_source(config.dataset, config.dataset.train_split),
      config.dataset.num_classes).tolist()})
  return runner, record['pixels']


def run(config, workdir, recompute_from=()):
  """Counts the training pixels (stage 'count'), evaluates the majority class everywhere on
  the eval split, and writes summary.json and results.md."""
  del recompute_from
  runner, counts = counted(config, workdir)
  net = predictor(config, counts)
  eval_source = data.load_source(config.dataset, config.dataset.eval_split)
  result = evaluate.summarize(stages.evaluate_model(
      None, net.variables, eval_source, config, train.make_mesh(), net.predict_fn),
      data.class_names(config.dataset))
  split = config.dataset.eval_split
  return record.write_results(
      workdir, config, {'method': 'majority', 'class_pixels': counts, split: result},
      evaluate.miou_table(split, [('majority', result)], data.class_names(config.dataset)),
      figures=False, made=runner.made_record())


def trained_predictor(config, workdir, mesh):
  """The finished run's predictor, from its 'count' record."""
  del mesh
  return predictor(config, counted(config, workdir)[1])


pipelines.register_pipeline('majority', sys.modules[__name__])
