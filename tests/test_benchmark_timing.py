"""benchmarks/timing.py: the load mark that keeps a ratio taken on a busy machine from
passing as a headline number."""
import os
import subprocess
import sys
import time

import timing


def snap(wall, busy, own, load):
  return timing.Snapshot(wall, busy, own, load)


def test_a_ratio_is_marked_when_other_processes_shared_the_run(monkeypatch):
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  # 10 s on 2 cores: the machine was busy 19 CPU seconds, 18 of them this process's own. The
  # load average, raised by a benchmark just before and by its own threads, does not count.
  start, end = snap(0.0, 100.0, 5.0, 0.9), snap(10.0, 119.0, 23.0, 1.0)
  assert timing.others_share(start, end) == 1 / 20
  assert timing.load_mark(start, end) == ''
  shared = snap(10.0, 123.0, 23.0, 1.0)  # 5 CPU seconds of others: a quarter of the cores
  mark = timing.load_mark(start, shared)
  assert 'NOT IDLE' in mark and 'other processes used 25% of the cores' in mark


def test_without_proc_stat_the_load_at_both_ends_decides():
  start = snap(0.0, None, 0.0, 0.1)
  assert timing.others_share(start, snap(1.0, None, 1.0, 0.4)) is None
  assert timing.load_mark(start, snap(1.0, None, 1.0, 0.4)) == ''
  mark = timing.load_mark(start, snap(1.0, None, 1.0, 0.9))
  assert 'NOT IDLE' in mark and '0.10 at the start, 0.90 at the end' in mark
  assert 'NOT IDLE' in timing.load_mark(snap(0.0, None, 0.0, 0.6), snap(1.0, None, 1.0, 0.1))


def test_busy_seconds_counts_all_but_idle_and_iowait():
  # user nice system idle iowait irq softirq steal guest guest_nice, in ticks of 1/100 s
  assert timing.busy_seconds('cpu  100 5 50 1000 20 3 2 10 0 0', 100) == 1.70
  assert timing.machine_busy_seconds() is None or timing.machine_busy_seconds() > 0


def test_load_per_core_divides_by_the_cores(monkeypatch):
  monkeypatch.setattr(os, 'getloadavg', lambda: (3.0, 0.0, 0.0))
  monkeypatch.setattr(os, 'cpu_count', lambda: 4)
  assert timing.load_per_core() == 0.75


def test_a_quiet_window_counts_a_process_spinning_beside_it():
  # A spinning child that is not waited for stands for a forkserver's pool worker: the quiet
  # window sees it as another process's use of the cores (on an idle 2-core machine, 50%).
  spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
  try:
    time.sleep(0.5)
    start, end = timing.quiet_window(seconds=1.0)
  finally:
    spinner.kill()
    spinner.wait()
  assert end.wall - start.wall >= 1.0
  assert timing.others_share(start, end) >= 0.8 / os.cpu_count()
  assert 'NOT IDLE' in timing.load_mark(start, end, others_bound=0.7 / os.cpu_count())


def test_quiet_mark_returns_the_work_and_the_first_busy_window(monkeypatch):
  idle, busy = (snap(0.0, 0.0, 0.0, 0.0), snap(10.0, 1.0, 0.0, 0.0)), (
      snap(0.0, 0.0, 0.0, 0.0), snap(10.0, 10.0, 0.0, 0.0))
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  for windows, busy_share in (([idle, idle], None), ([idle, busy], '50%'), ([busy, idle], '50%')):
    calls = iter(windows)
    monkeypatch.setattr(timing, 'quiet_window', lambda calls=calls: next(calls))
    result, mark = timing.quiet_mark(lambda: 'done')
    assert result == 'done'
    assert (mark == '') if busy_share is None else f'used {busy_share} of the cores' in mark


def test_the_header_names_the_host(monkeypatch):
  monkeypatch.setattr(timing.record, 'host_cpu', lambda: 'AMD EPYC')
  monkeypatch.setattr(os, 'cpu_count', lambda: 2)
  monkeypatch.setattr(os, 'getloadavg', lambda: (0.25, 0.5, 1.0))
  assert timing.machine() == 'AMD EPYC, 2 cores, load average 0.2'
  monkeypatch.setattr(timing.record, 'host_cpu', lambda: None)
  assert timing.machine().startswith('unknown CPU, 2 cores')
