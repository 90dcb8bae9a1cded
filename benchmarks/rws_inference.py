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

With --order, the order in which the weak windows reach the local model, measured: on the
first --order-batches evaluation batches, how well keys read off the global model predict the
number of class slots the local model fills in a window (its Seg-Grad-CAM runs a backward pass
per slot that some window of a chunk fills), and the window-passes per filled (window, class)
pair in each order; then the RWS network timed beside the rows above with the windows in row
order, in the local model's own classes' order (from an extra forward pass) and at other
`rws.slice_chunk` values, all checked to predict what the default does.

  python benchmarks/rws_inference.py --workdir=runs/shapes_rws
  python benchmarks/rws_inference.py --workdir=runs/shapes_rws --batch 8 --repeats 9
  python benchmarks/rws_inference.py --workdir=runs/shapes_rws --order
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


def window_passes(counts, key, chunk):
  """Backward window-passes per filled (window, class) pair when the windows go in increasing
  `key` order (ties: row order), `chunk` per call, and a call costs a pass over all its `chunk`
  rows for each slot that its most-classes window fills (`chunks.map_selected`,
  `segcam.seg_grad_cam`'s `class_chunk`). counts, key: (M,) over the weak windows."""
  ordered = counts[np.argsort(key, kind='stable')]
  passes = sum(int(ordered[i:i + chunk].max()) for i in range(0, len(ordered), chunk))
  return passes * chunk / counts.sum()


@contextlib.contextmanager
def window_order(key):
  """While tracing: `plans_for` orders the weak windows by `key` (N * S,) instead of
  `network.window_classes`."""
  default = network.window_classes
  network.window_classes = lambda *_: key
  try:
    yield
  finally:
    network.window_classes = default


def order_statistics(config, found, local_logits, max_prob_levels=(0.05, 0.1, 0.2, 0.3),
                     chunk_sizes=(8, 32)):
  """Lines on one batch: keys read off the global model against the local model's class count
  per weak window (correlation, mean, window-passes per pair in chunks of `chunk_sizes`)."""
  k, slots, size = config.dataset.num_classes, config.rws.max_classes, config.rws.slice_size
  valid = np.asarray(found.valid).reshape(-1)
  pred = np.asarray(jnp.argmax(local_logits, -1))[valid]
  per_class = np.stack([(pred == c).reshape(len(pred), -1).sum(-1) for c in range(k)], -1)
  local = np.minimum((per_class > 0).sum(-1), slots)
  probs = np.asarray(slices.crop_windows(jax.nn.softmax(found.attention.result.logits, -1),
                                         found.boxes, size)).reshape((-1, size, size, k))[valid]
  top2 = np.argsort(probs, -1)[..., -2:]
  keys = {'row order': np.zeros_like(local),
          'global prediction (default)': np.asarray(network.window_classes(
              found.attention.regions, found.boxes, config))[valid],
          **{f'global probability >= {p}': np.minimum((probs.max((1, 2)) >= p).sum(-1), slots)
             for p in max_prob_levels},
          'global two most probable': np.minimum(np.stack(
              [(top2 == c).any((-1, -2, -3)) for c in range(k)], -1).sum(-1), slots),
          "the local model's own": local}
  lines = [f'{len(local)} weak windows, {local.mean():.2f} local classes per window '
           f'({(per_class >= 16).sum(-1).mean():.2f} with at least 16 of its '
           f'{pred[0].size} pixels)']
  for name, key in keys.items():
    corr = f'{np.corrcoef(key, local)[0, 1]:.2f}' if key.std() > 0 else '-'
    passes = ', '.join(f'{window_passes(local, key, c):.2f} in chunks of {c}'
                       for c in chunk_sizes)
    lines.append(f'  {name}: corr {corr}, mean {key.mean():.2f}; window-passes per pair '
                 f'{passes}')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a finished RWS run')
  parser.add_argument('--batch', type=int, default=None,
                      help="images per batch (default: the run's eval batch size)")
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--order', action='store_true',
                      help='measure the order of the weak windows too (module docstring)')
  parser.add_argument('--order-batches', type=int, default=3)
  parser.add_argument('--chunks', default='16,8,4',
                      help='with --order: other rws.slice_chunk values to time')
  args = parser.parse_args()
  config = recorded_config(args.workdir)
  if args.batch:
    config.input.eval_batch_size = args.batch
  mesh = train.make_mesh(1)
  model = models.make_model(config.model, config.dataset.num_classes)
  net = pipeline.finished_network(config, args.workdir, model, mesh)
  source = data.load_source(config.dataset, config.dataset.eval_split)
  batches = stages.eval_batches(source, config, mesh)[0]
  batch = batches[0]
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
  fns = {
      'plain': lambda: plain(net, images),
      'attention': lambda: attention(net, images),
      'local': lambda: local(net, found, images),
      'local, per pair': lambda: local_per_pair(net, found, images),
      'local backward in canonical form, off': lambda: local_lax_grad(net, found, images),
      'local forward': lambda: forward_only(net, found, images),
      'fused pass': lambda: fused(net, plans, images),
      'RWS network': lambda: whole(net, images)}
  if args.order:
    fns.update(order_variants(model, config, net, images, whole, forward_only,
                              [int(c) for c in args.chunks.split(',') if c]))
  start = snapshot()
  times = interleaved_seconds(fns, args.repeats)
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
  if args.order:
    for i, b in enumerate(batches[:args.order_batches]):
      x = jax.device_put(b['image'])
      found_b = attention(net, x)
      print(f'order, batch {i}: ' + '\n'.join(
          order_statistics(config, found_b, forward_only(net, found_b, x))))


