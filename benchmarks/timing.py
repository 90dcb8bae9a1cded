"""Wall-clock timing of several paths side by side, for the benchmark scripts (one path alone:
`rwsjax.progress.median_seconds`)."""
import time

import jax


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
