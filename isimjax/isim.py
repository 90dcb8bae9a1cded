"""The ISIM pipeline (docs/methods.md, ISIM steps 1-11): `run(config, workdir)`.

The pipeline is the list `STAGES` of named stages, run by `rwsjax.stage_runner.Runner`: each returns
a JSON-ready record written to <workdir>/stages/<name>.json; a rerun with the same workdir reads
back the stages whose record exists and resumes the first unfinished one from its own
checkpoints and label stores, when the settings each reads (`stage_table`) are unchanged.
The PSA stages (isimjax.psa) reach the trained DeepLabCAM through
`trained_variables(ctx, 'isim')`.

  isim_train           iterative self-training with pseudo-label rounds (isimjax.self_train)
  isim_eval            CAM and CAM + CRF labels of the final model and the mIoU of each
                       round's pseudo labels on the training split; classification accuracy
  baseline_train       the same architecture and epochs with the classification loss only
  baseline_eval        its CAM and CAM + CRF labels and classification accuracy
  psa_affinity_labels  affinity labels from the ISIM CAMs; their coverage and accuracy
  psa_affinity_train   AffinityNet
  psa_random_walk      ISIM + RW and ISIM + RW + dCRF pseudo labels and their mIoU
  psa_walk_premise     the walk part by part on the training split (isimjax.walk_premise)
  psa_final            the final segmentation model on those labels; eval-split mIoU
  report               the tables of paper Tables 1-5, 7 and 11, summary.json,
                       results.md, figures

Training reads images and image-level labels only; ground-truth pixel labels are read by the
evaluation stages alone. Multi-host runs need a workdir shared by all processes.
"""
import dataclasses
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np

from isimjax import cam
from isimjax import config as isim_config
from isimjax import models as cam_models
from isimjax import psa
from isimjax import self_train
from isimjax import walk_premise
from rwsjax import config as config_lib
from rwsjax import data
from rwsjax import evaluate as evaluate_lib
from rwsjax import figures
from rwsjax import hosts
from rwsjax import models
from rwsjax import provenance
from rwsjax import stage_runner
from rwsjax import stages
from rwsjax import train
from rwsjax.evaluate import percent
from rwsjax.losses import IGNORE_LABEL
from rwsjax.progress import MetricWriter
from rwsjax.record import write_results

# Generic fields ISIM never reads (`preflight.check_overrides`), and what it reads instead.
UNREAD_FIELDS = {
    'train.steps': 'config.isim.epochs, psa.affinity.epochs and psa.final.epochs',
    'train.lr': ('config.isim.lr_encoder, lr_decoder and lr_classifier, '
                 'psa.affinity.train.lr and psa.final.train.lr'),
}
# Fields read only under a setting (`preflight.check_overrides`): config.psa.* with the PSA
# stages, from their declarations, and the PSA stages' sub-configs.
CONDITIONAL_FIELDS = {**config_lib.conditional_fields(isim_config.PSA_FIELDS, 'psa'),
                      **{f'psa.{part}': isim_config.PSA_ON for part in ('affinity', 'final')}}
MODELS = {'isim': 'isim', 'baseline': 'cls_baseline'}  # table column -> training stage


@dataclasses.dataclass
class Context:
  """What every stage needs: config, paths, data, the model, the CAM extractor."""
  config: Any
  workdir: str
  mesh: Any
  train_source: Any
  eval_source: Any
  model: Any
  cams: cam.CamExtractor
  writer: MetricWriter
  rng: Any
  runner: Any = None  # the run's `stage_runner.Runner`, whose record the report writes

  @property
  def num_classes(self):
    return self.config.dataset.num_classes

  @functools.cached_property
  def train_sizes(self):
    """Image sizes of this process's training examples, cached in the workdir."""
    part = self.train_source
    path = os.path.join(self.workdir, 'image_sizes', f'train_{part.start}-{part.stop}.npy')
    if os.path.exists(path):
      return np.load(path)
    sizes = self_train.image_sizes(self.train_source)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(f'{path}.tmp.npy', sizes)
    os.replace(f'{path}.tmp.npy', path)
    return sizes

  @functools.cached_property
  def initial_variables(self):
    """Initial variables shared by ISIM and the baseline (same seed, same start)."""
    return stages.initial_variables(self.model, self.config, self.rng)


