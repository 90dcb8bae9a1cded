"""PSA random walk of CAMs on the learned affinity graph (docs/methods.md, ISIM step 10).

Convention. A is the symmetric (n, n) affinity matrix of the n = h * w stride-8 pixels (pair
affinities within the radius, 0 elsewhere, self loops 1). The transition matrix is
column-normalised, T = A^beta D^-1 with D = diag(sum_i A_ij^beta) (elementwise power), i.e.
T[i, j] = A_ij^beta / sum_k A_kj^beta, and CAMs (C, n) are walked as v T^t. Each output pixel
j is then a convex combination sum_i v[:, i] T[i, j] of the CAMs around it, so a per-pixel
class distribution stays a distribution. As A is symmetric this is PSA's code (trans_mat =
aff / aff.sum(0); cam_vec @ trans_mat) and its paper's row-stochastic D^-1 A^beta acting on
column vectors. t = 2^logt; the dense path squares T logt times, the sparse path applies
T 2^logt times with the neighbour lists of the pair structure.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from isimjax.affinity import crf_argmax
from isimjax.affinity import cropped_shape
from isimjax.affinity import has_pairs
from isimjax.affinity import pair_grid
from isimjax.affinity import pair_offsets
from isimjax.pseudo import check_cams

_HIGHEST = jax.lax.Precision.HIGHEST


def pair_nodes(shape, offsets):
  """Flat node indices (from, to), each (P, h', w'), of the pairs of an (h, w) map."""
  rows, cols, (ys, xs) = pair_grid(shape, offsets)
  nodes = np.arange(shape[0] * shape[1]).reshape(shape)
  partner = nodes[rows, cols]
  return np.broadcast_to(nodes[ys, xs], partner.shape), partner


def dense_affinity_matrix(aff, offsets, shape):
  """Symmetric (n, n) matrix with the pair affinities (P, h', w') of one image, 0 elsewhere.

  The diagonal is 0 here; `transition_matrix` adds the self loops.
  """
  source, partner = pair_nodes(shape, offsets)
  n = shape[0] * shape[1]
  values = jnp.asarray(aff, jnp.float32).ravel()
  matrix = jnp.zeros((n, n), jnp.float32).at[source.ravel(), partner.ravel()].set(values)
  return matrix.at[partner.ravel(), source.ravel()].set(values)


def transition_matrix(affinity, beta=8.0):
  """T = A^beta D^-1 with self loops (diagonal 1), columns summing to 1 (module docstring)."""
  powered = jnp.fill_diagonal(jnp.asarray(affinity) ** beta, 1.0, inplace=False)
  return powered / jnp.sum(powered, axis=0, keepdims=True)


@functools.partial(jax.jit, static_argnames=('logt',))
def random_walk_dense(cams, trans, logt=8):
  """cams (C, h, w) walked by T^(2^logt): logt squarings of T, then one product."""
  num_channels, height, width = cams.shape
  power = jax.lax.fori_loop(
      0, logt, lambda _, t: jnp.matmul(t, t, precision=_HIGHEST), trans)
  walked = jnp.matmul(cams.reshape(num_channels, -1), power, precision=_HIGHEST)
  return walked.reshape(num_channels, height, width)


def neighbour_table(shape, offsets):
  """Column structure of T: (neighbours, pair_ids), each (n, 1 + 2P) int, plain numpy.

  Column j of T is nonzero at rows neighbours[j] with affinity pair_ids[j] into the flat
  pair affinities extended by [1 (self loop), 0 (no pair)]: slot 0 is j itself, slot 1 + p
  the pair starting at j with offset p, slot 1 + P + p the pair ending at j.
  """
  source, partner = pair_nodes(shape, offsets)
  num_offsets, num_pairs = source.shape[0], source.size
  n = shape[0] * shape[1]
  neighbours = np.repeat(np.arange(n)[:, None], 1 + 2 * num_offsets, axis=1)
  pair_ids = np.full(neighbours.shape, num_pairs + 1)
  pair_ids[:, 0] = num_pairs
  slot = np.broadcast_to(np.arange(num_offsets)[:, None, None], source.shape)
  ids = np.arange(num_pairs).reshape(source.shape)
  neighbours[source, 1 + slot] = partner
  pair_ids[source, 1 + slot] = ids
  neighbours[partner, 1 + num_offsets + slot] = source
  pair_ids[partner, 1 + num_offsets + slot] = ids
  return neighbours, pair_ids


@functools.partial(jax.jit, static_argnames=('logt',))
def _sparse_walk(cams, aff, neighbours, pair_ids, beta, logt):
  """v <- v T applied 2^logt times, T given by its neighbour lists (memory O(P n))."""
  num_channels, height, width = cams.shape
  extended = jnp.concatenate([jnp.ravel(aff) ** beta, jnp.array([1.0, 0.0], aff.dtype)])
  weights = extended[pair_ids]
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)

  def step(_, v):
    return jnp.sum(v[:, neighbours] * weights, axis=-1)

  walked = jax.lax.fori_loop(0, 2 ** logt, step, cams.reshape(num_channels, -1))
  return walked.reshape(num_channels, height, width)


def random_walk_sparse(cams, aff, offsets, *, beta=8.0, logt=8):
  """Same result as `random_walk_dense` without the n x n matrix.

  Args:
    cams: (C, h, w) stride-8 CAMs including the background channel.
    aff: (P, h', w') pair affinities of the image (`pair_affinities` of its features).
    offsets: (P, 2) the pair offsets of `aff`.
    beta: affinity power.
    logt: the walk length is 2^logt.
  """
  neighbours, pair_ids = neighbour_table(cams.shape[1:], offsets)
  return _sparse_walk(jnp.asarray(cams, jnp.float32), jnp.asarray(aff, jnp.float32),
                      neighbours, pair_ids, beta, logt)


def background_channel(cams, alpha=16.0):
  """[(1 - max_c cam)^alpha, cams]: (C, h, w) -> (C + 1, h, w) (PSA's background score)."""
  background = (1.0 - jnp.max(cams, axis=0, keepdims=True)) ** alpha
  return jnp.concatenate([background, cams], axis=0)


def feature_grid(shape, stride=8):
  """(ceil(H / stride), ceil(W / stride)): the feature grid of an (H, W) image."""
  return tuple(-(-int(n) // stride) for n in shape)


def walk_scores(cams, image_labels, affinities, *, radius=5, alpha=16.0, beta=8.0, logt=8,
                stride=8, dense_max_nodes=4096):
  """Random-walked scores of one image before the argmax (docs/methods.md ISIM step 10, PSA's
  infer_aff).

  The CAMs of the image's classes get the background channel at image size, are zero-padded
  to a multiple of `stride` and average-pooled to the (h, w) = `feature_grid` cells, walked
  (dense when h * w <= dense_max_nodes, else sparse) and upsampled bilinearly to the padded
  size, then cropped to (H, W). A grid too small for any pair of `pair_offsets(radius)`
  (`affinity.has_pairs`) has no affinities: its walk is the identity.

  Args:
    cams: (C, H, W) CAMs in [0, 1] at image size, C = K - 1 foreground classes.
    image_labels: (C,) multi-hot image-level labels.
    affinities: (P, h', w') pair affinities of the image for `pair_offsets(radius)`, or None
      exactly when the grid has no pairs.
    radius, alpha, beta, logt: PSA's pair radius, background power, affinity power, log2 of
      the walk length.
    stride: output stride of the affinity features.
    dense_max_nodes: largest h * w walked with the dense matrix.

  Returns:
    (scores (k, H, W) float32 numpy, class_ids (k,) int): background and the image's classes.
  """
  cams = jnp.asarray(cams, jnp.float32)
  image_labels = np.asarray(image_labels)
  check_cams(cams, image_labels)
  height, width = cams.shape[1:]
  grid = feature_grid((height, width), stride)
  offsets = pair_offsets(radius)
  if affinities is None:
    if has_pairs(grid, offsets):
      raise ValueError(f'A {height}x{width} image at stride {stride} has pairs of radius '
                       f'{radius}; expected its affinities, got None.')
  else:
    expected = (len(offsets),) + cropped_shape(grid, offsets)
    if tuple(affinities.shape) != expected:
      raise ValueError(f'Expected affinities of shape {expected} for a {height}x{width} image '
                       f'at stride {stride} with radius {radius}; got '
                       f'{tuple(affinities.shape)}.')
  class_ids = np.concatenate([[0], np.flatnonzero(image_labels) + 1])
  scores = background_channel(cams[class_ids[1:] - 1], alpha)
  padded = (grid[0] * stride, grid[1] * stride)
  scores = jnp.pad(scores, ((0, 0), (0, padded[0] - height), (0, padded[1] - width)))
  pooled = scores.reshape(len(class_ids), grid[0], stride, grid[1], stride).mean(axis=(2, 4))
  if affinities is None:
    walked = pooled
  elif grid[0] * grid[1] <= dense_max_nodes:
    trans = transition_matrix(dense_affinity_matrix(affinities, offsets, grid), beta)
    walked = random_walk_dense(pooled, trans, logt)
  else:
    walked = random_walk_sparse(pooled, affinities, offsets, beta=beta, logt=logt)
  upsampled = jax.image.resize(walked, (len(class_ids),) + padded, 'bilinear')
  return np.asarray(upsampled[:, :height, :width]), class_ids


def propagate(cams, image_labels, affinities, *, crf_fn=None, image=None, **walk_options):
  """Random-walk pseudo label of one image (docs/methods.md ISIM step 10, PSA's infer_aff): the
  argmax of `walk_scores` over background and the image's classes, after `crf_fn` when given.

  Args:
    cams, image_labels, affinities: as in `walk_scores`.
    crf_fn: None, or (image, scores (k, H, W)) -> refined probabilities (k, H, W) over
      background and the image's classes (e.g. `isimjax.crf.crf_refine_probs` with one
      iteration).
    image: (H, W, 3) uint8 image, required with `crf_fn`.
    **walk_options: radius, alpha, beta, logt, stride, dense_max_nodes of `walk_scores`.

  Returns:
    (H, W) uint8 labels in [0, K).
  """
  if crf_fn is not None and image is None:
    raise ValueError('propagate needs the image when crf_fn is given.')
  scores, class_ids = walk_scores(cams, image_labels, affinities, **walk_options)
  if crf_fn is not None:
    return crf_argmax(crf_fn, image, scores, class_ids)
  return class_ids.astype(np.uint8)[np.argmax(scores, axis=0)]
