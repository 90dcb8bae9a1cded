"""Supervised DeepLabv3 baseline on the synthetic shapes data (a small CPU model).

  python launch.py --config=configs/shapes_baseline.py --workdir=runs/baseline
  python launch.py --config=configs/shapes_baseline.py:smoke --workdir=/tmp/smoke
"""
from rwsjax import config as config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'supervised'
  if arg == 'smoke':
    config_lib.shrink_for_smoke(config)
  return config
