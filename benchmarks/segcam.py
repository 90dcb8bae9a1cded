"""Seg-Grad-CAM: all classes at once (rwsjax.rws.segcam) vs one jax.grad call per image and class.

Both produce the four stages' heatmaps for the same (N, C) class ids (drawn at random, the
same for both, so the work does not depend on what a randomly initialised model predicts).
The vectorised path is one jitted forward pass with the backward pass vmapped over the class
slots; the baseline is a jitted per-(image, class) function, forward and backward, called in
a Python loop. Prints medians after a warm-up and their ratio, and what sharing the forward
pass alone saves: C times the time of one class slot (whole batch) over the all-class time.

  python benchmarks/segcam.py
  python benchmarks/segcam.py --backbone resnet50 --width 0.5 --size 128 --batch 8
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from rwsjax.rws import segcam
from rwsjax.models import build_model
from timing import median_seconds


def one_class_fn(model, layers):
  """Jitted heatmaps of one image (1, H, W, 3) for one class c, by jax.grad of S_c."""

  @jax.jit
  def run(variables, image, perturbations, c):
    def score(p):
      logits, state = model.apply({**variables, 'perturbations': p}, image, train=False,
                                  mutable=['intermediates'])
      region = jax.lax.stop_gradient(jnp.argmax(logits, -1) == c)
      return jnp.sum(jnp.where(region, jnp.take(logits, c, axis=-1), 0.0)), state

    grads, state = jax.grad(score, has_aux=True)(perturbations)
    grads = segcam.find_stages(grads, layers)
    features = segcam.find_stages(state['intermediates'], layers)
    return {name: segcam.normalize_heatmaps(
        jnp.einsum('nk,nhwk->nhw', grads[name].mean(axis=(1, 2)), features[name]),
        image.shape[1:3])[0] for name in layers}

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--name', default='deeplabv3')
  parser.add_argument('--backbone', default='resnet18')
  parser.add_argument('--output-stride', type=int, default=8)
  parser.add_argument('--width', type=float, default=0.25)
  parser.add_argument('--head-channels', type=int, default=64)
  parser.add_argument('--size', type=int, default=96)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--classes', type=int, default=6, help='classes per image')
  parser.add_argument('--num-classes', type=int, default=21)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  model = build_model({'name': args.name, 'backbone': args.backbone,
                       'output_stride': args.output_stride, 'width': args.width,
                       'head_channels': args.head_channels}, args.num_classes)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  perturbations = jax.tree.map(jnp.zeros_like, variables['perturbations'])
  variables = {k: variables[k] for k in ('params', 'batch_stats')}
  classes = np.stack([rng.choice(args.num_classes, args.classes, replace=False)
                      for _ in range(args.batch)])
  layers = segcam.LAYERS
  one_class = one_class_fn(model, layers)

  def vectorised(slots=args.classes):
    return segcam.seg_grad_cam(model, variables, images, classes=classes[:, :slots]).heatmaps

  def loop():
    return [[one_class(variables, images[n:n + 1], perturbations, int(c)) for c in row]
            for n, row in enumerate(classes)]

  fast, slow = vectorised(), loop()
  for n, row in enumerate(slow):
    for j, maps in enumerate(row):
      for name in layers:
        np.testing.assert_allclose(fast[name][n, j], maps[name], atol=1e-4)
  t_fast = median_seconds(vectorised, args.repeats)
  t_loop = median_seconds(loop, args.repeats)
  t_one = median_seconds(lambda: vectorised(1), args.repeats)
  print(f'devices: {jax.devices()}')
  print(f'{args.name}/{args.backbone} width {args.width} OS{args.output_stride}, '
        f'{args.batch}x{args.size}x{args.size}, {args.classes} classes/image, '
        f'K={args.num_classes}: all classes {t_fast * 1e3:.1f} ms, one class at a time '
        f'{t_loop * 1e3:.1f} ms, ratio {t_loop / t_fast:.1f}x')
  print(f'one class slot for the whole batch (forward + one backward) {t_one * 1e3:.1f} ms; '
        f'{args.classes} of those, a class loop batched over images, would take '
        f'{args.classes * t_one / t_fast:.1f}x the all-class time')


if __name__ == '__main__':
  main()
