"""RWS on the fine-marker testbed with a converged stage 1.

configs/shapes_fine_rws.py (three classes carry their marker at half the size) on 1000
training images, with a stage 1 long enough that the supervised model has stopped improving:
a few hundred more steps of one schedule gain less than half a point of validation mIoU
(docs/shapes_fine_plateau.png, `python scripts/readme_results.py --out=runs/readme
--only=shapes_fine_plateau`). RWS claims to enhance a trained network; this is the testbed on
which that claim is judged.

  python launch.py --config=configs/shapes_fine_converged_rws.py --workdir=runs/fine_converged
  python launch.py --config=configs/shapes_fine_converged_rws.py:smoke --workdir=/tmp/fc_smoke

Every switch of configs/shapes_rws.py applies, and its arguments (`:pretrained`,
`:smoke,pretrained`).
"""
import os

from rwsjax import config as config_lib
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = config_lib.from_file(os.path.join(os.path.dirname(__file__), 'shapes_fine_rws.py'))
  config.dataset.shapes.num_train = 1000
  config.rws.stage1_steps = 6000
  config_lib.apply_arg(config, arg, __file__, rws_config.shrink_for_smoke)
  return config
