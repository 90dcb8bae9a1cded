"""Hours per stage of RWS and ISIM on VOC trainaug, on paper, for 1, 8 and 64 accelerators.

Each stage's floating-point work is the work of one image, from XLA's cost analysis of the
paper configs' own functions (configs/voc_rws.py, configs/voc_isim.py; lowered, never run:
a train step's loss and gradients, Seg-Grad-CAM, the multi-scale CAMs, AffinityNet's
features; the random walk's matrix squarings in closed form), times the images the stage
processes. Hours are that work over an assumed sustained rate per accelerator (--tflops),
with perfect scaling. The dense CRF runs on host CPU cores: its time per image is measured
here (pydensecrf, one core, VOC-sized images) and divided over --host-cores per accelerator;
its workers run beside the accelerators, so a stage takes the longer of the two.

Assumptions, each a flag: VOC images of 512 x 384 (trainaug's usual 500 x 375, padded to the
CAM bucket); RWS's analysis and inference on images padded to 512 x 512 (eval_pad_size);
one RWS round, with --weak-share of the 49 windows of an image weak; training stages
data-parallel at the paper's global batch of 16, so that at most 16 accelerators (one image
each) share a training stage and the rest wait, while the per-image stages (analysis, CAMs,
the walk, inference) spread over all of them.

  python benchmarks/voc_hours.py
  python benchmarks/voc_hours.py --tflops=150 --host-cores=12 --crf-seconds 1.2 0.4
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from isimjax import affinity
from isimjax import cam
from isimjax import crf
from isimjax import models as isim_models
from isimjax import psa as isim_psa
from isimjax import random_walk
from isimjax import self_train
from rwsjax import config as config_lib
from rwsjax import losses
from rwsjax import models
from rwsjax.rws import network
from rwsjax.rws import segcam
from rwsjax.rws import slices
from timing import load_mark
from timing import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES, VAL_IMAGES = 10582, 1449
IMAGE = (384, 512)  # height, width
COUNTS = (1, 8, 64)


def flops(fn, *shapes):
  """XLA's floating-point operation count of jitted `fn` on arguments of these shapes."""
  return jax.jit(fn).lower(*shapes).cost_analysis()['flops']


def abstract_variables(model, size):
  """Shapes of the model's parameters and batch statistics."""
  image = jnp.zeros((1, *size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))
  return {name: variables[name] for name in ('params', 'batch_stats') if name in variables}


def image_shape(size):
  return jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)


