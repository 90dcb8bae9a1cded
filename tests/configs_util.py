"""Loads a config file of configs/ the way launch.py does (get_config(arg))."""
import os

from rwsjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  """configs/<name>.py's get_config(arg)."""
  return config_lib.from_file(os.path.join(ROOT, 'configs', f'{name}.py'), arg)
