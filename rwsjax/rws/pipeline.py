"""Refined Weak Slices: the three-stage pipeline in rounds (paper 000, docs/methods.md RWS 1-10).

Stage 1 trains the global model. Each round then (a) scores every sliding window of the
training images with the global model's Seg-Grad-CAM attention and IoU, derives the threshold
T from the IoU-vs-attention curve and lists the weak slices (`rwsjax.rws.analysis`), (b)
trains a local model of the same architecture on the weak-slice crops (stage 2), and (c)
retrains the global model with the selected local features fused into its stage outputs
(stage 3). Stage 3 computes everything per batch inside one jitted step with
`rwsjax.rws.network.fusion_plans`: the frozen global model's attention on the augmented crop,
that crop's weak windows under the saved T, the frozen local model's features and attention on
them, selection, and the fused forward pass. Nothing per image is stored but the (example,
window) pairs of stage 2.

Every stage checkpoints; rerunning the command resumes at the stage and step where a killed run
stopped, and finished stages and analyses are read back from the workdir when the settings
they read (`stage_table`) are unchanged.
"""
import json
import os

from absl import logging
import jax
import ml_collections

from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import figures
from rwsjax import hosts
from rwsjax import losses
from rwsjax import models
from rwsjax import provenance
from rwsjax import record
from rwsjax import stages
from rwsjax import train
from rwsjax.data import pipeline as input_pipeline
from rwsjax.progress import median_seconds
from rwsjax.rws import analysis
from rwsjax.rws import config as rws_config
from rwsjax.rws import fusion
from rwsjax.rws import network
from rwsjax.rws import premise


# Generic fields RWS never reads (`preflight.check_overrides`), and what it reads instead.
UNREAD_FIELDS = {'train.steps': 'config.rws.stage1_steps, stage2_steps and stage3_steps'}
# RWS fields read only under a setting (`preflight.check_overrides`), from their declarations.
CONDITIONAL_FIELDS = config_lib.conditional_fields(rws_config.FIELDS, 'rws')


# The config fields each stage reads (`stage_table`, `rwsjax.provenance`).
DATA_FIELDS = ('seed', 'dataset', 'input', 'model')
TRAIN_FIELDS = DATA_FIELDS + ('train',)
ANALYSIS_FIELDS = DATA_FIELDS + ('rws.max_classes', 'rws.min_pixels', 'rws.attention*',
                                 'rws.t_*', 'rws.weak_*', 'rws.slices', 'rws.slice_size',
                                 'rws.slice_stride')
FIGURE_FIELDS = DATA_FIELDS + ('rws.max_classes', 'rws.attention_region')
STAGE2_FIELDS = TRAIN_FIELDS + ('rws.stage2_*', 'rws.local_*', 'rws.slice_size')
NETWORK_FIELDS = DATA_FIELDS + ('rws.max_classes', 'rws.min_pixels', 'rws.attention',
                                'rws.weak_classes', 'rws.slices', 'rws.slice_size',
                                'rws.slice_stride', 'rws.max_slices', 'rws.local_scale',
                                'rws.local_size', 'rws.fuse_layers', 'rws.eps',
                                'rws.select_omega', 'rws.weighted_lambda', 'rws.integration')
STAGE3_FIELDS = TRAIN_FIELDS + NETWORK_FIELDS + ('rws.attention_region', 'rws.stage1_steps',
                                                 'rws.stage3_*')
BASELINE_FIELDS = TRAIN_FIELDS + ('rws.stage1_steps', 'rws.stage2_steps', 'rws.stage3_steps',
                                  'rws.integration', 'rws.max_rounds', 'rws.min_weak_delta')


def round_stage(r, name=None):
  """Round `r`'s folder in the run directory, or its stage `name` ('analysis', 'stage2', ...):
  the one place the run directory's round layout is written (`stage_table`, `run`,
  `finished_network`)."""
  return f'round_{r}' if name is None else f'round_{r}/{name}'


