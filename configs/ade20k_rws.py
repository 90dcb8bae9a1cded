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
image (rws.max_classes): the less frequent predicted classes beyond them get no attention and
take no part in T or the weak decision; each slot costs one backward pass. Class 0 ('wall') is
a real class: there is no background class (dataset.background_class None).
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake ADE20K tree, whose
larger images exercise the shrinking).
"""
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = rws_config.paper_config(
      dataset='ade20k', num_classes=150, crop_size=(512, 512), batch_size=16, eval_batch_size=8,
      eval_pad_size=(1024, 1024), lr=0.01, weight_decay=5e-4, iterations=160000, max_classes=12,
      background_class=None)
  config.input.eval_max_long_side = 1024
  if arg == 'smoke':
    rws_config.shrink_for_smoke(config)
    config.input.eval_pad_size = (48, 48)
    config.input.eval_max_long_side = 48
  return config
