"""PSA random walk: jitted jnp against plain numpy running the same algorithm, in one run.

Both walk the CAMs of one VOC-like image (stride-8 maps of a 448x448 image: 56x56 = 3136
nodes, 21 channels, radius 5, beta 8, logt 8) starting from the pair affinities:
  dense:  build A, T = A^beta D^-1, logt squarings of T, one product (isimjax path for
          images that fit);
  sparse: 2^logt products with the neighbour lists of the pair structure.
Times are medians over repeats after one untimed call (compilation for jnp); the ratios are
marked `NOT IDLE` when other processes shared the cores while they were timed
(`timing.load_mark`).

  python benchmarks/random_walk.py [--size 56] [--channels 21] [--logt 8] [--repeats 3]
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from isimjax import affinity
from isimjax import random_walk
from rwsjax.progress import median_seconds
from timing import load_mark
from timing import snapshot


def numpy_dense_walk(cams, aff, source, partner, beta, logt):
  """Dense walk in numpy float32: A from the pairs, A^beta, self loops, column-normalise."""
  n = cams.shape[1] * cams.shape[2]
  matrix = np.zeros((n, n), np.float32)
  matrix[source.ravel(), partner.ravel()] = aff.ravel()
  matrix[partner.ravel(), source.ravel()] = aff.ravel()
  matrix **= beta
  np.fill_diagonal(matrix, 1.0)
  trans = matrix / matrix.sum(axis=0, keepdims=True)
  for _ in range(logt):
    trans = trans @ trans
  return (cams.reshape(cams.shape[0], -1) @ trans).reshape(cams.shape)


def numpy_sparse_walk(cams, aff, neighbours, pair_ids, beta, logt):
  """Sparse walk in numpy float32 over the same neighbour lists."""
  extended = np.concatenate([aff.ravel() ** beta, np.array([1.0, 0.0], np.float32)])
  weights = extended[pair_ids]
  weights /= weights.sum(axis=1, keepdims=True)
  v = cams.reshape(cams.shape[0], -1)
  for _ in range(2 ** logt):
    v = np.sum(v[:, neighbours] * weights, axis=-1)
  return v.reshape(cams.shape)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=56, help='feature map side (nodes = size^2)')
  parser.add_argument('--channels', type=int, default=21)
  parser.add_argument('--radius', type=int, default=5)
  parser.add_argument('--beta', type=float, default=8.0)
  parser.add_argument('--logt', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  grid = (args.size, args.size)
  offsets = affinity.pair_offsets(args.radius)
  features = rng.normal(scale=0.3, size=(1,) + grid + (32,)).astype(np.float32)
  aff = np.asarray(affinity.pair_affinities(features, offsets))[0]
  cams = rng.uniform(size=(args.channels,) + grid).astype(np.float32)
  source, partner = random_walk.pair_nodes(grid, offsets)
  neighbours, pair_ids = random_walk.neighbour_table(grid, offsets)

  @jax.jit
  def jax_dense(cams, aff):
    matrix = random_walk.dense_affinity_matrix(aff, offsets, grid)
    return random_walk.random_walk_dense(
        cams, random_walk.transition_matrix(matrix, args.beta), args.logt)

  cams_dev, aff_dev = jnp.asarray(cams), jnp.asarray(aff)
  start = snapshot()
  results = {
      'dense jnp': median_seconds(lambda: jax_dense(cams_dev, aff_dev), args.repeats),
      'dense numpy': median_seconds(lambda: numpy_dense_walk(
          cams, aff, source, partner, args.beta, args.logt), args.repeats),
      'sparse jnp': median_seconds(lambda: random_walk.random_walk_sparse(
          cams_dev, aff_dev, offsets, beta=args.beta, logt=args.logt), args.repeats),
      'sparse numpy': median_seconds(lambda: numpy_sparse_walk(
          cams, aff, neighbours, pair_ids, args.beta, args.logt), args.repeats),
  }
  mark = load_mark(start, snapshot())
  dense = np.asarray(jax_dense(cams_dev, aff_dev))
  sparse = np.asarray(random_walk.random_walk_sparse(cams_dev, aff_dev, offsets,
                                                     beta=args.beta, logt=args.logt))
  reference = numpy_dense_walk(cams, aff, source, partner, args.beta, args.logt)
  print(f'device: {jax.devices()[0].device_kind}; nodes {grid[0] * grid[1]}, channels '
        f'{args.channels}, pairs/node {len(offsets)}, logt {args.logt}, repeats {args.repeats}')
  for name, seconds in results.items():
    print(f'  {name:13s} {seconds * 1e3:10.1f} ms')
  ratios = {'speed-up dense  (numpy / jnp)': results['dense numpy'] / results['dense jnp'],
            'speed-up sparse (numpy / jnp)': results['sparse numpy'] / results['sparse jnp'],
            'sparse jnp vs dense jnp': results['dense jnp'] / results['sparse jnp']}
  for name, ratio in ratios.items():
    print(f'{name + ":":31s}{ratio:.2f}x{mark}')
  print('max relative difference to numpy dense: '
        f'dense {np.max(np.abs(dense - reference)) / np.max(np.abs(reference)):.1e}, '
        f'sparse {np.max(np.abs(sparse - reference)) / np.max(np.abs(reference)):.1e}')


if __name__ == '__main__':
  main()
