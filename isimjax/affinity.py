"""Pixel-pair affinities of PSA (docs/methods.md, ISIM step 9).

Pair convention (PSA, Ahn & Kwak 2018). `pair_offsets(r)` lists the (dy, dx) with
0 < dy^2 + dx^2 < r^2 in one half-plane (dy > 0, or dy == 0 and dx > 0), so each unordered
pair of pixels appears once. A pair starts at a "from" pixel i and ends at j = i + offset. The
from pixels are the cropped interior region: rows [0, h - bottom), columns [left, w - right)
with bottom = max dy, left = max(-dx, 0), right = max(dx, 0) (for radius r all equal r - 1),
so that every partner lies inside the map. Pair arrays have shape (N, P, h', w') with
h' = h - bottom and w' = w - left - right; entry [n, p, y, x] is the pair from (y, x + left)
to (y + dy_p, x + left + dx_p). As in PSA, pairs whose from pixel lies in the last `bottom`
rows or the outer `left`/`right` columns are not represented.

Affinity labels are prepared on the host with numpy (they run beside the dense CRF in worker
processes); affinities, pair labels and the loss are jnp. `AffinityNet` (below the pure
functions) gives the features whose pair affinities are trained with `affinity_loss`.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import numpy as np
import jax.numpy as jnp

from isimjax import crf
from isimjax.pseudo import check_cams
from isimjax.pseudo import labels_from_cams
from rwsjax import models
from rwsjax.losses import IGNORE_LABEL
from rwsjax.models import resnet

FEATURE_LAYERS = ('layer2', 'layer3', 'layer4')
FEATURE_STRIDE = 8


def pair_offsets(radius=5):
  """(P, 2) int offsets (dy, dx) with 0 < dy^2 + dx^2 < radius^2, one of each +/- pair.

  Ordered as PSA: dy = 0 first, then dy = 1, 2, ... with dx increasing. Radius 5 gives 34.
  """
  span = np.arange(-radius + 1, radius)
  dy, dx = np.meshgrid(span, span, indexing='ij')
  dy, dx = dy.ravel(), dx.ravel()
  keep = (dy * dy + dx * dx < radius * radius) & ((dy > 0) | ((dy == 0) & (dx > 0)))
  return np.stack([dy[keep], dx[keep]], axis=1).astype(np.int32)


def crop_margins(offsets):
  """(bottom, left, right) rows/columns without a from pixel, so that partners stay inside."""
  offsets = np.asarray(offsets)
  return (int(offsets[:, 0].max()), int(max(-offsets[:, 1].min(), 0)),
          int(max(offsets[:, 1].max(), 0)))


def has_pairs(shape, offsets):
  """Whether an (h, w) map has at least one pair (a from pixel whose partners stay inside)."""
  bottom, left, right = crop_margins(offsets)
  return shape[0] > bottom and shape[1] > left + right


def cropped_shape(shape, offsets):
  """(h', w') of the from region of an (h, w) map; raises when the map is too small."""
  h, w = shape
  bottom, left, right = crop_margins(offsets)
  if not has_pairs(shape, offsets):
    raise ValueError(f'A feature map of size {(h, w)} is too small for pair offsets of '
                     f'radius {bottom + 1}: expected at least {(bottom + 1, left + right + 1)}.')
  return h - bottom, w - left - right


def pair_grid(shape, offsets):
  """Static (rows, cols) index arrays: partner (rows[p, y, 0], cols[p, 0, x]) of pair [p, y, x].

  Also returns the slices of the from region. Plain numpy, computed from static shapes.
  """
  offsets = np.asarray(offsets)
  hc, wc = cropped_shape(shape, offsets)
  _, left, _ = crop_margins(offsets)
  rows = offsets[:, 0, None, None] + np.arange(hc)[None, :, None]
  cols = left + offsets[:, 1, None, None] + np.arange(wc)[None, None, :]
  return rows, cols, (slice(0, hc), slice(left, left + wc))


def _pairs(x, offsets):
  """x (N, h, w, ...) -> from values (N, 1, h', w', ...) and partner values (N, P, h', w', ...)."""
  rows, cols, (ys, xs) = pair_grid(x.shape[1:3], offsets)
  return x[:, None, ys, xs], x[:, rows, cols]


def pair_affinities(features, offsets):
  """a_ij = exp(-mean_c |f_i - f_j|) for every pair (docs/methods.md ISIM step 9).

  Args:
    features: (N, h, w, C) AffinityNet features at stride 8.
    offsets: (P, 2) pair offsets, e.g. `pair_offsets(5)`.

  Returns:
    (N, P, h', w') affinities in (0, 1], laid out as described in the module docstring.
  """
  source, partner = _pairs(features, offsets)
  return jnp.exp(-jnp.mean(jnp.abs(source - partner), axis=-1))


def downsample_labels(labels, stride=8):
  """Nearest-neighbour label map at stride `stride`: (..., H, W) -> (..., ceil(H/s), ceil(W/s)).

  The map is padded with 255 at the bottom/right to a multiple of the stride (as images are
  padded for the stride-8 backbone) and cell (y, x) takes the label at pixel
  (s*y + s//2, s*x + s//2), the nearest pixel to the cell centre.
  """
  return _pad_to_stride(labels, stride)[..., stride // 2::stride, stride // 2::stride]


def _pad_to_stride(labels, stride):
  """(..., H, W) labels padded with 255 at the bottom/right to a multiple of `stride`."""
  labels = np.asarray(labels)
  height, width = labels.shape[-2:]
  pad = [(0, 0)] * (labels.ndim - 2) + [(0, -height % stride), (0, -width % stride)]
  return np.pad(labels, pad, constant_values=IGNORE_LABEL)


def crf_argmax(crf_fn, image, scores, class_ids):
  """Class ids of the argmax of `crf_fn` run on the given score channels only.

  Args:
    crf_fn: callable (image (H, W, 3) uint8, scores (k, H, W)) -> refined probabilities
      (k, H, W), e.g. `isimjax.crf.crf_refine_probs`.
    image: (H, W, 3) uint8 image.
    scores: (k, H, W) non-negative scores of background and the image's classes (as PSA,
      the CRF runs over these channels only).
    class_ids: (k,) the class id of each channel.

  Returns:
    (H, W) uint8 class ids.
  """
  refined = np.asarray(crf_fn(image, np.asarray(scores, np.float32)))
  return np.asarray(class_ids, np.uint8)[np.argmax(refined, axis=0)]


def hard_label_crf(image, scores, *, gt_prob=0.7, params=crf.CrfParams()):
  """The ISIM code's CRF of a confident map (IRNet's cam_to_ir_label) as a `crf_fn`: the dense
  CRF with a label unary (`gt_prob`) on argmax(scores), returned one-hot (k, H, W)."""
  count = np.shape(scores)[0]
  labels = crf.crf_refine_labels(image, np.argmax(scores, axis=0), count,
                                 class_ids=np.arange(count), gt_prob=gt_prob, params=params)
  return np.eye(count, dtype=np.float32)[labels].transpose(2, 0, 1)


def _confident_labels(cams, image_labels, bg_score, crf_fn, image):
  """Argmax over [constant bg_score, the image's CAMs], refined by `crf_fn` when given."""
  if crf_fn is None:
    return labels_from_cams(cams, image_labels, bg_score)
  present = np.flatnonzero(image_labels)
  background = np.full((1,) + cams.shape[1:], bg_score, np.float32)
  scores = np.concatenate([background, cams[present]])
  return crf_argmax(crf_fn, image, scores, np.concatenate([[0], present + 1]))


def affinity_labels_from_cams(cams, image_labels, *, fg_threshold=0.3, bg_threshold=0.1,
                              crf_fn=None, image=None, stride=8):
  """Affinity labels from normalised CAMs (docs/methods.md ISIM step 9, PSA's la/ha rule).

  Two label maps are made with a constant background score: `la` with `fg_threshold`
  (foreground only where a CAM exceeds it: confident foreground) and `lb` with
  `bg_threshold` (background only where every CAM is below it: confident background); each
  is refined by `crf_fn` when given. The label is background where `lb` is background,
  else `la`'s class where `la` is foreground, else 255. Without a CRF the two rules never
  conflict; after the CRF a pixel that `la` calls foreground and `lb` background is
  background, as in PSA (its bg-confident map is written last).

  Args:
    cams: (C, H, W) CAMs in [0, 1] at image size, C = K - 1 foreground classes.
    image_labels: (C,) multi-hot image-level labels; other classes never win.
    fg_threshold: background score of the foreground-confident map (`aff_fg`).
    bg_threshold: background score of the background-confident map (`aff_bg`).
    crf_fn: None, or (image, scores (k, H, W)) -> refined probabilities (k, H, W) over
      background and the image's classes, e.g. `isimjax.crf.crf_refine_probs`.
    image: (H, W, 3) uint8 image, required with `crf_fn`.
    stride: output stride; labels are reduced with `downsample_labels` (1 keeps image size,
      for pipelines that augment at image size and downsample afterwards).

  Returns:
    (ceil(H/stride), ceil(W/stride)) uint8 labels in [0, K) or 255.
  """
  cams = np.asarray(cams, np.float32)
  image_labels = np.asarray(image_labels)
  check_cams(cams, image_labels)
  if not 0.0 <= bg_threshold <= fg_threshold:
    raise ValueError(f'Expected 0 <= aff_bg <= aff_fg; got aff_bg={bg_threshold}, '
                     f'aff_fg={fg_threshold}.')
  if crf_fn is not None and image is None:
    raise ValueError('affinity_labels_from_cams needs the image when crf_fn is given.')
  la = _confident_labels(cams, image_labels, fg_threshold, crf_fn, image)
  lb = _confident_labels(cams, image_labels, bg_threshold, crf_fn, image)
  labels = np.where(lb == 0, 0, np.where(la > 0, la, IGNORE_LABEL)).astype(np.uint8)
  return downsample_labels(labels, stride)


def pair_labels(labels, offsets):
  """Pair masks (bg_pos, fg_pos, neg), each (N, P, h', w') bool (docs/methods.md ISIM step 9).

  bg_pos: both pixels background; fg_pos: both the same foreground class; neg: two different
  classes. A pair with an ignored (255) pixel is in none of the three.

  Args:
    labels: (N, h, w) integer labels at feature resolution.
    offsets: (P, 2) pair offsets.
  """
  source, partner = _pairs(jnp.asarray(labels), offsets)
  valid = (source != IGNORE_LABEL) & (partner != IGNORE_LABEL)
  same = source == partner
  bg_pos = same & (source == 0)
  fg_pos = same & (source != 0) & valid
  return bg_pos, fg_pos, ~same & valid


def same_and_different(labels, offsets):
  """(same, different) numpy bool pair masks (N, P, h', w') of `pair_labels`: both pixels of
  one class (background included), or of two classes; a pair with a 255 pixel is in neither."""
  bg_pos, fg_pos, neg = pair_labels(labels, offsets)
  return np.asarray(bg_pos | fg_pos), np.asarray(neg)


def mixed_cells(labels, stride=8):
  """(..., ceil(H/s), ceil(W/s)) bool: the cells of the stride-`stride` grid (padded as
  `downsample_labels`) whose pixels hold more than one class, 255 aside: cells that straddle a
  boundary, whose one label `downsample_labels` keeps cannot describe them."""
  padded = _pad_to_stride(labels, stride).astype(np.int32)
  grid = (padded.shape[-2] // stride, padded.shape[-1] // stride)
  blocks = padded.reshape(padded.shape[:-2] + (grid[0], stride, grid[1], stride))
  valid = blocks != IGNORE_LABEL
  low = np.where(valid, blocks, IGNORE_LABEL).min(axis=(-3, -1))
  high = np.where(valid, blocks, -1).max(axis=(-3, -1))
  return high > low


def either_end(mask, offsets):
  """(N, P, h', w') bool: pairs with either pixel in `mask` (N, h, w)."""
  source, partner = _pairs(np.asarray(mask, bool), offsets)
  return source | partner


def pair_agreement(label_masks, truth_masks):
  """(3, 2) int64 pair counts of labels against the truth (the affinity labels measured).

  Rows: the labels call the pair the same class, different classes, or leave it unlabelled (a
  255 pixel); columns: the truth calls it the same class or different classes. Pairs with an
  ignored truth pixel are not counted. Precision of "same" is [0, 0] / row 0, its recall
  [0, 0] / column 0; likewise [1, 1] for "different".

  Args:
    label_masks, truth_masks: `same_and_different` of the labels and of the truth, (N, h, w)
      label maps at the pair resolution with 255 ignored, for the same offsets.
  """
  label_same, label_different = label_masks
  truth_same, truth_different = truth_masks
  rows = (label_same, label_different, ~(label_same | label_different))
  return np.array([[np.sum(row & truth_same), np.sum(row & truth_different)] for row in rows],
                  np.int64)


def affinity_loss(aff, bg_pos, fg_pos, neg):
  """PSA's loss bg/4 + fg/4 + neg/2 over all pairs of the batch (docs/methods.md ISIM step 9).

  bg = -sum(bg_pos * log(aff + 1e-5)) / (count + 1e-5), fg likewise, and
  neg = -sum(neg * log(1 + 1e-5 - aff)) / (count + 1e-5).
  """
  def masked_nll(mask, log_prob):
    mask = mask.astype(log_prob.dtype)
    return -jnp.sum(mask * log_prob) / (jnp.sum(mask) + 1e-5)

  aff = aff.astype(jnp.float32)
  log_pos = jnp.log(aff + 1e-5)
  return (masked_nll(bg_pos, log_pos) / 4 + masked_nll(fg_pos, log_pos) / 4
          + masked_nll(neg, jnp.log(1.0 + 1e-5 - aff)) / 2)


class AffinityHead(nn.Module):
  """PSA's embedding (docs/methods.md ISIM step 9): 1x1 convs without bias on layer2/3/4 to
  `channels[:3]` with ELU, concatenated, then a 1x1 conv to `channels[3]` with ELU, computed
  as config.model.conv_impl says (`rwsjax.models.conv`), like the backbone's.

  Initialisation as PSA: He normal for the three projections, Xavier uniform with gain 4
  for the last conv.
  """
  channels: Sequence[int] = (64, 128, 256, 448)
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, features):
    conv = functools.partial(resnet.conv2d, kernel=1, dtype=self.dtype, conv_impl=self.conv_impl)
    he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
    projected = [
        nn.elu(conv(c, kernel_init=he_normal, name=f'proj_{name}')(features[name]))
        for name, c in zip(FEATURE_LAYERS, self.channels[:3])]
    xavier_gain4 = nn.initializers.variance_scaling(16.0, 'fan_avg', 'uniform')
    embedding = conv(self.channels[3], kernel_init=xavier_gain4, name='embed')
    return nn.elu(embedding(jnp.concatenate(projected, axis=-1)))


class AffinityNet(nn.Module):
  """Backbone at output stride 8 plus `AffinityHead`: (N, H, W, 3) images -> (N, h, w, 448)
  float32 features at stride 8, whose `pair_affinities` are the learned affinities.

  Parameters live under 'backbone' and 'head', the two learning-rate groups of PSA (the new
  layers at a multiple of the backbone's rate).
  """
  backbone: nn.Module
  head: nn.Module

  def __call__(self, images, *, train=False):
    features = self.backbone(images, train=train)
    return self.head(features).astype(jnp.float32)


def make_affinity_net(model_cfg):
  """AffinityNet on `rwsjax.models.make_backbone(model_cfg)`; raises unless every layer of
  `FEATURE_LAYERS` is at stride 8 (output_stride 8), where the pairs are taken."""
  strides = models.feature_strides(model_cfg)
  if any(strides[name] != FEATURE_STRIDE for name in FEATURE_LAYERS):
    raise ValueError(f'AffinityNet needs layer2-4 at stride {FEATURE_STRIDE}; '
                     f'config.psa.affinity.model.output_stride={model_cfg.output_stride} gives '
                     f'{[strides[name] for name in FEATURE_LAYERS]}: set it to 8.')
  dtype, conv_impl = models.head_options(model_cfg)
  return AffinityNet(models.make_backbone(model_cfg),
                     AffinityHead(dtype=dtype, conv_impl=conv_impl))


def affinity_train_loss(model, offsets):
  """Loss of an AffinityNet train step (`rwsjax.train.make_train_step` signature).

  The batch holds augmented 'image' (B, H, W, 3) and, as 'segmentation', the pixel labels
  (B, h, w) the affinity labels come from, already reduced to the feature stride
  (`downsample_labels`); the loss is `affinity_loss` of the features' `pair_affinities`
  against `pair_labels`, with the pair counts as metrics.
  """
  def loss_fn(params, batch_stats, batch, rng, extra):
    del rng, extra
    features, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                    batch['image'], train=True, mutable=['batch_stats'])
    masks = pair_labels(batch['segmentation'], offsets)
    loss = affinity_loss(pair_affinities(features, offsets), *masks)
    counts = {f'{name}_pairs': jnp.sum(mask).astype(jnp.float32)
              for name, mask in zip(('bg', 'fg', 'neg'), masks)}
    return loss, (updates['batch_stats'], counts)
  return loss_fn
