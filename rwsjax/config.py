"""Default experiment configuration shared by every config file in configs/.

Each config file calls `base_config()`, overrides what its experiment needs and, for the
`:smoke` argument, calls `shrink_for_smoke` so the same file drives a seconds-long CPU run and
the full run. The shapes configs also take `:pretrained` (and `:smoke,pretrained`): their
backbone starts from the weights that the pretraining command writes (`apply_arg`). `field`
gives code that receives a partial config section (a test's dict, a benchmark's) the same
defaults, so each default is declared once, in the field tables below (`Field`), which also
declare each switch's values and its one-line doc.
"""
import functools
import importlib.util
import os
from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Field(NamedTuple):
  """A config field declared once, in its section's table (below for the shared sections, in
  a method's config module for its own): its default (a table of its own for a nested
  section), a one-line doc, the values it may take (a switch, written `config.<section>.<key>:
  a | b` in docs/methods.md; None: any value of its type), and when it is read (None: always;
  else (whether a config reads it, the setting in words), for `preflight.check_overrides`)."""
  default: Any
  doc: str
  values: Any = None
  read_when: Any = None


def section(fields):
  """The ConfigDict of a table of `Field`s: every field at its default, in table order; a
  field whose default is itself a table becomes a nested section, and a FieldReference default
  (a placeholder) a fresh reference of its type, so no two configs share one."""
  c = ml_collections.ConfigDict()
  for key, declared in fields.items():
    default = declared.default
    if isinstance(default, dict):
      default = section(default)
    elif isinstance(default, config_dict.FieldReference):
      default = config_dict.FieldReference(default.get(), field_type=default.get_type())
    c[key] = default
  return c


def switches(fields):
  """{key: values} of the switches of a table of `Field`s."""
  return {key: f.values for key, f in fields.items() if f.values is not None}


def check_value(value, values, name):
  """`value` when it is one of `values`; else ValueError, '<name>=...; expected one of (...).'
  (`name` is the field's full name, 'config.model.dtype')."""
  if value not in values:
    raise ValueError(f'{name}={value!r}; expected one of {tuple(values)}.')
  return value


def switch(section_cfg, fields, prefix, key):
  """config.<prefix>.<key> of `section_cfg` (its default in `fields` where a partial section
  leaves it out), checked against the values the table declares for it."""
  value = section_cfg[key] if key in section_cfg else fields[key].default
  return check_value(value, fields[key].values, f'config.{prefix}.{key}')


def check_switches(section_cfg, fields, prefix):
  """ValueError, 'config.<prefix>.<key>=...; expected one of (...).', for the first switch of
  `fields` whose value in `section_cfg` is not one of its values; nested tables are checked
  as sections of their own (prefix None: `section_cfg` is the whole config, `FIELDS`)."""
  for key, declared in fields.items():
    if isinstance(declared.default, dict):
      if key in section_cfg:
        check_switches(section_cfg[key], declared.default, key if prefix is None
                       else f'{prefix}.{key}')
    elif declared.values is not None:
      switch(section_cfg, fields, prefix, key)


def conditional_fields(fields, prefix):
  """{'<prefix>.<key>': read_when} of the fields of a table read only under a setting
  (`preflight.check_overrides`' CONDITIONAL_FIELDS)."""
  return {f'{prefix}.{key}': f.read_when for key, f in fields.items() if f.read_when}


