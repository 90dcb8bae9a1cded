"""Seg-Grad-CAM heatmaps and the attention maps of RWS (paper eq. 1-4, docs/methods.md RWS step 2).

Model convention: `model.apply(variables, images, train=False)` returns logits (N, H, W, K) at
input resolution, and each backbone layer output `name` ('layer1'..'layer4') passes through
`rwsjax.models.backbone.layer_output` (`perturb` and `sow`). The gradients dS_c/dF_i of all
layers then come from one backward pass, as the cotangent of the 'perturbations' collection.

In eval mode (`train=False`) images of a batch do not interact, so the cotangent of image n only
reaches image n's features and one backward pass per class slot serves the whole batch.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from rwsjax import chunks
from rwsjax.models.backbone import LAYER_NAMES as LAYERS


class SegCamResult(NamedTuple):
  """Seg-Grad-CAM of a batch.

  heatmaps: layer -> (N, C, H, W) float32 in [0, 1] at input size (zeros in padded slots and,
    given `valid`, on padded pixels).
  class_ids: (N, C) int32 class of each slot, -1 in padded slots.
  class_mask: (N, C) bool, True for real slots.
  logits: (N, H, W, K) the model's output.
  features: layer -> (N, h_i, w_i, ch_i) the layer outputs F_i.
  """
  heatmaps: dict
  class_ids: jax.Array
  class_mask: jax.Array
  logits: jax.Array
  features: dict


def present_classes(label_map, num_classes, max_classes):
  """Classes present in each map, most frequent first (ties: lower id), padded with -1.

  Args:
    label_map: (N, H, W) integer class map (labels or argmax prediction); values outside
      [0, num_classes), such as the ignore label 255, are not counted.
    num_classes: K.
    max_classes: C, the number of slots; when more classes are present the least frequent
      ones are dropped.

  Returns:
    class_ids (N, C) int32 and class_mask (N, C) bool.
  """
  n = label_map.shape[0]
  flat = label_map.reshape(n, -1)
  valid = (flat >= 0) & (flat < num_classes)
  counts = jax.vmap(lambda f, v: jnp.zeros(num_classes, jnp.int32).at[f].add(v))(
      jnp.where(valid, flat, 0), valid.astype(jnp.int32))
  top, ids = jax.lax.top_k(counts, min(max_classes, num_classes))
  mask = top > 0
  ids = jnp.where(mask, ids, -1).astype(jnp.int32)
  pad = max_classes - ids.shape[1]
  return (jnp.pad(ids, ((0, 0), (0, pad)), constant_values=-1),
          jnp.pad(mask, ((0, 0), (0, pad))))


def normalize_heatmaps(raw, size, cells=None):
  """ReLU, then min-max to [0, 1] per map, then bilinear resize (eq. 1, docs/methods.md RWS 2).

  The order is fixed: normalising before the resize keeps the layer's own extremes at 0 and 1
  (a peak between output pixels stays below 1 after the resize). A constant map becomes zeros.

  Args:
    raw: (..., h, w) un-rectified maps sum_k alpha^k F^k.
    size: (H, W) output size; resize is half-pixel bilinear (`jax.image.resize`).
    cells: optional bool mask broadcastable to `raw`, the valid feature cells
      (`feature_cells`): the minimum and maximum are taken over them only, and the other cells
      are clipped to [0, 1] before the resize. None (no padding) uses every cell.
  """
  cam = jax.nn.relu(raw.astype(jnp.float32))
  if cells is None:
    low = jnp.min(cam, axis=(-2, -1), keepdims=True)
    span = jnp.max(cam, axis=(-2, -1), keepdims=True) - low
  else:
    cells = jnp.broadcast_to(cells, cam.shape)
    any_cell = jnp.any(cells, axis=(-2, -1), keepdims=True)
    low = jnp.where(any_cell, jnp.min(jnp.where(cells, cam, jnp.inf), axis=(-2, -1),
                                      keepdims=True), 0.0)
    span = jnp.where(any_cell, jnp.max(jnp.where(cells, cam, -jnp.inf), axis=(-2, -1),
                                       keepdims=True) - low, 0.0)
  cam = jnp.where(span > 0, (cam - low) / jnp.where(span > 0, span, 1.0), 0.0)
  if cells is not None:
    cam = jnp.clip(cam, 0.0, 1.0)
  cam = jax.image.resize(cam, cam.shape[:-2] + tuple(size), 'bilinear')
  return jnp.clip(cam, 0.0, 1.0)


def feature_cells(valid, shape):
  """(N, h, w) bool: the cells of a layer's (h, w) feature grid that lie on the image.

  A cell of a layer with stride s is valid when the input pixel at its centre is,
  valid[:, s*y + s//2, s*x + s//2] (docs/methods.md RWS 2). s is read from the grid, H / h and
  W / w; for a side that is not a multiple of its grid the pixel is floor((y + 1/2) H / h),
  which is the same formula whenever H = s h.

  Args:
    valid: (N, H, W) bool, False on padding.
    shape: (h, w) of the layer's features.
  """
  (height, width), (h, w) = valid.shape[1:3], shape
  rows = ((2 * jnp.arange(h) + 1) * height) // (2 * h)
  cols = ((2 * jnp.arange(w) + 1) * width) // (2 * w)
  return valid[:, rows[:, None], cols[None, :]]


def find_layers(tree, layers):
  """Leaves of a (nested) collection whose last key is a layer name; sown tuples unwrapped."""
  flat = traverse_util.flatten_dict(tree)
  found = {}
  for path, leaf in flat.items():
    if path[-1] in layers:
      if path[-1] in found:
        raise ValueError(f'Layer name {path[-1]!r} occurs twice in the model collections.')
      found[path[-1]] = leaf[-1] if isinstance(leaf, tuple) else leaf
  missing = [name for name in layers if name not in found]
  if missing:
    raise ValueError(f'The model does not perturb/sow the layers {missing}; expected layer '
                     f'outputs named {tuple(layers)}.')
  return found


def _class_cotangents(logits, class_ids, valid=None):
  """dS_c/dlogits per slot: 1 on channel c at the pixels predicted as c (eq. 1), (C, N, H, W, K);
  with `valid` (N, H, W) only at the pixels predicted as c that are image, not padding."""
  pred = jnp.argmax(logits, axis=-1)
  ids = class_ids.T[:, :, None, None]
  region = pred[None] == ids
  if valid is not None:
    region = region & valid[None]
  channel = jax.nn.one_hot(class_ids.T, logits.shape[-1], dtype=logits.dtype)
  return region[..., None].astype(logits.dtype) * channel[:, :, None, None, :]


def _spatial_mean(grads, cells):
  """alpha^k: the mean of dS_c/dF^k over the feature grid (N, h, w, ch) -> (N, ch), over the
  valid cells (N, h, w) only when given."""
  if cells is None:
    return jnp.mean(grads, axis=(1, 2))
  weights = cells.astype(grads.dtype)
  count = jnp.maximum(jnp.sum(weights, axis=(1, 2)), 1)
  return jnp.einsum('nhwk,nhw->nk', grads, weights) / count[:, None]


@functools.partial(
    jax.jit, static_argnames=('model', 'max_classes', 'layers', 'class_chunk', 'pair_chunk'))
def _seg_grad_cam(model, variables, images, classes, valid=None, *, max_classes, layers,
                  class_chunk, pair_chunk=None):
  """Jitted body of `seg_grad_cam`: one forward pass, the backward pass vmapped over slots
  (with `class_chunk`, in groups of the slots some image fills, `chunks.map_selected`; with
  `pair_chunk`, a forward and backward pass per filled slot, `_pair_maps`)."""
  variables = {k: v for k, v in variables.items() if k != 'perturbations'}

  def forward(perturbations, x):
    logits, state = model.apply({**variables, 'perturbations': perturbations}, x,
                                train=False, mutable=['intermediates'])
    return logits, find_layers(state['intermediates'], layers)

  def zeros(x):
    shapes = jax.eval_shape(
        lambda: model.apply(variables, x, train=False, mutable=['perturbations'])[1])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['perturbations'])

  if pair_chunk is None:
    logits, vjp_fn, features = jax.vjp(lambda p: forward(p, images), zeros(images),
                                       has_aux=True)
  else:
    logits, features = forward(zeros(images), images)
  if classes is None:
    pred = jnp.argmax(logits, -1)
    if valid is not None:
      pred = jnp.where(valid, pred, -1)
    class_ids, class_mask = present_classes(pred, logits.shape[-1], max_classes)
  else:
    class_ids = jnp.where(classes >= 0, classes, -1).astype(jnp.int32)
    class_mask = class_ids >= 0
  cells = {name: None if valid is None else feature_cells(valid, features[name].shape[1:3])
           for name in layers}

  def raw_maps(cotangent):
    grads = find_layers(vjp_fn(cotangent)[0], layers)
    return {name: jnp.einsum('nk,nhwk->nhw', _spatial_mean(grads[name], cells[name]),
                             features[name], preferred_element_type=jnp.float32)
            for name in layers}

  if pair_chunk is not None:
    raw = _pair_maps(forward, zeros, images, class_ids, class_mask, valid, layers, pair_chunk)
  elif class_chunk is None:
    raw = jax.vmap(raw_maps)(_class_cotangents(logits, class_ids, valid))
  else:
    raw = chunks.map_selected(jax.vmap(raw_maps), _class_cotangents(logits, class_ids, valid),
                              jnp.any(class_mask, axis=0), class_chunk)
  size = images.shape[1:3]
  keep = class_mask[:, :, None, None]
  if valid is not None:
    keep = keep & valid[:, None]
  heatmaps = {name: jnp.where(keep, normalize_heatmaps(
      jnp.swapaxes(raw[name], 0, 1), size,
      None if valid is None else cells[name][:, None]), 0.0) for name in layers}
  return SegCamResult(heatmaps, class_ids, class_mask, logits, features)


def _pair_maps(forward, zeros, images, class_ids, class_mask, valid, layers, chunk):
  """The un-rectified maps sum_k alpha^k F^k of every filled slot, layer -> (C, N, h, w), by a
  forward and backward pass per (image, slot) pair, `chunk` pairs per call: empty slots cost
  nothing (`chunks.map_selected`), where the vmapped backward pass runs for every slot."""
  n, slots = class_ids.shape

  def maps(pair):
    image = pair // slots
    x = images[image]
    logits, vjp_fn, features = jax.vjp(lambda p: forward(p, x), zeros(x), has_aux=True)
    mask = None if valid is None else valid[image]
    cotangent = _class_cotangents(logits, class_ids.reshape(-1)[pair][:, None], mask)[0]
    grads = find_layers(vjp_fn(cotangent)[0], layers)
    return {name: jnp.einsum(
        'nk,nhwk->nhw', _spatial_mean(grads[name], None if mask is None else feature_cells(
            mask, features[name].shape[1:3])), features[name],
        preferred_element_type=jnp.float32) for name in layers}

  raw = chunks.map_selected(maps, jnp.arange(n * slots), class_mask.reshape(-1), chunk)
  return {name: jnp.swapaxes(x.reshape((n, slots) + x.shape[1:]), 0, 1)
          for name, x in raw.items()}


def seg_grad_cam(model, variables, images, *, max_classes=None, layers=LAYERS, classes=None,
                 class_chunk=None, valid=None, pair_chunk=None):
  """Seg-Grad-CAM of every layer and every class of a batch (paper eq. 1, docs/methods.md RWS 2).

  For class c: S_c = sum of logit_c over the pixels predicted as c, alpha_i^k = mean_{h,w}
  dS_c/dF_i^k, H_i^c = ReLU(sum_k alpha_i^k F_i^k), min-max normalised per image, layer and
  class, then resized to the input size (`normalize_heatmaps`). A class given in `classes` but
  absent from the prediction has S_c = 0 and an all-zero heatmap.

  With `valid` padding is invisible: the class slots count only valid pixels, S_c sums only
  valid pixels predicted as c, alpha and the min-max range are taken over the valid feature
  cells (`feature_cells`), and heatmaps are 0 on padding.

  Args:
    model: flax linen segmentation model following the convention of this module.
    variables: its variables ('params', 'batch_stats', ...).
    images: (N, H, W, 3) batch.
    max_classes: slots per image when `classes` is None: the classes present in the prediction,
      most frequent first, padded with -1 (`present_classes`).
    layers: layer names to explain.
    classes: optional (N, C) int class ids per image (e.g. the ground-truth classes of
      `present_classes(labels, ...)`), -1 for padding; ids must be distinct within an image.
    class_chunk: optional: `class_chunk` slots per backward pass, one group after the other,
      over the slots that some image of the batch fills; the others cost nothing (memory
      bound; with 1 and a batch of images alike, as many passes as the batch's most
      classes); default every slot at once.
    pair_chunk: optional: a forward and backward pass per filled (image, slot) pair instead,
      `pair_chunk` pairs per call, so that empty slots cost nothing; cheaper where most slots
      are empty (windows of one or two classes), dearer where most are filled.
    valid: optional (N, H, W) bool, False on padding; None treats every pixel as image.

  Returns:
    A `SegCamResult`.
  """
  if classes is None and max_classes is None:
    raise ValueError('seg_grad_cam needs max_classes when classes is not given.')
  if classes is not None:
    classes = jnp.asarray(classes)
    if classes.ndim != 2 or classes.shape[0] != images.shape[0]:
      raise ValueError(f'classes must have shape (N, C) with N = {images.shape[0]}, got '
                       f'{classes.shape}.')
  if valid is not None:
    valid = jnp.asarray(valid, bool)
    if valid.shape != images.shape[:3]:
      raise ValueError(f'valid must have shape (N, H, W) = {images.shape[:3]}, got '
                       f'{valid.shape}.')
  return _seg_grad_cam(model, variables, images, classes, valid, max_classes=max_classes,
                       layers=tuple(layers), class_chunk=class_chunk, pair_chunk=pair_chunk)


def region_attention(heatmaps, class_ids, class_mask, regions):
  """A_i(m, n) = H_i^{c(m, n)}(m, n): each heatmap restricted to its class's region (eq. 2).

  The paper restricts H_i^c to the pixels predicted as c ("A_i^c = H_i^c if logit(y^c) =
  true"), so `regions` is the argmax prediction by default (switch `attention_region`); the
  ground truth gives the earlier, training-only reading.

  Args:
    heatmaps: layer -> (N, C, H, W).
    class_ids, class_mask: (N, C) slot classes and validity.
    regions: (N, H, W) class per pixel; pixels of classes without a slot (or 255) get 0.

  Returns:
    layer -> (N, H, W) combined attention map A_i of all classes.
  """
  match = (class_ids[:, :, None, None] == regions[:, None]) & class_mask[:, :, None, None]
  return {name: jnp.sum(jnp.where(match, h, 0.0), axis=1) for name, h in heatmaps.items()}


def gamma_and_omega(attention):
  """Gamma = max_i A_i (eq. 3) and omega_i = Gamma - A_i (eq. 4).

  Args:
    attention: layer -> (N, H, W).

  Returns:
    Gamma (N, H, W) and layer -> omega_i (N, H, W).
  """
  gamma = jnp.max(jnp.stack(list(attention.values())), axis=0)
  return gamma, {name: gamma - a for name, a in attention.items()}


def feature_attention(attention, gamma, features):
  """A_i and Gamma resized to each layer's feature resolution, for selection (eq. 5-7).

  Both maps of a layer go through the same linear resize (bilinear, antialiased when
  shrinking, `jax.image.resize`), so A_i <= Gamma and omega_i >= 0 still hold there.

  Args:
    attention: layer -> (N, H, W) at input size.
    gamma: (N, H, W) at input size.
    features: layer -> (N, h_i, w_i, ch_i), only the spatial size is used.

  Returns:
    layer -> (A_i (N, h_i, w_i), Gamma_i (N, h_i, w_i)).
  """
  out = {}
  for name, a in attention.items():
    shape = a.shape[:1] + features[name].shape[1:3]
    out[name] = (jax.image.resize(a, shape, 'bilinear'), jax.image.resize(gamma, shape, 'bilinear'))
  return out
