"""rwsjax.chunks.map_selected against the function applied to every row, and the calls it
skips."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwsjax import chunks


@pytest.mark.parametrize('chunk', [1, 3, 7, 50])
def test_map_selected_is_fn_on_selected_rows_and_skips_empty_chunks(chunk):
  rng = np.random.default_rng(chunk)
  x = {'a': jnp.asarray(rng.normal(size=(11, 2, 3)), jnp.float32),
       'b': jnp.asarray(rng.integers(0, 9, size=(11,)), jnp.int32)}
  selected = jnp.asarray(rng.random(11) < 0.4)
  calls = []

  def fn(rows):
    jax.debug.callback(lambda n: calls.append(int(n)), rows['b'].shape[0])
    return {'sum': rows['a'].sum(axis=(1, 2)) + rows['b'], 'twice': 2 * rows['a']}

  got = jax.jit(lambda x, s: chunks.map_selected(fn, x, s, chunk))(x, selected)
  mask = np.asarray(selected)
  expected_sum = np.where(mask, np.asarray(x['a']).sum(axis=(1, 2)) + np.asarray(x['b']), 0)
  np.testing.assert_allclose(got['sum'], expected_sum, rtol=1e-6)
  np.testing.assert_allclose(got['twice'], np.where(mask[:, None, None], 2 * x['a'], 0))
  size = min(chunk, 11)
  assert sum(calls) == size * -(-int(mask.sum()) // size)  # chunks after the last row skipped


def test_order_by_groups_rows_alike_and_keeps_each_rows_result():
  """With `order_by`, chunks hold the selected rows in increasing key order: with keys
  3, 1, 2, 1 and chunks of two, the chunks are {1, 1} and {2, 3}, so each row's chunk maximum
  is 1, 3, 3, 1 (row order: 3, 1, 3, 1), where row order gives {3, 1} and {2, 1}."""
  keys = jnp.array([3, 1, 2, 1, 0])
  selected = jnp.array([True, True, True, True, False])
  rows = {'key': keys, 'x': jnp.arange(5.0)}
  fn = lambda r: {'chunk_max': jnp.broadcast_to(jnp.max(r['key']), r['key'].shape),
                  'x': 10 * r['x']}
  ordered = jax.jit(lambda r: chunks.map_selected(fn, r, selected, 2, order_by=r['key']))(rows)
  plain = jax.jit(lambda r: chunks.map_selected(fn, r, selected, 2))(rows)
  np.testing.assert_array_equal(ordered['chunk_max'], [3, 1, 3, 1, 0])
  np.testing.assert_array_equal(plain['chunk_max'], [3, 3, 2, 2, 0])
  np.testing.assert_array_equal(ordered['x'], [0, 10, 20, 30, 0])
  np.testing.assert_array_equal(plain['x'], ordered['x'])
