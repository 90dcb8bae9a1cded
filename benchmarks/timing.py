"""Wall-clock timing shared by the benchmark scripts."""
import statistics
import time

import jax


def median_seconds(fn, repeats):
  """Median wall time of `fn()`, result blocked on, over `repeats` calls after one untimed call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_seconds(fns, repeats):
  """{name: wall times} of each `fns[name]()`, result blocked on, over `repeats` rounds that
  call every function once in turn (so load changes hit all alike), after one untimed call."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times
