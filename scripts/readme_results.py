"""Reruns the result rows of README.md and prints their tables (mean and sd over seeds).

Every row is a `launch.py` command; runs whose summary.json exists are read back, so a
killed run of this script resumes where it stopped. The RWS controls reuse the stage-1
model, the analysis or the local model of their seed's main run (copied into their own
workdir, so every control is also an ordinary run directory), each stage only where the main
run made it with the settings the control's config gives it (equal fingerprints,
`rwsjax.provenance`), and skip the baseline. The ISIM
runs and their supervised upper bounds are seed 0 only; their tables are the runs' own
results.md.

  python scripts/readme_results.py --out=runs/readme                     # everything
  python scripts/readme_results.py --out=runs/readme --only=shapes_rws --seeds=0
  python scripts/readme_results.py --out=runs/readme --only=shapes_fine_rws --controls=local_scale-1
  python scripts/readme_results.py --out=runs/readme --only=shapes_fine_converged_rws_pretrained
  python scripts/readme_results.py --out=runs/readme --list              # the commands
  python scripts/readme_results.py --out=runs/readme --report            # tables so far
"""
import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

from rwsjax import config as config_lib
from rwsjax import provenance
from rwsjax.rws import pipeline as rws_pipeline
from rwsjax.rws.premise import ON_WINDOWS, OUTSIDE_WINDOWS, TITLES, WHOLE_SPLIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every control once: (label, what it copies from the main run, overrides); its directory
# name is `control_name(overrides)`. What a control shares with the main run decides what it
# may copy: 'stage1' (the global model), 'analysis' (also T and the weak slices) or 'stage2'
# (also the local model). Controls of stage 3 set `integration=retrain`: by default the fusion
# joins stage 1's model at inference and there is no stage 3.
CONTROLS = (
    ('retrained: stage 3 trains the global model with the fusion (integration=retrain)',
     'stage2', ('--config.rws.integration=retrain',)),
    ('retrained without fusion: stage 3 as plain fine-tuning (fuse_layers=())', 'stage2',
     ('--config.rws.fuse_layers=()', '--config.rws.integration=retrain')),
    ('retrained without fusion at a tenth of the rate (stage3_lr=1.5e-4, fuse_layers=())',
     'stage2', ('--config.rws.stage3_lr=1.5e-4', '--config.rws.fuse_layers=()',
                '--config.rws.integration=retrain')),
    ('stage 3 from the initial weights, full schedule (stage3_init=fresh)', 'stage2',
     ('--config.rws.stage3_init=fresh', '--config.rws.stage3_steps=600',
      '--config.rws.stage3_lr=3e-3', '--config.rws.integration=retrain')),
    ('arbitrary slices (slices=arbitrary)', 'stage1', ('--config.rws.slices=arbitrary',)),
    ('local model at the global scale (local_scale=1)', 'analysis',
     ('--config.rws.local_scale=1',)),
    ('local model from the initial weights (local_init=init)', 'analysis',
     ('--config.rws.local_init=init',)),
    ('the local model is the global model: its enlarged view alone (stage2_steps=0)',
     'analysis', ('--config.rws.stage2_steps=0',)),
    ('no omega selection (select_omega=False)', 'stage2', ('--config.rws.select_omega=False',)),
    ('fusion into every stage output, as the paper (fuse_layers=(1, 2, 3, 4))', 'stage2',
     ('--config.rws.fuse_layers=(1, 2, 3, 4)',)),
    ('attention on the ground truth (attention_region=ground_truth)', 'stage1',
     ('--config.rws.attention_region=ground_truth',)),
    ('T by the noise-aware first flat point (t_rule=robust)', 'stage1',
     ('--config.rws.t_rule=robust',)),
    ('T at the last flat run (t_rule=last_flat, t_min_share=0)', 'stage1',
     ('--config.rws.t_rule=last_flat', '--config.rws.t_min_share=0')),
    ('the background held to its own T_c (weak_classes=own_threshold)', 'stage1',
     ('--config.rws.weak_classes=own_threshold',)),
    ('stage 2 warmed up over 20 steps (stage2_warmup=20)', 'analysis',
     ('--config.rws.stage2_warmup=20',)),
)