def order_variants(model, config, net, images, whole, forward_only, chunk_sizes):
  """{name: timed call} of the RWS network (`network.rws_logits`, written out) with the weak
  windows in row order, in the local model's own classes' order (an extra forward pass of the
  local model over them) and at other `rws.slice_chunk` values; each is first checked to
  predict what `whole` does (the order and the chunks change time, not results)."""
  rng = jax.random.key(config.seed)
  height, width = images.shape[1:3]
  valid = network.pad_for_windows(jnp.ones(images.shape[:3], bool), config)

  def ordered(order):
    def run(n, x):
      x = network.pad_for_windows(x, config)
      found = network.weak_slices(model, n['global'], n['threshold'], x, config, rng,
                                  valid=valid)
      if order == 'row':
        key = jnp.zeros(found.valid.size, jnp.int32)
      else:
        key = jnp.sum(segcam.present_classes(jnp.argmax(forward_only(n, found, x), -1),
                                             config.dataset.num_classes,
                                             config.rws.max_classes)[1], -1)
      with window_order(key):
        plans, _ = network.plans_for(model, n['local'], found, x, config, valid=valid)
      logits = model.apply(n['model'], x, train=False, layer_hook=fusion.layer_hook(plans))
      return logits[:, :height, :width]
    return jax.jit(run)

  def chunked(chunk):
    c = config.copy_and_resolve_references()
    c.rws.slice_chunk = chunk
    return jax.jit(lambda n, x: network.rws_logits(model, n, x, c))

  variants = {'RWS network, windows in row order': ordered('row'),
              "RWS network, windows in the local model's classes' order": ordered('local'),
              **{f'RWS network, rws.slice_chunk={c}': chunked(c) for c in chunk_sizes}}
  expected = np.asarray(whole(net, images)).argmax(-1)
  for name, fn in variants.items():
    if not np.array_equal(np.asarray(fn(net, images)).argmax(-1), expected):
      raise AssertionError(f'{name} predicts otherwise than the RWS network.')
  return {name: (lambda fn=fn: fn(net, images)) for name, fn in variants.items()}


if __name__ == '__main__':
  main()
