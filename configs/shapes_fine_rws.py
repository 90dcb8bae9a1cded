"""RWS on a shapes variant where some classes can only be told apart at a fine scale.

The synthetic shapes data of configs/shapes_rws.py, except that the last three of the six
object classes (stripes, saltire, dot) carry their class marker at half the usual side (7
instead of 15 pixels on 96 x 96 images): about one cell of the model's stride-8 features, so
the global model struggles with them, while the local model sees weak slices enlarged twice
(rws.local_scale). Stage 1 is twice as long (1200 steps): after 600 the global model hardly
predicts the fine classes, and as attention is taken on the predicted region, their windows
are seldom scored (3-14% of the windows weak); after 1200, 10-50% are. Everything else is
configs/shapes_rws.py.

  python launch.py --config=configs/shapes_fine_rws.py --workdir=runs/shapes_fine_rws
  python launch.py --config=configs/shapes_fine_rws.py:smoke --workdir=/tmp/fine_smoke

Every switch of configs/shapes_rws.py applies.
"""
import importlib.util
import os

from rwsjax.rws import config as rws_config


def _shapes_rws():
  """configs/shapes_rws.py, loaded by path (config files are not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shapes_rws.py')
  spec = importlib.util.spec_from_file_location('shapes_rws_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  config = _shapes_rws().get_config()
  config.dataset.shapes.fine_classes = 3
  config.rws.stage1_steps = 1200
  if arg == 'smoke':
    rws_config.shrink_for_smoke(config)
  return config
