"""Train-step and evaluation throughput (images/s) of the rwsjax trainer, optionally against
torchvision's DeepLabv3 measured in the same run.

JAX: `train.make_train_step` (pixel cross-entropy ignoring 255, SGD momentum 0.9, weight decay
1e-4, poly lr) and `train.make_eval_step` (argmax confusion matrix) over a data-parallel mesh of
all devices. With --vs-torch: torchvision.models.segmentation.deeplabv3_<backbone>
(weights=None, weights_backbone=None, aux_loss=False) with the same classes and input shape,
torch.optim.SGD with the same momentum, weight decay and poly lr, CrossEntropyLoss
(ignore_index=255); its eval is forward, argmax and a bincount confusion matrix without
gradients. Both frameworks get one random batch already on the device, so the input pipeline is
not timed. Repeats of the two frameworks are interleaved (the machine may be shared); medians
after compilation and a warm-up step are printed (and the fastest repeat, less sensitive to
other load), with the ratio of images/s jax/torch (above 1: JAX is faster). Each step's work is
counted as 2 x the multiply-adds of its convolutions and matrix products (`product_flops` from
the jaxpr; torch's `FlopCounterMode`), and the ratio split into work (how much less JAX
computes: the `matmul` rewrites skip the products with padding) and rate (GFLOP/s: how fast
the kernels run).

  python benchmarks/train_step.py                    # small CPU default, under a minute
  python benchmarks/train_step.py --width 1 --head-channels 256 --size 64 --batch 4 --vs-torch

The paper-size case (DeepLabv3, ResNet-101, output stride 8, 513x513, batch 16) on a GPU, with
JAX for CUDA installed (`pip install -U "jax[cuda12]"`) and `pip install -e .[bench]`:

  python benchmarks/train_step.py --backbone resnet101 --width 1 --head-channels 256 \\
      --size 513 --batch 16 --vs-torch
"""
import argparse
import importlib.util
import math
import os
import time

import jax
from jax import lax
from jax.extend import core
import ml_collections
import numpy as np

from rwsjax import train
from rwsjax.losses import IGNORE_LABEL
from rwsjax.models import make_model
from rwsjax.models.conv import CONV_IMPLS
from timing import load_mark
from timing import machine
from timing import snapshot

TORCH_BACKBONES = ('resnet50', 'resnet101')
MOMENTUM, WEIGHT_DECAY, LR, POLY_POWER = 0.9, 1e-4, 0.01, 0.9
SCHEDULE_STEPS = 100_000  # poly schedule length: long enough to stay away from lr 0


