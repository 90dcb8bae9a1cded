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
