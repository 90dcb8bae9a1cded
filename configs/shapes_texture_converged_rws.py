"""RWS on the texture testbed with a longer stage 1, the premise's control on a settled model.

configs/shapes_texture_rws.py (every window inside an object carries its class texture; three
classes at a 3-pixel period) on 1000 training images with a 6000-step stage 1, the schedule
that settles the fine-marker testbed on the same number of images
(configs/shapes_fine_converged_rws.py). Whether stage 1 has converged here is read from the
run itself: the equal-budget baseline (one schedule of stage 1's steps plus the round's) gains
less than half a point of validation mIoU over stage 1 on a converged model.

  python launch.py --config=configs/shapes_texture_converged_rws.py --workdir=runs/tex_converged
  python launch.py --config=configs/shapes_texture_converged_rws.py:smoke --workdir=/tmp/tc_smoke

Every switch of configs/shapes_rws.py applies, and its arguments (`:pretrained`,
`:smoke,pretrained`).
"""
import os

from rwsjax import config as config_lib
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = config_lib.from_file(os.path.join(os.path.dirname(__file__),
                                             'shapes_texture_rws.py'))
  config.dataset.shapes.num_train = 1000
  config.rws.stage1_steps = 6000
  config_lib.apply_arg(config, arg, __file__, rws_config.shrink_for_smoke)
  return config
