"""rwsjax.parts against numpy's array_split, and the store part of isimjax.pseudo against the
whole store it views."""
import numpy as np
import pytest

from isimjax import pseudo
from rwsjax import parts


@pytest.mark.parametrize('count', [1, 2, 3, 4, 7])
@pytest.mark.parametrize('size', [0, 1, 5, 9, 15, 16, 30])
def test_bounds_cut_like_array_split(size, count):
  expected = np.array_split(np.arange(size), count)
  for index, chunk in enumerate(expected):
    start, stop = parts.bounds(size, index, count)
    np.testing.assert_array_equal(np.arange(start, stop), chunk)


def test_part_indexes_from_its_start():
  whole = list('abcdefg')
  part = parts.Part(whole, 2, 5)
  assert len(part) == 3 and list(part) == ['c', 'd', 'e'] and part.whole is whole
  with pytest.raises(IndexError, match=r'outside \[0, 3\)'):
    part[3]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match=r'outside \[0, 7\)'):
    parts.Part(whole, 4, 8)


def test_label_store_part_writes_split_indices(tmp_path):
  whole = pseudo.LabelStore(tmp_path, 9)
  part = pseudo.LabelStorePart(whole, 5, 9)
  assert part.missing().tolist() == [0, 1, 2, 3] and not part.complete
  for i in (0, 2):
    part.write(i, np.full((2, 3), 10 + i, np.uint8))
  whole.write(4, np.zeros((2, 3), np.uint8))  # the part before it: not this part's
  assert whole.written().tolist() == [4, 5, 7]
  assert part.written().tolist() == [0, 2] and part.missing().tolist() == [1, 3]
  np.testing.assert_array_equal(part[2], whole[7])
  assert part[2][0, 0] == 12 and part.directory == whole.directory
  with pytest.raises(IndexError, match=r'outside \[0, 4\)'):
    part.write(4, np.zeros((2, 3), np.uint8))
  for i in (1, 3):
    part.write(i, np.zeros((2, 3), np.uint8))
  assert part.complete and not whole.complete
