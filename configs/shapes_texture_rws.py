"""RWS on a shapes variant where the evidence of a class lies inside every window of it.

On the marker-coded shapes data a class is told only by a small marker on a large plain body,
so most windows of an object hold a body without its marker and a local model cannot segment
them better than the global model, which sees the marker in context. Here every object is
covered by its class texture (config.dataset.shapes.coding='texture': stripes in four
directions, a checkerboard, a dot grid), so any window inside an object carries its class. The
last three classes (diag135, checker, dots) have a 3-pixel period, below one cell of the
model's stride-8 features, and mix their colours alike when blurred: at 1x the global model
can hardly tell them apart, while the local model sees weak slices enlarged twice
(rws.local_scale). Windows are a quarter of the image side, as in the paper (128-pixel slices
on 512-pixel crops): 24-pixel slices at stride 16 on 96-pixel images. Stage 1 runs 3000
steps, where the supervised model has not settled the fine classes: one schedule of 1000,
2000, 3000 and 3350 steps gives 0.776, 0.758, 0.888 and 0.851 validation mIoU on seed 0
(docs/shapes_texture_plateau.png, `python scripts/readme_results.py --out=runs/readme
--only=shapes_texture_plateau`; README).
Everything else is configs/shapes_rws.py.

  python launch.py --config=configs/shapes_texture_rws.py --workdir=runs/shapes_texture_rws
  python launch.py --config=configs/shapes_texture_rws.py:smoke --workdir=/tmp/texture_smoke

Every switch of configs/shapes_rws.py applies, and its arguments (`:pretrained`,
`:smoke,pretrained`).
"""
import os

from rwsjax import config as config_lib
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = config_lib.from_file(os.path.join(os.path.dirname(__file__), 'shapes_rws.py'))
  config.dataset.shapes.coding = 'texture'
  config.dataset.shapes.fine_classes = 3
  config.rws.slice_size = 24
  config.rws.slice_stride = 16
  config.rws.min_pixels = 24 * 24 // 16
  config.rws.stage1_steps = 3000
  config_lib.apply_arg(config, arg, __file__, rws_config.shrink_for_smoke)
  return config