def control_name(overrides):
  """A directory name for a control: its first override, e.g. 'select_omega-False',
  'fuse_layers-none' for (), 'fuse_layers-3_4' for (3, 4)."""
  field, value = overrides[0].removeprefix('--config.rws.').split('=')
  value = re.sub(r'[^\w.+-]+', '_', value.replace('()', 'none')).strip('_')
  return f'{field}-{value}'


def controls_named(*names):
  """The controls of CONTROLS with these directory names, in this order."""
  by_name = {control_name(control[2]): control for control in CONTROLS}
  return tuple(by_name[name] for name in names)


# The controls of the marker-coded data: what each part of the method adds.
RWS_CONTROLS = controls_named(
    'slices-arbitrary', 'select_omega-False', 'fuse_layers-none', 'attention_region-ground_truth',
    't_rule-last_flat', 'local_scale-1', 'local_init-init', 'stage2_steps-0',
    'stage3_init-fresh', 'fuse_layers-1_2_3_4')
# The controls of the converged testbeds: where the gain of RWS is made or lost, part by part
# (docs/methods.md RWS 12 measures every run on the evaluation split's weak windows).
CONVERGED_CONTROLS = controls_named(
    'integration-retrain', 'fuse_layers-none', 'stage3_lr-1.5e-4', 'slices-arbitrary',
    'local_scale-1', 'stage2_steps-0', 'select_omega-False', 'fuse_layers-1_2_3_4',
    't_rule-robust', 't_rule-last_flat', 'weak_classes-own_threshold', 'stage2_warmup-20')
# Controls whose total steps differ from the main run's train their own baseline.
OWN_BASELINE = ('stage3_init-fresh', 'integration-retrain')
RWS_EXPERIMENTS = {
    'shapes_rws': ('configs/shapes_rws.py', RWS_CONTROLS),
    'shapes_fine_rws': ('configs/shapes_fine_rws.py', RWS_CONTROLS),
    'shapes_fine_converged_rws': ('configs/shapes_fine_converged_rws.py', CONVERGED_CONTROLS),
    'shapes_texture_rws': ('configs/shapes_texture_rws.py', CONVERGED_CONTROLS),
    'shapes_texture_converged_rws': ('configs/shapes_texture_converged_rws.py',
                                     CONVERGED_CONTROLS),
    # The converged testbeds from the pretrained backbone (README, pretrained weights for the
    # synthetic data; its file must exist).
    'shapes_fine_converged_rws_pretrained': ('configs/shapes_fine_converged_rws.py:pretrained',
                                             CONVERGED_CONTROLS),
    'shapes_texture_converged_rws_pretrained': (
        'configs/shapes_texture_converged_rws.py:pretrained', CONVERGED_CONTROLS),
}
# README's ISIM rows: (name, config, overrides); seed 0.
SINGLE_RUNS = (
    ('shapes_isim', 'configs/shapes_isim.py', ()),
    ('shapes_isim_upper_bound', 'configs/shapes_baseline.py',
     ('--config.dataset.shapes.num_train=400', '--config.dataset.shapes.num_val=100',
      '--config.train.steps=600')),
    ('shapes_isim_1000', 'configs/shapes_isim.py', ('--config.dataset.shapes.num_train=1000',)),
    ('shapes_isim_1000_upper_bound', 'configs/shapes_baseline.py',
     ('--config.dataset.shapes.num_train=1000', '--config.dataset.shapes.num_val=100',
      '--config.train.steps=1488')),
)
# Plateau studies: the supervised model of a testbed trained for each number of steps (one
# schedule each, seed 0), its validation mIoU against the steps (docs/<name>.png): a stage 1
# is converged where a few hundred more steps gain less than half a point.
PLATEAUS = {
    'shapes_fine_plateau': (('--config.dataset.shapes.fine_classes=3',
                             '--config.dataset.shapes.num_train=1000'),
                            (1500, 3000, 6000, 6350)),
    'shapes_texture_plateau': (('--config.dataset.shapes.coding=texture',
                               '--config.dataset.shapes.fine_classes=3'),
                              (1000, 2000, 3000, 3350)),
}
# The stages (`rwsjax.rws.pipeline.stage_table`) a control may copy from its main run.
_ROUND_1 = tuple(rws_pipeline.round_stage(1, name) for name in ('analysis', 'figures', 'stage2'))
SHARED = {'stage1': ('stage1', 'stage1/eval'),
          'analysis': ('stage1', 'stage1/eval') + _ROUND_1[:2],
          'stage2': ('stage1', 'stage1/eval') + _ROUND_1}