def check_config(config):
  """Stops before any work on ISIM or PSA settings that a stage would reject: the CAM model,
  the regeneration rule and, when the PSA stages run, `psa.check_config`."""
  cam_models.make_cam_model(config.model, config.dataset.num_classes)
  config_lib.check_switches(config.isim, isim_config.ISIM_FIELDS, 'isim')
  if config.psa.enabled:
    psa.check_config(config)


def model_configs(config):
  """The model configs whose config.model.pretrained files the run reads: the ISIM model's
  and, with the PSA stages, AffinityNet's (psa.init 'imagenet') and the final model's."""
  configs = [config.model]
  if config.psa.enabled:
    parts = ('affinity', 'final') if config.psa.init == 'imagenet' else ('final',)
    configs += [psa.stage_config(config, part).model for part in parts]
  return configs


def make_context(config, workdir, started):
  """The stages' `Context` of a run `started` (`stages.start_run`, DeepLabCAM/UNetCAM) with
  its CAM extractor."""
  isim_cfg = config.isim
  extractor = cam.CamExtractor(started.model, config.input, scales=tuple(isim_cfg.cam_scales),
                               flip=isim_cfg.cam_flip, stride=self_train.cam_stride(config),
                               batch_size=isim_cfg.cam_batch_size, bucket=isim_cfg.cam_bucket)
  return Context(config=config, workdir=workdir, mesh=started.mesh,
                 train_source=started.train_source, eval_source=started.eval_source,
                 model=started.model, cams=extractor, writer=started.writer, rng=started.rng,
                 runner=started.runner)


def trained_variables(ctx, stage):
  """{'params', 'batch_stats'} of the finished training stage `stage` ('isim' or
  'cls_baseline'), restored from its last checkpoint."""
  per_epoch = self_train.steps_per_epoch(ctx.config, ctx.train_source)
  total = ctx.config.isim.epochs * per_epoch
  tx = self_train.make_optimizer(ctx.config, total)
  return train.finished_variables(
      workdir=ctx.workdir, stage=stage, model=ctx.model, tx=tx, total_steps=total,
      image_shape=(1, *ctx.config.input.crop_size, 3), rng=ctx.rng, mesh=ctx.mesh)


def _train(ctx, stage, with_rounds):
  """Runs `self_train.self_train` for `stage`; returns its rounds and step count."""
  def save_round_cams(record, state):
    name = f'round_{record["round"]:02d}'
    _save_figure_cams(ctx, state.variables, _figure_path(ctx, stage, name))

  state, rounds = self_train.self_train(
      ctx.config, ctx.workdir, stage=stage, model=ctx.model, variables=ctx.initial_variables,
      train_source=ctx.train_source, mesh=ctx.mesh, rng=jax.random.fold_in(ctx.rng, 1),
      writer=ctx.writer, cams=ctx.cams if with_rounds else None,
      sizes=ctx.train_sizes if with_rounds else None, on_round=save_round_cams)
  return {'steps': int(state.step), 'rounds': rounds}


def store_miou(store, source, num_classes, class_names):
  """`rwsjax.evaluate.summarize` of the labels in `store` against the ground truth."""
  pairs = ((source[i]['segmentation'][..., 0], store[i]) for i in range(len(source)))
  return evaluate_lib.summarize(evaluate_lib.label_confusion(pairs, num_classes), class_names)


def _classify_split(ctx, bound, source):
  """Scale-1 class logits of every example of `source`, with the image labels."""
  logits, targets = [], []
  for _, images, labels in self_train.example_batches(source, np.arange(len(source)),
                                                      ctx.config.isim.cam_batch_size):
    logits.append(bound.class_logits(images, labels.shape[1]))
    targets.append(labels)
  return (hosts.rows_over_processes(np.concatenate(logits)),
          hosts.rows_over_processes(np.concatenate(targets)))


def _figure_path(ctx, stage, name):
  return os.path.join(ctx.workdir, stage, 'figures', f'{name}_cams.npz')


def _figure_indices(ctx):
  return np.arange(min(ctx.config.figures.num_examples, len(ctx.train_source)))


