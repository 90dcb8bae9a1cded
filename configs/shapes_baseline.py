"""Supervised DeepLabv3 baseline on the synthetic shapes data (a small CPU model).

  python launch.py --config=configs/shapes_baseline.py --workdir=runs/baseline
  python launch.py --config=configs/shapes_baseline.py:smoke --workdir=/tmp/smoke

`:pretrained` (or `:smoke,pretrained`) starts the backbone from the weights that the
pretraining command writes, runs/shapes_pretrain/backbone.npz (configs/shapes_pretrain.py).
"""
from rwsjax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'supervised'
  config_lib.apply_arg(config, arg, __file__)
  return config
