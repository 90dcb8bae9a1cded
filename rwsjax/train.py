"""The one trainer: a jitted, data-parallel train step over a device mesh, orbax checkpoints,
metrics, and confusion-matrix evaluation.

Every pipeline (supervised baseline, the three RWS stages, ISIM, the final weakly supervised
model) trains through `fit`; they differ only in the loss function, the optimizer and the
batches they pass in.

Data parallelism: a one-axis mesh `('data',)` over all devices, state replicated, batch
sharded on its leading axis, `jax.jit` with `donate_argnums` on the state. XLA inserts the
gradient all-reduce and BatchNorm statistics are global, so results do not depend on the
number of devices (up to float reduction order).
"""
import functools
import math
import os
from typing import Any, Callable, NamedTuple

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from rwsjax import config as config_lib
from rwsjax import evaluate as evaluate_lib
from rwsjax import losses
from rwsjax.progress import Progress

P = jax.sharding.PartitionSpec


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds; `step` counts finished optimizer steps."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


def make_mesh(num_devices=0):
  """A one-axis ('data',) mesh over all devices, or the first `num_devices` (single host)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f'config.num_devices={num_devices} but only {len(devices)} devices exist.')
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, P())


def data_sharded(mesh):
  return jax.sharding.NamedSharding(mesh, P('data'))


def local_batch_size(global_batch_size, mesh):
  """Per-process share of a global batch; it must split evenly over the mesh."""
  if global_batch_size % mesh.size:
    raise ValueError(f'Batch size {global_batch_size} (config.input.batch_size or eval_batch_size) '
                     f'must be divisible by the number of devices, {mesh.size}.')
  return global_batch_size // jax.process_count()


def to_device(batch, mesh):
  """Assembles a global, data-sharded array from each process's numpy batch (multi-host safe)."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def to_host(x, mesh):
  """This process's rows of a data-sharded global array, as numpy."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  local = multihost_utils.global_array_to_host_local_array(x, mesh, P('data'))
  return np.asarray(jax.device_get(local))


def poly_schedule(lr, total_steps, power=0.9, warmup_steps=0, warmup_from=0.0):
  """lr * (1 - t/T)^power (the DeepLab "poly" policy), optionally after a linear warm-up from
  `warmup_from` to `lr`."""
  decay = optax.polynomial_schedule(lr, 0.0, power, max(total_steps - warmup_steps, 1))
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(warmup_from, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])




def learning_rate_schedule(lr, train_cfg, total_steps, *, warmup_from=0.0, offset=0):
  """`poly_schedule` with config.train's power and warm-up, of the optimizer's step count.

  `offset` shifts it for a run that continues another run's optimizer state, whose step
  count does not restart: the schedule's step 0 is the optimizer's step `offset`.
  """
  warmup = config_lib.field(train_cfg, 'train', 'warmup_steps')
  poly = poly_schedule(lr, total_steps, train_cfg.poly_power, warmup, warmup_from)
  return poly if not offset else (lambda count: poly(count - offset))


def base_optimizer(schedule, train_cfg):
  """The configured optimizer with the learning rate `schedule`.

  sgd (the papers'): momentum and coupled weight decay, g + wd * w, as torch.optim.SGD.
  adamw: Adam with decoupled weight decay; converges in fewer steps on small CPU runs.
  """
  name = config_lib.switch(train_cfg, config_lib.TRAIN_FIELDS, 'train', 'optimizer')
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(train_cfg.weight_decay),
                       optax.sgd(schedule, momentum=train_cfg.momentum or None))
  return optax.adamw(schedule, weight_decay=train_cfg.weight_decay)


class Optimizer(NamedTuple):
  """An optax transformation (`init`, `update`) and the learning-rate schedules it applies:
  {metric name: schedule of the optimizer's step count}, 'lr' or 'lr_<group>' per group."""
  init: Callable
  update: Callable
  learning_rates: dict


def make_optimizer(train_cfg, total_steps, group_lrs=None, label_fn=None, *, warmup_from=0.0,
                   offset=0):
  """The training optimizer, an `Optimizer`.

  Args:
    train_cfg: config.train (optimizer, lr, momentum, weight_decay, poly_power, warmup_steps).
    total_steps: the length of the poly schedule.
    group_lrs: optional {group name: learning rate} for per-part rates.
    label_fn: with group_lrs, maps the params pytree to a pytree of group names
      (`optax.multi_transform`).
    warmup_from: the rate the warm-up starts from.
    offset: optimizer steps taken before this schedule starts (`learning_rate_schedule`).
  """
  def schedule(lr):
    return learning_rate_schedule(lr, train_cfg, total_steps, warmup_from=warmup_from,
                                  offset=offset)

  if group_lrs is None:
    schedules = {'lr': schedule(train_cfg.lr)}
    tx = base_optimizer(schedules['lr'], train_cfg)
  else:
    schedules = {f'lr_{name}': schedule(lr) for name, lr in group_lrs.items()}
    tx = optax.multi_transform({name: base_optimizer(schedules[f'lr_{name}'], train_cfg)
                                for name in group_lrs}, label_fn)
  return Optimizer(tx.init, tx.update, schedules)


def schedule_count(opt_state):
  """The step count that the learning-rate schedules of `opt_state` read (the count of its
  first `ScaleByScheduleState`; every group's is the same)."""
  return next(value for path, value in optax.tree.get_all_with_path(opt_state, 'count')
              if path[-1].tuple_name == 'ScaleByScheduleState')


def random_variables(model, image_shape, rng):
  """Random 'params' and 'batch_stats' for `model` on images of `image_shape` (N, H, W, 3).

  The model's other collections (the Seg-Grad-CAM 'perturbations') are not training state.
  """
  variables = model.init({'params': rng, 'dropout': rng}, jnp.zeros(image_shape, jnp.float32),
                         train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def make_train_state(tx, variables, mesh, opt_state=None):
  """A replicated TrainState at step 0 from `variables` (a pytree of arrays or shape structs),
  with `opt_state` when a run continues another run's optimizer, else `tx.init`."""
  def init(variables, opt_state):
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']) if opt_state is None else opt_state)
  return jax.jit(init, out_shardings=replicated(mesh))(variables, opt_state)


def supervised_loss(model):
  """The default loss: pixel cross-entropy of the model's logits (ignore 255)."""
  def loss_fn(params, batch_stats, batch, rng, extra):
    del extra
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                                  train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    loss = losses.cross_entropy(logits, batch['segmentation'])
    return loss, (updates.get('batch_stats', batch_stats), {})
  return loss_fn


def make_train_step(loss_fn, tx, mesh):
  """Jitted data-parallel step: (state, batch, rng, extra) -> (state, metrics).

  `loss_fn(params, batch_stats, batch, rng, extra) -> (loss, (batch_stats, metrics))`;
  `extra` is any replicated pytree the loss needs (frozen models, thresholds). The step number
  is folded into `rng`, so a resumed run draws the same dropout masks. The metrics are the
  loss, the gradient norm, the loss function's own and, for an `Optimizer`, the learning
  rates of this step.
  """
  learning_rates = getattr(tx, 'learning_rates', {})

  def step(state, batch, rng, extra):
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch, rng,
                                                    extra)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    count = schedule_count(state.opt_state) if learning_rates else None
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), **metrics,
               **{name: schedule(count) for name, schedule in learning_rates.items()}}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  repl, data = replicated(mesh), data_sharded(mesh)
  return jax.jit(step, in_shardings=(repl, data, repl, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))


