"""Seg-Grad-CAM: all classes at once (rwsjax.rws.segcam) vs per-class loops in JAX and PyTorch.

All paths produce the four stages' heatmaps for the same (N, C) class ids (drawn at random, the
same for all, so the work does not depend on what a randomly initialised model predicts).
The vectorised path is one jitted forward pass with the backward pass vmapped over the class
slots; the JAX baseline is a jitted per-(image, class) function, forward and backward, called
in a Python loop. With --vs-torch, torchvision's deeplabv3_<backbone> gets the rwsjax model's
weights and runs one forward pass, then one `torch.autograd.grad` per class slot (batched over
the images, which do not interact in eval mode) w.r.t. the four stage outputs, the backward
pass stopping at layer1's output, and the same normalisation and resize; its maps are checked
equal to the JAX ones. The paths' repeats are interleaved; medians after a warm-up are printed
(and the fastest repeat), with the ratios, and what sharing the forward pass alone saves: C
times the time of one class slot (whole batch) over the all-class time.

  python benchmarks/segcam.py
  python benchmarks/segcam.py --backbone resnet50 --width 0.5 --size 128 --batch 8
  python benchmarks/segcam.py --backbone resnet50 --width 1 --head-channels 256 \\
      --size 256 --batch 1 --classes 3 --vs-torch --vs-conv-impl lax
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rwsjax.rws import segcam
from rwsjax.models import make_model
from rwsjax.models import pretrained
from rwsjax.models.conv import CONV_IMPLS
from timing import interleaved_seconds
from timing import load_mark
from timing import machine
from timing import snapshot

# rwsjax DeepLabV3Head module -> torchvision DeepLabHead (classifier.*) (conv, BN) prefixes.
TORCH_HEAD = {
    ('aspp', 'conv1x1'): ('classifier.0.convs.0.0', 'classifier.0.convs.0.1'),
    ('aspp', 'atrous0'): ('classifier.0.convs.1.0', 'classifier.0.convs.1.1'),
    ('aspp', 'atrous1'): ('classifier.0.convs.2.0', 'classifier.0.convs.2.1'),
    ('aspp', 'atrous2'): ('classifier.0.convs.3.0', 'classifier.0.convs.3.1'),
    ('aspp', 'pool'): ('classifier.0.convs.4.1', 'classifier.0.convs.4.2'),
    ('aspp', 'project'): ('classifier.0.project.0', 'classifier.0.project.1'),
    ('conv',): ('classifier.1', 'classifier.2'),
}
BN_LEAVES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


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
    grads = segcam.find_layers(grads, layers)
    features = segcam.find_layers(state['intermediates'], layers)
    return {name: segcam.normalize_heatmaps(
        jnp.einsum('nk,nhwk->nhw', grads[name].mean(axis=(1, 2)), features[name]),
        image.shape[1:3])[0] for name in layers}

  return run


def torch_state_dict(variables):
  """torchvision deeplabv3 state dict (numpy) holding the rwsjax DeepLabv3 `variables`."""
  state = {}
  for collection in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(variables[collection])
    for path, value in flat.items():
      value = np.asarray(value)
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      if path[0] == 'backbone':
        state['backbone.' + pretrained.torch_key(collection, path[1:])] = value
      elif path[1] == 'classifier':
        state[f'classifier.4.{"weight" if path[-1] == "kernel" else "bias"}'] = value
      else:
        conv, norm = TORCH_HEAD[path[1:-2]]
        state[f'{conv}.weight' if path[-2].startswith('Conv') else
              f'{norm}.{BN_LEAVES[path[-1]]}'] = value
  return state


class TorchSegCam:
  """Seg-Grad-CAM of torchvision's DeepLabv3 by a loop of torch.autograd.grad over slots."""

  def __init__(self, args, variables, images, classes):
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency)
    import torchvision  # pylint: disable=g-import-not-at-top
    self.torch = torch
    build = getattr(torchvision.models.segmentation, f'deeplabv3_{args.backbone}')
    self.model = build(weights=None, weights_backbone=None, num_classes=args.num_classes,
                       aux_loss=False).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in torch_state_dict(variables).items()}
    missing, _ = self.model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if missing:
      raise ValueError(f'No rwsjax weights for torchvision keys {missing}.')
    self.model.requires_grad_(False)
    self.features = {}
    for name in segcam.LAYERS:
      getattr(self.model.backbone, name).register_forward_hook(self._hook(name))
    self.images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()
    self.classes = torch.from_numpy(np.array(classes)).long()

  def _hook(self, name):
    def hook(module, inputs, output):
      del module, inputs
      if name == 'layer1':  # the backward pass needs nothing below the first explained stage
        output = output.detach().requires_grad_(True)
      self.features[name] = output
      return output
    return hook

  def __call__(self):
    torch = self.torch
    functional = torch.nn.functional
    with torch.enable_grad():
      logits = self.model(self.images)['out']
      pred = logits.argmax(1)
      features = [self.features[name] for name in segcam.LAYERS]
      maps = {name: [] for name in segcam.LAYERS}
      for c in self.classes.T:  # one slot of every image
        region = pred == c[:, None, None]
        score = (logits.gather(1, c[:, None, None, None].expand(-1, 1, *pred.shape[1:]))[:, 0]
                 * region).sum()
        grads = torch.autograd.grad(score, features, retain_graph=True)
        for name, f, g in zip(segcam.LAYERS, features, grads):
          cam = functional.relu((g.mean((2, 3), keepdim=True) * f).sum(1))
          low = cam.amin((1, 2), keepdim=True)
          span = cam.amax((1, 2), keepdim=True) - low
          cam = torch.where(span > 0, (cam - low) / torch.where(span > 0, span, 1.0), 0.0)
          cam = functional.interpolate(cam[:, None], size=self.images.shape[2:],
                                       mode='bilinear', align_corners=False)[:, 0]
          maps[name].append(cam.clamp(0, 1).detach())
    return {name: torch.stack(m, 1).numpy() for name, m in maps.items()}


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
  parser.add_argument('--conv-impl', default='auto', choices=CONV_IMPLS,
                      help='how the model computes convolutions (rwsjax.models.conv)')
  parser.add_argument('--vs-conv-impl', choices=CONV_IMPLS,
                      help='also time the all-class path with this conv_impl')
  parser.add_argument('--vs-torch', action='store_true',
                      help='also time a torch.autograd.grad loop on torchvision deeplabv3')
  args = parser.parse_args()
  torch_model = (args.name, args.width, args.head_channels, args.output_stride) == (
      'deeplabv3', 1.0, 256, 8) and args.backbone in ('resnet50', 'resnet101')
  if args.vs_torch and not torch_model:
    parser.error("--vs-torch needs torchvision's model: --name deeplabv3 --backbone "
                 'resnet50|resnet101 --width 1 --head-channels 256 --output-stride 8')

  def model_with(impl):
    return make_model({'name': args.name, 'backbone': args.backbone,
                       'output_stride': args.output_stride, 'width': args.width,
                       'head_channels': args.head_channels, 'conv_impl': impl},
                      args.num_classes)

  model = model_with(args.conv_impl)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  perturbations = jax.tree.map(jnp.zeros_like, variables['perturbations'])
  variables = {k: variables[k] for k in ('params', 'batch_stats')}
  classes = np.stack([rng.choice(args.num_classes, args.classes, replace=False)
                      for _ in range(args.batch)])
  layers = segcam.LAYERS
  one_class = one_class_fn(model, layers)

  def vectorised(slots=args.classes, model=model):
    return segcam.seg_grad_cam(model, variables, images, classes=classes[:, :slots]).heatmaps

  def loop():
    return [[one_class(variables, images[n:n + 1], perturbations, int(c)) for c in row]
            for n, row in enumerate(classes)]

  paths = {'all classes': vectorised, 'jax class loop': loop,
           'one class slot': lambda: vectorised(1)}
  fast, slow = vectorised(), loop()
  for n, row in enumerate(slow):
    for j, maps in enumerate(row):
      for name in layers:
        np.testing.assert_allclose(fast[name][n, j], maps[name], atol=1e-4)
  if args.vs_conv_impl:
    other = model_with(args.vs_conv_impl)
    paths[f'all classes [{args.vs_conv_impl}]'] = lambda: vectorised(model=other)
  if args.vs_torch:
    paths['torch class loop'] = TorchSegCam(args, variables, images, classes)
    torch_maps = paths['torch class loop']()
    for name in layers:
      np.testing.assert_allclose(torch_maps[name], fast[name], atol=2e-3)
  start = snapshot()
  times = interleaved_seconds(paths, args.repeats)
  mark = load_mark(start, snapshot())

  print(f'devices: {jax.devices()}, {machine()}')
  print(f'{args.name}/{args.backbone} width {args.width} head {args.head_channels} '
        f'OS{args.output_stride} conv_impl {args.conv_impl}, {args.batch}x{args.size}x'
        f'{args.size}, {args.classes} classes/image, K={args.num_classes}, {args.repeats} '
        f'interleaved repeats:')
  median = {name: np.median(t) for name, t in times.items()}
  fastest = {name: np.min(t) for name, t in times.items()}
  for name in times:
    print(f'  {name:22s} median {median[name] * 1e3:9.1f} ms, fastest '
          f'{fastest[name] * 1e3:9.1f} ms: {median[name] / median["all classes"]:5.2f}x the '
          f'all-class time (fastest {fastest[name] / fastest["all classes"]:.2f}x){mark}')
  print(f'{args.classes} one-slot calls, a class loop batched over images, would take '
        f'{args.classes * median["one class slot"] / median["all classes"]:.1f}x the '
        f'all-class time (sharing the forward pass alone)')

if __name__ == '__main__':
  main()
