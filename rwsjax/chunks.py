"""A function over the selected rows of a batch, a chunk of rows per call, in jitted code."""
import jax
import jax.numpy as jnp


def map_selected(fn, inputs, selected, chunk, order_by=None):
  """`fn` over the selected rows of `inputs` (a pytree of (M, ...) arrays), `chunk` rows per
  call; rows that are not selected get zeros.

  Selected rows are gathered first, and calls past the last selected row are skipped
  (`lax.cond`), so the cost follows the number of selected rows and the memory one chunk.
  `fn` must treat rows independently (eval-mode models do). `order_by` (M,) int, optional:
  the selected rows go in increasing order of it (ties: row order), so that a chunk holds
  rows alike (a call whose cost follows its largest key then costs less).
  """
  m = selected.shape[0]
  chunk = max(1, min(chunk, m))
  calls = -(-m // chunk)
  key = ~selected if order_by is None else jnp.where(selected, order_by,
                                                      jnp.max(order_by, initial=0) + 1)
  order = jnp.argsort(key, stable=True)
  count = jnp.sum(selected)

  def gather(x):
    x = x[order]
    return jnp.pad(x, [(0, calls * chunk - m)] + [(0, 0)] * (x.ndim - 1))

  gathered = jax.tree.map(gather, inputs)
  part = lambda i: jax.tree.map(
      lambda x: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk), gathered)
  shapes = jax.eval_shape(fn, part(0))
  zeros = lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  out = jax.lax.map(lambda i: jax.lax.cond(i * chunk < count, fn, zeros, part(i)),
                    jnp.arange(calls))
  inverse = jnp.argsort(order)
  keep = lambda x: jnp.where(selected.reshape((m,) + (1,) * (x.ndim - 1)), x,
                             jnp.zeros((), x.dtype))
  return jax.tree.map(lambda x: keep(x.reshape((calls * chunk,) + x.shape[2:])[:m][inverse]),
                      out)