def _save_figure_cams(ctx, variables, path):
  """Max-over-classes CAMs of the first training examples, for the Fig. 5 grid (process 0)."""
  if jax.process_index() != 0:
    return
  bound = ctx.cams.bind(variables)
  maps = []
  for _, images, labels in self_train.example_batches(ctx.train_source, _figure_indices(ctx),
                                                      1):
    maps.append(bound(images, labels)[0].max(axis=0))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, *maps)


def _evaluate(ctx, stage, rounds=()):
  """CAM / CAM + CRF mIoU on the training split, classification metrics, round mIoU."""
  config, names = ctx.config, data.class_names(ctx.config.dataset)
  variables = trained_variables(ctx, stage)
  bound = ctx.cams.bind(variables)
  result = {}
  for name, crf in (('cam', False), ('cam_crf', True)):
    store = self_train.label_store(os.path.join(ctx.workdir, stage, 'eval', name),
                                   ctx.train_source)
    self_train.generate_labels(bound, ctx.train_source, store, config, crf=crf,
                               sizes=ctx.train_sizes)
    result[name] = store_miou(store, ctx.train_source, ctx.num_classes, names)
  result['classification'] = {
      split: evaluate_lib.classification_metrics(*_classify_split(ctx, bound, source))
      for split, source in ((config.dataset.train_split, ctx.train_source),
                            (config.dataset.eval_split, ctx.eval_source))}
  result['rounds'] = [
      dict(record, **store_miou(self_train.label_store(record['directory'], ctx.train_source),
                                ctx.train_source, ctx.num_classes, names))
      for record in rounds]
  _save_figure_cams(ctx, variables, _figure_path(ctx, stage, 'final'))
  return result


def affinity_label_quality(store, source, num_classes, class_names):
  """Affinity labels against the ground truth: `coverage`, the share of ground-truth pixels
  with a confident (not 255) label, and the summary (mIoU, pixel accuracy) of those pixels."""
  def pairs():
    for i in range(len(source)):
      labels = store[i]
      yield source[i]['segmentation'][..., 0], np.where(labels == IGNORE_LABEL, num_classes,
                                                        labels)
  confusion = evaluate_lib.label_confusion(pairs(), num_classes + 1)
  confident = confusion[:num_classes, :num_classes]
  return dict(evaluate_lib.summarize(confident, class_names),
              coverage=float(confident.sum() / max(confusion.sum(), 1)))


def _psa_affinity_labels(ctx):
  store = psa.affinity_labels(ctx, trained_variables(ctx, MODELS['isim']))
  return affinity_label_quality(store, ctx.train_source, ctx.num_classes,
                                data.class_names(ctx.config.dataset))


def _psa_random_walk(ctx):
  stores = psa.random_walk_labels(ctx, trained_variables(ctx, MODELS['isim']))
  names = data.class_names(ctx.config.dataset)
  return {key: store_miou(store, ctx.train_source, ctx.num_classes, names)
          for key, store in stores.items()}


def model_title(model_cfg):
  """'DeepLabCAM' / 'UNetCAM (learnable)', the paper's column names."""
  title = cam_models.cam_title(model_cfg)
  if 'upsample' in models.head(model_cfg).reads:
    title += f' ({model_cfg.upsample})'
  return title


def results_table(config, results):
  """Markdown tables in the shape of paper Tables 1-5 and the per-round pseudo labels."""
  isim = results['isim_eval']
  baseline = results.get('baseline_eval')
  columns = [('CAM (classification only)', baseline), (model_title(config.model), isim)]
  columns = [(title, r) for title, r in columns if r is not None]
  header = '| | ' + ' | '.join(title for title, _ in columns) + ' |'
  rule = '|' + '---|' * (len(columns) + 1)
  lines = ['Classification (paper Table 1): exact match / per-label accuracy / mAP, %', '',
           header, rule]
  for split in (config.dataset.train_split, config.dataset.eval_split):
    cells = [' / '.join(percent(r['classification'][split][k])
                        for k in ('exact_match', 'label_accuracy', 'map')) for _, r in columns]
    lines.append(f'| {split} | ' + ' | '.join(cells) + ' |')
  lines += ['', f'mIoU on the {config.dataset.train_split} split (paper Tables 2-5), %', '',
            header, rule]
  for key, label in (('cam', 'CAM'), ('cam_crf', 'CAM + dCRF')):
    lines.append(f'| {label} | ' + ' | '.join(percent(r[key]['miou']) for _, r in columns)
                 + ' |')
  lines += ['', f'Pseudo labels of each round, mIoU on the {config.dataset.train_split} split '
            '(paper Fig. 4), %', '', '| round | after epoch | mIoU |', '|---|---|---|']
  lines += [f'| {r["round"]} | {r["epoch"]} | {percent(r["miou"])} |' for r in isim['rounds']]
  if 'psa_final' in results:
    lines += [''] + psa_table(config, results)
  if 'psa_walk_premise' in results:
    lines += ['', walk_premise.table(results['psa_walk_premise'])]
  return '\n'.join(lines) + '\n'


