"""Wall-clock timing of several paths side by side, for the benchmark scripts (one path alone:
`rwsjax.progress.median_seconds`), and the machine's load around them.

Other work on the cores slows PyTorch's CPU kernels more than XLA's, so a ratio taken on a busy
machine flatters JAX (BENCHMARKS.md): a benchmark records the load at its start and end, and
marks its ratios when either was above `IDLE_LOAD_PER_CORE`."""
import os
import time

import jax

# Above this 1-minute load average per core at the start or end, a ratio is not a headline.
IDLE_LOAD_PER_CORE = 0.5


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


def load_per_core():
  """The 1-minute load average divided by the number of cores."""
  return os.getloadavg()[0] / (os.cpu_count() or 1)


def load_mark(start, end, bound=IDLE_LOAD_PER_CORE):
  """'' when the load per core at the `start` and `end` of a benchmark were both at most
  `bound`; otherwise the mark that follows each ratio it prints."""
  if max(start, end) <= bound:
    return ''
  return (f' [NOT IDLE: load per core {start:.2f} at the start, {end:.2f} at the end, above '
          f'{bound}; not a headline number]')
