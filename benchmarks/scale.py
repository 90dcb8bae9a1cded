"""Time and memory of whole runs as the training split grows, at VOC's image size.

For each number of training images, RWS (configs/shapes_rws.py) and ISIM with its PSA stages
(configs/shapes_isim.py) run end to end through launch.py on synthetic shapes images of
--size pixels (VOC-sized by default), with a small model and a few steps per training stage,
so that what grows with the split shows: RWS's analysis of every training image, ISIM's CAMs
and CRF pseudo labels, the affinity labels and the random walk over the whole split, and the
stores they write (AffinityNet and the final model train one epoch each: a pass over the
split). Each stage's wall time and the process's peak resident memory at its end come from
the run record (summary.json, `rwsjax.stage_runner.cost`); the process's own peak from the
operating system. The other training stages run a fixed number of steps whatever the split's
size; the stages that read every image should grow linearly, and the peak memory should not
grow beyond bounded buffers.

  python benchmarks/scale.py --out=runs/scale --images=1000,4000,10000
  python benchmarks/scale.py --out=runs/scale --images=250,1000 --methods=rws --size=384

Each (method, images) run keeps its workdir under --out and is skipped when its summary.json
exists; a stopped run resumes from its stage records, and its wall time and process peak then
cover the stages computed in the resumed process (the table says how many were read back); a
stage stopped part way resumes from what it wrote, and its time, marked `resumed: partial`,
covers only the resumed part (--recompute-from=STAGE starts it afresh). The
synthetic data is prepared once per size in <out>/tfds. Prints a markdown table
per method, with the load mark of `timing.quiet_mark`. With --table-only nothing runs: the
tables come from the workdirs as they are, a run that has not finished (stopped, or still
running) with the stages it has finished, from their records, and `unfinished` for the rest.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from timing import quiet_mark

from rwsjax import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 20  # steps of every training stage, whatever the split's size
BATCH = 8


def common(images, size):
  """Overrides shared by both methods: the data at `size`, a small model, small batches."""
  return [f'--config.dataset.shapes.num_train={images}', '--config.dataset.shapes.num_val=50',
          f'--config.dataset.shapes.image_size={size}',
          f'--config.input.crop_size=({size}, {size})',
          f'--config.input.batch_size={BATCH}', f'--config.input.eval_batch_size={BATCH}',
          '--config.model.width=0.125', '--config.model.head_channels=16',
          '--config.train.log_every=10', '--config.train.checkpoint_every=1000']


def rws_command(images, size):
  """RWS with one round, the paper's 128-pixel slices at stride 64 (scaled with --size)."""
  side = max(16, size // 3 // 8 * 8)  # 128 at 384, a multiple of the feature strides
  return ['configs/shapes_rws.py', *common(images, size),
          f'--config.rws.stage1_steps={TRAIN_STEPS}', f'--config.rws.stage2_steps={TRAIN_STEPS}',
          f'--config.rws.slice_size={side}', f'--config.rws.slice_stride={side // 2}',
          f'--config.rws.min_pixels={side * side // 16}', '--config.rws.max_rounds=1',
          '--config.rws.baseline=False', f'--config.rws.local_batch_size={BATCH}']


def isim_command(images, size):
  """ISIM with one pseudo-label round over the whole split after TRAIN_STEPS steps, then the
  PSA stages: AffinityNet and the final model one epoch each (their length is counted in
  whole passes over the split), the walk over every training image. The walk propagates
  sparsely (`psa.dense_max_nodes=0`): on a CPU that is 14x faster than squaring the dense
  transition matrix of a 48 x 48 grid (BENCHMARKS.md, "VOC scale"), which the config's
  default keeps for accelerators."""
  return ['configs/shapes_isim.py', *common(images, size), '--config.isim.epochs=2',
          f'--config.isim.steps_per_epoch={TRAIN_STEPS // 2}', '--config.isim.first_regen_epoch=1',
          '--config.isim.regen_every=1', '--config.isim.baseline=False',
          f'--config.isim.cam_batch_size={BATCH}', '--config.psa.walk_scale=1',
          '--config.psa.affinity.input.scale_range=(1.0, 1.0)',
          '--config.psa.sweep_beta=()', '--config.psa.sweep_logt=()',
          '--config.psa.dense_max_nodes=0',
          '--config.psa.affinity.epochs=1', '--config.psa.final.epochs=1',
          f'--config.psa.affinity.input.crop_size=({size}, {size})',
          f'--config.psa.final.input.crop_size=({size}, {size})',
          f'--config.psa.affinity.input.batch_size={BATCH}',
          f'--config.psa.final.input.batch_size={BATCH}']


COMMANDS = {'rws': rws_command, 'isim': isim_command}


def finished_stages(workdir):
  """The stages that a run in `workdir`, finished or not, has finished ({name: {'seconds',
  'peak_rss_mb', ...}}), from their records (`rwsjax.stage_runner`: each holds its cost under
  `rwsjax.provenance.KEY`), in the order they finished. A stage's name is its record's path in
  the workdir without `stages/` and `.json`, as the pipelines name them; JSON files that are
  not stage records (lists, records without a cost) are passed over."""
  found = []
  for folder, _, files in os.walk(workdir):
    for file in files:
      path = os.path.join(folder, file)
      if not file.endswith('.json') or file.endswith('.started.json'):
        continue
      with open(path) as f:
        record = json.load(f)
      stamp = record.get(provenance.KEY) if isinstance(record, dict) else None
      if isinstance(stamp, dict) and 'seconds' in stamp:
        name = os.path.relpath(path, workdir).removeprefix('stages/').removesuffix('.json')
        found.append((os.path.getmtime(path), name, stamp))
  return {name: stamp for _, name, stamp in sorted(found)}


def launch_command(method, images, size, workdir, recompute_from=()):
  """The launch.py command line of one run; `recompute_from` names stages to compute afresh
  (launch.py's --recompute_from: they and the stages that consume them)."""
  config, *overrides = COMMANDS[method](images, size)
  return [sys.executable, os.path.join(ROOT, 'launch.py'), f'--config={config}',
          f'--workdir={workdir}', *overrides,
          *([f"--recompute_from={','.join(recompute_from)}"] if recompute_from else [])]


def run(method, images, size, out, table_only=False, recompute_from=()):
  """(summary, wall seconds, peak RSS MiB of the launch process) of one run; the last two are
  None when the run finished earlier. With `table_only` nothing runs: a run without
  summary.json gives the stages it has finished (`finished_stages`), marked `unfinished`,
  and None for the rest."""
  workdir = os.path.join(out, f'{method}_{size}_{images}')
  summary_path = os.path.join(workdir, 'summary.json')
  wall = peak = None
  if table_only and not os.path.exists(summary_path):
    return {'run': {'stages': finished_stages(workdir)}, 'unfinished': True}, None, None
  if not os.path.exists(summary_path):
    command = launch_command(method, images, size, workdir, recompute_from)
    print(' '.join(command[1:]), flush=True)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(workdir, 'scale.log'), 'a') as log:  # a resumed run keeps the last's
      log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command[1:])}\n")
      log.flush()
      process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, TFDS_DATA_DIR=os.path.join(out, 'tfds')))
      _, status, usage = os.wait4(process.pid, 0)
    wall, peak = time.perf_counter() - start, usage.ru_maxrss / 1024
    if status:
      raise SystemExit(f'{method} with {images} images failed; see {workdir}/scale.log.')
  with open(summary_path) as f:
    summary = json.load(f)
  position = {name: i for i, name in enumerate(finished_stages(workdir))}
  stages = summary['run']['stages']  # in the order they finished, the report last
  summary['run']['stages'] = {name: stages[name] for name in sorted(
      stages, key=lambda name: position.get(name, len(position)))}
  return summary, wall, peak


