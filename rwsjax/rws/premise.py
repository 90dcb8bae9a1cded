"""Where RWS gains or loses, part by part, on the evaluation split (docs/methods.md RWS 12).

RWS rests on one premise: a weak window, seen closer by a local model trained on such
windows, is segmented better than the global model segments it inside the whole image. For
each round, the weak windows of every evaluation image are found as at test time (the global
model's attention on its prediction, windows below the round's T, every one of them) and the
pixels of those windows are scored under each view of them:

  global         the global model on the whole image, cropped to the window
  local_zoom     the local model on the window enlarged by `local_scale` (stage 2's view)
  global_zoom    the global model on the enlarged window (enlargement alone)
  global_bare    the global model on the window at its own scale (no context, no enlargement)
  integrated     the global model with the local features fused in (eq. 5-7), no retraining
  rws_plain      the refined model of stage 3 alone
  rws_fused      the refined model with the local features fused in: the RWS network

A pixel of k overlapping weak windows counts k times in every row, so the rows are scored
on the same pixels. Over the whole split: the global model, the global model with the local
predictions pasted into its weak windows (an upper bound on what the local model can give
without training: where windows overlap, the local models' class probabilities are averaged),
and the integrated network. With a background class, the missed objects: ground-truth
foreground predicted as background by the global model, and the share of those pixels that lie
in no window where a class takes part, which no window selection can reach.
"""
import jax
import jax.numpy as jnp

from rwsjax import chunks
from rwsjax import evaluate as evaluate_lib
from rwsjax import stages
from rwsjax import train
from rwsjax.losses import IGNORE_LABEL
from rwsjax.progress import Progress
from rwsjax.rws import fusion
from rwsjax.rws import network
from rwsjax.rws import slices

ON_WINDOWS = ('global', 'local_zoom', 'global_zoom', 'global_bare', 'integrated', 'rws_plain',
              'rws_fused')
WHOLE_SPLIT = ('global', 'pasted', 'integrated')
OUTSIDE_WINDOWS = ('global', 'rws_fused')
TITLES = {'global': 'global model, whole image',
          'local_zoom': 'local model, window enlarged',
          'global_zoom': 'global model, window enlarged',
          'global_bare': 'global model, bare window',
          'integrated': 'global model + fusion, no retraining',
          'rws_plain': 'RWS plain: refined network alone',
          'rws_fused': 'RWS fused: the RWS network',
          'pasted': 'global model, local predictions pasted in'}


def window_pixels(boxes, valid, size):
  """Per slot (N, S), the row and column of each of its pixels: ys (N, S, size, 1) and xs
  (N, S, 1, size), and the image index (N, 1, 1, 1), for scatters onto the image."""
  offsets = jnp.arange(size)
  ys = boxes[..., 0, None, None] + offsets[:, None]
  xs = boxes[..., 1, None, None] + offsets[None, :]
  return jnp.arange(valid.shape[0])[:, None, None, None], ys, xs


def paste(canvas, values, boxes, valid):
  """Adds per-slot window maps `values` (N, S, s, s, ...) of the valid slots onto `canvas`
  (N, H, W, ...) at their boxes."""
  size = values.shape[2]
  image, ys, xs = window_pixels(boxes, valid, size)
  mask = valid.reshape(valid.shape + (1,) * (values.ndim - 2))
  return canvas.at[image, ys, xs].add(jnp.where(mask, values, 0).astype(canvas.dtype))