def stage_table(config):
  """The stages of an RWS run (`rwsjax.provenance.Stage`): what each reads and consumes.

  Round r's analysis scores windows with stage 1's model (r = 1, or `integration:
  inference`) or round r - 1's stage 3; stage 2 trains on its weak slices; stage 3 fuses
  stage 2's local model under its T. A round's evaluations and premise measure its network,
  the inference cost the last trained round's (known only as the rounds run: it consumes
  every round's); the baseline's step count follows from the rounds that trained, so it
  consumes every analysis.
  """
  rws = config.rws
  table = {'stage1': provenance.training_stage('stage1',
                                               TRAIN_FIELDS + ('rws.stage1_steps',)),
           'stage1/eval': provenance.Stage(DATA_FIELDS, ('stage1',), 'stage1/eval.json')}
  model, networks = 'stage1', ('stage1',)
  for r in range(1, rws.max_rounds + 1):
    folder = round_stage(r)
    found = f'{folder}/analysis'
    table[found] = provenance.Stage(ANALYSIS_FIELDS, (model,), f'{folder}/analysis.json',
                                    (f'{folder}/{analysis.WEAK_BOXES}',))
    table[f'{folder}/figures'] = provenance.Stage(FIGURE_FIELDS, (found,),
                                                  f'{folder}/figures.json', (f'{folder}/*.png',))
    table[f'{folder}/stage2'] = provenance.training_stage(f'{folder}/stage2', STAGE2_FIELDS,
                                                          (found,))
    network = (found, f'{folder}/stage2')
    if rws.integration == 'retrain':
      table[f'{folder}/stage3'] = provenance.training_stage(f'{folder}/stage3', STAGE3_FIELDS,
                                                            network)
      model = f'{folder}/stage3'
      network += (model,)
    for name in ('eval_plain', 'eval_fused') + (('premise',) if rws.premise else ()):
      table[f'{folder}/{name}'] = provenance.Stage(NETWORK_FIELDS, network,
                                                   f'{folder}/{name}.json')
    networks += network
  table['inference_cost'] = provenance.Stage(NETWORK_FIELDS, networks, 'inference_cost.json')
  if rws.baseline:
    table['baseline'] = provenance.training_stage(
        'baseline', BASELINE_FIELDS, tuple(name for name in table if name.endswith('analysis')))
    table['baseline/eval'] = provenance.Stage(DATA_FIELDS, ('baseline',), 'baseline/eval.json')
  return table


def check_config(config):
  """Raises one clear ValueError for an RWS setting no stage could use."""
  rws = config.rws
  config_lib.check_switches(rws, rws_config.FIELDS, 'rws')
  if any(i not in (1, 2, 3, 4) for i in rws.fuse_layers):
    raise ValueError(f'config.rws.fuse_layers={tuple(rws.fuse_layers)}; expected a subset of '
                     '(1, 2, 3, 4).')
  background = config.dataset.background_class
  if background is not None and not 0 <= background < config.dataset.num_classes:
    raise ValueError(f'config.dataset.background_class={background} is not a class of the '
                     f'{config.dataset.num_classes} classes; use None when there is none.')
  if not 0 <= rws.t_noise_z < float('inf'):
    raise ValueError(f'config.rws.t_noise_z={rws.t_noise_z}; expected a finite number >= 0.')
  if not 0 <= rws.t_min_share < 1:
    raise ValueError(f'config.rws.t_min_share={rws.t_min_share}; expected a share in [0, 1).')
  if rws.max_slices < 0 or rws.slice_chunk < 1 or rws.pair_chunk < 0:
    raise ValueError(f'config.rws.max_slices={rws.max_slices}, config.rws.slice_chunk='
                     f'{rws.slice_chunk} and config.rws.pair_chunk={rws.pair_chunk}; expected '
                     'max_slices >= 0 (0: every weak slice), slice_chunk >= 1 and pair_chunk '
                     '>= 0 (0: every class slot at once).')
  if rws.local_scale <= 0:
    raise ValueError(f'config.rws.local_scale={rws.local_scale} must be positive.')
  strides = models.feature_strides(config.model)
  sizes = [input_pipeline.pair(config.input.crop_size)]
  if config.input.eval_pad_size is not None:
    sizes.append(input_pipeline.pair(config.input.eval_pad_size))
  for height, width in sizes:
    fusion.check_geometry(height, width, rws.slice_size, rws.slice_stride, strides)
  if network.local_size(rws) % max(strides.values()):
    raise ValueError(f"The local model's input side {network.local_size(rws)} "
                     "(config.rws.local_scale x slice_size, or local_size) must be a multiple "
                     f"of the largest feature stride {max(strides.values())}.")


