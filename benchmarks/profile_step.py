"""Where the time of a jitted step goes: a `jax.profiler` trace, summed per op family.

Traces a few calls of the rwsjax train step, eval step or all-class Seg-Grad-CAM (after
compilation and a warm-up), reads the trace's per-thunk events and maps each to its HLO
instruction in the compiled program, then to an op family by the instruction's source
(`op_name` metadata: the flax module path, forward `jvp(...)` or backward `transpose(...)`)
and, for convolutions, their window. Convolutions fall in four groups (1x1; the head's atrous
3x3, ASPP; the backbone's atrous 3x3 in layer3-4; the rest: the 7x7 stem, dense and strided
3x3), each split into forward, input gradient and kernel gradient, or forward and backward
for the matrix products of `rwsjax.models.conv` (counted as 1x1 unless in the head's atrous
modules); its Winograd 3x3 convolutions (the ops its scope names) are a fifth group. Prints per
family and per group the seconds per call and the share of all thunk time. Thunk time is
summed over threads, so it can exceed wall time when thunks run concurrently.

  python benchmarks/profile_step.py                       # train step, realistic case
  python benchmarks/profile_step.py --step eval --conv-impl lax
  python benchmarks/profile_step.py --step segcam --batch 1 --classes 3
  python benchmarks/profile_step.py --top 20              # also the 20 slowest instructions
"""
import argparse
import collections
import glob
import os
import re
import tempfile
import time

import jax
from jax._src.lib import _profile_data
import jax.numpy as jnp
import numpy as np

from rwsjax.rws import segcam
from timing import machine
from train_step import JaxRunner, add_model_args, parse_model_args, random_batch

INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*$')
COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) ')
OP_NAME = re.compile(r'op_name="([^"]*)"')
CALLS = re.compile(r'calls=%([\w.\-]+)')
WINDOW = re.compile(r'window=\{([^}]*)\}')
# An op inside a convolution module of rwsjax.models that is not a convolution: its
# `rwsjax.models.conv` rewrite as matrix products; the head's atrous convolutions by module.
CONV_MODULE = re.compile(r'/(Conv_\d+|conv\d|downsample_conv|classifier|branch\d+)/[^/]+$')
HEAD_ATROUS_MODULE = re.compile(r'/(aspp/atrous\d+|branch\d+)/')
# The scope `rwsjax.models.conv.winograd` names its ops with ('.../winograd/dot_general', or
# 'jvp(winograd)/...' when it is the outermost scope).
WINOGRAD = re.compile(r'[/(]winograd[/)]')
SHAPE = re.compile(r'= \w+\[([\d,]*)\]')
DIM_LABELS = re.compile(r'dim_labels=\w+_\w+->(\w+)')
# A kernel-gradient convolution slides the output gradient over the input: its window is
# the feature map (at least this large), a forward or input-gradient one is the kernel (<= 7).
KERNEL_GRAD_MIN_WINDOW = 8
# Dilation from which a 3x3 convolution without module path is counted as the head's ASPP.
HEAD_MIN_DILATION = 6


def parse_hlo(text):
  """{instruction name: (its line, the lines of the computations it calls)} of an HLO dump."""
  computations, lines, current = {}, {}, None
  for line in text.splitlines():
    match = COMPUTATION.match(line)
    if match:
      current = match.group(1)
      computations[current] = []
      continue
    match = INSTRUCTION.match(line)
    if match and current is not None:
      computations[current].append(line)
      lines[match.group(1)] = line
  return {name: (line, sum((computations.get(c, []) for c in CALLS.findall(line)), []))
          for name, line in lines.items()}


def conv_group(kernel, dilation, op_name):
  """Which convolutions of the model: 1x1, the head's atrous ones, the backbone's, others."""
  if kernel == 1:
    return '1x1 convs'
  if HEAD_ATROUS_MODULE.search(op_name) or (not op_name and dilation >= HEAD_MIN_DILATION):
    return 'head atrous 3x3 convs (ASPP)'
  if dilation > 1:
    return 'backbone atrous 3x3 convs (layer3-4)'
  return 'other convs (7x7 stem, dense and strided 3x3)'


def conv_family(line, op_name):
  """'<conv group>: <forward|input grad|kernel grad>' of an HLO convolution instruction.

  Kernel-gradient convolutions often carry no op_name and are told by their window (the
  feature map); their kernel size is their output's spatial size, their dilation the window
  stride.
  """
  window = WINDOW.search(line).group(1)
  sizes = [int(s) for s in re.search(r'size=([\dx]+)', window).group(1).split('x')]
  def setting(key):
    return int(re.search(key + r'=(\d+)', window).group(1)) if key + '=' in window else 1
  if max(sizes) >= KERNEL_GRAD_MIN_WINDOW:
    dims = [int(d) for d in SHAPE.search(line).group(1).split(',')]
    labels = DIM_LABELS.search(line).group(1)
    kernel, dilation, direction = dims[labels.index('0')], setting('stride'), 'kernel grad'
  else:
    kernel, dilation = max(sizes), setting('rhs_dilate')
    direction = 'input grad' if 'transpose(' in op_name else 'forward'
  return f'{conv_group(kernel, dilation, op_name)}: {direction}'


