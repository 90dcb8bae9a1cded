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

  config.isim (`ISIM_FIELDS`) and config.psa (`PSA_FIELDS`, the PSA stages: docs/methods.md,
  ISIM steps 9-11; isimjax.psa) declare each of their fields once: its default, a one-line
  doc, its values where it is a switch, and when it is read.

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


F = config_lib.Field
PSA_ON = (lambda config: config.psa.enabled, 'config.psa.enabled=True')
ISIM_FIELDS = {
    'epochs': F(50, 'training epochs'),
    'steps_per_epoch': F(0, '0 = training-split size // input.batch_size; n > 0 sets it (tiny '
                         'runs)'),
    'regen': F('fixed', 'fixed: pseudo labels regenerated at the end of epoch '
               'first_regen_epoch and then every regen_every epochs | converge: at the end of '
               'first_regen_epoch and then whenever the loss plateaus: with L_1..L_n the '
               'epoch-mean training losses since the last regeneration, after epoch n when n > '
               'converge_patience and each of the last converge_patience epochs k has L_k >= '
               '(1 - converge_tol) * min(L_1..L_{k-1}) (paper Sec. 4.1.3)',
               ('fixed', 'converge')),
    'first_regen_epoch': F(5, 'epochs before it train the classification branch only'),
    'regen_every': F(10, 'epochs between regenerations (regen=fixed)'),
    'converge_tol': F(0.01, 'the plateau test of regen=converge'),
    'converge_patience': F(2, 'the plateau test of regen=converge'),
    'lr_encoder': F(0.1, "rate of the 'backbone' parameter group (paper)"),
    'lr_decoder': F(0.01, "rate of the 'head' group (paper; the authors' code uses 0.1)"),
    'lr_classifier': F(1.0, "rate of the 'classifier' group (paper)"),
    'cam_scales': F((1.0, 0.5, 1.5, 2.0), 'the scales CAMs are averaged over (step 2)'),
    'cam_flip': F(True, 'CAMs of the flipped image too (step 2)'),
    'cam_threshold': F(0.3, 'the constant background score (step 3)'),
    'cam_batch_size': F(8, 'images per CAM device call, per process (a multiple of the local '
                        'device count)'),
    'cam_bucket': F(0, "0 computes CAMs at each image's exact size (one compilation per size); "
                    'n > 0 pads images to multiples of n first (one compilation per padded '
                    'size, for datasets of many sizes such as VOC; CAMs change slightly near '
                    'the bottom and right edges)'),
    'crf': F(True, 'refine pseudo labels with the dense CRF (isimjax.crf defaults)'),
    'crf_workers': F(2, 'CRF processes running beside the CAM computation; 0 = in process'),
    'baseline': F(True, 'also train the classification-only model (same architecture and '
                  'epochs, soft-margin loss only) whose CAMs are the reference column of the '
                  'final table'),
}
PSA_FIELDS = {
    'enabled': F(True, 'run the PSA stages after the ISIM ones (affinity labels, AffinityNet, '
                 'random walk, final segmentation model)'),
    'radius': F(5, 'pair radius at stride 8 (5: 34 pairs per pixel)', read_when=PSA_ON),
    'aff_fg': F(0.3, 'the constant background score of the confident-foreground label map '
                '(paper Sec. 4.1.6)', read_when=PSA_ON),
    'aff_bg': F(0.1, 'the same of the confident-background map', read_when=PSA_ON),
    'label_crf': F('isim', "the dense CRF of the affinity labels. isim: the ISIM code's "
                   "(IRNet's cam_to_ir_label): each thresholded argmax map refined with a label "
                   'unary (gt_prob 0.7) and the pseudo-label CRF of docs/methods.md step 3 | '
                   "psa: PSA's own, a unary from the scores [constant background, CAMs] with "
                   "bilateral sxy 80 srgb 13. The random walk's CRF uses the same pairwise "
                   'terms with rw_crf_iterations', ('isim', 'psa'), PSA_ON),
    'init': F('imagenet', "AffinityNet's starting weights. imagenet (PSA and the paper): the "
              'backbone from psa.affinity.model.pretrained (random without a file) | isim: '
              "the trained ISIM model's backbone (same backbone and width required), for runs "
              'without ImageNet weights', ('imagenet', 'isim'), PSA_ON),
    'head_lr_mult': F(10.0, "learning-rate multiple of AffinityNet's new layers (PSA)",
                      read_when=PSA_ON),
    'alpha': F(16.0, 'background power of the walk', read_when=PSA_ON),
    'beta': F(8.0, 'affinity power of the walk', read_when=PSA_ON),
    'logt': F(8, 'walk length 2^logt', read_when=PSA_ON),
    'rw_crf_iterations': F(1, 'iterations of the CRF after the walk (ISIM + RW + dCRF)',
                           read_when=PSA_ON),
    'dense_max_nodes': F(4096, 'stride-8 grids with at most this many cells are walked with '
                         'the dense matrix (jitted squaring), larger ones by sparse propagation '
                         '(memory O(34 n)); 4096 keeps VOC images (about 63 x 47 cells) dense',
                         read_when=PSA_ON),
    'final_labels': F('rw_crf', "the pseudo labels of the final model: rw_crf (the paper's "
                      'pseudo masks, Table 11, are ISIM + RW + CRF) | rw', ('rw_crf', 'rw'),
                      PSA_ON),
    'walk_scale': F(1, 'AffinityNet sees the images enlarged this many times when the walk '
                    "reads its affinities, so the walk's grid has stride 8 / walk_scale in "
                    'image pixels (1: PSA); psa.affinity.input.scale_range must include it',
                    (1, 2, 4, 8), PSA_ON),
    'premise': F(True, 'measure the walk part by part on the training split after the walk '
                 "(stage psa_walk_premise, isimjax.walk_premise: affinity-label pair precision "
                 "and recall, AffinityNet's AUC, the walk on ground-truth affinities)",
                 read_when=PSA_ON),
    'sweep_beta': F((), 'the beta values the premise stage also walks', read_when=PSA_ON),
    'sweep_logt': F((), 'the logt values the premise stage also walks', read_when=PSA_ON),
}
del F


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
  c.isim = config_lib.section(ISIM_FIELDS)
  c.psa = psa_config(c.model)
  return c


def psa_config(model):
  """config.psa: `PSA_FIELDS` at their defaults, and the AffinityNet and final-model stages'
  sub-configs (see the module docstring), whose model fields follow `model`."""
  psa = config_lib.section(PSA_FIELDS)
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
