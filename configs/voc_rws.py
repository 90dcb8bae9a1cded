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
from rwsjax.rws import config as rws_config


def get_config(arg=None):
  config = rws_config.paper_config(
      dataset='voc_aug', num_classes=21, crop_size=(512, 512), batch_size=16,
      eval_pad_size=(512, 512), lr=0.01, weight_decay=5e-4, iterations=30000, max_classes=6,
      background_class=0)
  if arg == 'smoke':
    rws_config.shrink_for_smoke(config)
    config.input.eval_pad_size = (64, 64)
  return config
