"""rwsjax.data.spool: a split prepared through the on-disk spool, in bounded memory and without
TensorFlow, holds the same records in the same order as TFDS's in-memory Shuffler gives."""
import importlib.util
import os

import ml_collections
import numpy as np
import pytest
from tensorflow_datasets.core import shuffle

from rwsjax import data
from rwsjax.data import spool


def _example(key):
  return f'example {key}'.encode() * (1 + len(str(key)) % 3)  # sizes differ


def _filled(keys, ignore_duplicates=False):
  made = spool.OrderedSpool(ignore_duplicates=ignore_duplicates)
  for key in keys:
    made.add(key, _example(key))
  return made


@pytest.mark.parametrize('keys', [[5, 0, 3, 1, 4, 2], ['val_b', 'train_2', 'train_10', 'a']])
def test_examples_are_on_disk_and_come_back_in_key_order(keys):
  made = _filled(keys)
  sizes = [len(_example(key)) for key in keys]
  assert (made.num_examples, made.size, made.bucket_lengths) == (len(keys), sum(sizes),
                                                                 [len(keys)])
  made._file.flush()  # pylint: disable=protected-access
  assert os.path.getsize(made.path) == sum(sizes)
  # TFDS's own Shuffler, in memory with shuffling disabled, is the oracle of the order.
  oracle = shuffle.Shuffler('unused', 'salt', disable_shuffling=True)
  for key in keys:
    oracle.add(key, _example(key))
  assert list(made) == list(oracle)
  assert not os.path.exists(made.path)


def test_equal_keys_raise_or_keep_the_first():
  with pytest.raises(shuffle.DuplicatedKeysError):
    list(_filled([2, 1, 2]))
  kept = spool.OrderedSpool(ignore_duplicates=True)
  for key, value in [(2, b'first'), (1, b'one'), (2, b'second')]:
    kept.add(key, value)
  assert list(kept) == [(1, b'one'), (2, b'first')]
  with pytest.raises(TypeError, match='a serialized example is bytes'):
    spool.OrderedSpool().add(0, 'text')


def _shapes(data_dir):
  return ml_collections.ConfigDict({
      'name': 'shapes', 'data_dir': str(data_dir), 'num_classes': 7,
      'shapes': {'num_train': 9, 'num_val': 4, 'image_size': 40, 'seed': 5}})


def test_a_split_past_the_shufflers_memory_buffer_is_prepared_as_in_memory(tmp_path,
                                                                           monkeypatch):
  # TFDS's Shuffler in memory (the split is far below its 1 GB buffer): the reference.
  reference_cfg = _shapes(tmp_path / 'reference')
  builder, _ = data.builder_and_download_config(reference_cfg)
  builder.download_and_prepare()
  # With no memory buffer the Shuffler writes its buckets through tf.io.gfile at once.
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 0)
  if importlib.util.find_spec('tensorflow') is None:
    with pytest.raises(ModuleNotFoundError, match='tensorflow'):
      data.builder_and_download_config(_shapes(tmp_path / 'without'))[0].download_and_prepare()
  spooled_cfg = _shapes(tmp_path / 'spooled')
  made = []

  class Recorded(spool.OrderedSpool):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self.path)

  monkeypatch.setattr(spool, 'OrderedSpool', Recorded)
  data.load_builder(spooled_cfg)
  # One spool per split, beside the split's shards on the dataset's own disk, removed after.
  assert len(made) == 2
  assert all(path.startswith(str(tmp_path / 'spooled')) for path in made)
  assert not any(os.path.exists(path) for path in made)
  assert shuffle.Shuffler.__name__ == 'Shuffler'  # put back after preparing
  for split in ('train', 'validation'):
    reference = data.load_source(reference_cfg, split, per_process=False)
    spooled = data.load_source(spooled_cfg, split, per_process=False)
    assert len(spooled) == len(reference)
    for i in range(len(reference)):
      for key in ('image', 'segmentation', 'labels', 'id'):
        np.testing.assert_array_equal(spooled[i][key], reference[i][key])
