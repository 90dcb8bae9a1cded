"""ISIM defaults: `rwsjax.config.base_config()` plus config.isim (METHODS.md, ISIM steps 1-8).

Fields set or added here, with the paper's values unless noted:

  method: 'isim'.
  model.name: 'deeplabv3' or 'deeplabv3plus' (DeepLabCAM, switch `decoder: v3|v3plus`) or
    'unet' (UNetCAM; model.upsample 'bilinear' | 'learnable').
  input.scale_mode: 'long_side' (step 7: long side resized into [crop, 2 * crop], flip, crop).
  train.optimizer: 'sgd' (METHODS.md step 5; 'adamw' only for small CPU runs from scratch).
  train.momentum: SGD momentum, 0.9 (paper; the authors' code effectively runs 1e-4: set it
    here to follow the code).
  train.weight_decay: 1e-4. train.poly_power: 0.9, poly decay over the whole run.
  train.lr, train.steps: not read by ISIM (see isim.lr_* and isim.epochs).

  isim.epochs: training epochs, 50.
  isim.steps_per_epoch: 0 = training-split size // input.batch_size; n > 0 sets it (tiny runs).
  isim.regen: 'fixed' (default) regenerates pseudo labels at the end of epoch
    `first_regen_epoch` and then every `regen_every` epochs; 'converge' regenerates at the
    end of `first_regen_epoch` and then whenever the loss plateaus: with L_1..L_n the
    epoch-mean training losses since the last regeneration, after epoch n when n > patience
    and each of the last `converge_patience` epochs k has L_k >= (1 - converge_tol) *
    min(L_1..L_{k-1}) (paper Sec. 4.1.3).
  isim.first_regen_epoch: 5; epochs before it train the classification branch only.
  isim.regen_every: 10.
  isim.converge_tol: 0.01. isim.converge_patience: 2.
  isim.lr_encoder, lr_decoder, lr_classifier: 0.1, 0.01, 1.0 (paper; the authors' code uses
    decoder 0.1), the 'backbone', 'head' and 'classifier' parameter groups.
  isim.cam_scales: (1.0, 0.5, 1.5, 2.0); isim.cam_flip: True (step 2).
  isim.cam_threshold: 0.3, the constant background score (step 3).
  isim.cam_batch_size: images per CAM device call, per process (a multiple of the local
    device count).
  isim.cam_bucket: 0 computes CAMs at each image's exact size (one compilation per size);
    n > 0 pads images to multiples of n first (one compilation per padded size, for datasets
    of many sizes such as VOC; CAMs change slightly near the bottom and right edges).
  isim.crf: refine pseudo labels with the dense CRF (isimjax.crf defaults), True.
  isim.crf_workers: CRF processes running beside the CAM computation; 0 = in process.
  isim.baseline: also train the classification-only model (same architecture and epochs,
    soft-margin loss only) whose CAMs are the reference column of the final table.
"""
import ml_collections

from rwsjax import config as config_lib


def isim_config():
  """ISIM defaults on top of `rwsjax.config.base_config()` (see the module docstring)."""
  c = config_lib.base_config()
  c.method = 'isim'
  c.model.name = 'deeplabv3'
  c.input.scale_mode = 'long_side'
  c.train.optimizer = 'sgd'
  c.train.optimizer = 'sgd'
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.poly_power = 0.9

  c.isim = ml_collections.ConfigDict()
  c.isim.epochs = 50
  c.isim.steps_per_epoch = 0
  c.isim.regen = 'fixed'
  c.isim.first_regen_epoch = 5
  c.isim.regen_every = 10
  c.isim.converge_tol = 0.01
  c.isim.converge_patience = 2
  c.isim.lr_encoder = 0.1
  c.isim.lr_decoder = 0.01
  c.isim.lr_classifier = 1.0
  c.isim.cam_scales = (1.0, 0.5, 1.5, 2.0)
  c.isim.cam_flip = True
  c.isim.cam_threshold = 0.3
  c.isim.cam_batch_size = 8
  c.isim.cam_bucket = 0
  c.isim.crf = True
  c.isim.crf_workers = 2
  c.isim.baseline = True
  return c


def shrink_for_smoke(c):
  """`rwsjax.config.shrink_for_smoke` plus a seconds-long ISIM schedule: 3 epochs of 2 steps,
  pseudo labels after epochs 1 and 2, CRF in process."""
  config_lib.shrink_for_smoke(c)
  c.isim.epochs = 3
  c.isim.steps_per_epoch = 2
  c.isim.first_regen_epoch = 1
  c.isim.regen_every = 1
  c.isim.cam_batch_size = 4
  c.isim.crf_workers = 0
  return c
