"""The parts of a split that the processes of a multi-host run work on (docs/design.md,
multi-host): consecutive ranges of example indices, one per process. No JAX here, so that the
CRF worker processes can use it."""
from collections.abc import Sequence
import operator


def bounds(size, index, count):
  """[start, stop) of part `index` of `size` examples cut into `count` consecutive parts whose
  sizes differ by at most one, the larger first."""
  base, extra = divmod(size, count)
  start = index * base + min(index, extra)
  return start, start + base + (index < extra)


class Part(Sequence):
  """Items [start, stop) of the random-access sequence `whole`, indexed from 0: the examples one
  process works on. `whole` stays reachable: every process's training stream draws from the
  whole split."""

  def __init__(self, whole, start, stop):
    if not 0 <= start <= stop <= len(whole):
      raise ValueError(f'Part [{start}, {stop}) is outside [0, {len(whole)}).')
    self.whole, self.start, self.stop = whole, start, stop

  def __len__(self):
    return self.stop - self.start

  def split_index(self, index):
    """The index in `whole` of this part's item `index`."""
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f'Index {index} is outside [0, {len(self)}) of this part.')
    return self.start + index

  def __getitem__(self, index):
    return self.whole[self.split_index(index)]