def launch_command(config, workdir, seed, overrides=()):
  return [sys.executable, os.path.join(ROOT, 'launch.py'), f'--config={config}',
          f'--workdir={workdir}', f'--config.seed={seed}', *overrides]


def run(command, workdir, mode):
  """Runs `command` unless `workdir` already holds its summary.json; returns the summary, or
  None when `mode` is 'list' (print the command only) or 'report' and the run is missing."""
  summary = os.path.join(workdir, 'summary.json')
  if mode != 'report':
    print(' '.join(command[1:]), flush=True)
  if mode == 'list' or (mode == 'report' and not os.path.exists(summary)):
    return None
  if not os.path.exists(summary):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'launch.log'), 'a') as log:
      subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
  with open(summary) as f:
    return json.load(f)


def run_config(config_path, seed, overrides=()):
  """The config that `launch_command(config_path, _, seed, overrides)` runs with: each
  `--config.<field>=<value>` read as a Python literal, else as a string (as launch.py's
  config flags read it)."""
  path, _, arg = config_path.partition(':')
  config = config_lib.from_file(os.path.join(ROOT, path), arg or None)
  config.seed = seed
  for override in overrides:
    field, text = override.removeprefix('--config.').split('=', 1)
    *parents, key = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    try:
      node[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      node[key] = text
  return config


def copy_shared(source, target, level, config):
  """Copies into the control's workdir `target` each stage of SHARED[level] that the main run
  in `source` finished with the settings the control's `config` gives it (equal
  fingerprints), and that `target` does not hold yet: its record and outputs, without the
  records of other stages inside them. The control computes the others itself. Returns the
  names of the stages copied."""
  plan = provenance.Plan(rws_pipeline.stage_table(config), config)
  legacy, copied = provenance.legacy_made(source, plan), []
  for name in SHARED[level]:
    stamp = provenance.found_stamp(source, plan, name, legacy)
    if (not os.path.exists(plan.record_path(source, name)) or stamp is None
        or not provenance.matches(stamp, plan.made[name]) or plan.paths(target, name)):
      continue
    others = {plan.record_path(source, other) for other in plan.table if other != name}
    for src in plan.paths(source, name):
      dst = os.path.join(target, os.path.relpath(src, source))
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      if os.path.isdir(src):
        shutil.copytree(src, dst, ignore=lambda folder, names: [
            n for n in names if os.path.join(folder, n) in others])
      else:
        shutil.copy2(src, dst)
    copied.append(name)
  return copied


def mean_sd(values):
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  if len(values) == 1:
    return f'{values[0]:.3f}'
  return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def table(title, rows, seeds):
  """Markdown table: one row per (label, values per seed)."""
  lines = [f'| {title} | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean ± sd |',
           '|---' * (len(seeds) + 2) + '|']
  for label, values in rows:
    cells = ['-' if v is None else f'{v:.3f}' for v in values]
    lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {mean_sd(values)} |')
  return '\n'.join(lines)


def selected_controls(names, controls=RWS_CONTROLS):
  """The `controls` whose directory name is in `names` (None: all of them)."""
  known = [control_name(overrides) for _, _, overrides in controls]
  unknown = sorted(set(names or ()) - set(known))
  if unknown:
    raise ValueError(f"unknown controls {unknown}; choose from {', '.join(known)}")
  return tuple(c for c, n in zip(controls, known) if names is None or n in names)


def first_round(summaries):
  """'T: ...; weak windows: ...' of the first round of each run that exists, seed by seed."""
  first = [s['rounds'][0] for s in summaries if s is not None]
  return ('T: ' + ' / '.join(f"{r['threshold']:.3f}" for r in first) + '; weak windows: '
          + ' / '.join(f"{r['weak_share']:.1%}" for r in first))


def rws_experiment(name, config, out, seeds, mode, controls=RWS_CONTROLS):
  """The main run and the given controls of one RWS config, per seed; the table and T
  lines."""
  main, control_runs = [], {label: [] for label, _, _ in controls}
  for seed in seeds:
    main_dir = os.path.join(out, name, f'seed{seed}', 'rws')
    main.append(run(launch_command(config, main_dir, seed), main_dir, mode))
    for label, level, overrides in controls:
      workdir = os.path.join(out, name, f'seed{seed}', control_name(overrides))
      baseline = () if control_name(overrides) in OWN_BASELINE else (
          '--config.rws.baseline=False',)
      if mode == 'run' and not os.path.exists(os.path.join(workdir, 'summary.json')):
        copy_shared(main_dir, workdir, level, run_config(config, seed, (*overrides, *baseline)))
      control_runs[label].append(run(launch_command(config, workdir, seed,
                                                    (*overrides, *baseline)), workdir, mode))
  main_runs = [s for s in main if s is not None]
  if not main_runs:
    return ''

  def miou(summaries, key):  # None where a run lacks the stage (rws.baseline=False)
    return [None if s is None or key not in s else s[key]['miou'] for s in summaries]

  rows = [('stage 1 only', miou(main, 'stage1')),
          (f"baseline, same total steps ({main_runs[0]['total_steps']})",
           miou(main, 'baseline')),
          ('RWS plain (the refined network alone)', miou(main, 'rws_plain')),
          ('**RWS fused (the RWS network)**', miou(main, 'rws_fused'))]
  rows += [(f'RWS fused, {label}', miou(control_runs[label], 'rws_fused'))
           for label, _, _ in controls if control_runs[label]]
  rows += [(f'RWS plain, {label}', miou(control_runs[label], 'rws_plain'))
           for label, _, _ in controls if control_runs[label]]
  rows += [(f'its own baseline, {label}', miou(control_runs[label], 'baseline'))
           for label, _, overrides in controls
           if control_runs[label] and control_name(overrides) in OWN_BASELINE]
  notes = [first_round(main_runs) + '; inference ms per image plain / fused: ' + ', '.join(
      f"{s['inference_ms_per_image']['plain']:.1f} / "
      f"{s['inference_ms_per_image']['fused']:.1f}" for s in main_runs)]
  per_class = [s['rounds'][0]['weak_share_per_class'] for s in main_runs]
  notes.append('weak windows per class: ' + ', '.join(
      f"{c} {' / '.join('-' if p[c] is None else f'{p[c]:.1%}' for p in per_class)}"
      for c in per_class[0]))
  notes += [f'{label}: {first_round(control_runs[label])}'
            for label, _, _ in controls if any(control_runs[label])]
  return '\n\n'.join([table(f'{name}, validation mIoU', rows, seeds), '\n'.join(notes),
                      premise_table(name, main, seeds)])


def premise_table(name, summaries, seeds):
  """The first round part by part (docs/methods.md RWS 12), seed by seed: mIoU on the
  evaluation split's weak windows under each view, then the whole split; '' without it."""
  records = [s and s['rounds'][0].get('premise') for s in summaries]
  if not any(records):
    return ''
  rows = [(f'weak windows: {TITLES[view]}', [r and r['weak_windows'][view]['miou']
                                               for r in records]) for view in ON_WINDOWS]
  rows += [(f'whole split: {TITLES[view]}', [r and r['whole_split'][view]['miou']
                                             for r in records]) for view in WHOLE_SPLIT]
  outside = [r and r.get('outside_windows') for r in records]
  rows += [(f'outside the weak windows: {TITLES[view]}', [o and o[view]['miou'] for o in outside])
           for view in OUTSIDE_WINDOWS]
  shares = ' / '.join('-' if r is None or r['missed_unreachable_share'] is None
                      else f"{r['missed_unreachable_share']:.1%}" for r in records)
  flips = ' / '.join('-' if o is None else '{fixed_inside} - {broken_inside}, {fixed_outside} - '
                     '{broken_outside}'.format(**r['counts']) for r, o in zip(records, outside))
  return (table(f'{name}, round 1 part by part, validation mIoU', rows, seeds)
          + f'\n\nmissed foreground pixels that no window can reach: {shares}'
          + '\n\npixels the RWS network fixes - breaks against the global model, inside the '
          f'weak windows, outside them: {flips}')


def plateau(name, overrides, steps, out, mode):
  """Supervised runs of `steps` each (seed 0); the table, and in run mode the figure
  docs/<name>.png of validation mIoU against the steps."""
  results = []
  for count in steps:
    workdir = os.path.join(out, name, f'steps{count}')
    summary = run(launch_command('configs/shapes_baseline.py', workdir, 0,
                                 (*overrides, f'--config.train.steps={count}')), workdir, mode)
    results.append(None if summary is None else summary['validation'])
  done = [(count, r) for count, r in zip(steps, results) if r is not None]
  if not done:
    return ''
  if mode == 'run':
    import matplotlib  # pylint: disable=g-import-not-at-top  (figures only when running)
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([c for c, _ in done], [r['miou'] for _, r in done], 'o-', label='mIoU')
    for cls in done[0][1]['per_class_iou']:
      ax.plot([c for c, _ in done], [r['per_class_iou'][cls] for _, r in done], lw=0.8,
              alpha=0.6, label=cls)
    ax.set(xlabel='training steps (one schedule each)', ylabel='validation IoU', title=name)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, 'docs', f'{name}.png'), dpi=120)
  lines = [f'| {name}: steps | ' + ' | '.join(str(c) for c, _ in done) + ' |',
           '|---' * (len(done) + 1) + '|',
           '| validation mIoU | ' + ' | '.join(f"{r['miou']:.3f}" for _, r in done) + ' |']
  return '\n'.join(lines)


