"""Preparing a TFDS split in bounded memory, without TensorFlow.

TFDS's writer passes every serialized example of a split through `tfds.core.shuffle.Shuffler`
before it writes the shards. The Shuffler keeps up to 1 GB of examples in memory; past that it
writes them to temporary buckets through `tf.io.gfile`, which needs TensorFlow (not a
dependency here: preparing 4,000 shapes images of 384 x 384 stopped with `No module named
'tensorflow'`, and VOC's training split is past 1 GB too). With shuffling disabled, as
every builder of `rwsjax.data` has it (the records keep their keys' order), it puts all the
examples in one bucket and sorts that bucket in memory, and a string key (the folder builders'
image ids) has no bucket at all.

`OrderedSpool` stands in for it when shuffling is disabled: each example is appended to one
temporary file as it comes, and read back one at a time in key order. Memory holds a (key,
offset, size) entry per example, never the examples. `ordered_spool()` puts it in place for a
`download_and_prepare` call.
"""
import contextlib
import os
import tempfile

from tensorflow_datasets.core import shuffle


class OrderedSpool:
  """The records of a split with shuffling disabled, on disk, read back in key order.

  Has the interface TFDS's writer uses of `shuffle.Shuffler`: `add`, iteration over (key,
  data), `size`, `num_examples`, `bucket_lengths`. Equal keys raise
  `shuffle.DuplicatedKeysError` when read back, or keep the first example with
  `ignore_duplicates`, as the Shuffler does.
  """

  def __init__(self, directory=None, ignore_duplicates=False):
    """The spool is a temporary file in `directory` (None: the system's temporary
    directory)."""
    handle, self.path = tempfile.mkstemp(prefix='rwsjax-spool-', suffix='.bin', dir=directory)
    self._file = os.fdopen(handle, 'w+b')
    self._ignore_duplicates = ignore_duplicates
    self._seen = set()
    self._index = []  # (key, offset, size) per example, in arrival order
    self.size = 0  # bytes of all examples, written one after another

  @property
  def num_examples(self):
    return len(self._index)

  @property
  def bucket_lengths(self):
    return [len(self._index)]

  def add(self, key, data):
    """Appends the serialized example `data` (bytes) under `key` (int or str)."""
    if not isinstance(data, bytes):
      raise TypeError(f'a serialized example is bytes, not {type(data).__name__}')
    if self._ignore_duplicates:
      if key in self._seen:
        return
      self._seen.add(key)
    self._index.append((key, self.size, len(data)))  # the file holds `size` bytes before it
    self._file.write(data)
    self.size += len(data)

  def __iter__(self):
    """(key, data) in key order, one example in memory at a time; the file is removed at the
    end."""
    previous = None
    try:
      for key, offset, size in sorted(self._index, key=lambda entry: entry[0]):
        self._file.seek(offset)
        data = self._file.read(size)
        if previous is not None and key == previous[0]:
          raise shuffle.DuplicatedKeysError(data, previous[1])
        previous = key, data
        yield key, data
    finally:
      self._file.close()
      os.remove(self.path)


def _spool_or_shuffler(original):
  """A stand-in for `shuffle.Shuffler(dirpath, hash_salt, disable_shuffling,
  ignore_duplicates)`: an `OrderedSpool` where shuffling is disabled, else `original`. The
  spool goes where the split's shards are written (`dirpath`) when that is a local directory,
  as TFDS's buckets do, else to the system's temporary directory."""

  def make(dirpath, hash_salt, disable_shuffling=False, ignore_duplicates=False):
    if disable_shuffling:
      local = os.fspath(dirpath)
      return OrderedSpool(local if os.path.isdir(local) else None, ignore_duplicates)
    return original(dirpath, hash_salt, disable_shuffling, ignore_duplicates)

  return make


@contextlib.contextmanager
def ordered_spool():
  """Within the block, TFDS's writer spools the splits of builders that disable shuffling
  through `OrderedSpool`."""
  original = shuffle.Shuffler
  shuffle.Shuffler = _spool_or_shuffler(original)
  try:
    yield
  finally:
    shuffle.Shuffler = original
