"""ISIM defaults: `rwsjax.config.base_config()` plus config.isim (docs/methods.md, ISIM steps 1-8).

Fields set or added here, with the paper's values unless noted:

  method: 'isim'.
  model.name: 'deeplabv3' or 'deeplabv3plus' (DeepLabCAM, switch `decoder: v3|v3plus`) or
    'unet' (UNetCAM; model.upsample 'bilinear' | 'learnable').
  input.scale_mode: 'long_side' (step 7: long side resized into [crop, 2 * crop], flip, crop).
  train.optimizer: 'sgd' (docs/methods.md step 5; 'adamw' only for small CPU runs from scratch).
  train.momentum: SGD momentum, 0.9 (paper; the authors' code effectively runs 1e-4: set it
    here to follow the code).
  train.weight_decay: 1e-4. train.poly_power: 0.9, poly decay over the whole run.
  train.lr, train.steps: not read by ISIM (see isim.lr_* and isim.epochs); launch.py refuses
    overrides of them (isimjax.isim.UNREAD_FIELDS).

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

PSA stages (docs/methods.md, ISIM steps 9-11; isimjax.psa), config.psa:

  psa.enabled: run the PSA stages after the ISIM ones (affinity labels, AffinityNet, random
    walk, final segmentation model), True.
  psa.radius: pair radius at stride 8, 5 (34 pairs per pixel).
  psa.aff_fg, psa.aff_bg: the constant background scores of the confident-foreground and
    confident-background label maps, 0.3 and 0.1 (paper Sec. 4.1.6).
  psa.label_crf: the dense CRF of the affinity labels. 'isim' (default): the ISIM code's
    (IRNet's cam_to_ir_label): each thresholded argmax map refined with a label unary
    (gt_prob 0.7) and the pseudo-label CRF of docs/methods.md step 3 (Gaussian sxy 3 compat 3,
    bilateral sxy 50 srgb 5 compat 10, 10 iterations). 'psa': PSA's own: a unary from the
    scores [constant background, CAMs] with bilateral sxy 80 srgb 13. The random walk's CRF
    uses the same pairwise terms with `rw_crf_iterations`.
  psa.init: AffinityNet's starting weights. 'imagenet' (default, PSA and the paper): the
    backbone from psa.affinity.model.pretrained (random without a file); 'isim': the trained
    ISIM model's backbone (same backbone and width required), for runs without ImageNet
    weights.
  psa.head_lr_mult: learning-rate multiple of AffinityNet's new layers, 10 (PSA).
  psa.alpha, psa.beta, psa.logt: background power 16, affinity power 8, walk length 2^8.
  psa.rw_crf_iterations: iterations of the CRF after the walk (ISIM + RW + dCRF), 1.
  psa.walk_scale: AffinityNet sees the images enlarged this many times (1, 2, 4 or 8) when the
    walk reads its affinities, so the walk's grid has stride 8 / walk_scale in image pixels;
    1 (PSA). psa.affinity.input.scale_range must include it (AffinityNet trained at that
    scale).
  psa.dense_max_nodes: stride-8 grids with at most this many cells are walked with the dense
    matrix (jitted squaring), larger ones by sparse propagation (memory O(34 n)); 4096 keeps
    VOC images (about 63 x 47 cells) dense.
  psa.final_labels: the pseudo labels of the final model, 'rw_crf' (default: the paper's
    pseudo masks, Table 11, are ISIM + RW + CRF) or 'rw'.
  psa.premise: measure the walk part by part on the training split after the walk
    (stage psa_walk_premise, isimjax.walk_premise: affinity-label pair precision and recall,
    AffinityNet's AUC, the walk on ground-truth affinities), True.
  psa.sweep_beta, psa.sweep_logt: the (beta, logt) grid that stage also walks, () (none).
  psa.affinity, psa.final: the AffinityNet and final-model stages, each with
    `epochs` (training length, in passes over the training split) and `model`, `input`,
    `train` sub-configs whose fields replace those of config.model/input/train for that
    stage (`isimjax.psa.stage_config`); the other fields are the experiment's.
  psa.affinity defaults, PSA's code: 8 epochs, crop 448 x 448, batch 8, crops and flips only
    (scale_mode 'ratio' with scale_range (1, 1)), SGD lr 0.1, momentum 0.9, weight decay
    5e-4; psa.affinity.model follows config.model (backbone, width, frozen_bn, dtype,
    conv_impl, pretrained) at output_stride 8, where layer2-4 are all at stride 8.
  psa.final defaults: 50 epochs and 512 x 512 crops (paper Sec. 4.1.7), batch 16, random
    scaling 0.5-2 and flips, SGD lr 0.01, momentum 0.9, weight decay 1e-4; psa.final.model
    follows config.model (also output_stride, head_channels) with name 'deeplabv3' (or
    'deeplabv2', the ASPP-sum head of paper Table 10).
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
  c.psa = psa_config(c.model)
  return c


def psa_config(model):
  """config.psa defaults (see the module docstring); model fields follow `model`."""
  psa = ml_collections.ConfigDict()
  psa.enabled = True
  psa.radius = 5
  psa.aff_fg = 0.3
  psa.aff_bg = 0.1
  psa.label_crf = 'isim'
  psa.init = 'imagenet'
  psa.head_lr_mult = 10.0
  psa.alpha = 16.0
  psa.beta = 8.0
  psa.logt = 8
  psa.rw_crf_iterations = 1
  psa.dense_max_nodes = 4096
  psa.final_labels = 'rw_crf'
  psa.walk_scale = 1
  psa.premise = True
  psa.sweep_beta = ()
  psa.sweep_logt = ()
  follow = ('backbone', 'width', 'frozen_bn', 'dtype', 'conv_impl', 'pretrained')
  psa.affinity = ml_collections.ConfigDict()
  psa.affinity.epochs = 8
  psa.affinity.model = ml_collections.ConfigDict({k: model.get_ref(k) for k in follow})
  psa.affinity.model.output_stride = 8
  psa.affinity.input = ml_collections.ConfigDict(
      {'crop_size': (448, 448), 'batch_size': 8, 'scale_mode': 'ratio',
       'scale_range': (1.0, 1.0)})
  psa.affinity.train = ml_collections.ConfigDict(
      {'optimizer': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4})
  psa.final = ml_collections.ConfigDict()
  psa.final.epochs = 50
  psa.final.model = ml_collections.ConfigDict({k: model.get_ref(k) for k in follow})
  psa.final.model.name = 'deeplabv3'
  psa.final.model.output_stride = model.get_ref('output_stride')
  psa.final.model.head_channels = model.get_ref('head_channels')
  psa.final.input = ml_collections.ConfigDict(
      {'crop_size': (512, 512), 'batch_size': 16, 'scale_mode': 'ratio',
       'scale_range': (0.5, 2.0)})
  psa.final.train = ml_collections.ConfigDict(
      {'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 1e-4})
  return psa


def shrink_for_smoke(c):
  """`rwsjax.config.shrink_for_smoke` plus a seconds-long ISIM schedule: 3 epochs of 2 steps,
  pseudo labels after epochs 1 and 2, CRF in process; one epoch of AffinityNet and of the
  final model on 32 x 32 crops, pairs of radius 2 (a 4 x 4 feature map has no radius-5
  pairs)."""
  config_lib.shrink_for_smoke(c)
  c.isim.epochs = 3
  c.isim.steps_per_epoch = 2
  c.isim.first_regen_epoch = 1
  c.isim.regen_every = 1
  c.isim.cam_batch_size = 4
  c.isim.crf_workers = 0
  c.psa.radius = 2
  for part in (c.psa.affinity, c.psa.final):
    part.epochs = 1
    part.input.crop_size = (32, 32)
    part.input.batch_size = 4
  return c
