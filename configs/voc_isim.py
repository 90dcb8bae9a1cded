"""ISIM on PASCAL VOC 2012 + SBD (trainaug, 10,582 images) with the paper's settings (paper
Sec. 4.1): DeepLabCAM = DeepLabv3 on ResNet-101 with the classification branch on layer4,
crop 320, 50 epochs, pseudo labels after epoch 5 and then every 10 epochs, SGD momentum 0.9
with learning rates encoder 0.1, decoder 0.01, classifier 1, CAM scales 1, 0.5, 1.5, 2 with
flips, threshold 0.3 and the dense CRF.

  python launch.py --config=configs/voc_isim.py --workdir=runs/voc_isim \
    --config.dataset.manual_dir=/data/voc --config.model.pretrained=/data/resnet101.npz

manual_dir holds VOCdevkit/VOC2012 and benchmark_RELEASE (see rwsjax/data/voc.py);
model.pretrained is a torchvision ResNet-101 state dict saved as .npz (or .pth with torch).
Choices the paper leaves open:
  - output stride 16: the paper dilates only the last block, doubling the CAM side from 1/32
    to 1/16 of the image (its 16x16 -> 32x32 at 512);
  - frozen BatchNorm in the backbone and batch size 16, as the authors' IRNet-based code;
  - CAM images padded to multiples of 64 (isim.cam_bucket) so that VOC's many image sizes
    compile a few times only; 8 CRF worker processes (set isim.crf_workers to the host's
    spare cores).
The PSA stages (paper Sec. 4.1.6-4.1.7) keep the backbone in common, as the paper does:
  - AffinityNet on ResNet-101 at output stride 8 (PSA's is ResNet-38) from the ImageNet
    weights of model.pretrained, trained as the paper states: 3 epochs, batch 16, 512 x 512
    crops (PSA's own code: 8 epochs, batch 8, crop 448), with PSA's SGD: lr 0.1, the new
    layers at 10x, weight decay 5e-4, poly decay; crops and flips only (PSA's joint
    transforms); affinity thresholds 0.3 / 0.1 (paper), random walk beta 8, logt 8,
    alpha 16 (PSA);
  - the final DeepLabv3 on ResNet-101 (paper Tables 8-9, 11), output stride 16 as the ISIM
    model, trained 50 epochs on 512 x 512 crops (paper Sec. 4.1.7) with batch 16, random
    scaling 0.5-2 and flips, SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly decay, on the
    ISIM + RW + dCRF labels; evaluated on the 1,449 val images padded to 512 x 512. For the
    paper's DeepLabv2 (Tables 10-11) set psa.final.model.name=deeplabv2 and
    psa.final.model.output_stride=8.
`--mode=evaluate` pads the val images to 512 x 512 too (input.eval_pad_size), for the final
model and, with psa.enabled=False, for DeepLabCAM's segmentation output.
`:smoke` shrinks everything to seconds on CPU (the tests run it on a fake VOC tree).
"""
from isimjax import config as isim_config


def get_config(arg=None):
  config = isim_config.isim_config()
  config.dataset.name = 'voc_aug'
  config.dataset.num_classes = 21
  config.input.crop_size = (320, 320)
  config.input.batch_size = 16
  config.input.scale_mode = 'long_side'
  config.input.eval_pad_size = (512, 512)
  config.input.eval_batch_size = 16
  config.model.name = 'deeplabv3'
  config.model.backbone = 'resnet101'
  config.model.output_stride = 16
  config.model.width = 1.0
  config.model.head_channels = 256
  config.model.frozen_bn = True
  config.train.optimizer = 'sgd'
  config.train.momentum = 0.9
  config.train.weight_decay = 1e-4
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.isim.epochs = 50
  config.isim.first_regen_epoch = 5
  config.isim.regen_every = 10
  config.isim.lr_encoder = 0.1
  config.isim.lr_decoder = 0.01
  config.isim.lr_classifier = 1.0
  config.isim.cam_scales = (1.0, 0.5, 1.5, 2.0)
  config.isim.cam_batch_size = 8
  config.isim.cam_bucket = 64
  config.isim.crf_workers = 8
  config.psa.affinity.epochs = 3
  config.psa.affinity.input.crop_size = (512, 512)
  config.psa.affinity.input.batch_size = 16
  config.psa.affinity.train.lr = 0.1
  config.psa.affinity.train.weight_decay = 5e-4
  config.psa.final.epochs = 50
  config.psa.final.model.name = 'deeplabv3'
  config.psa.final.input.crop_size = (512, 512)
  config.psa.final.input.batch_size = 16
  config.psa.final.input.eval_pad_size = (512, 512)
  config.psa.final.input.eval_batch_size = 16
  config.psa.final.train.lr = 0.01
  config.psa.final.train.weight_decay = 1e-4
  if arg == 'smoke':
    isim_config.shrink_for_smoke(config)
    config.model.backbone = 'resnet18'
    config.psa.final.model.name = 'deeplabv2'
    config.input.eval_pad_size = (32, 32)
    config.psa.final.input.eval_pad_size = (32, 32)
    config.psa.final.input.eval_batch_size = 4
  return config