F = Field
# config.dataset.shapes: the synthetic data (rwsjax.data.shapes.render).
SHAPES_FIELDS = {
    'num_train': F(2000, 'training images'),
    'num_val': F(500, 'validation images'),
    'image_size': F(96, 'image side in pixels'),
    'num_object_classes': F(6, 'object classes (the background is class 0)'),
    'seed': F(0, "the generator's seed"),
    'fine_classes': F(0, 'the last n classes are fine-scale (small marker or texture)'),
    'fine_marker': F(0, 'their marker side in pixels; 0 = half the usual side'),
    'coding': F('marker', 'marker: a small marker on a plain body | texture: a body-wide '
                'texture', ('marker', 'texture')),
    'texture_period': F(8, "texture coding: the other classes' period in pixels"),
    'fine_period': F(3, "texture coding: the fine classes' period in pixels"),
}
DATASET_FIELDS = {
    'name': F('shapes', 'a registered dataset (rwsjax.data.DATASETS): shapes | voc_aug | '
              'cocostuff | ade20k | cityscapes | shapes_corpus'),
    'data_dir': F(config_dict.placeholder(str), 'TFDS data_dir (None = TFDS default)'),
    'manual_dir': F(config_dict.placeholder(str), 'licensed data the user already has'),
    'num_classes': F(7, 'K, the background included'),
    'background_class': F(config_dict.FieldReference(0, field_type=int),
                          'the background class (0 for shapes and VOC); None where class 0 is '
                          'a real class (COCO-Stuff, ADE20K, Cityscapes). RWS leaves it out of '
                          'T and the weak decision (rws.weak_classes)'),
    'train_split': F('train', 'the training split'),
    'eval_split': F('validation', 'the evaluation split'),
    'shapes': F(SHAPES_FIELDS, 'the synthetic shapes data (config.dataset.name=shapes)'),
}
INPUT_FIELDS = {
    'crop_size': F((96, 96), '(h, w) of training crops'),
    'batch_size': F(16, 'global batch (all devices and hosts)'),
    'eval_batch_size': F(32, 'global batch of evaluation'),
    'scale_range': F((0.5, 2.0), 'random rescaling factors (scale_mode=ratio)'),
    'scale_mode': F('ratio', 'ratio: both sides * U(scale_range) | long_side: ISIM, the long '
                    'side drawn from [crop, 2 * crop]', ('ratio', 'long_side')),
    'flip': F(True, 'random horizontal flips'),
    'mean': F(IMAGENET_MEAN, 'normalisation mean (RGB, 0-255)'),
    'std': F(IMAGENET_STD, 'normalisation standard deviation'),
    'eval_pad_size': F(config_dict.placeholder(tuple), 'pad eval images to (h, w)'),
    'eval_max_long_side': F(config_dict.placeholder(int), 'shrink larger eval images'),
}
MODEL_FIELDS = {
    'name': F('deeplabv3', 'a registered head (rwsjax.models.HEADS): deeplabv3 | '
              'deeplabv3plus | fcn | unet | deeplabv2'),
    'backbone': F('resnet18', 'resnet18..resnet152, or a name given to register_backbone'),
    'output_stride': F(8, "the backbone's output stride", (8, 16)),
    'width': F(0.25, 'channel multiplier of the backbone (1.0 = standard)'),
    'head_channels': F(64, 'channels of the head (256 in the papers)'),
    'frozen_bn': F(False, 'BatchNorm statistics fixed, scale and bias trained', (False, True)),
    'upsample': F('bilinear', "the UNet decoder's upsampling: bilinear | learnable (a "
                  'transposed convolution)', ('bilinear', 'learnable')),
    'dtype': F('float32', 'compute dtype (logits are float32)', ('float32', 'bfloat16')),
    'conv_impl': F('auto', 'auto: matmul on CPU, lax elsewhere | lax: '
                   'lax.conv_general_dilated | matmul: im2col products (rwsjax.models.conv)',
                   ('auto', 'lax', 'matmul')),
    'pretrained': F(config_dict.placeholder(str), 'torchvision ResNet state dict (.npz/.pth)'),
}
TRAIN_FIELDS = {
    'steps': F(1500, 'training steps'),
    'optimizer': F('adamw', "adamw (CPU runs from scratch) | sgd (the papers', real-data "
                   'configs)', ('adamw', 'sgd')),
    'lr': F(3e-3, 'peak learning rate'),
    'momentum': F(0.9, 'SGD momentum'),
    'weight_decay': F(1e-4, 'weight decay'),
    'poly_power': F(0.9, 'power of the polynomial decay'),
    'warmup_steps': F(0, 'steps of linear warm-up'),
    'log_every': F(50, 'steps between logged metrics'),
    'checkpoint_every': F(500, 'steps between checkpoints'),
    'max_to_keep': F(2, 'checkpoints kept'),
}
# launch.py --mode=evaluate | predict (rwsjax.inference).
EVAL_FIELDS = {
    'tta': F(False, "test-time augmentation: the softmax averaged over the image resized by "
             "each scale and its horizontal flip (DeepLab's evaluation)"),
    'scales': F((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), 'the scales of tta'),
    'flip': F(True, 'the flipped images of tta'),
    'max_side': F(1024, 'predict shrinks images whose long side exceeds it'),
    'pad_multiple': F(64, 'predict pads images to multiples of it (fewer compilations; padding '
                      'is not predicted on)'),
}
FIGURES_FIELDS = {
    'num_examples': F(4, 'images shown in prediction / heatmap figures'),
}
# The whole experiment config: every field a pipeline reads, with its default (the synthetic
# shapes data on CPU). A method adds its own section (config.rws, config.isim, config.psa).
FIELDS = {
    'method': F('supervised', 'a registered pipeline (rwsjax.pipelines): supervised | rws | '
                'isim | pretrain'),
    'seed': F(0, 'the seed of initialisation, data order and everything random'),
    'num_devices': F(0, '0 = every device; n = the first n (single host only)'),
    'dataset': F(DATASET_FIELDS, 'the data'),
    'input': F(INPUT_FIELDS, 'the input pipeline'),
    'model': F(MODEL_FIELDS, 'the segmentation network'),
    'train': F(TRAIN_FIELDS, 'the optimiser and its schedule'),
    'eval': F(EVAL_FIELDS, 'evaluation and prediction'),
    'figures': F(FIGURES_FIELDS, 'figures'),
}
del F


