"""The RWS network's cost per image, part by part (docs/methods.md RWS 11), on a finished run.

The network of the run in --workdir (the config it recorded in summary.json) predicts one
evaluation batch of its dataset. Timed one after another, interleaved over the repeats
(medians, and their ratio to the plain network):

  plain       the refined network alone (`rws.inference: plain`)
  attention   the global model's Seg-Grad-CAM of every layer and class slot, the window scores
              and the weak windows (`network.weak_slices`)
  local       the local model on the weak windows (its forward pass and Seg-Grad-CAM), and the
              selection and weights of eq. 5-7 (`network.plans_for`)
  local, per pair
              the same with a forward and backward pass per filled (window, class) pair, 8
              pairs per call (`rws.pair_chunk=8`), where `local` runs one forward pass per
              window and one backward pass per class slot that a window of the call fills
  local backward in canonical form, off
              `local` with the convolutions' input gradient left to lax's transpose
              (`rwsjax.models.conv.input_grad` off), which XLA:CPU runs slowly in a loop
  local forward
              the local model's forward pass alone over the weak windows, `rws.slice_chunk`
              per call: what the local part costs before any Seg-Grad-CAM
  fused pass  the refined network's forward pass with the fusion applied
  RWS network all of it in one jitted function (`network.rws_logits`), what evaluation times

It also prints the weak windows per image and how many Seg-Grad-CAM class slots hold a class.

  python benchmarks/rws_inference.py --workdir=runs/shapes_rws
  python benchmarks/rws_inference.py --workdir=runs/shapes_rws --batch 8 --repeats 9
"""
import argparse
import contextlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from rwsjax import chunks
from rwsjax import data
from rwsjax import models
from rwsjax import record
from rwsjax import stages
from rwsjax import train
from rwsjax.models import conv
from rwsjax.rws import config as rws_config
from rwsjax.rws import fusion
from rwsjax.rws import network
from rwsjax.rws import pipeline
from rwsjax.rws import segcam
from rwsjax.rws import slices
from timing import interleaved_seconds
from timing import load_mark
from timing import machine
from timing import snapshot


def recorded_config(workdir):
  """The config a finished run recorded (`record.recorded_config`); config.rws fields that
  did not exist when it ran, and those that set how the local model is chunked (time, not
  results: `provenance`), take today's defaults."""
  config = record.recorded_config(workdir)
  defaults = rws_config.default_config()
  for name in set(defaults.keys()) - set(config.rws.keys()) | {'slice_chunk', 'pair_chunk'}:
    config.rws[name] = defaults[name]
  return config


@contextlib.contextmanager
def lax_input_grad():
  """While tracing: the convolutions' input gradient by lax's own transpose instead of
  `conv.input_grad` (same values). JAX's caches of traced functions are cleared on entry and
  exit, so that neither version's traces are reused by the other."""
  canonical = conv.input_grad

  def transpose(cotangent, rhs, padding, dilation, precision=None):
    size = [out - low - high + d * (k - 1) for out, k, d, (low, high)
            in zip(cotangent.shape[1:3], rhs.shape[:2], dilation, padding)]
    lhs = jnp.zeros((cotangent.shape[0], *size, rhs.shape[2]), cotangent.dtype)
    return jax.vjp(lambda x: conv._lax_stride1(x, rhs, padding, dilation, precision, None),
                   lhs)[1](cotangent)[0]

  jax.clear_caches()
  conv.input_grad = transpose
  try:
    yield
  finally:
    conv.input_grad = canonical
    jax.clear_caches()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a finished RWS run')
  parser.add_argument('--batch', type=int, default=None,
                      help="images per batch (default: the run's eval batch size)")
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  config = recorded_config(args.workdir)
  if args.batch:
    config.input.eval_batch_size = args.batch
  mesh = train.make_mesh(1)
  model = models.make_model(config.model, config.dataset.num_classes)
  net = pipeline.finished_network(config, args.workdir, model, mesh)
  source = data.load_source(config.dataset, config.dataset.eval_split)
  batch = stages.eval_batches(source, config, mesh)[0][0]
  images = jax.device_put(batch['image'])
  rng = jax.random.key(config.seed)

  plain = jax.jit(lambda n, x: model.apply(n['model'], x, train=False))
  attention = jax.jit(lambda n, x: network.weak_slices(model, n['global'], n['threshold'], x,
                                                       config, rng))
  per_pair = config.copy_and_resolve_references()
  per_pair.rws.pair_chunk = 8
  local, local_per_pair = (
      jax.jit(lambda n, found, x, c=c: network.plans_for(model, n['local'], found, x, c))
      for c in (config, per_pair))

  size, side = config.rws.slice_size, network.local_size(config.rws)

  def local_forward(n, found, x):
    crops = slices.crop_windows(x, found.boxes, size).reshape((-1, size, size, 3))
    return chunks.map_selected(
        lambda c: model.apply(n['local'], network.zoom(c, side), train=False), crops,
        found.valid.reshape(-1), config.rws.slice_chunk)

  fused = jax.jit(lambda n, plans, x: model.apply(n['model'], x, train=False,
                                                  layer_hook=fusion.layer_hook(plans)))
  whole = jax.jit(lambda n, x: network.rws_logits(model, n, x, config))
  forward_only = jax.jit(local_forward)
  found = attention(net, images)
  with lax_input_grad():
    local_lax_grad = jax.jit(
        lambda n, found, x: network.plans_for(model, n['local'], found, x, config)).lower(
            net, found, images).compile()
  plans, stats = local(net, found, images)
  start = snapshot()
  times = interleaved_seconds({
      'plain': lambda: plain(net, images),
      'attention': lambda: attention(net, images),
      'local': lambda: local(net, found, images),
      'local, per pair': lambda: local_per_pair(net, found, images),
      'local backward in canonical form, off': lambda: local_lax_grad(net, found, images),
      'local forward': lambda: forward_only(net, found, images),
      'fused pass': lambda: fused(net, plans, images),
      'RWS network': lambda: whole(net, images)}, args.repeats)
  mark = load_mark(start, snapshot())
  n = len(batch['image'])
  ms = {name: 1000 * statistics.median(t) / n for name, t in times.items()}
  print(f'{args.workdir}: batch {n} of {images.shape[1]}x{images.shape[2]}, '
        f'{machine()}, {jax.devices()[0]}')
  print('| part | ms per image | x plain |')
  print('|---|---:|---:|')
  for name, value in ms.items():
    print(f'| {name} | {value:.2f} | {value / ms["plain"]:.1f} |')
  if mark:
    print(mark.strip())
  slots = np.asarray(found.attention.result.class_mask)
  local_pred = forward_only(net, found, images).argmax(-1)[np.asarray(found.valid).reshape(-1)]
  local_slots = np.asarray(segcam.present_classes(local_pred, config.dataset.num_classes,
                                                  config.rws.max_classes)[1])
  print(f"weak windows per image: {float(stats['weak_slices']):.2f} (of "
        f'{found.boxes.shape[1]} windows); Seg-Grad-CAM class slots holding a class: '
        f'{slots.mean():.0%} of {slots.shape[1]} per image, {local_slots.mean():.0%} per '
        'weak window')


if __name__ == '__main__':
  main()