def fusion_loss(model, config):
  """Stage-3 loss (docs/methods.md RWS 7): cross-entropy of the network with `fusion_plans` applied
  to the augmented batch. `extra` is `fusion_plans`' `frozen`."""
  labelled = config.rws.attention_region == 'ground_truth'

  def loss_fn(params, batch_stats, batch, rng, extra):
    plan_rng, dropout_rng = jax.random.split(rng)
    plans, stats = network.fusion_plans(model, extra, batch['image'], config, plan_rng,
                                        labels=batch['segmentation'] if labelled else None,
                                        valid=batch.get('valid'))
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                                  train=True, mutable=['batch_stats'],
                                  rngs={'dropout': dropout_rng},
                                  layer_hook=fusion.layer_hook(plans))
    loss = losses.cross_entropy(logits, batch['segmentation'])
    return loss, (updates.get('batch_stats', batch_stats), stats)

  return loss_fn


NETWORK_TITLES = {'plain': 'RWS plain: refined network alone',
                  'fused': 'RWS fused: the RWS network'}  # config.rws.inference -> title


def results_table(summary, names):
  """Markdown: stage 1, baseline and RWS (plain and fused) mIoU and per-class IoU, the
  inference cost, then T, weak slices and their share per round."""
  total = summary['total_steps']
  rows = [('stage 1 only', summary['stage1']),
          (f'baseline ({total} steps)', summary.get('baseline')),
          (f"{NETWORK_TITLES['plain']} ({total} steps)", summary['rws_plain']),
          (f"{NETWORK_TITLES['fused']} ({total} steps)", summary['rws_fused'])]
  lines = [evaluate_lib.miou_table(summary['eval_split'],
                                   [(title, r) for title, r in rows if r is not None], names)]
  cost = summary['inference_ms_per_image']
  lines += ['', f"Inference: {cost['plain']:.1f} ms per image plain, {cost['fused']:.1f} ms "
            f"fused ({cost['fused'] / cost['plain']:.2f}x), batch {cost['batch']}.",
            '', '| round | T | weak slices | weak share | mIoU after round (plain / fused) |',
            '|---|---|---|---|---|']
  for r in summary['rounds']:
    after = ('-' if 'miou_plain' not in r
             else f"{r['miou_plain']:.4f} / {r['miou_fused']:.4f}")
    share = '-' if r['weak_share'] is None else f"{r['weak_share']:.1%}"
    lines.append(f"| {r['round']} | {r['threshold']:.3f} | {r['weak_slices']} | {share} | "
                 f"{after} |")
  for r in summary['rounds']:
    if 'premise' in r:
      lines += ['', f"Round {r['round']}, part by part. "
                + premise.table(r['premise'], summary['eval_split'], names)]
  return '\n'.join(lines)


def inference_cost(eval_steps, net, batch, mesh, repeats=3):
  """Milliseconds per image of each jitted eval step (plain and fused network) on one eval
  batch: median of `repeats` timed calls after a warm-up call, measured one after another in
  this process."""
  device = train.to_device(batch, mesh)
  cost = {name: 1000 * median_seconds(lambda step=step: step(net, device), repeats)
          / len(batch['image']) for name, step in eval_steps.items()}
  return dict(cost, batch=len(batch['image']))