def make_premise_step(model, config, mesh):
  """Jitted (network, batch) -> confusion matrices and counts of one evaluation batch.

  `network` is the round's RWS network dict ({'model', 'global', 'local', 'threshold'}); the
  batch has 'image', 'segmentation', 'valid' and 'mask'. Returns {'windows': row -> (K, K),
  'split': row -> (K, K), 'outside': row -> (K, K), 'counts': {...}}.
  """
  rws, k = config.rws, config.dataset.num_classes
  background = config.dataset.background_class
  size, side = rws.slice_size, network.local_size(rws)
  rng = jax.random.key(config.seed)

  def confusion(labels, preds, weights):
    return evaluate_lib.confusion_matrix(labels, preds, k, weights=weights)

  def step(net, batch):
    images, valid = (network.pad_for_windows(batch[key], config) for key in ('image', 'valid'))
    labels = network.pad_for_windows(batch['segmentation'], config, IGNORE_LABEL)
    image_ok = valid & batch['mask'][:, None, None]
    found = network.weak_slices(model, net['global'], net['threshold'], images, config, rng,
                                valid=valid)
    plans, _, local_logits = network.plans_for(model, net['local'], found, images, config,
                                               valid=valid, with_logits=True)
    hook = fusion.layer_hook(plans)
    full = {'global': jnp.argmax(found.attention.result.logits, -1),
            'integrated': jnp.argmax(model.apply(net['global'], images, train=False,
                                                 layer_hook=hook), -1),
            'rws_plain': jnp.argmax(model.apply(net['model'], images, train=False), -1),
            'rws_fused': jnp.argmax(model.apply(net['model'], images, train=False,
                                                layer_hook=hook), -1)}
    slots = found.valid & batch['mask'][:, None]
    cover = paste(jnp.zeros(labels.shape, jnp.int32), jnp.ones(slots.shape + (size, size),
                                                                jnp.int32), found.boxes, slots)
    n, s = slots.shape
    crops = slices.crop_windows(images, found.boxes, size).reshape((-1, size, size, 3))
    crop_labels = slices.crop_windows(labels, found.boxes, size)
    views = chunks.map_selected(
        lambda c: {'global_zoom': network.zoom(model.apply(net['global'], network.zoom(c, side),
                                                           train=False), size),
                   'global_bare': model.apply(net['global'], c, train=False)},
        crops, slots.reshape(-1), rws.slice_chunk)
    views['local_zoom'] = local_logits.reshape((-1, size, size, k))
    slot_weights = jnp.broadcast_to(slots[..., None, None], crop_labels.shape).astype(jnp.int32)
    windows = {name: confusion(labels, preds, cover) for name, preds in full.items()}
    windows.update({name: confusion(crop_labels, jnp.argmax(logits, -1).reshape(
        crop_labels.shape), slot_weights) for name, logits in views.items()})
    probabilities = paste(jnp.zeros(labels.shape + (k,), jnp.float32),
                          jax.nn.softmax(local_logits, -1), found.boxes, slots)
    pasted = jnp.where(cover > 0, jnp.argmax(probabilities, -1), full['global'])
    split = {'global': confusion(labels, full['global'], image_ok),
             'pasted': confusion(labels, pasted, image_ok),
             'integrated': confusion(labels, full['integrated'], image_ok)}
    inside = cover > 0
    outside = {name: confusion(labels, full[name], image_ok & ~inside) for name in OUTSIDE_WINDOWS}
    boxes = jnp.asarray(slices.window_boxes(*images.shape[1:3], size, rws.slice_stride))
    reachable = paste(jnp.zeros(labels.shape, jnp.int32),
                      jnp.ones((n, len(boxes), size, size), jnp.int32),
                      jnp.broadcast_to(boxes, (n,) + boxes.shape), found.eligible) > 0
    weak_count = jnp.where(batch['mask'], found.weak_count, 0)
    counts = {'weak_windows': jnp.sum(weak_count),
              'refined_windows': jnp.sum(slots),
              'most_weak_windows': jnp.max(weak_count)}
    scored = image_ok & (labels >= 0) & (labels < k)
    was_right, is_right = full['global'] == labels, full['rws_fused'] == labels
    for where, region in (('inside', scored & inside), ('outside', scored & ~inside)):
      counts[f'fixed_{where}'] = jnp.sum(region & ~was_right & is_right)
      counts[f'broken_{where}'] = jnp.sum(region & was_right & ~is_right)
    if background is not None:
      foreground = scored & (labels != background)
      missed = foreground & (full['global'] == background)
      counts.update(missed_pixels=jnp.sum(missed), missed_unreachable=jnp.sum(missed & ~reachable))
    return {'windows': windows, 'split': split, 'outside': outside, 'counts': counts}

  return jax.jit(step, in_shardings=(train.replicated(mesh), train.data_sharded(mesh)),
                 out_shardings=train.replicated(mesh))


def measure(model, net, source, config, mesh, names):
  """The premise record of a round (module docstring): JSON-ready summaries of every row on
  the weak windows and over the whole split, and the window and missed-object counts."""
  step = make_premise_step(model, config, mesh)
  batches, count = stages.eval_batches(source, config, mesh)
  keys = ('image', 'segmentation', 'valid', 'mask')
  total = None
  progress = Progress('premise', count)
  for i in range(count):
    out = jax.device_get(step(net, train.to_device({key: batches[i][key] for key in keys},
                                                   mesh)))
    if total is not None:
      most = max(total['counts']['most_weak_windows'], out['counts']['most_weak_windows'])
      out = jax.tree.map(lambda a, b: a + b, total, out)
      out['counts']['most_weak_windows'] = most
    total = out
    progress.tick(i + 1)
  counts = {name: int(v) for name, v in total['counts'].items()}
  return {'weak_windows': {name: evaluate_lib.summarize(total['windows'][name], names)
                           for name in ON_WINDOWS},
          'whole_split': {name: evaluate_lib.summarize(total['split'][name], names)
                          for name in WHOLE_SPLIT},
          'outside_windows': {name: evaluate_lib.summarize(total['outside'][name], names)
                              for name in OUTSIDE_WINDOWS},
          'counts': counts,
          'missed_unreachable_share': (counts['missed_unreachable'] / counts['missed_pixels']
                                       if counts.get('missed_pixels') else None)}


def table(record, split, names):
  """Markdown: the rows on the weak windows, the whole-split rows, the rows outside the weak
  windows with the pixels the RWS network fixes and breaks, and the counts."""
  counts = record['counts']
  rows = [(TITLES[name], record['weak_windows'][name]) for name in ON_WINDOWS]
  lines = [f'Weak windows of the {split} split ({counts["weak_windows"]} windows, '
           f'{counts["refined_windows"]} refined; at most {counts["most_weak_windows"]} in one '
           'image), IoU on their pixels:', '',
           evaluate_lib.miou_table(split, rows, names), '',
           f'The whole {split} split:', '',
           evaluate_lib.miou_table(split, [(TITLES[name], record['whole_split'][name])
                                           for name in WHOLE_SPLIT], names)]
  if 'outside_windows' in record:  # records made before it was measured lack it
    lines += ['', f'Outside the weak windows (the {split} pixels in none of them):', '',
              evaluate_lib.miou_table(split, [(TITLES[name], record['outside_windows'][name])
                                              for name in OUTSIDE_WINDOWS], names), '',
              'Against the global model, the RWS network fixes '
              f'{counts["fixed_inside"]} pixels and breaks {counts["broken_inside"]} inside the '
              f'weak windows, fixes {counts["fixed_outside"]} and breaks '
              f'{counts["broken_outside"]} outside them.']
  share = record['missed_unreachable_share']
  if share is not None:
    lines += ['', f'Missed objects: {counts["missed_pixels"]} foreground pixels predicted as '
              f'background, {share:.1%} of them in no window where a class takes part.']
  return '\n'.join(lines)
