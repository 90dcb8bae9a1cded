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
backward pass per slot): the less frequent predicted classes beyond them get no attention and
take no part in T or the weak decision; every class is a real class (no background class).
A 512x1024 crop has twice the windows of a 512x512 one; every weak window is refined, the
local model taking rws.slice_chunk of them at a time. `--mode=predict` keeps 2048-pixel frames
whole (eval.max_side).
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake Cityscapes tree of
32x64 images).
"""
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = rws_config.paper_config(
      dataset='cityscapes', num_classes=19, crop_size=(512, 1024), batch_size=8,
      eval_pad_size=(1024, 2048), lr=0.01, weight_decay=5e-4, iterations=80000, max_classes=12,
      background_class=None)
  config.eval.max_side = 2048
  if arg == 'smoke':
    rws_config.shrink_for_smoke(config)
    config.input.crop_size = (32, 64)
    config.input.eval_pad_size = (32, 64)
  return config
