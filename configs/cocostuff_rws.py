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
(rws.max_classes): the less frequent predicted classes beyond them get no attention and take
no part in T or the weak decision; each slot costs one backward pass in the analysis, in every
stage-3 step and at inference. Class 0 is a real class: there is no background class.
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake COCO-Stuff tree).
"""
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = rws_config.paper_config(
      dataset='cocostuff', num_classes=171, crop_size=(512, 512), batch_size=16,
      eval_pad_size=(640, 640), lr=0.001, weight_decay=1e-4, iterations=60000, max_classes=12,
      background_class=None)
  if arg == 'smoke':
    rws_config.shrink_for_smoke(config)
    config.input.eval_pad_size = (64, 64)
  return config
