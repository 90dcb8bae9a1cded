"""RWS on PASCAL VOC 2012 + SBD (trainaug, 10,582 images) with the paper's VOC settings
(paper section V): DeepLabv3 on ResNet-101, lr 0.01, weight decay 5e-4, crop 512, batch 16,
30K iterations.

  python launch.py --config=configs/voc_rws.py --workdir=runs/voc_rws \
    --config.dataset.manual_dir=/data/voc --config.model.pretrained=/data/resnet101.npz

manual_dir holds VOCdevkit/VOC2012 and benchmark_RELEASE (see rwsjax/data/voc.py);
model.pretrained is a torchvision ResNet-101 state dict saved as .npz (or .pth with torch).
The paper gives one iteration count for its three training stages; here it is stage 1's, and
stages 2 and 3 of each round run a third of it each (set rws.stage2_steps / stage3_steps).
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake VOC tree).
"""
from rwsjax import config as config_lib
from rwsjax import rws


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = "rws"
  config.dataset.name = "voc_aug"
  config.dataset.num_classes = 21
  config.input.crop_size = (512, 512)
  config.input.batch_size = 16
  config.input.eval_batch_size = 16
  config.input.eval_pad_size = (512, 512)
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
  config.rws.stage1_steps = 30000
  config.rws.stage2_steps = 10000
  config.rws.stage3_steps = 10000
  config.rws.stage3_lr = 0.01
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
  config.rws.local_batch_size = 16
  config.rws.max_classes = 6
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