class Checkpointer:
  """Orbax CheckpointManager for one training stage: saves every `every` steps and at the end,
  keeps the newest `max_to_keep`, and restores the latest on a rerun."""

  def __init__(self, directory, *, every, max_to_keep=2):
    self.every = max(int(every), 1)
    options = ocp.CheckpointManagerOptions(
        create=True, save_interval_steps=1,
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep))
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, state):
    """The latest checkpoint restored into `state`'s structure and shardings, or `state`."""
    step = self.manager.latest_step()
    if step is None:
      return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    logging.info('Restoring %s at step %d.', self.manager.directory, step)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def save(self, step, state):
    self.manager.save(int(step), args=ocp.args.StandardSave(state), force=True)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class NonFiniteLossError(FloatingPointError):
  """Training produced a nan/inf loss; the last good checkpoint is kept."""


def _check_finite(values, first_step, checkpointer, stage, what='loss'):
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    last = checkpointer.latest_step() if checkpointer else None
    kept = (f'the last good checkpoint (step {last}) is kept in {checkpointer.manager.directory}'
            if last is not None else 'no checkpoint had been written yet')
    raise NonFiniteLossError(
        f'{stage}: non-finite {what} at step {first_step + int(bad[0]) + 1}; stopping, {kept}. '
        'Try a lower config.train.lr.')


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def fit(*, state, train_step, batches, total_steps, rng, checkpointer=None, writer=None,
        stage='train', log_every=50, extra=None, stop_at=None, mesh):
  """Runs `train_step` from `state.step` up to `total_steps` (or `stop_at`).

  Args:
    state: TrainState (already restored from the checkpoint when resuming).
    train_step: from `make_train_step`.
    batches: an iterable factory: `batches(start_step)` yields the per-process numpy batches of
      steps start_step, start_step + 1, ... (deterministic in the step, so resuming sees the
      same data as an uninterrupted run).
    total_steps: the planned length of the run (schedule length, progress, ETA).
    rng: base PRNG key; the step number is folded in inside the step.
    checkpointer: saves every `checkpointer.every` steps and at `stop`.
    writer: MetricWriter for metrics.jsonl.
    stage: name used in logs and metrics.jsonl rows.
    log_every: steps between metric fetches (the host waits for the device only then).
    extra: replicated pytree passed to the loss.
    stop_at: stop (after saving) at this step instead of `total_steps`.
    mesh: the device mesh.

  Returns:
    The final state. Raises NonFiniteLossError on a nan/inf loss without saving it.
  """
  start = int(state.step)
  stop = min(total_steps, stop_at if stop_at is not None else total_steps)
  if start >= stop:
    return state
  progress = Progress(stage, total_steps, start)
  pending, pending_start = [], start
  iterator = iter(batches(start))
  for step in range(start, stop):
    state, metrics = train_step(state, to_device(next(iterator), mesh), rng, extra)
    pending.append(metrics)
    done = step + 1
    save = checkpointer is not None and (done % checkpointer.every == 0 or done == stop)
    if done % log_every == 0 or done == stop or save:
      fetched = jax.device_get(pending)
      loss_values = np.array([m['loss'] for m in fetched], np.float64)
      _check_finite(loss_values, pending_start, checkpointer, stage)
      means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      progress.log(done, **means)
      if writer is not None:
        writer.write(done, stage=stage, **means)
      pending, pending_start = [], done
    if save:
      if not bool(_all_finite(state.params)):
        _check_finite(np.array([np.nan]), step, checkpointer, stage, 'parameters')
      checkpointer.save(done, state)
  return state