def product_flops(jaxpr):
  """2 x the multiply-adds of the convolutions and matrix products of a (closed) jaxpr, with
  nested jaxprs (jit, custom derivatives) counted where they run and loops times their length:
  the work both frameworks do in their kernels (torch's `FlopCounterMode` counts the same)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive is lax.conv_general_dilated_p:
      out, rhs = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
      out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
      total += 2 * math.prod(out) * math.prod(rhs) // out_features
    elif eqn.primitive is lax.dot_general_p:
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    times = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    for sub in core.jaxprs_in_params(eqn.params):
      total += times * product_flops(sub)
  return total


def random_batch(args):
  """Normal images (B, S, S, 3) and labels in [0, K) with about 5% ignore pixels."""
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size)
  labels = rng.integers(0, args.num_classes, shape).astype(np.int32)
  labels[rng.random(shape) < 0.05] = IGNORE_LABEL
  return {'image': rng.normal(size=(*shape, 3)).astype(np.float32), 'segmentation': labels,
          'mask': np.ones(args.batch, bool)}


class JaxRunner:
  """The rwsjax train and eval steps on one resident batch; `train` updates the state."""

  def __init__(self, args, batch, conv_impl=None, compiler_options=None):
    model = make_model({'name': args.name, 'backbone': args.backbone,
                        'output_stride': args.output_stride, 'width': args.width,
                        'head_channels': args.head_channels, 'dtype': args.dtype,
                        'conv_impl': conv_impl or args.conv_impl}, args.num_classes)
    cfg = ml_collections.ConfigDict(dict(optimizer='sgd', lr=LR, momentum=MOMENTUM,
                                         weight_decay=WEIGHT_DECAY, poly_power=POLY_POWER,
                                         warmup_steps=0))
    tx = train.make_optimizer(cfg, SCHEDULE_STEPS)
    mesh = train.make_mesh()
    variables = jax.jit(lambda r: train.random_variables(model, (1, args.size, args.size, 3), r))(
        jax.random.key(0))
    self.state = train.make_train_state(tx, variables, mesh)
    self.batch = train.to_device(batch, mesh)
    self.rng = jax.random.key(1)
    self.model = model
    self.train_step = train.make_train_step(train.supervised_loss(model), tx, mesh)
    self.eval_step = train.make_eval_step(model, args.num_classes, mesh)
    self._flops = {  # from the programs' jaxprs (tracing, no compilation or run)
        'train': product_flops(jax.make_jaxpr(self.train_step)(self.state, self.batch,
                                                               self.rng, None)),
        'eval': product_flops(jax.make_jaxpr(self.eval_step)(self.state.variables, self.batch))}
    if compiler_options:  # XLA options for these two programs only (compiled here)
      self.train_step = self.train_step.lower(self.state, self.batch, self.rng, None).compile(
          compiler_options=compiler_options)
      self.eval_step = self.eval_step.lower(self.state.variables, self.batch).compile(
          compiler_options=compiler_options)

  def flops(self):
    """{'train', 'eval'}: the FLOP of one step (`product_flops`)."""
    return self._flops

  def train(self):
    self.state, metrics = self.train_step(self.state, self.batch, self.rng, None)
    jax.block_until_ready((self.state, metrics))

  def eval(self):
    jax.block_until_ready(self.eval_step(self.state.variables, self.batch))


class TorchRunner:
  """torchvision DeepLabv3 with the same loss, optimizer and batch as `JaxRunner`."""

  def __init__(self, args, batch):
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
    import torch.utils.flop_counter  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cudnn.benchmark = True
    build = getattr(torchvision.models.segmentation, f'deeplabv3_{args.backbone}')
    self.model = build(weights=None, weights_backbone=None, num_classes=args.num_classes,
                       aux_loss=False).to(self.device)
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM,
                                     weight_decay=WEIGHT_DECAY)
    self.schedule = torch.optim.lr_scheduler.LambdaLR(
        self.optimizer, lambda t: (1 - t / SCHEDULE_STEPS) ** POLY_POWER)
    self.loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
    self.images = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).contiguous().to(
        self.device)
    self.labels = torch.from_numpy(batch['segmentation']).long().to(self.device)
    self.num_classes = args.num_classes
    self.bfloat16 = args.dtype == 'bfloat16'

  def flops(self):
    """{'train', 'eval'}: the work of one step of each, counted as it runs (the train step
    updates the model: call it after the timed steps, so that their first call stays the
    first)."""
    counts = {}
    for kind in ('train', 'eval'):
      with self.torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        getattr(self, kind)()
      counts[kind] = counter.get_total_flops()
    return counts

  def autocast(self):
    return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16,
                               enabled=self.bfloat16)

  def sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def train(self):
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self.autocast():
      loss = self.loss_fn(self.model(self.images)['out'].float(), self.labels)
    loss.backward()
    self.optimizer.step()
    self.schedule.step()
    self.sync()

  def eval(self):
    self.model.eval()
    with self.torch.no_grad(), self.autocast():
      preds = self.model(self.images)['out'].argmax(1)
      valid = self.labels != IGNORE_LABEL
      self.torch.bincount(self.labels[valid] * self.num_classes + preds[valid],
                          minlength=self.num_classes ** 2)
    self.sync()


def seconds(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def check_torch_args(parser, args):
  """--vs-torch compares like with like: torchvision's DeepLabv3 is fixed to these settings."""
  expected = {'name': 'deeplabv3', 'width': 1.0, 'head_channels': 256, 'output_stride': 8}
  wrong = [f'--{k.replace("_", "-")} {getattr(args, k)} (expected {v})'
           for k, v in expected.items() if getattr(args, k) != v]
  if args.backbone not in TORCH_BACKBONES:
    wrong.append(f'--backbone {args.backbone} (expected one of {", ".join(TORCH_BACKBONES)})')
  if wrong:
    parser.error(f"--vs-torch times torchvision's DeepLabv3, which has no counterpart for "
                 f'{", ".join(wrong)}.')
  if not all(importlib.util.find_spec(name) for name in ('torch', 'torchvision')):
    parser.error('--vs-torch needs torch and torchvision: pip install -e .[bench]')


QUICK = {'width': 0.25, 'head_channels': 64, 'size': 128, 'batch': 8}


def add_model_args(parser):
  """The model and batch flags, defaulting to the realistic case (torchvision's DeepLabv3)."""
  parser.add_argument('--name', default='deeplabv3')
  parser.add_argument('--backbone', default='resnet50')
  parser.add_argument('--output-stride', type=int, default=8)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--head-channels', type=int, default=256)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--num-classes', type=int, default=21)
  parser.add_argument('--conv-impl', default='auto', choices=CONV_IMPLS,
                      help='how the model computes convolutions (rwsjax.models.conv)')
  parser.add_argument('--quick', action='store_true',
                      help='the small case for a quick look: ' + ', '.join(
                          f'--{k.replace("_", "-")} {v}' for k, v in QUICK.items()))