def table(method, results):
  """Markdown rows: per stage the seconds at each size (and ms per training image), then the
  peak RSS at the end of each stage and of the whole process."""
  sizes = sorted(results)
  stages = list(dict.fromkeys(
      name for n in sizes for name in results[n][0]['run']['stages']))
  head = ' | '.join(f'{n} images' for n in sizes)
  lines = [f'\n{method}: seconds per stage (ms per training image)\n',
           f'| stage | {head} |', '|---|' + '---:|' * len(sizes)]
  for stage in stages:
    cells = []
    for n in sizes:
      entry = results[n][0]['run']['stages'].get(stage, {})
      seconds = entry.get('seconds')
      if seconds is not None:  # a resumed stage's seconds are the resuming process's part
        cells.append(f'{seconds:.1f} ({1000 * seconds / n:.1f})'
                     + (', resumed: partial' if entry.get('resumed') else ''))
      else:  # the report's cost is not in the summary it writes
        cells.append('unfinished' if results[n][0].get('unfinished') else '-')
    lines.append(f'| {stage} | ' + ' | '.join(cells) + ' |')
  rows = [('whole run, wall', lambda r: r[1], '{:.0f} s', True),
          ('highest peak RSS at a stage end', lambda r: max(
              (e['peak_rss_mb'] for e in r[0]['run']['stages'].values()
               if e.get('peak_rss_mb') is not None), default=None), '{:.0f} MiB', False),
          ('peak RSS of the process', lambda r: r[2], '{:.0f} MiB', True)]
  for name, value, form, per_process in rows:
    cells = []
    for n in sizes:
      number = value(results[n])
      if number is None:
        cells.append('-')
      else:
        cells.append(form.format(number) + (resumed_mark(results[n][0]) if per_process else ''))
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines.append('| host CPU of the stages | ' + ' | '.join(
      ' / '.join(hosts(results[n][0])) or '-' for n in sizes) + ' |')
  return '\n'.join(lines)