def psa_numbers(config, results):
  """mIoU of the pseudo labels on the training split (CAM of the classification-only model,
  ISIM, ISIM + RW, ISIM + RW + dCRF) and of the final model on the eval split."""
  def miou(stage, key):
    return results.get(stage, {}).get(key, {}).get('miou')
  return {'cam': miou('baseline_eval', 'cam'), 'isim': miou('isim_eval', 'cam'),
          'isim_rw': miou('psa_random_walk', 'rw'),
          'isim_rw_crf': miou('psa_random_walk', 'rw_crf'),
          'final': miou('psa_final', config.dataset.eval_split)}


def psa_table(config, results):
  """Markdown lines in the shape of paper Table 7 (pseudo labels, one column per backbone)
  and Table 11 (CAM, pseudo masks, segmentation masks)."""
  numbers = psa_numbers(config, results)
  title, train_split = model_title(config.model), config.dataset.train_split
  final = results['psa_final']
  pseudo_key = {'rw': 'isim_rw', 'rw_crf': 'isim_rw_crf'}[final['labels']]
  lines = [f'Pseudo labels, mIoU on the {train_split} split (paper Table 7), %', '',
           f'| | {config.model.backbone} |', '|---|---|']
  lines += [f'| {label} | {percent(numbers[key])} |' for key, label in (
      ('cam', 'CAM'), ('isim', title), ('isim_rw', f'{title} + RW'),
      ('isim_rw_crf', f'{title} + RW + dCRF'))]
  lines += ['', f'Final model {final["model"]} trained on the {title} + RW'
            f'{" + dCRF" if final["labels"] == "rw_crf" else ""} labels (paper Tables 8-11), '
            f'mIoU %: CAM and pseudo masks on {train_split}, segmentation on '
            f'{config.dataset.eval_split}', '',
            '| Method | Backbone | CAM | Pseudo Masks | Seg Masks |', '|---|---|---|---|---|',
            f'| {title} + PSA | {config.model.backbone} | {percent(numbers["isim"])} | '
            f'{percent(numbers[pseudo_key])} | {percent(numbers["final"])} |']
  return lines


def _load_figure_cams(ctx, stage, name):
  path = _figure_path(ctx, stage, name)
  if not os.path.exists(path):
    return None
  with np.load(path) as saved:
    return [saved[f'arr_{i}'] for i in range(len(saved.files))]


def _save_figure(ctx, results):
  """Paper Fig. 5: image, ground truth, then CAM and pseudo label of each round, then the
  final CAM and CAM + CRF of ISIM and of the baseline."""
  indices = _figure_indices(ctx)
  examples = [ctx.train_source[int(i)] for i in indices]
  columns = [[e['image'] for e in examples], [e['segmentation'][..., 0] for e in examples]]
  titles = ['image', 'ground truth']
  panels = [(f'round {r["round"]} (epoch {r["epoch"]})', 'isim', f'round_{r["round"]:02d}',
             self_train.label_store(r['directory'], ctx.train_source))
            for r in results['isim_eval']['rounds']]
  for column, key in (('isim', 'isim_eval'), ('baseline', 'baseline_eval')):
    if key in results:
      stage = MODELS[column]
      panels.append((f'{column} final', stage, 'final', self_train.label_store(
          os.path.join(ctx.workdir, stage, 'eval', 'cam_crf'), ctx.train_source)))
  if 'psa_random_walk' in results:
    panels += [(title, 'psa', name, psa.label_store(ctx, name))
               for name, title in (('rw', 'isim + RW'), ('rw_crf', 'isim + RW + dCRF'))]
  for title, stage, name, store in panels:
    maps = _load_figure_cams(ctx, stage, name)
    if maps is not None:
      columns.append(maps)
      titles.append(f'{title} CAM')
    columns.append([store[int(i)] for i in indices])
    titles.append(f'{title} label')
  figures.save_grid(os.path.join(ctx.workdir, 'isim_pseudo_labels.png'), columns, titles,
                    data.class_names(ctx.config.dataset), value_label='CAM, max over classes')


