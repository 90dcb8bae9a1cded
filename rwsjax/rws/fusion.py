"""Selection and integration of weak-slice features (paper eq. 5-7, docs/methods.md RWS 6-7).

Split in two for stage 3: `fusion_plan` runs once per batch on the frozen models' outputs and
gives, per layer, the weight n and the local features F^s placed on the global feature grid;
`fuse` (or `layer_hook`) is the cheap part inside the trained model's forward pass:
F_hat = n * F + (1 - n) * F^s (eq. 6), with n = 1 wherever nothing is selected.

Geometry: a slice with box (y0, x0, y1, x1) in input pixels covers the feature pixels
[y0 / stride, y1 / stride) of a layer with that stride, and its local maps have
((y1 - y0) / stride, (x1 - x0) / stride) pixels. Box corners must be multiples of every fused
layer's stride (`check_geometry` tests this once, on the host, for a crop size).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rwsjax.rws.slices import window_boxes


class FusionPlan(NamedTuple):
  """Per-layer fusion inputs, fixed during a train step.

  weight: (N, h, w, 1) n of eq. 6: lambda_i (eq. 7) where selected, 1 elsewhere.
  local: (N, h, w, ch) F^s of the chosen slice where selected, 0 elsewhere.
  selected: (N, h, w) bool, some slice is selected at the pixel (eq. 5).
  """
  weight: jax.Array
  local: jax.Array
  selected: jax.Array


def check_geometry(height, width, slice_size, slice_stride, strides):
  """Raise a clear ValueError unless every window lands on every layer's feature grid."""
  boxes = window_boxes(height, width, slice_size, slice_stride)
  for name, stride in strides.items():
    if height % stride or width % stride or np.any(boxes % stride):
      raise ValueError(f'config.rws.slice_size ({slice_size}), config.rws.slice_stride '
                       f'({slice_stride}) and the crop {height}x{width} must be multiples of '
                       f'the {name} feature stride {stride}.')


def _ratio(a, gamma):
  """A / Gamma, 0 where Gamma = 0 (then A = 0 too: no attention in any layer)."""
  positive = gamma > 0
  return jnp.where(positive, a / jnp.where(positive, gamma, 1.0), 0.0)


def _local_grid(boxes, valid, shape, local_shape, stride):
  """Local row/column index of every global pixel per slice, and whether it is inside."""
  (h, w), (hs, ws) = shape, local_shape
  ly = jnp.arange(h) - boxes[..., 0:1] // stride
  lx = jnp.arange(w) - boxes[..., 1:2] // stride
  inside = (valid[..., None, None] & ((ly >= 0) & (ly < hs))[..., :, None]
            & ((lx >= 0) & (lx < ws))[..., None, :])
  return jnp.clip(ly, 0, hs - 1), jnp.clip(lx, 0, ws - 1), inside


def _place(local, ly, lx):
  """(N, S, hs, ws) local maps read at the global grid: (N, S, h, w)."""
  return jax.vmap(jax.vmap(lambda m, y, x: m[y[:, None], x[None, :]]))(local, ly, lx)


