"""Reductions of host (numpy) values over the processes of a multi-host run
(docs/design.md, multi-host): every process calls them at the same point with its own part and
gets the whole; `barrier` orders their writes before the others' reads. With one process they
return their input."""
import jax
from jax.experimental import multihost_utils
import numpy as np


def sum_over_processes(x):
  """Elementwise sum of `x` (the same shape on every process) over processes."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(np.asarray(x))).sum(axis=0)


def rows_over_processes(x):
  """The rows of `x` (n_p, ...) of all processes, concatenated in process order; n_p may
  differ between processes."""
  if jax.process_count() == 1:
    return np.asarray(x)
  x = np.asarray(x)
  counts = np.asarray(multihost_utils.process_allgather(np.array(len(x))))
  padded = np.zeros((int(np.max(counts)), *x.shape[1:]), x.dtype)
  padded[:len(x)] = x
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return np.concatenate([g[:n] for g, n in zip(gathered, counts)])


def this_process():
  """(index, count) of this process among the run's processes."""
  return jax.process_index(), jax.process_count()


def barrier(name):
  """Waits until every process reaches the barrier `name`: what one process wrote to the shared
  workdir before it is there for all."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