def _report(ctx, results):
  """Writes summary.json, results.md and the Fig. 5 grid."""
  config = ctx.config
  table = results_table(config, results)
  summary = {'method': 'isim', 'model': model_title(config.model),
             'backbone': config.model.backbone, 'epochs': config.isim.epochs,
             'regen': config.isim.regen, 'stages': results}
  if 'psa_final' in results:
    summary['psa'] = psa_numbers(config, results)
  if jax.process_index() == 0:
    _save_figure(ctx, results)
  write_results(ctx.workdir, config, summary, table, made=ctx.runner.made_record())
  return {'table': table}


STAGES = [
    ('isim_train', lambda ctx, results: _train(ctx, MODELS['isim'], with_rounds=True)),
    ('isim_eval', lambda ctx, results: _evaluate(ctx, MODELS['isim'],
                                                 results['isim_train']['rounds'])),
    ('baseline_train', lambda ctx, results: _train(ctx, MODELS['baseline'], with_rounds=False)),
    ('baseline_eval', lambda ctx, results: _evaluate(ctx, MODELS['baseline'])),
    ('psa_affinity_labels', lambda ctx, results: _psa_affinity_labels(ctx)),
    ('psa_affinity_train', lambda ctx, results: psa.train_affinity(
        ctx, trained_variables(ctx, MODELS['isim']))),
    ('psa_random_walk', lambda ctx, results: _psa_random_walk(ctx)),
    ('psa_walk_premise', lambda ctx, results: psa.walk_premise_result(
        ctx, trained_variables(ctx, MODELS['isim']))),
    ('psa_final', lambda ctx, results: psa.train_final(ctx)),
    ('report', _report),
]
OPTIONAL = {'baseline_train', 'baseline_eval'}  # skipped when config.isim.baseline is False
PSA_STAGES = {'psa_affinity_labels', 'psa_affinity_train', 'psa_random_walk',
              'psa_walk_premise', 'psa_final'}
# The config fields each stage reads (`stage_table`, `rwsjax.provenance`).
DATA_FIELDS = ('seed', 'dataset', 'input', 'model')
TRAIN_FIELDS = DATA_FIELDS + ('train', 'isim.epochs', 'isim.steps_per_epoch', 'isim.regen',
                              'isim.first_regen_epoch', 'isim.regen_every', 'isim.converge_*',
                              'isim.lr_*')
CAM_FIELDS = DATA_FIELDS + ('isim.cam_*', 'isim.crf')
AFFINITY_FIELDS = DATA_FIELDS + ('train', 'psa.affinity', 'psa.init', 'psa.radius',
                                 'psa.head_lr_mult')
WALK_FIELDS = CAM_FIELDS + ('psa.radius', 'psa.alpha', 'psa.beta', 'psa.logt', 'psa.label_crf',
                            'psa.rw_crf_iterations', 'psa.dense_max_nodes', 'psa.walk_scale')
FINAL_FIELDS = DATA_FIELDS + ('train', 'psa.final', 'psa.final_labels')


