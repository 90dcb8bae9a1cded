"""RWS on COCO-Stuff 164k (118,287 train / 5,000 val images, 171 classes) with the paper's
COCOStuff settings (paper section V): DeepLabv3 on ResNet-101, lr 0.001, weight decay 1e-4,
crop 512, batch 16, 60K iterations.

  python launch.py --config=configs/cocostuff_rws.py --workdir=runs/cocostuff_rws \
    --config.dataset.manual_dir=/data/coco_stuff164k --config.model.pretrained=/data/r101.npz

manual_dir holds images/{train,val}2017 and annotations/{train,val}2017, the latter with the
raw stuffthingmaps PNGs or mmsegmentation's *_labelTrainIds.png (see rwsjax/data/cocostuff.py).
COCO images are at most 640x640: evaluation pads them to 640x640, so mIoU is measured at full
resolution. As for VOC, stages 2 and 3 of each round run a third of stage 1's iterations.
Scene images hold many classes, so Seg-Grad-CAM gets 12 class slots per image
(rws.max_classes): the least frequent classes beyond them get no attention and their windows
score as weak; each slot costs one backward pass in the analysis and in every stage-3 step.
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake COCO-Stuff tree).
"""
from rwsjax import config as config_lib
from rwsjax import rws


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = "rws"
  config.dataset.name = "cocostuff"
  config.dataset.num_classes = 171
  config.input.crop_size = (512, 512)
  config.input.batch_size = 16
  config.input.eval_batch_size = 16
  config.input.eval_pad_size = (640, 640)
  config.model.name = "deeplabv3"
  config.model.backbone = "resnet101"
  config.model.output_stride = 8
  config.model.width = 1.0
  config.model.head_channels = 256
  config.train.optimizer = "sgd"
  config.train.momentum = 0.9
  config.train.lr = 0.001
  config.train.weight_decay = 1e-4
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.rws = rws.default_config()
  config.rws.stage1_steps = 60000
  config.rws.stage2_steps = config.rws.stage1_steps // 3
  config.rws.stage3_steps = config.rws.stage1_steps // 3
  config.rws.stage3_lr = 0.001
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
  config.rws.local_batch_size = 16
  config.rws.max_classes = 12
  config.rws.max_slices = 4
  if arg == "smoke":
    config_lib.shrink_for_smoke(config)
    config.model.backbone = "resnet18"
    config.input.eval_pad_size = (64, 64)
    config.rws.stage1_steps = 2
    config.rws.stage2_steps = 2
    config.rws.stage3_steps = 2
    config.rws.slice_size = 16
    config.rws.slice_stride = 8
    config.rws.local_batch_size = 4
    config.rws.t_min_windows = 1
    config.rws.max_rounds = 1
  return config