def hosts(summary):
  """The CPU models that timed a run's stages (`rwsjax.stage_runner.cost`), in the order the
  stages ran: more than one when a stopped run was resumed on another host; 'unrecorded' for
  records written before stages named their host."""
  return list(dict.fromkeys(entry.get('host_cpu') or 'unrecorded'
                            for entry in summary['run']['stages'].values()
                            if entry.get('seconds') is not None))


def resumed_mark(summary):
  """'' for a run computed in one process; for one that resumed an earlier, stopped process,
  a note that the process's wall time and peak cover only the stages it computed (the run
  record's 'read back' stages took theirs in the earlier one)."""
  earlier = [name for name, entry in summary['run']['stages'].items()
             if entry.get('status') == 'read back']
  if not earlier:
    return ''
  return f' (this process; {len(earlier)} stage{"s" if len(earlier) > 1 else ""} read back)'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='folder of the runs and their data')
  parser.add_argument('--images', default='1000,4000,10000',
                      help='comma-separated training split sizes')
  parser.add_argument('--methods', default='rws,isim', help='comma-separated: rws, isim')
  parser.add_argument('--size', type=int, default=384, help='image side in pixels')
  parser.add_argument('--table-only', action='store_true',
                      help='run nothing; tabulate the workdirs as they are')
  parser.add_argument('--recompute-from', default='',
                      help='comma-separated stages that the runs started here compute afresh, '
                           'and the stages that consume them: a stage stopped part way, to '
                           'time it whole')
  args = parser.parse_args()
  counts = [int(n) for n in args.images.split(',')]
  methods = args.methods.split(',')
  recompute_from = [stage for stage in args.recompute_from.split(',') if stage]
  unknown = sorted(set(methods) - set(COMMANDS))
  if unknown:
    parser.error(f'--methods holds {unknown}; expected some of {sorted(COMMANDS)}.')

  def run_all():
    return {m: {n: run(m, n, args.size, args.out, args.table_only, recompute_from)
                for n in counts} for m in methods}

  if args.table_only:
    results, mark = run_all(), ' (as the runs recorded them; not timed here)'
  else:  # ISIM's CRF workers are a forkserver's children
    results, mark = quiet_mark(run_all)
  for method in methods:
    print(table(method, results[method]))
  print(f'\n{args.size} x {args.size} images, {TRAIN_STEPS} steps per training stage, batch '
        f'{BATCH}.{mark}')


if __name__ == '__main__':
  main()