def stage_table(config):
  """The stages of `STAGES` this config runs (`rwsjax.provenance.Stage`): what each reads,
  consumes and writes. The image sizes cached in the workdir (a function of the dataset) go
  with the first stage."""
  isim, baseline = MODELS['isim'], MODELS['baseline']
  table = {
      'isim_train': provenance.training_stage(isim, TRAIN_FIELDS + CAM_FIELDS,
                                              outputs=('image_sizes',)),
      'isim_eval': provenance.Stage(CAM_FIELDS, ('isim_train',), outputs=(
          f'{isim}/eval', f'{isim}/figures/final_cams.npz')),
      'baseline_train': provenance.training_stage(baseline, TRAIN_FIELDS),
      'baseline_eval': provenance.Stage(CAM_FIELDS, ('baseline_train',), outputs=(
          f'{baseline}/eval', f'{baseline}/figures/final_cams.npz')),
      'psa_affinity_labels': provenance.Stage(
          CAM_FIELDS + ('psa.aff_*', 'psa.label_crf'), ('isim_train',),
          outputs=(f'psa/{psa.AFFINITY_LABELS}',)),
      'psa_affinity_train': provenance.training_stage(
          psa.AFFINITY_STAGE, AFFINITY_FIELDS, ('isim_train', 'psa_affinity_labels')),
      'psa_random_walk': provenance.Stage(
          WALK_FIELDS, ('isim_train', 'psa_affinity_train'),
          outputs=tuple(f'psa/{name}' for name in psa.WALK_LABELS)),
      'psa_walk_premise': provenance.Stage(
          WALK_FIELDS + ('psa.premise', 'psa.sweep_*'),
          ('isim_train', 'psa_affinity_labels', 'psa_affinity_train')),
      'psa_final': provenance.training_stage(
          psa.FINAL_STAGE, FINAL_FIELDS, ('psa_random_walk',),
          outputs=('psa_final_predictions.png',)),
  }
  table = {name: stage for name, stage in table.items() if runs(config, name)}
  table['report'] = provenance.report_stage(tuple(table), record_path=None,
                                            outputs=('isim_pseudo_labels.png',))
  return table


def runs(config, name):
  """Whether `config` runs stage `name`: the baseline stages with config.isim.baseline, the
  PSA stages with config.psa.enabled, the walk's measurement also with config.psa.premise."""
  return not ((name in OPTIONAL and not config.isim.baseline)
              or (name in PSA_STAGES and not config.psa.enabled)
              or (name == 'psa_walk_premise' and not config.psa.premise))


def finished_steps(workdir, stage):
  """The step count that the finished stage `stage` of the run in `workdir` recorded."""
  path = stage_runner.Runner(workdir).record_path(stage)
  if not os.path.exists(path):
    raise ValueError(f'{workdir} holds no finished {stage} stage ({path} is missing); rerun the '
                     'pipeline with this workdir to finish training.')
  with open(path) as f:
    return json.load(f)['steps']


def trained_predictor(config, workdir, mesh):
  """The `stages.Predictor` of the finished run in `workdir`: the final segmentation model
  trained on the random-walk labels when the PSA stages run, else the ISIM model's
  segmentation output."""
  k = config.dataset.num_classes
  if config.psa.enabled:
    sub = psa.stage_config(config, 'final')
    model = models.make_model(sub.model, k)
    stage, steps = psa.FINAL_STAGE, finished_steps(workdir, 'psa_final')
    tx = train.make_optimizer(sub.train, steps)
    title = f'{psa.final_title(config)} on the {model_title(config.model)} + PSA labels'
    predict_fn = stages.model_predict_fn(model)
  else:
    sub = config
    model = cam_models.make_cam_model(config.model, k)
    stage, steps = MODELS['isim'], finished_steps(workdir, 'isim_train')
    tx = self_train.make_optimizer(config, steps)
    title = model_title(config.model)
    predict_fn = lambda variables, batch: model.apply(variables, batch['image'])[0]
  variables = train.finished_variables(
      workdir=workdir, stage=stage, model=model, tx=tx, total_steps=steps,
      image_shape=(1, *sub.input.crop_size, 3), rng=jax.random.key(config.seed), mesh=mesh)
  return stages.Predictor(predict_fn, variables, title, sub)


def run(config, workdir, stage_list=None, recompute_from=()):
  """Runs `stage_list` (default `STAGES`) in order, skipping finished ones; returns
  {stage name: result}. The stages `recompute_from` names, and those consuming them, are
  computed again."""
  started = stages.start_run(
      config, workdir, stage_table(config), check_config, recompute_from,
      make_model=lambda c: cam_models.make_cam_model(c.model, c.dataset.num_classes),
      model_configs=model_configs(config))
  ctx, results = make_context(config, workdir, started), {}
  for name, stage_fn in stage_list or STAGES:
    if runs(config, name):
      results[name] = ctx.runner.run(name, functools.partial(stage_fn, ctx, results))
  if 'report' in results:
    logging.info('ISIM results:\n%s', results['report']['table'])
  return results