def schedule_config(config, round_index, stage3_init):
  """(train config, optimizer offset, warm-up start rate) of round `round_index`'s stage 3.

  `stage1` continues the previous model's optimizer, whose step count goes on: the schedule
  is shifted by the steps before it and warms up linearly from the previous rate to
  `stage3_lr`, then decays (docs/methods.md RWS 7). `fresh` restarts with a full poly schedule.
  """
  rws = config.rws
  if stage3_init == 'fresh':
    return _with(config.train, lr=rws.stage3_lr), 0, 0.0
  offset = rws.stage1_steps + (round_index - 1) * rws.stage3_steps
  if round_index == 1:
    previous = train.poly_schedule(config.train.lr, rws.stage1_steps, config.train.poly_power,
                                   config.train.warmup_steps)(rws.stage1_steps - 1)
  else:
    previous = train.poly_schedule(rws.stage3_lr, rws.stage3_steps, config.train.poly_power,
                                   rws.stage3_warmup)(rws.stage3_steps - 1)
  cfg = _with(config.train, lr=rws.stage3_lr, warmup_steps=rws.stage3_warmup)
  return cfg, offset, float(previous)


class _Run:
  """One RWS run's shared parts (`run`): the config, the started run (`stages.start_run`),
  the class names, the initial variables, the eval step of each network kind."""

  def __init__(self, config, workdir, recompute_from):
    self.config, self.workdir = config, workdir
    self.started = stages.start_run(config, workdir, stage_table(config), check_config,
                                    recompute_from)
    self.model, self.mesh = self.started.model, self.started.mesh
    self.names = data.class_names(config.dataset)
    self.init = stages.initial_variables(self.model, config, self.started.rng)
    self.step_rng = jax.random.fold_in(self.started.rng, 1)
    self.predict = {name: network.make_predict_fn(self.model, config, name)
                    for name in ('plain', 'fused')}
    self.eval_steps = {name: train.make_eval_step(self.model, config.dataset.num_classes,
                                                  self.mesh, fn)
                       for name, fn in self.predict.items()}

  def train_supervised(self, stage, variables, batches, steps, **fields):
    """Training stage `stage` with the supervised loss; `fields` replace config.train's."""
    tx = train.make_optimizer(_with(self.config.train, **fields), steps)
    return self.started.runner.train(
        stage, loss_fn=train.supervised_loss(self.model), tx=tx, variables=variables,
        batches=batches, total_steps=steps, train_cfg=self.config.train, mesh=self.mesh,
        rng=self.step_rng, writer=self.started.writer)

  def evaluation(self, name, net, inference='plain'):
    """The eval split's IoU of `net` (an RWS network dict): stage `name`."""
    def compute():
      batches, count = stages.eval_batches(self.started.eval_source, self.config, self.mesh)
      confusion = train.evaluate(self.eval_steps[inference], net, batches, self.mesh, count)
      return evaluate_lib.summarize(confusion, self.names)
    return self.started.runner.run(name, compute)

  def analyse(self, r, global_variables):
    """Round `r`'s analysis of the training split (docs/methods.md RWS 2-4) and its figures;
    returns the analysis and the round's row of the summary."""
    config, runner = self.config, self.started.runner
    directory = os.path.join(self.workdir, round_stage(r))
    found = runner.run(round_stage(r, 'analysis'), lambda: analysis.analyze(
        self.model, global_variables, self.started.train_source, config, self.mesh, directory,
        self.names))
    logging.info('Round %d: T = %.3f, %d weak slices (%.1f%% of the windows).', r,
                 found['threshold'], found['weak_slices'], 100 * (found['weak_share'] or 0))
    advice = analysis.weak_share_advice(found['weak_share'], config.rws.weak_rule)
    if advice:
      logging.warning('Round %d: %s', r, advice)
    if jax.process_index() == 0:
      runner.run(round_stage(r, 'figures'), lambda: analysis.save_round_figures(
          directory, self.model, global_variables, self.started.train_source, found, config,
          self.names))
    row = {key: found[key] for key in ('threshold', 'per_class_threshold', 'weak_slices',
                                          'windows', 'weak_share', 'weak_share_per_class')}
    return found, dict(row, round=r)

  def train_local(self, r, found, global_variables):
    """Round `r`'s stage 2: the local model on the weak slices (docs/methods.md RWS 5)."""
    rws = self.config.rws
    crop_batches = input_pipeline.crop_dataset(
        self.started.train_source.whole,
        analysis.load_weak_boxes(os.path.join(self.workdir, round_stage(r))),
        self.config.input, seed=self.config.seed + r,
        batch_size=train.local_batch_size(rws.local_batch_size, self.mesh),
        out_size=network.local_size(rws), shard=hosts.this_process())
    return self.train_supervised(
        round_stage(r, 'stage2'), self.init if rws.local_init == 'init' else global_variables,
        lambda start, ds=crop_batches: input_pipeline.prefetch(ds, start), rws.stage2_steps,
        warmup_steps=rws.stage2_warmup)

  def retrain(self, r, state, frozen):
    """Round `r`'s stage 3 (docs/methods.md RWS 7): the global model trained with the fusion
    of `frozen`, continuing `state` or from the initial weights."""
    config, rws = self.config, self.config.rws
    stage3_cfg, offset, warmup_from = schedule_config(config, r, rws.stage3_init)
    continued = rws.stage3_init == 'stage1'
    return self.started.runner.train(
        round_stage(r, 'stage3'), loss_fn=fusion_loss(self.model, config),
        tx=train.make_optimizer(stage3_cfg, rws.stage3_steps, offset=offset,
                                warmup_from=warmup_from),
        variables=state.variables if continued else self.init,
        opt_state=state.opt_state if continued else None,
        batches=stages.train_batches(self.started.train_source, config, self.mesh,
                                     seed=config.seed + 1000 * r),
        total_steps=rws.stage3_steps, train_cfg=config.train, mesh=self.mesh,
        rng=self.step_rng, writer=self.started.writer, extra=frozen)

  def measure(self, r, net, row):
    """Round `r`'s network on the eval split, plain and fused, and part by part (RWS 12)."""
    final = {name: self.evaluation(round_stage(r, f'eval_{name}'), net, name)
             for name in ('plain', 'fused')}
    row.update(trained=True, miou_plain=final['plain']['miou'],
               miou_fused=final['fused']['miou'])
    if self.config.rws.premise:
      row['premise'] = self.started.runner.run(round_stage(r, 'premise'), lambda: premise.measure(
          self.model, net, self.started.eval_source, self.config, self.mesh, self.names))
    return final

  def report(self, summary, net, final):
    """The results table, the figures and summary.json of a run's `summary`."""
    config, workdir = self.config, self.workdir
    table = results_table(summary, self.names)
    if jax.process_index() == 0:
      bars = {'baseline': summary['baseline']['per_class_iou']} if 'baseline' in summary else {}
      bars['RWS plain'] = final['plain']['per_class_iou']
      bars['RWS fused'] = final['fused']['per_class_iou']
      figures.save_per_class_iou(os.path.join(workdir, 'per_class_iou.png'), bars, self.names)
      stages.save_prediction_figure(os.path.join(workdir, 'predictions.png'), self.model, net,
                                    self.started.eval_source, config,
                                    self.predict[config.rws.inference])
    summary = record.write_results(workdir, config, summary, table,
                                   made=self.started.runner.made_record())
    print(table)
    return summary


