"""Default experiment configuration shared by every config file in configs/.

Each config file calls `base_config()`, overrides what its experiment needs and, for the
`:smoke` argument, calls `shrink_for_smoke` so the same file drives a seconds-long CPU run and
the full run. The shapes configs also take `:pretrained` (and `:smoke,pretrained`): their
backbone starts from the weights that the pretraining command writes (`apply_arg`). `field`
gives code that receives a partial config section (a test's dict, a benchmark's) the same
defaults, so each default is declared once, in `base_config`.
"""
import functools
import importlib.util
import os
from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def base_config():
  """Every field a pipeline reads, with its default (the synthetic shapes data on CPU)."""
  c = ml_collections.ConfigDict()
  c.method = 'supervised'           # supervised | rws | isim | pretrain
  c.seed = 0
  c.num_devices = 0                 # 0 = every device; n = the first n (single host only)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'shapes'         # shapes | voc_aug
  c.dataset.data_dir = config_dict.placeholder(str)    # TFDS data_dir (None = TFDS default)
  c.dataset.manual_dir = config_dict.placeholder(str)  # licensed data the user already has
  c.dataset.num_classes = 7         # including background 0
  # The background class (0 for shapes and VOC); None where class 0 is a real class (COCO-Stuff,
  # ADE20K, Cityscapes). RWS leaves it out of T and the weak decision (rws.weak_classes).
  c.dataset.background_class = config_dict.FieldReference(0, field_type=int)
  c.dataset.train_split = 'train'
  c.dataset.eval_split = 'validation'
  c.dataset.shapes = ml_collections.ConfigDict()
  c.dataset.shapes.num_train = 2000
  c.dataset.shapes.num_val = 500
  c.dataset.shapes.image_size = 96
  c.dataset.shapes.num_object_classes = 6
  c.dataset.shapes.seed = 0
  c.dataset.shapes.fine_classes = 0  # the last n classes are fine-scale (small marker or texture)
  c.dataset.shapes.fine_marker = 0   # their marker side in pixels; 0 = half the usual side
  c.dataset.shapes.coding = 'marker'  # marker (small marker on a plain body) | texture (body-wide)
  c.dataset.shapes.texture_period = 8  # texture coding: the other classes' period in pixels
  c.dataset.shapes.fine_period = 3   # texture coding: the fine classes' period in pixels

  c.input = ml_collections.ConfigDict()
  c.input.crop_size = (96, 96)      # (h, w) of training crops
  c.input.batch_size = 16           # global batch (all devices and hosts)
  c.input.eval_batch_size = 32
  c.input.scale_range = (0.5, 2.0)
  c.input.scale_mode = 'ratio'      # ratio: both sides * U(scale_range); long_side: ISIM
  c.input.flip = True
  c.input.mean = IMAGENET_MEAN
  c.input.std = IMAGENET_STD
  c.input.eval_pad_size = config_dict.placeholder(tuple)  # pad eval images to (h, w)
  c.input.eval_max_long_side = config_dict.placeholder(int)  # shrink larger eval images

  c.model = ml_collections.ConfigDict()
  c.model.name = 'deeplabv3'        # a registered head (rwsjax.models.HEADS): deeplabv3 |
                                    # deeplabv3plus | fcn | unet | deeplabv2
  c.model.backbone = 'resnet18'     # resnet18..resnet152, or a name given to register_backbone
  c.model.output_stride = 8
  c.model.width = 0.25              # channel multiplier of the backbone (1.0 = standard)
  c.model.head_channels = 64        # 256 in the papers
  c.model.frozen_bn = False
  c.model.upsample = 'bilinear'     # UNet decoder: bilinear | learnable
  c.model.dtype = 'float32'         # compute dtype: float32 | bfloat16
  c.model.conv_impl = 'auto'        # auto (matmul on CPU, lax elsewhere) | lax | matmul
  c.model.pretrained = config_dict.placeholder(str)  # torchvision ResNet state dict (.npz/.pth)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1500
  c.train.optimizer = 'adamw'        # sgd (the papers', real-data configs) | adamw (CPU runs)
  c.train.lr = 3e-3
  c.train.momentum = 0.9             # sgd only
  c.train.weight_decay = 1e-4
  c.train.poly_power = 0.9
  c.train.warmup_steps = 0
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.max_to_keep = 2

  # launch.py --mode=evaluate | predict (rwsjax.inference): test-time augmentation averages the
  # softmax over the image resized by each scale, and its horizontal flip (DeepLab's
  # evaluation); predict shrinks images whose long side exceeds max_side and pads them to
  # multiples of pad_multiple (fewer compilations; padding is not predicted on).
  c.eval = ml_collections.ConfigDict()
  c.eval.tta = False
  c.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  c.eval.flip = True
  c.eval.max_side = 1024
  c.eval.pad_multiple = 64

  c.figures = ml_collections.ConfigDict()
  c.figures.num_examples = 4        # images shown in prediction / heatmap figures
  return c


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


class Field(NamedTuple):
  """A config field declared once, in its section's table (a method's config module): its
  default, a one-line doc, the values it may take (a switch, written `config.<section>.<key>:
  a | b` in docs/methods.md; None: any value of its type), and when it is read (None: always;
  else (whether a config reads it, the setting in words), for `preflight.check_overrides`)."""
  default: Any
  doc: str
  values: Any = None
  read_when: Any = None


def section(fields):
  """The ConfigDict of a table of `Field`s: every field at its default, in table order."""
  c = ml_collections.ConfigDict()
  for key, declared in fields.items():
    c[key] = declared.default
  return c


def switches(fields):
  """{key: values} of the switches of a table of `Field`s."""
  return {key: f.values for key, f in fields.items() if f.values is not None}


def check_switches(section_cfg, fields, prefix):
  """ValueError, 'config.<prefix>.<key>=...; expected one of (...).', for the first switch of
  `fields` whose value in `section_cfg` is not one of its values."""
  for key, values in switches(fields).items():
    if section_cfg[key] not in values:
      raise ValueError(f'config.{prefix}.{key}={section_cfg[key]!r}; expected one of '
                       f'{tuple(values)}.')


def conditional_fields(fields, prefix):
  """{'<prefix>.<key>': read_when} of the fields of a table read only under a setting
  (`preflight.check_overrides`' CONDITIONAL_FIELDS)."""
  return {f'{prefix}.{key}': f.read_when for key, f in fields.items() if f.read_when}