def fusion_plan(attention, gamma, boxes, valid, local_features, local_attention, local_gamma, *,
                stride, eps=1e-3, select_omega=True, weighted_lambda=True):
  """Selection (eq. 5), weights (eq. 7) and placed local features of one layer.

  A feature pixel inside slice s is selected when omega = Gamma - A > eps, A^s > A and
  A^s/Gamma^s > A/Gamma (ratios are 0 where their Gamma is 0). Where several slices are
  selected at a pixel, the one with the largest A^s/Gamma^s wins (ties: lower slice index).
  lambda = (A/Gamma) / (A/Gamma + A^s/Gamma^s), 1/2 where both ratios are 0.

  Args:
    attention, gamma: (N, h, w) global A_i and Gamma at this layer's resolution.
    boxes: (N, S, 4) int slice boxes (y0, x0, y1, x1) in input pixels.
    valid: (N, S) bool, False for padded slices.
    local_features: (N, S, hs, ws, ch) F_i^s of the local model on each slice.
    local_attention, local_gamma: (N, S, hs, ws) A_i^s and Gamma^s of each slice.
    stride: this layer's feature stride.
    eps: omega threshold of eq. 5.
    select_omega: False integrates every pixel of every valid slice (no eq. 5 test).
    weighted_lambda: False uses n = 1/2 wherever selected instead of eq. 7.

  Returns:
    A `FusionPlan`.
  """
  if local_features.shape[:4] != local_attention.shape:
    raise ValueError(f'Local features {local_features.shape} and local attention '
                     f'{local_attention.shape} disagree on (N, S, hs, ws).')
  ly, lx, inside = _local_grid(boxes, valid, attention.shape[1:], local_attention.shape[2:],
                               stride)
  placed_attention = _place(local_attention, ly, lx)
  placed_ratio = _ratio(placed_attention, _place(local_gamma, ly, lx))
  ratio = _ratio(attention, gamma)[:, None]
  if select_omega:
    chosen = (inside & ((gamma - attention)[:, None] > eps)
              & (placed_attention > attention[:, None]) & (placed_ratio > ratio))
  else:
    chosen = inside
  best = jnp.argmax(jnp.where(chosen, placed_ratio, -jnp.inf), axis=1)
  selected = jnp.any(chosen, axis=1)
  if weighted_lambda:
    best_ratio = jnp.take_along_axis(placed_ratio, best[:, None], axis=1)[:, 0]
    total = ratio[:, 0] + best_ratio
    lam = jnp.where(total > 0, ratio[:, 0] / jnp.where(total > 0, total, 1.0), 0.5)
  else:
    lam = jnp.full(selected.shape, 0.5)
  weight = jnp.where(selected, lam, 1.0)

  def gather(features, best, ly, lx):
    rows = ly[best, jnp.arange(best.shape[0])[:, None]]
    cols = lx[best, jnp.arange(best.shape[1])[None, :]]
    return features[best, rows, cols]

  local = jax.vmap(gather)(local_features, best, ly, lx)
  local = jnp.where(selected[..., None], local, jnp.zeros((), local.dtype))
  return FusionPlan(weight[..., None].astype(jnp.float32), local, selected)


def fusion_plans(global_attention, local_attention, local_features, boxes, valid, strides, *,
                 layers, eps=1e-3, select_omega=True, weighted_lambda=True):
  """`fusion_plan` for each fused layer (switch `fuse_layers`), layer -> `FusionPlan`.

  Args:
    global_attention: layer -> (A_i, Gamma_i), each (N, h, w) (`segcam.feature_attention`).
    local_attention: layer -> (A_i^s, Gamma_i^s), each (N, S, hs, ws).
    local_features: layer -> (N, S, hs, ws, ch).
    boxes, valid: (N, S, 4) and (N, S) slice boxes and validity.
    strides: layer -> feature stride (`rwsjax.models.feature_strides`).
    layers: names of the layers to fuse.
    eps, select_omega, weighted_lambda: as in `fusion_plan`.
  """
  return {name: fusion_plan(*global_attention[name], boxes, valid, local_features[name],
                            *local_attention[name], stride=strides[name], eps=eps,
                            select_omega=select_omega, weighted_lambda=weighted_lambda)
          for name in layers}


def fuse(features, plan):
  """F_hat = n * F + (1 - n) * F^s (eq. 6); the plan is a constant of the train step."""
  weight = jax.lax.stop_gradient(plan.weight).astype(features.dtype)
  local = jax.lax.stop_gradient(plan.local).astype(features.dtype)
  return weight * features + (1 - weight) * local


def layer_hook(plans):
  """A model `layer_hook(name, x)` that fuses the layers in `plans` and passes the others."""

  def hook(name, x):
    return fuse(x, plans[name]) if name in plans else x

  return hook