def run(config, workdir, recompute_from=()):
  """All RWS stages and rounds, the equal-budget baseline, the table, summary.json, figures;
  the stages `recompute_from` names, and those consuming them, are computed again."""
  this, rws = _Run(config, workdir, recompute_from), config.rws
  batches = stages.train_batches(this.started.train_source, config, this.mesh, seed=config.seed)
  state = this.train_supervised('stage1', this.init, batches, rws.stage1_steps)
  net = network.plain_network(state.variables)
  stage1_eval = this.evaluation('stage1/eval', net)
  final = {'plain': stage1_eval, 'fused': stage1_eval}
  total_steps, rounds = rws.stage1_steps, []
  for r in range(1, rws.max_rounds + 1):
    found, row = this.analyse(r, state.variables)
    rounds.append(row)
    if analysis.should_stop([x['weak_slices'] for x in rounds], rws.min_weak_delta):
      row['trained'] = False
      break
    frozen = {'global': state.variables,
              'local': this.train_local(r, found, state.variables).variables,
              'threshold': analysis.network_threshold(found)}
    total_steps += rws.stage2_steps
    if rws.integration == 'retrain':
      state = this.retrain(r, state, frozen)
      total_steps += rws.stage3_steps
    net = {'model': state.variables, **frozen}
    final = this.measure(r, net, row)
  cost = this.started.runner.run('inference_cost', lambda: inference_cost(
      this.eval_steps, net,
      stages.eval_batches(this.started.eval_source, config, this.mesh)[0][0], this.mesh))
  summary = {'method': 'rws', 'eval_split': config.dataset.eval_split,
             'total_steps': total_steps, 'stage1': stage1_eval, 'rws_plain': final['plain'],
             'rws_fused': final['fused'], 'rws': final[rws.inference],
             'inference_ms_per_image': cost, 'rounds': rounds}
  if rws.baseline:
    baseline = this.train_supervised('baseline', this.init, batches, total_steps)
    summary['baseline'] = this.evaluation('baseline/eval',
                                          network.plain_network(baseline.variables))
  return this.report(summary, net, final)


