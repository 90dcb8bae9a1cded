"""rwsjax.hosts against the parts it gathers: three simulated processes with uneven parts."""
import numpy as np
import pytest

from rwsjax import hosts


@pytest.fixture
def three_processes(monkeypatch):
  """Makes `hosts` see 3 processes; returns the list to fill with their values, in process
  order, for the next gathers (one list per gather call)."""
  calls = []
  monkeypatch.setattr(hosts.jax, 'process_count', lambda: 3)

  def allgather(x):
    parts = calls.pop(0)
    assert np.shape(parts[0]) == np.shape(x)  # each process passes the same shape
    return np.stack(parts)

  monkeypatch.setattr(hosts.multihost_utils, 'process_allgather', allgather)
  return calls


def test_one_process_returns_its_input():
  x = np.arange(6).reshape(3, 2)
  np.testing.assert_array_equal(hosts.sum_over_processes(x), x)
  np.testing.assert_array_equal(hosts.rows_over_processes(x), x)


def test_sum_over_processes(three_processes):
  parts = [np.array([[1, 2], [3, 4]]), np.array([[10, 0], [0, 10]]), np.array([[5, 5], [5, 5]])]
  three_processes.append(parts)
  np.testing.assert_array_equal(hosts.sum_over_processes(parts[0]), [[16, 7], [8, 19]])


def test_rows_of_uneven_parts_in_process_order(three_processes):
  rng = np.random.default_rng(0)
  parts = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 1, 0)]
  three_processes.append([np.array(len(p)) for p in parts])
  padded = [np.zeros((3, 4), np.float32) for _ in parts]
  for pad, part in zip(padded, parts):
    pad[:len(part)] = part
  three_processes.append(padded)
  got = hosts.rows_over_processes(parts[0])
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.concatenate(parts))
