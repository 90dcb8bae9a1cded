"""benchmarks/slices.py: its vectorised path still agrees with its two loops (the script checks
them before it prints a ratio), so the benchmark cannot go stale against `score_windows`."""

import slices as slices_benchmark


def test_the_vectorised_scores_match_both_loops_and_a_ratio_is_printed(capsys):
  slices_benchmark.run(size=32, slice_size=16, stride=8, num_classes=4, batch=2, repeats=1)
  line = capsys.readouterr().out
  assert '(9 windows)' in line and line.count('ratio') == 2
