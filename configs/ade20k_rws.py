"""RWS on ADE20K SceneParsing (20,210 train / 2,000 val images, 150 classes) with the paper's
ADE20K settings (paper section V): DeepLabv3 on ResNet-101, lr 0.01, weight decay 5e-4,
512x512 training images, batch 16, 160K iterations.

  python launch.py --config=configs/ade20k_rws.py --workdir=runs/ade20k_rws \
    --config.dataset.manual_dir=/data/ADEChallengeData2016 \
    --config.model.pretrained=/data/r101.npz

manual_dir is the ADEChallengeData2016 directory (images/ and annotations/, see
rwsjax/data/ade20k.py). The paper's "resized to 512x512" is read as the usual DeepLab recipe:
random scale (0.5-2), then random 512x512 crops. ADE20K images vary in size (short side at most
512, long side up to about 1,600): evaluation keeps every image whose long side is at most 1024
(most of them, e.g. 683x512) at full resolution and shrinks the few wider panoramas to a long
side of 1024 (input.eval_max_long_side; labels nearest, mIoU measured at that size), then pads
to 1024x1024. A canvas for the largest image would cost about 2.5x the compute of this one on
every image, for a handful of images. As for VOC, stages 2 and 3 of each round run a third of
stage 1's iterations. Scene images hold many classes, so Seg-Grad-CAM gets 12 class slots per
image (rws.max_classes): the least frequent classes beyond them get no attention and their
windows score as weak; each slot costs one backward pass.
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake ADE20K tree, whose
larger images exercise the shrinking).
"""
from rwsjax import config as config_lib
from rwsjax import rws


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = "rws"
  config.dataset.name = "ade20k"
  config.dataset.num_classes = 150
  config.input.crop_size = (512, 512)
  config.input.batch_size = 16
  config.input.eval_batch_size = 8
  config.input.eval_pad_size = (1024, 1024)
  config.input.eval_max_long_side = 1024
  config.model.name = "deeplabv3"
  config.model.backbone = "resnet101"
  config.model.output_stride = 8
  config.model.width = 1.0
  config.model.head_channels = 256
  config.train.optimizer = "sgd"
  config.train.momentum = 0.9
  config.train.lr = 0.01
  config.train.weight_decay = 5e-4
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.rws = rws.default_config()
  config.rws.stage1_steps = 160000
  config.rws.stage2_steps = config.rws.stage1_steps // 3
  config.rws.stage3_steps = config.rws.stage1_steps // 3
  config.rws.stage3_lr = 0.01
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
  config.rws.local_batch_size = 16
  config.rws.max_classes = 12
  config.rws.max_slices = 4
  if arg == "smoke":
    config_lib.shrink_for_smoke(config)
    config.model.backbone = "resnet18"
    config.input.eval_pad_size = (48, 48)
    config.input.eval_max_long_side = 48
    config.rws.stage1_steps = 2
    config.rws.stage2_steps = 2
    config.rws.stage3_steps = 2
    config.rws.slice_size = 16
    config.rws.slice_stride = 8
    config.rws.local_batch_size = 4
    config.rws.t_min_windows = 1
    config.rws.max_rounds = 1
  return config
