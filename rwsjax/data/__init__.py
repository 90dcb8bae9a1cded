"""Datasets by config name, as random-access sources for the pipelines in `pipeline`.

Fields of config.dataset read here:
  name: 'shapes' (synthetic, built locally from a seed), 'shapes_corpus' (the synthetic
    classification corpus that pretrains backbones for it, `corpus`), or a dataset read from
    manual_dir:
    'voc_aug' (VOC2012 + SBD trainaug), 'cocostuff' (COCO-Stuff 164k), 'ade20k' (ADE20K
    SceneParsing) or 'cityscapes' (Cityscapes fine); see their modules for the layouts.
  data_dir: TFDS data_dir where prepared datasets are cached (None = the TFDS default).
  manual_dir: all but shapes, the directory holding the dataset as released (for voc_aug:
    VOCdevkit/ and benchmark_RELEASE/); read once, when the TFDS dataset is prepared.
  num_classes: K including background; checked against the dataset.
  train_split, eval_split: split names ('train', 'validation'), used by the trainers.
  shapes: shapes only, ConfigDict with any of num_train, num_val, image_size,
    num_object_classes, max_objects, clutter, ignore_border, seed, fine_classes, fine_marker,
    coding, texture_period, fine_period (see `shapes.render`).
  corpus: shapes_corpus only, ConfigDict with any of num_train, num_val, image_size, clutter,
    seed (see `corpus.render`); config files that use it set it, as configs/shapes_pretrain.py.

Sources are TFDS array_record data sources: len(source), source[i] -> {'image' uint8 (H, W, 3),
'segmentation' uint8 (H, W, 1), 'labels' bool (K-1,), 'id' bytes}.
"""
from typing import Any, Callable, NamedTuple

import jax
from jax.experimental import multihost_utils
import tensorflow_datasets as tfds

from rwsjax import config as config_lib
from rwsjax import hosts
from rwsjax import parts
from rwsjax.data import ade20k
from rwsjax.data import cityscapes
from rwsjax.data import cocostuff
from rwsjax.data import corpus
from rwsjax.data import shapes
from rwsjax.data import spool
from rwsjax.data import voc

class Dataset(NamedTuple):
  """A dataset registered under a config.dataset.name: `builder(dataset_cfg, data_dir)` gives
  its unprepared TFDS builder and the DownloadConfig to prepare it with (None: nothing to
  read); `num_classes(dataset_cfg)` K, background included; `class_names(dataset_cfg)` in
  class index order; `folder`, for a dataset read from config.dataset.manual_dir, its
  `folder.FolderDataset` (None for generated data)."""
  builder: Callable[[Any, Any], tuple]
  num_classes: Callable[[Any], int]
  class_names: Callable[[Any], list]
  folder: Any = None


DATASETS = {}  # config.dataset.name -> Dataset


def register(name, dataset):
  """Makes config.dataset.name=`name` read `dataset` (a `Dataset`); a later registration of
  `name` replaces the earlier one."""
  DATASETS[name] = dataset


def register_dataset(builder_cls):
  """Makes config.dataset.name=<its DATASET's name> read the dataset that `builder_cls` (a
  `folder.FolderBuilder` subclass) prepares from config.dataset.manual_dir, as its DATASET (a
  `folder.FolderDataset`) declares; a later registration of the name replaces the earlier one."""
  declared = builder_cls.DATASET
  name = declared.name

  def builder(dataset_cfg, data_dir):
    made = builder_cls(data_dir=data_dir, file_format='array_record')
    if made.is_prepared():
      return made, None
    manual_dir = config_lib.field(dataset_cfg, 'dataset', 'manual_dir')
    if manual_dir is None:
      raise ValueError(f'config.dataset.manual_dir is not set; {name} needs the directory '
                       f'holding {", ".join(declared.layout.values())}.')
    declared.check_layout(manual_dir)
    return made, tfds.download.DownloadConfig(manual_dir=manual_dir)

  register(name, Dataset(builder, lambda _: declared.num_classes,
                         lambda _: list(declared.class_names), declared))


