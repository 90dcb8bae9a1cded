"""benchmarks/timing.py: the load mark that keeps a ratio taken on a busy machine from
passing as a headline number."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_a_ratio_is_marked_unless_both_ends_were_idle():
  assert timing.load_mark(0.1, 0.5) == ''
  for start, end in ((0.6, 0.1), (0.1, 0.51), (3.3, 3.5)):
    mark = timing.load_mark(start, end)
    assert 'NOT IDLE' in mark and f'{start:.2f} at the start' in mark
    assert f'{end:.2f} at the end' in mark


def test_load_per_core_divides_by_the_cores(monkeypatch):
  monkeypatch.setattr(os, 'getloadavg', lambda: (3.0, 0.0, 0.0))
  monkeypatch.setattr(os, 'cpu_count', lambda: 4)
  assert timing.load_per_core() == 0.75