def family(name, hlo):
  """The op family of HLO instruction `name` (see the module docstring)."""
  line, called = hlo.get(name, ('', []))
  names = [m.group(1) for m in map(OP_NAME.search, [line] + called) if m]
  op_name = names[0] if names else ''
  direction = 'backward' if 'transpose(' in op_name else 'forward'
  if WINOGRAD.search(op_name):
    return f'Winograd 3x3 convs (layer3-4, head): {direction}'
  if name.startswith(('copy', 'transpose', 'bitcast')):
    return 'layout copies and transposes'
  convolutions = [l for l in [line] + called if ' convolution(' in l and WINDOW.search(l)]
  if convolutions:
    return conv_family(convolutions[0], op_name)
  if CONV_MODULE.search(op_name):
    group = conv_group(3 if HEAD_ATROUS_MODULE.search(op_name) else 1, 1, op_name)
    return f'{group}: {direction}, as matmuls'
  if 'BatchNorm' in op_name or re.search(r'/(downsample_)?bn\d?/', op_name):
    return f'batchnorm: {direction}'
  if '_resize' in op_name:
    return f'bilinear resize: {direction}'
  if 'reduce_window' in op_name or 'select_and_scatter' in ' '.join([line] + called):
    return f'max pool: {direction}'
  if 'Dropout' in op_name or 'threefry' in op_name:
    return 'dropout and rng'
  if 'SegmentationModel' in op_name:
    return f'other model ops (relu, add, concat, mean): {direction}'
  if 'jvp(' in op_name or 'transpose(' in op_name:
    return 'loss'
  return 'optimizer and other' if op_name else 'unattributed'


def thunk_seconds(trace_dir):
  """{event name: total seconds} over the worker threads of the trace in `trace_dir`."""
  path, = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  totals = collections.Counter()
  for plane in _profile_data.ProfileData.from_file(path).planes:
    if plane.name != '/host:CPU':
      continue
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'end: ')):
          totals[event.name] += event.duration_ns * 1e-9
  return totals


def segcam_runner(args):
  """(jitted fn, its args) for all-class Seg-Grad-CAM of `args.classes` classes per image."""
  runner = JaxRunner(args, random_batch(args))
  rng = np.random.default_rng(0)
  classes = jnp.asarray(np.stack([rng.choice(args.num_classes, args.classes, replace=False)
                                  for _ in range(args.batch)]))
  images = runner.batch['image']
  variables = runner.state.variables
  fn = lambda v, x, c: segcam.seg_grad_cam(runner.model, v, x, classes=c).heatmaps
  compiled = segcam._seg_grad_cam.lower(  # pylint: disable=protected-access
      runner.model, variables, images, classes, max_classes=None, layers=segcam.LAYERS,
      class_chunk=None).compile()
  return (lambda: fn(variables, images, classes)), compiled


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(parser)
  parser.add_argument('--step', default='train', choices=('train', 'eval', 'segcam'))
  parser.add_argument('--classes', type=int, default=3, help='Seg-Grad-CAM classes per image')
  parser.add_argument('--calls', type=int, default=2, help='traced calls')
  parser.add_argument('--top', type=int, default=0, help='also list the N slowest instructions')
  args = parse_model_args(parser)

  if args.step == 'segcam':
    run, compiled = segcam_runner(args)
  else:
    runner = JaxRunner(args, random_batch(args))
    run = getattr(runner, args.step)
    if args.step == 'train':
      compiled = runner.train_step.lower(runner.state, runner.batch, runner.rng, None).compile()
    else:
      compiled = runner.eval_step.lower(runner.state.variables, runner.batch).compile()
  hlo = parse_hlo(compiled.as_text())
  jax.block_until_ready(run())
  jax.block_until_ready(run())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      for _ in range(args.calls):
        jax.block_until_ready(run())
      wall = (time.perf_counter() - start) / args.calls
    seconds = thunk_seconds(trace_dir)

  families = collections.Counter()
  for name, value in seconds.items():
    families[family(name, hlo)] += value
  total = sum(families.values())
  print(f'{machine()}; jax {jax.__version__}, XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}')
  print(f'{args.step}: {args.name}/{args.backbone} width {args.width} head '
        f'{args.head_channels} OS{args.output_stride}, conv_impl {args.conv_impl}, '
        f'batch {args.batch} x {args.size}x{args.size}, K={args.num_classes}; thunk seconds per '
        'call, summed over '
        f'threads, mean of {args.calls} calls: {total / args.calls:.2f} s (wall {wall:.2f} s)')
  groups = collections.Counter()
  for name, value in families.items():
    groups[name.split(':')[0]] += value
  for title, table in (('by family', families), ('by group', groups)):
    print(f' {title}:')
    for name, value in table.most_common():
      print(f'  {name:62s} {value / args.calls:8.3f} s  {100 * value / total:5.1f}%')
  for name, value in seconds.most_common(args.top):
    line = hlo.get(name, ('', []))[0]
    window = WINDOW.search(' '.join([line] + hlo.get(name, ('', []))[1]))
    print(f'  {value / args.calls:7.3f} s  {name:28s} {family(name, hlo):50s} '
          f'{line.split(" = ")[1].split(" ")[0] if " = " in line else ""} '
          f'{window.group(1) if window else ""}')


if __name__ == '__main__':
  main()