def manual_datasets():
  """{name: `folder.FolderDataset`} of the registered datasets read from
  config.dataset.manual_dir."""
  return {name: d.folder for name, d in DATASETS.items() if d.folder is not None}


def _shapes_config(dataset_cfg):
  """The ShapesConfig of config.dataset.shapes (defaults when absent)."""
  return shapes.shapes_config(**dict(config_lib.field(dataset_cfg, 'dataset', 'shapes')))


def _corpus_config(dataset_cfg):
  """The CorpusConfig of config.dataset.corpus (defaults when absent)."""
  return corpus.corpus_config(**dict(dataset_cfg.get('corpus') or {}))


register('shapes', Dataset(
    lambda cfg, data_dir: (shapes.SyntheticShapes(config=_shapes_config(cfg), data_dir=data_dir,
                                                  file_format='array_record'), None),
    lambda cfg: _shapes_config(cfg).num_object_classes + 1,
    lambda cfg: shapes.class_names(_shapes_config(cfg).num_object_classes,
                                   _shapes_config(cfg).coding)))
register('shapes_corpus', Dataset(
    lambda cfg, data_dir: (corpus.ShapesCorpus(config=_corpus_config(cfg), data_dir=data_dir,
                                               file_format='array_record'), None),
    lambda cfg: len(corpus.CLASSES) + 1, lambda cfg: corpus.class_names()))
register_dataset(voc.VocAug)
register_dataset(cocostuff.CocoStuff164k)
register_dataset(ade20k.Ade20k)
register_dataset(cityscapes.CityscapesFine)


def _registered(dataset_cfg):
  """The `Dataset` registered as config.dataset.name."""
  name = dataset_cfg.name
  if name not in DATASETS:
    raise ValueError(f'config.dataset.name is {name!r}; expected one of {tuple(DATASETS)} (a '
                     'dataset of your own: rwsjax.data.register_dataset in a module given to '
                     '--imports).')
  return DATASETS[name]


def num_classes(dataset_cfg):
  """K (background included) of the dataset named by config.dataset.name."""
  return _registered(dataset_cfg).num_classes(dataset_cfg)


def class_names(dataset_cfg):
  """Class names in class index order (background first where the dataset has one)."""
  return _registered(dataset_cfg).class_names(dataset_cfg)


def builder_and_download_config(dataset_cfg):
  """(unprepared builder, DownloadConfig or None); checks the config before any work."""
  expected = num_classes(dataset_cfg)
  given = config_lib.field(dataset_cfg, 'dataset', 'num_classes')
  if given is not None and given != expected:
    raise ValueError(f'config.dataset.num_classes is {given} but dataset '
                     f'{dataset_cfg.name!r} has {expected} classes (background included).')
  data_dir = config_lib.field(dataset_cfg, 'dataset', 'data_dir')
  return _registered(dataset_cfg).builder(dataset_cfg, data_dir)


def load_builder(dataset_cfg):
  """The TFDS builder of config.dataset, prepared on first use (process 0 first; the others
  make their builder after it, as a builder reads the dataset's info when it is made)."""
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      prepare(*builder_and_download_config(dataset_cfg))
    multihost_utils.sync_global_devices('rwsjax.data.load_builder')
  builder, download_config = builder_and_download_config(dataset_cfg)
  prepare(builder, download_config)
  return builder


def prepare(builder, download_config):
  """`builder.download_and_prepare`, its splits spooled to disk (`spool.ordered_spool`: bounded
  memory, no TensorFlow) when they are written."""
  with spool.ordered_spool():
    builder.download_and_prepare(download_config=download_config)


def read_split(builder, split):
  """Random-access data source of the whole `split`."""
  if split not in builder.info.splits:
    raise ValueError(f'Split {split!r} is not in dataset {builder.name}; expected one of '
                     f'{sorted(builder.info.splits)}.')
  return builder.as_data_source(split=split)


def load_source(dataset_cfg, split, *, per_process=True):
  """Random-access source of `split`; with per_process, this process's `parts.Part` of it."""
  whole = read_split(load_builder(dataset_cfg), split)
  if not per_process:
    return whole
  return parts.Part(whole, *parts.bounds(len(whole), *hosts.this_process()))