def train_flops(model, size, loss_of_outputs):
  """Work of one image's train step: the forward pass in train mode, the loss and the
  gradients of all parameters."""
  variables = abstract_variables(model, size)

  def step(variables, images):
    def loss(params):
      outputs, _ = model.apply({**variables, 'params': params}, images, train=True,
                               mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
      return loss_of_outputs(outputs)
    return jax.grad(loss)(variables['params'])
  return flops(step, variables, image_shape(size))


def segmentation_loss(logits):
  """`rwsjax.losses.cross_entropy` against all-zero labels: the work of the real loss."""
  return losses.cross_entropy(logits, jnp.zeros(logits.shape[:-1], jnp.int32))


def forward_flops(model, size):
  variables = abstract_variables(model, size)
  return flops(lambda v, x: model.apply(v, x, train=False), variables, image_shape(size))


def attention_flops(model, size, max_classes):
  """Seg-Grad-CAM of every layer and class slot of one image (a backward pass per slot)."""
  variables = abstract_variables(model, size)
  fn = lambda v, x: segcam.seg_grad_cam(model, v, x, max_classes=max_classes).heatmaps
  return flops(fn, variables, image_shape(size))


def rws_work(config, weak_windows):
  """(stage, FLOPs, images it processes, training?) of one RWS round with the paper's
  three training stages and the equal-budget baseline."""
  rws = config.rws
  model = models.make_model(config.model, config.dataset.num_classes)
  crop, pad = tuple(config.input.crop_size), tuple(config.input.eval_pad_size)
  local = (network.local_size(rws),) * 2
  train_global = train_flops(model, crop, segmentation_loss)
  attention = attention_flops(model, pad, rws.max_classes)
  local_attention = attention_flops(model, local, rws.max_classes)
  forward = forward_flops(model, pad)
  fusion = attention + weak_windows * local_attention  # the frozen models' part of a batch
  batch = config.input.batch_size
  return [
      ('stage 1', train_global, rws.stage1_steps * batch, True),
      ('analysis (Seg-Grad-CAM of every training image)', attention, TRAIN_IMAGES, False),
      ('stage 2 (local model on weak windows)', train_flops(model, local, segmentation_loss),
       rws.stage2_steps * rws.local_batch_size, True),
      ('stage 3 (retraining with the fusion)', train_global + fusion,
       rws.stage3_steps * batch, True),
      ('inference on val (the RWS network)', fusion + forward, VAL_IMAGES, False),
      ('equal-budget baseline', train_global,
       (rws.stage1_steps + rws.stage2_steps + rws.stage3_steps) * batch, True),
  ]


def walk_flops(nodes, channels, logt):
  """The dense walk: logt squarings of the (n, n) transition matrix, then one product."""
  return logt * 2 * nodes ** 3 + 2 * channels * nodes ** 2


def isim_work(config, classes_per_image, crf_full, crf_walk):
  """(stage, FLOPs, images, training?, CRF seconds per training image) of each ISIM stage;
  `crf_full` and `crf_walk` are the seconds of one CRF of 10 and of 1 iteration."""
  isim, psa = config.isim, config.psa
  k = config.dataset.num_classes
  cam_model = isim_models.make_cam_model(config.model, k)
  crop = tuple(config.input.crop_size)

  def cam_loss(outputs):
    logits, class_logits = outputs
    return segmentation_loss(logits) + jnp.mean(class_logits)

  cam_variables = abstract_variables(cam_model, IMAGE)
  maps_fn = lambda v: lambda x: cam_model.apply(v, x, method='class_maps')
  cams = flops(lambda v, x: cam.multi_scale_cams(
      maps_fn(v), x, jnp.array([IMAGE]), jnp.ones((1, k - 1)), scales=tuple(isim.cam_scales),
      flip=isim.cam_flip, stride=models.feature_strides(config.model)['layer4']),
      cam_variables, image_shape(IMAGE))
  aff_cfg, final_cfg = (isim_psa.stage_config(config, part) for part in ('affinity', 'final'))
  aff_model = affinity.make_affinity_net(aff_cfg.model)
  aff_crop = tuple(aff_cfg.input.crop_size)
  final = models.make_model(final_cfg.model, k)
  final_crop = tuple(final_cfg.input.crop_size)
  regens = len(self_train.regeneration_epochs(isim.epochs, isim.first_regen_epoch,
                                              isim.regen_every))
  nodes = np.prod(random_walk.feature_grid(IMAGE))
  walk = (cams + forward_flops(aff_model, IMAGE)
          + walk_flops(nodes, classes_per_image + 1, psa.logt))
  cam_train = train_flops(cam_model, crop, cam_loss)
  epoch = TRAIN_IMAGES
  return [
      ('CAM model training', cam_train, isim.epochs * epoch, True, 0.0),
      (f'pseudo labels ({regens} regenerations: CAMs + dCRF)', regens * cams, epoch, False,
       regens * crf_full),
      ('classification-only baseline', cam_train, isim.epochs * epoch, True, 0.0),
      ('affinity labels (CAMs + 2 dCRF)', cams, epoch, False, 2 * crf_full),
      ('AffinityNet training', train_flops(aff_model, aff_crop, jnp.mean),
       psa.affinity.epochs * epoch, True, 0.0),
      ('random walk (CAMs, AffinityNet, walk, 1-iteration dCRF)', walk, epoch, False,
       crf_walk),
      ('final model training', train_flops(final, final_crop, segmentation_loss),
       psa.final.epochs * epoch, True, 0.0),
  ]


def crf_seconds(classes, iterations, repeats=3):
  """Median seconds of one dense CRF on a VOC-sized image (flat 16-pixel blocks of random
  colours: a photograph's regions, not pixel noise, whose lattice would be far larger) with
  `classes` + 1 labels."""
  rng = np.random.default_rng(0)
  blocks = rng.integers(0, 256, (IMAGE[0] // 16, IMAGE[1] // 16, 3), dtype=np.uint8)
  image = np.ascontiguousarray(np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1))
  probs = rng.dirichlet(np.ones(classes + 1), IMAGE).transpose(2, 0, 1).astype(np.float32)
  params = crf.CrfParams(iterations=iterations)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    crf.crf_refine_probs(image, probs, params=params)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def hours(work, images, training, rate, count, batch):
  devices = min(count, batch) if training else count
  return work * images / (rate * devices) / 3600


def table(rows, rate, batch):
  lines = ['| stage | PFLOP | ' + ' | '.join(f'{n} acc. (h)' for n in COUNTS) + ' |',
           '|---|---:|' + '---:|' * len(COUNTS)]
  totals = [0.0] * len(COUNTS)
  for name, work, images, training, cpu in rows:
    cells = [max(hours(work, images, training, rate, n, batch), cpu / n) for n in COUNTS]
    totals = [t + c for t, c in zip(totals, cells)]
    lines.append(f'| {name} | {work * images / 1e15:,.0f} | '
                 + ' | '.join(f'{c:,.2f}' for c in cells) + ' |')
  lines.append('| **all** | | ' + ' | '.join(f'**{t:,.1f}**' for t in totals) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tflops', type=float, default=50.0,
                      help='sustained TFLOP/s per accelerator on these networks')
  parser.add_argument('--host-cores', type=int, default=8,
                      help='host CPU cores per accelerator running the dense CRF')
  parser.add_argument('--weak-share', type=float, default=0.25,
                      help='share of the windows of an image that are weak')
  parser.add_argument('--classes-per-image', type=int, default=2,
                      help='foreground classes of a VOC image (its CRF and walk labels)')
  parser.add_argument('--crf-seconds', type=float, nargs=2, default=None,
                      metavar=('FULL', 'WALK'),
                      help='seconds of one dense CRF per image on one core, 10 and 1 '
                      'iterations, measured on your own images (default: measured here)')
  args = parser.parse_args()
  rate = args.tflops * 1e12
  rws_cfg = config_lib.from_file(os.path.join(ROOT, 'configs/voc_rws.py'), None)
  isim_cfg = config_lib.from_file(os.path.join(ROOT, 'configs/voc_isim.py'), None)
  windows = len(slices.window_boxes(*rws_cfg.input.eval_pad_size, rws_cfg.rws.slice_size,
                                    rws_cfg.rws.slice_stride))
  weak = args.weak_share * windows
  if args.crf_seconds:
    crf_full, crf_walk = args.crf_seconds
  else:
    start = snapshot()
    full, walk = crf.CrfParams().iterations, isim_cfg.psa.rw_crf_iterations
    crf_full = crf_seconds(args.classes_per_image, full)
    crf_walk = crf_seconds(args.classes_per_image, walk)
    print(f'dense CRF per {IMAGE[1]}x{IMAGE[0]} image, one core: {crf_full:.2f} s and '
          f'{crf_walk:.2f} s ({full} and {walk} iterations){load_mark(start, snapshot())}')
  rws_rows = [(*row, 0.0) for row in rws_work(rws_cfg, weak)]
  isim_rows = [(name, work, images, training, seconds * TRAIN_IMAGES / args.host_cores / 3600)
               for name, work, images, training, seconds
               in isim_work(isim_cfg, args.classes_per_image, crf_full, crf_walk)]
  print(f'\nRWS (configs/voc_rws.py, one round, {weak:.1f} of {windows} windows weak)\n')
  print(table(rws_rows, rate, rws_cfg.input.batch_size))
  print(f'\nISIM and PSA (configs/voc_isim.py; the dense CRF on {args.host_cores} host cores '
        'per accelerator)\n')
  print(table(isim_rows, rate, isim_cfg.input.batch_size))
  print(f'\n{args.tflops:g} TFLOP/s sustained per accelerator, perfect scaling; training at '
        f'the global batch of {rws_cfg.input.batch_size} uses at most that many accelerators.'
        f' jax {jax.__version__}, {sys.platform}.')


if __name__ == '__main__':
  main()