def base_config():
  """Every field a pipeline reads (`FIELDS`), with its default (the synthetic shapes data on
  CPU)."""
  return section(FIELDS)


EXPORT_NAME = 'backbone.npz'  # the file the pretraining pipeline writes into its workdir
# Where `python launch.py --config=configs/shapes_pretrain.py --workdir=runs/shapes_pretrain`
# writes the pretrained backbone, relative to the repository root: the `pretrained` argument of
# the shapes configs reads it (README, pretrained weights for the synthetic data).
PRETRAINED_BACKBONE = os.path.join('runs', 'shapes_pretrain', EXPORT_NAME)
CONFIG_WORDS = ('smoke', 'pretrained')  # the words a shapes config's argument may hold


def config_words(arg, allowed=CONFIG_WORDS):
  """The comma-separated words of a config file's argument (None or '' holds none), each one
  of `allowed`: 'smoke,pretrained' -> {'smoke', 'pretrained'}."""
  words = [word.strip() for word in (arg or '').split(',') if word.strip()]
  unknown = [word for word in words if word not in allowed]
  if unknown:
    raise ValueError(f'The config argument {arg!r} holds {unknown[0]!r}; expected '
                     f'comma-separated words of {list(allowed)}.')
  return set(words)


def pretrained_backbone(config_file):
  """The absolute path of PRETRAINED_BACKBONE in the repository whose configs/ folder holds
  `config_file`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(config_file)))
  return os.path.join(root, PRETRAINED_BACKBONE)


def use_pretrained(config, config_file):
  """Starts `config`'s backbone from the pretraining command's weights (`pretrained_backbone`)
  at the width it pretrains, the default 0.25, which a smoke shrink would have narrowed."""
  config.model.pretrained = pretrained_backbone(config_file)
  config.model.width = _defaults().model.width


def apply_arg(config, arg, config_file, shrink=None):
  """Applies a shapes config file's argument (`config_words`) to `config`: 'smoke' shrinks it
  with `shrink` (default `shrink_for_smoke`), then 'pretrained' calls `use_pretrained`.
  Returns the words."""
  words = config_words(arg)
  if 'smoke' in words:
    (shrink or shrink_for_smoke)(config)
  if 'pretrained' in words:
    use_pretrained(config, config_file)
  return words


def from_file(path, arg=None):
  """`get_config(arg)` of the config file at `path`, loaded by path (config files are not a
  package), so that one config file can build on another."""
  spec = importlib.util.spec_from_file_location(
      'config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@functools.cache
def _defaults():
  return base_config().lock()


def field(section_cfg, section, key):
  """config.<section>.<key> of `section_cfg` (that section, a ConfigDict or a dict); where a
  partial section leaves the key out, its default in `base_config`."""
  if key in section_cfg:
    return section_cfg[key]
  return _defaults()[section][key]


def shrink_for_smoke(c):
  """Makes `c` finish in seconds on one CPU core: tiny data, model and step counts."""
  c.dataset.shapes.num_train = 16
  c.dataset.shapes.num_val = 8
  c.dataset.shapes.image_size = 32
  c.input.crop_size = (32, 32)
  c.input.batch_size = 4
  c.input.eval_batch_size = 4
  c.model.width = 0.125
  c.model.head_channels = 16
  c.train.steps = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.figures.num_examples = 2
  return c
