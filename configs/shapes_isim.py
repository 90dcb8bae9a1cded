"""ISIM on the synthetic shapes data: DeepLabCAM (DeepLabv3, ResNet-18 at width 0.25) trained
from scratch with three pseudo-label rounds, against a classification-only model of the same
architecture and epochs. Runs on a 2-core CPU in under 15 minutes.

  python launch.py --config=configs/shapes_isim.py --workdir=runs/isim
  python launch.py --config=configs/shapes_isim.py:smoke --workdir=/tmp/isim_smoke

Departures from the paper's VOC settings (configs/voc_isim.py), for a model trained from
scratch in a few hundred steps:
  - no random rescaling (input.scale_mode 'ratio' with scale_range (1, 1)): the images are as
    large as the crop, and the long-side rule would crop away objects that the image-level
    labels name, noise that a classifier without ImageNet weights does not survive here;
  - AdamW (config.train.optimizer 'adamw') with learning rates encoder 1e-3, decoder 1e-3,
    classifier 1e-2: from random weights, SGD at any of the rates tried (the paper's
    0.1 / 0.01 / 1 down to 0.01 / 0.01 / 0.1) barely moved the classification loss in 400
    steps, which leaves no CAMs to improve;
  - 16 epochs of 25 steps, pseudo labels after epochs 4, 8 and 12.
"""
from isimjax import config as isim_config


def get_config(arg=None):
  config = isim_config.isim_config()
  config.dataset.shapes.num_train = 400
  config.dataset.shapes.num_val = 100
  config.input.crop_size = (96, 96)
  config.input.batch_size = 16
  config.input.scale_mode = 'ratio'
  config.input.scale_range = (1.0, 1.0)
  config.isim.epochs = 16
  config.isim.first_regen_epoch = 4
  config.isim.regen_every = 4
  config.train.optimizer = 'adamw'
  config.isim.lr_encoder = 1e-3
  config.isim.lr_decoder = 1e-3
  config.isim.lr_classifier = 1e-2
  config.isim.cam_batch_size = 16
  config.isim.crf_workers = 2
  config.train.log_every = 25
  config.train.checkpoint_every = 100
  if arg == 'smoke':
    isim_config.shrink_for_smoke(config)
  return config