def make_eval_step(model, num_classes, mesh, predict_fn=None):
  """Jitted (variables, batch) -> (K, K) confusion matrix of argmax predictions (ignore 255,
  padded examples masked out). `predict_fn(variables, batch) -> logits` defaults to the model
  on batch['image']."""
  if predict_fn is None:
    predict_fn = lambda variables, batch: model.apply(variables, batch['image'], train=False)

  def step(variables, batch):
    logits = predict_fn(variables, batch)
    preds = jnp.argmax(logits, axis=-1)
    return evaluate_lib.confusion_matrix(batch['segmentation'], preds, num_classes,
                                         weights=batch['mask'][:, None, None])
  return jax.jit(step, in_shardings=(replicated(mesh), data_sharded(mesh)),
                 out_shardings=replicated(mesh))


def evaluate(eval_step, variables, batches, mesh, num_batches=None):
  """Sums the confusion matrices of all batches on device; returns it as numpy (K, K)."""
  total = None
  progress = Progress('eval', num_batches or 0)
  for i, batch in enumerate(batches):
    confusion = eval_step(variables, to_device(batch, mesh))
    total = confusion if total is None else total + confusion
    if num_batches and progress.due(i + 1):
      jax.block_until_ready(total)  # the rate and ETA of finished batches, not dispatched ones
      progress.log(i + 1)
  return np.asarray(jax.device_get(total), np.int64)


def num_eval_batches(split_size, global_batch_size):
  """Batches every process runs so that all hosts step together (the rest are masked)."""
  per_process = math.ceil(split_size / jax.process_count())
  return math.ceil(per_process / (global_batch_size // jax.process_count()))


def restore_or_init(checkpointer, tx, variables, mesh, opt_state=None):
  """A TrainState from the stage's latest checkpoint, else from `variables` (and `opt_state`)
  at step 0."""
  state = make_train_state(tx, variables, mesh, opt_state)
  return checkpointer.restore(state) if checkpointer is not None else state


def finished_variables(*, workdir, stage, model, tx, total_steps, image_shape, rng, mesh):
  """{'params', 'batch_stats'} of `model` from the finished `train_stage` run `stage` in
  `workdir` (optimizer `tx`, `total_steps`); raises when it has not reached `total_steps`.
  The state's structure comes from `jax.eval_shape` on images of `image_shape`: nothing is
  initialised or compiled."""
  checkpointer = Checkpointer(os.path.join(workdir, stage, 'checkpoints'), every=1)
  try:
    if checkpointer.latest_step() != total_steps:
      raise ValueError(f'{os.path.join(workdir, stage)} holds no finished run of '
                       f'{total_steps} steps; rerun the pipeline with this workdir to finish '
                       'training.')
    variables = jax.eval_shape(functools.partial(random_variables, model, image_shape), rng)
    state = checkpointer.restore(
        jax.eval_shape(functools.partial(make_train_state, tx, mesh=mesh), variables))
  finally:
    checkpointer.close()
  return state.variables


def train_stage(*, workdir, stage, loss_fn, tx, variables, batches, total_steps, train_cfg, mesh,
                rng, writer=None, extra=None, stop_at=None, opt_state=None):
  """Checkpointed training of one stage in `workdir/<stage>/checkpoints`; resumes if possible.

  `opt_state` continues another run's optimizer (state of `tx`) instead of a fresh one.
  Returns the final TrainState.
  """
  checkpointer = Checkpointer(os.path.join(workdir, stage, 'checkpoints'),
                              every=train_cfg.checkpoint_every,
                              max_to_keep=config_lib.field(train_cfg, 'train', 'max_to_keep'))
  try:
    state = restore_or_init(checkpointer, tx, variables, mesh, opt_state)
    if writer is not None:
      writer.truncate_after(int(state.step), stage=stage)
    state = fit(state=state, train_step=make_train_step(loss_fn, tx, mesh), batches=batches,
                total_steps=total_steps, rng=rng, checkpointer=checkpointer, writer=writer,
                stage=stage, log_every=train_cfg.log_every, extra=extra, stop_at=stop_at,
                mesh=mesh)
    if total_steps == 0 and checkpointer.latest_step() is None:
      checkpointer.save(0, state)  # a stage of no steps is finished with the state it was given
  finally:
    checkpointer.close()
  return state