def finished_network(config, workdir, model, mesh):
  """The RWS network of a finished run in `workdir` (`rws_logits`' variables): the refined
  model of the last trained round (with `integration: inference`, the model whose attention
  that round used), that model, its local model and its T; a run whose first round trained
  nothing gives `plain_network` of stage 1.
  Raises ValueError when stage 1 has not finished."""
  rws = config.rws
  shape = (1, *input_pipeline.pair(config.input.crop_size), 3)
  rng = jax.random.key(config.seed)

  def restore(stage, steps):
    return train.finished_variables(workdir=workdir, stage=stage, model=model,
                                    tx=train.make_optimizer(config.train, steps),
                                    total_steps=steps, image_shape=shape, rng=rng, mesh=mesh)

  table = stage_table(config)
  global_variables, net = restore('stage1', rws.stage1_steps), None
  retrain = rws.integration == 'retrain'
  for r in range(1, rws.max_rounds + 1):
    last = round_stage(r, 'stage3' if retrain else 'stage2')
    if not os.path.exists(provenance.record_path(table, workdir, last)):
      break
    with open(provenance.record_path(table, workdir, round_stage(r, 'analysis'))) as f:
      threshold = analysis.network_threshold(json.load(f))
    net = {'model': (restore(round_stage(r, 'stage3'), rws.stage3_steps) if retrain
                     else global_variables),
           'global': global_variables,
           'local': restore(round_stage(r, 'stage2'), rws.stage2_steps),
           'threshold': threshold}
    global_variables = net['model']
  return net or network.plain_network(global_variables)


def trained_predictor(config, workdir, mesh):
  """The `stages.Predictor` of the finished run in `workdir`: the network of
  config.rws.inference, the RWS network (`finished_network`, default) or the refined network
  alone."""
  model = models.make_model(config.model, config.dataset.num_classes)
  inference = config.rws.inference
  return stages.Predictor(network.make_predict_fn(model, config, inference),
                          finished_network(config, workdir, model, mesh),
                          NETWORK_TITLES[inference], config)


def _with(train_cfg, **fields):
  """A copy of config.train with some fields replaced."""
  cfg = ml_collections.ConfigDict(train_cfg.to_dict())
  for key, value in fields.items():
    cfg[key] = value
  return cfg