def single_run(name, config, overrides, out, mode):
  """One seed-0 run; its results.md, headed by its name."""
  workdir = os.path.join(out, name)
  if run(launch_command(config, workdir, 0, overrides), workdir, mode) is None:
    return ''
  with open(os.path.join(workdir, 'results.md')) as f:
    return f'{name}:\n\n{f.read()}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='directory for all run directories')
  parser.add_argument('--seeds', default='0,1,2')
  names = [*RWS_EXPERIMENTS, *PLATEAUS, *(name for name, _, _ in SINGLE_RUNS)]
  parser.add_argument('--only', default=','.join(names),
                      help='comma-separated experiments: ' + ', '.join(names))
  parser.add_argument('--list', action='store_true', help='print the commands, run nothing')
  parser.add_argument('--main-only', action='store_true',
                      help="the RWS experiments' main runs only, without the controls")
  parser.add_argument('--controls', default=None,
                      help='comma-separated control directory names (e.g. '
                      'select_omega-False,local_scale-1); default all')
  parser.add_argument('--report', action='store_true',
                      help='print the tables of the runs that exist, run nothing')
  args = parser.parse_args()
  mode = 'list' if args.list else 'report' if args.report else 'run'
  seeds = [int(s) for s in args.seeds.split(',')]
  out = os.path.abspath(args.out)
  single = {name: (config, overrides) for name, config, overrides in SINGLE_RUNS}
  for name in args.only.split(','):
    if name in RWS_EXPERIMENTS:
      config, known = RWS_EXPERIMENTS[name]
      try:
        controls = selected_controls(args.controls and args.controls.split(','), known)
      except ValueError as e:
        parser.error(f'{name}: {e}')
      text = rws_experiment(name, config, out, seeds, mode,
                            controls=() if args.main_only else controls)
    elif name in PLATEAUS:
      text = plateau(name, *PLATEAUS[name], out, mode)
    elif name in single:
      text = single_run(name, *single[name], out, mode)
    else:
      parser.error(f"unknown experiment {name!r}; choose from {', '.join(names)}")
    if text:
      print(text, flush=True)


if __name__ == '__main__':
  main()
