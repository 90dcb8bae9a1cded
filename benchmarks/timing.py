"""Wall-clock timing of several paths side by side, for the benchmark scripts (one path alone:
`rwsjax.progress.median_seconds`), and the machine's load around them.

Other work on the cores slows PyTorch's CPU kernels more than XLA's, so a ratio taken on a busy
machine flatters JAX (BENCHMARKS.md): a benchmark takes a `snapshot` at its start and end, and
marks its ratios when other processes used the cores while it ran (`OTHERS_BOUND`: the
machine's busy CPU time less the benchmark's own). The load average cannot tell this: a
benchmark's own threads raise it to about the number of cores, and it still holds the last
minute's work at the start (a benchmark run just before); it decides only where /proc/stat is
missing (`IDLE_LOAD_PER_CORE` at the start and the end)."""
import os
import time
from typing import NamedTuple

import jax

from rwsjax import record

# Above this share of the cores kept busy by other processes during the run, a ratio is not a
# headline number.
OTHERS_BOUND = 0.1
# Without /proc/stat: above this 1-minute load average per core at the start or the end.
IDLE_LOAD_PER_CORE = 0.5
# Seconds of each `quiet_window`.
QUIET_SECONDS = 3.0


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


def busy_seconds(stat_line, ticks_per_second):
  """CPU seconds the machine has been busy since boot, from the first ('cpu') line of
  /proc/stat: user, nice, system, irq, softirq and steal (time the hypervisor gave to others);
  idle and iowait are not busy."""
  user, nice, system, _, _, irq, softirq, steal = (int(v) for v in stat_line.split()[1:9])
  return (user + nice + system + irq + softirq + steal) / ticks_per_second


def machine_busy_seconds():
  """`busy_seconds` of this machine, or None where there is no /proc/stat."""
  try:
    with open('/proc/stat') as f:
      return busy_seconds(f.readline(), os.sysconf('SC_CLK_TCK'))
  except (OSError, ValueError):
    return None


class Snapshot(NamedTuple):
  """The machine at one moment (`snapshot`)."""
  wall: float           # perf_counter seconds
  machine_busy: object  # `machine_busy_seconds`, None without /proc/stat
  own: float            # CPU seconds of this process (all its threads) and its children
  load: float           # `load_per_core`


def snapshot():
  """A `Snapshot` of now."""
  t = os.times()
  return Snapshot(time.perf_counter(), machine_busy_seconds(),
                  t.user + t.system + t.children_user + t.children_system, load_per_core())


def others_share(start, end):
  """The share of the cores that other processes kept busy between two snapshots, (machine
  busy - this process) / (wall x cores), or None without /proc/stat."""
  if start.machine_busy is None or end.machine_busy is None:
    return None
  others = (end.machine_busy - start.machine_busy) - (end.own - start.own)
  return max(0.0, others) / ((end.wall - start.wall) * (os.cpu_count() or 1))


def quiet_window(seconds=QUIET_SECONDS):
  """(start, end) snapshots around `seconds` of sleep, for `load_mark`: what other processes
  used of the cores while this one did nothing. For benchmarks whose work runs in processes
  that are not this one's waited-for children (a forkserver's pool: the dense CRF workers),
  which a mark over the whole run would count as other processes' work: such a benchmark
  takes a quiet window before and after its runs instead."""
  start = snapshot()
  time.sleep(seconds)
  return start, snapshot()


def quiet_mark(work):
  """(work(), its load mark) for a benchmark whose work runs in processes that are not this
  one's waited-for children: the mark comes from a `quiet_window` before and one after, the
  first that is not idle."""
  before = quiet_window()
  result = work()
  return result, load_mark(*before) or load_mark(*quiet_window())


def load_mark(start, end, others_bound=OTHERS_BOUND, bound=IDLE_LOAD_PER_CORE):
  """'' when other processes kept at most `others_bound` of the cores busy between the
  snapshots `start` and `end` of a benchmark; otherwise the mark that follows each ratio it
  prints. Without /proc/stat: when the load per core at both was at most `bound`."""
  others = others_share(start, end)
  if others is not None:
    if others <= others_bound:
      return ''
    return (f' [NOT IDLE: other processes used {others:.0%} of the cores while it ran, above '
            f'{others_bound:.0%}; not a headline number]')
  if max(start.load, end.load) <= bound:
    return ''
  return (f' [NOT IDLE: load per core {start.load:.2f} at the start, {end.load:.2f} at the end, '
          f'above {bound}; not a headline number]')


def machine():
  """The host's CPU model (`rwsjax.record.host_cpu`), its core count and the 1-minute load
  average, for a benchmark's printed header: times of one command differ between hosts."""
  return (f"{record.host_cpu() or 'unknown CPU'}, {os.cpu_count()} cores, load average "
          f'{os.getloadavg()[0]:.1f}')
