"""Processes of the multi-host test in test_multihost.py (jax.distributed over loopback, CPU).

  python multihost_worker.py worker PROCESS_ID PORT DATA_DIR OUT_DIR
  python multihost_worker.py reference DATA_DIR OUT_DIR

A worker reads its process's parts of the shapes splits, trains a tiny DeepLabv3 for a few
steps with the real trainer, evaluates it, and writes OUT_DIR/process_<id>.npz: the example ids
of its parts, the per-process batches it trained on, the first global batch gathered back from
the devices and the evaluation confusion matrix; process 0 also writes metrics.jsonl and the
trained variables (variables.msgpack). The reference, one process with as many devices as all
workers together, trains on the concatenated per-process batches and evaluates the workers'
variables on the whole split, into OUT_DIR/single/ and OUT_DIR/single.npz.
"""
import os
import sys

import flax
import jax
from jax.experimental import multihost_utils
import numpy as np

from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import models
from rwsjax import stages
from rwsjax import train
from rwsjax.progress import MetricWriter

NUM_PROCESSES = 2
LOCAL_DEVICES = 2


def experiment_config(data_dir):
  """The experiment of both the processes and the single-process reference."""
  config = config_lib.shrink_for_smoke(config_lib.base_config())
  config.dataset.data_dir = str(data_dir)
  config.dataset.shapes.num_train = 15
  config.dataset.shapes.num_val = 9  # parts of 5 and 4: 3 and 2 eval batches of 2 unpadded
  config.train.steps = 3
  config.train.checkpoint_every = 100
  return config


def train_tiny(config, mesh, batches, workdir):
  """(model, final state) of a supervised stage on `batches`; metrics.jsonl in `workdir`."""
  model = models.make_model(config.model, config.dataset.num_classes)
  rng = jax.random.key(config.seed)
  state = train.train_stage(
      workdir=workdir, stage='supervised', loss_fn=train.supervised_loss(model),
      tx=train.make_optimizer(config.train, config.train.steps),
      variables=stages.initial_variables(model, config, rng), batches=batches,
      total_steps=config.train.steps, train_cfg=config.train, mesh=mesh,
      rng=jax.random.fold_in(rng, 1), writer=MetricWriter(os.path.join(workdir, 'metrics.jsonl')))
  return model, state


def recording(batches, record):
  """The `batches` factory, also appending every batch it hands out to `record`."""
  def factory(start):
    for batch in batches(start):
      record.append(batch)
      yield batch
  return factory


def example_ids(source):
  return [source[i]['id'].decode() for i in range(len(source))]


def worker(process_id, port, data_dir, out_dir):
  """One of NUM_PROCESSES processes with LOCAL_DEVICES devices each."""
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', LOCAL_DEVICES)
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                             num_processes=NUM_PROCESSES, process_id=process_id,
                             initialization_timeout=60)
  config = experiment_config(data_dir)
  mesh = train.make_mesh()
  train_source = data.load_source(config.dataset, 'train', per_process=True)
  eval_source = data.load_source(config.dataset, 'validation', per_process=True)

  record = []
  batches = stages.train_batches(train_source, config, mesh, seed=config.seed)
  model, state = train_tiny(config, mesh, recording(batches, record), out_dir)
  first = multihost_utils.process_allgather(train.to_device(record[0], mesh), tiled=True)
  confusion = stages.evaluate_model(model, state.variables, eval_source, config, mesh)

  np.savez(os.path.join(out_dir, f'process_{process_id}.npz'),
           train_ids=example_ids(train_source), eval_ids=example_ids(eval_source),
           train_image=np.stack([b['image'] for b in record]),
           train_segmentation=np.stack([b['segmentation'] for b in record]),
           global_image=first['image'], global_segmentation=first['segmentation'],
           confusion=confusion)
  variables = jax.device_get(state.variables)
  if process_id == 0:
    with open(os.path.join(out_dir, 'variables.msgpack'), 'wb') as f:
      f.write(flax.serialization.msgpack_serialize(variables))
  multihost_utils.sync_global_devices('multihost_worker.done')


def reference(data_dir, out_dir):
  """One process with NUM_PROCESSES * LOCAL_DEVICES devices, on the workers' outputs."""
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', NUM_PROCESSES * LOCAL_DEVICES)
  config = experiment_config(data_dir)
  mesh = train.make_mesh()
  parts = [np.load(os.path.join(out_dir, f'process_{i}.npz')) for i in range(NUM_PROCESSES)]
  global_batches = [{k: np.concatenate([p[f'train_{k}'][step] for p in parts])
                     for k in ('image', 'segmentation')} for step in range(config.train.steps)]
  model, _ = train_tiny(config, mesh, lambda start: iter(global_batches[start:]),
                        os.path.join(out_dir, 'single'))
  with open(os.path.join(out_dir, 'variables.msgpack'), 'rb') as f:
    variables = flax.serialization.msgpack_restore(f.read())
  whole = data.load_source(config.dataset, 'validation', per_process=False)
  confusion = stages.evaluate_model(model, variables, whole, config, mesh)
  np.savez(os.path.join(out_dir, 'single.npz'), confusion=confusion)


if __name__ == '__main__':
  if sys.argv[1] == 'worker':
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
  elif sys.argv[1] == 'reference':
    reference(sys.argv[2], sys.argv[3])
  else:
    sys.exit(f'Unknown mode {sys.argv[1]!r}; expected worker or reference.')
