"""RWS on the synthetic shapes data: stage 1, rounds of weak-slice analysis and local model, the
local features fused into the global model at inference (or, with integration=retrain, a stage
3 retraining it with them), and the supervised baseline trained for the same total number of
steps.

  python launch.py --config=configs/shapes_rws.py --workdir=runs/shapes_rws
  python launch.py --config=configs/shapes_rws.py:smoke --workdir=/tmp/rws_smoke
  python launch.py --config=configs/shapes_rws.py:pretrained --workdir=runs/shapes_rws_pretrained
                                           (backbone from runs/shapes_pretrain/backbone.npz,
                                           which configs/shapes_pretrain.py writes; also
                                           :smoke,pretrained)

Switches (each lands in summary.json under "config"; docs in rwsjax/rws/config.py default_config):
  --config.rws.slices=arbitrary            random windows instead of weak ones (Table I)
  --config.rws.select_omega=False          no eq. 5 selection (Table I/II)
  --config.rws.weighted_lambda=False       n = 0.5 instead of eq. 7 (Table II)
  --config.rws.fuse_layers="(1,2,3,4)"     fuse every stage output, as the paper (Table III);
                                           the default fuses layer4 alone
  --config.rws.fuse_layers="()"            stage 3 without fusion: plain fine-tuning control
  --config.rws.slice_size=48 --config.rws.slice_stride=24   slice size (Fig. 10)
  --config.rws.weak_rule=fixed --config.rws.t_fixed=0.4     T sweep (Fig. 9)
  --config.rws.attention_region=ground_truth   attention on the ground-truth region (training)
  --config.rws.t_rule=last_flat --config.rws.t_min_share=0  the earlier reading of T
  --config.rws.t_rule=robust               the first flat point judged against the curve's noise
  --config.rws.weak_classes=all            the background takes part in T and weak slices
  --config.rws.local_scale=1               the local model sees slices at the global scale
  --config.rws.stage3_init=fresh           stage 3 from the initial weights, full schedule
  --config.rws.local_init=init             local model trained from the initial weights
  --config.rws.inference=plain             report the refined network alone as "RWS"
  --config.rws.integration=retrain         stage 3 retrains the global model with the fusion
  --config.rws.max_slices=4                refine at most 4 weak windows per image (weakest)
"""
from rwsjax import config as config_lib
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'rws'
  config.rws = rws_config.default_config()
  config.rws.stage1_steps = 600
  config.rws.stage2_steps = 200
  config.rws.stage3_steps = 150
  config.rws.stage3_lr = 1.5e-3
  config.rws.stage3_warmup = 15
  config.rws.slice_size = 32
  config.rws.slice_stride = 16
  # A class counts in a window when it fills at least 1/16 of it: the attention and IoU of a
  # region that only grazes the window's border say little about the window.
  config.rws.min_pixels = 32 * 32 // 16
  config.rws.local_batch_size = 32
  config.rws.max_classes = 5
  config.rws.max_rounds = 1
  config_lib.apply_arg(config, arg, __file__, rws_config.shrink_for_smoke)
  return config