def parse_model_args(parser):
  """`parser.parse_args()` with --quick applied (it overrides the model and batch flags)."""
  args = parser.parse_args()
  if args.quick:
    vars(args).update(QUICK)
  return args


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(parser)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--vs-torch', action='store_true',
                      help='also time torchvision deeplabv3 (needs torch and torchvision)')
  parser.add_argument('--vs-conv-impl', choices=CONV_IMPLS,
                      help='also time the rwsjax model with this conv_impl, as "jax[IMPL]"')
  parser.add_argument('--vs-xla-option', action='append', default=[], metavar='NAME=VALUE',
                      help='also time the rwsjax steps compiled with these XLA options '
                      '(repeatable; e.g. xla_cpu_experimental_ynn_fusion_type='
                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT), as "jax[xla]"')
  args = parse_model_args(parser)
  if args.vs_torch:
    check_torch_args(parser, args)

  print(f'start: {machine()}', flush=True)
  start = snapshot()
  batch = random_batch(args)
  runners = {'jax': JaxRunner(args, batch)}
  if args.vs_conv_impl:
    runners[f'jax[{args.vs_conv_impl}]'] = JaxRunner(args, batch, args.vs_conv_impl)
  if args.vs_xla_option:
    options = dict(option.split('=', 1) for option in args.vs_xla_option)
    runners['jax[xla]'] = JaxRunner(args, batch, compiler_options=options)
    print(f'jax[xla]: compiled with {options} (its first call excludes compilation)')
  if args.vs_torch:
    runners['torch'] = TorchRunner(args, batch)
  first = {name: {'train': seconds(r.train), 'eval': seconds(r.eval)}
           for name, r in runners.items()}
  for r in runners.values():  # warm-up (torch: allocator, cudnn autotuning)
    r.train()
    r.eval()
  times = {name: {'train': [], 'eval': []} for name in runners}
  for _ in range(args.repeats):
    for kind in ('train', 'eval'):
      for name, r in runners.items():
        times[name][kind].append(seconds(getattr(r, kind)))

  print(f'end: {machine()}')
  mark = load_mark(start, snapshot())
  print(f'jax {jax.__version__} on {jax.devices()}, XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}')
  if args.vs_torch:
    torch = runners['torch'].torch
    print(f'torch {torch.__version__} on {runners["torch"].device}, '
          f'{torch.get_num_threads()} threads')
  print(f'{"quick case: " if args.quick else ""}{args.name}/{args.backbone} width {args.width} '
        f'head {args.head_channels} OS{args.output_stride} {args.dtype}, batch {args.batch} x '
        f'{args.size}x{args.size}, K={args.num_classes}, jax conv_impl {args.conv_impl}, '
        f'median of {args.repeats}')
  rate, flops = {}, {name: r.flops() for name, r in runners.items()}
  for name in runners:
    for kind in ('train', 'eval'):
      median, fastest = np.median(times[name][kind]), np.min(times[name][kind])
      rate[name, kind] = args.batch / median, args.batch / fastest
      work = flops[name][kind]
      print(f'{name:10s} {kind:5s}: median {median * 1e3:9.1f} ms/step '
            f'{rate[name, kind][0]:8.2f} images/s; fastest {fastest * 1e3:9.1f} ms/step; '
            f'first call {first[name][kind]:.1f} s; {work / 1e9:.1f} GFLOP per step, '
            f'{work / median / 1e9:.0f} GFLOP/s')
  for other in [name for name in runners if name != 'jax']:
    for i, statistic in enumerate(('median', 'fastest')):
      print(f'ratio jax/{other} of images/s ({statistic}): ' + ', '.join(
          f'{kind} {rate["jax", kind][i] / rate[other, kind][i]:.2f}'
          for kind in ('train', 'eval')) + mark)
    parts = []
    for kind in ('train', 'eval'):
      work = flops[other][kind] / flops['jax'][kind]
      parts.append(f'{kind} {work:.2f} x {rate["jax", kind][0] / rate[other, kind][0] / work:.2f}')
    print(f'ratio jax/{other} (median) = work ({other} GFLOP / jax GFLOP) x rate (jax GFLOP/s / '
          f'{other} GFLOP/s): ' + ', '.join(parts) + mark)


if __name__ == '__main__':
  main()
