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
