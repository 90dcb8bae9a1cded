"""RWS on Cityscapes fine (2,975 train / 500 val images, 19 classes) with the paper's Cityscapes
settings (paper section V): DeepLabv3 on ResNet-101, lr 0.01, weight decay 5e-4, crop
512x1024, batch 8, 80K iterations.

  python launch.py --config=configs/cityscapes_rws.py --workdir=runs/cityscapes_rws \
    --config.dataset.manual_dir=/data/cityscapes --config.model.pretrained=/data/r101.npz

manual_dir holds leftImg8bit/{train,val} and gtFine/{train,val} (see
rwsjax/data/cityscapes.py). Every image is 1024x2048 and is evaluated whole at that size, one
image per device with eval_batch_size 8 on 8 devices. As for VOC, stages 2 and 3 of each round
run a third of stage 1's iterations. A street scene holds most of the 19 classes, so
Seg-Grad-CAM gets 12 class slots per image (rws.max_classes; set 19 for all of them, at one
backward pass per slot): the least frequent classes beyond them get no attention and their
windows score as weak. A 512x1024 crop has twice the windows of a 512x512 one, hence 8 weak
slices per image in stage 3 (rws.max_slices).
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake Cityscapes tree of
32x64 images).
"""
from rwsjax import config as config_lib
from rwsjax import rws


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = "rws"
  config.dataset.name = "cityscapes"
  config.dataset.num_classes = 19
  config.input.crop_size = (512, 1024)
  config.input.batch_size = 8
  config.input.eval_batch_size = 8
  config.input.eval_pad_size = (1024, 2048)
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
  config.rws.stage1_steps = 80000
  config.rws.stage2_steps = config.rws.stage1_steps // 3
  config.rws.stage3_steps = config.rws.stage1_steps // 3
  config.rws.stage3_lr = 0.01
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
  config.rws.local_batch_size = 16
  config.rws.max_classes = 12
  config.rws.max_slices = 8
  if arg == "smoke":
    config_lib.shrink_for_smoke(config)
    config.model.backbone = "resnet18"
    config.input.crop_size = (32, 64)
    config.input.eval_pad_size = (32, 64)
    config.rws.stage1_steps = 2
    config.rws.stage2_steps = 2
    config.rws.stage3_steps = 2
    config.rws.slice_size = 16
    config.rws.slice_stride = 8
    config.rws.local_batch_size = 4
    config.rws.t_min_windows = 1
    config.rws.max_rounds = 1
  return config
