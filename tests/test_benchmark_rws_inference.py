"""benchmarks/rws_inference.py: the window-passes of an order, against a hand count."""
import numpy as np

import rws_inference


def test_window_passes_counts_each_chunks_most_classes_over_its_rows():
  """Windows of 3, 1, 2 and 1 classes (7 pairs) in chunks of two: in row order the chunks are
  {3, 1} and {2, 1}, (3 + 2) passes over 2 rows = 10 window-passes; ordered by their classes
  {1, 1} and {2, 3}, (1 + 3) * 2 = 8; a chunk holding every window, 3 * 4 = 12."""
  counts = np.array([3, 1, 2, 1])
  assert rws_inference.window_passes(counts, np.zeros(4), 2) == 10 / 7
  assert rws_inference.window_passes(counts, counts, 2) == 8 / 7
  assert rws_inference.window_passes(counts, counts, 4) == 12 / 7
