"""config.rws: every RWS setting and ablation switch with its default (docs/methods.md RWS).

Imports only the light `rwsjax.config` (ml_collections), so that config files load without
jax.
"""
from rwsjax import config as config_lib


# When a field is read (`Field.read_when`).
_RETRAIN = (lambda config: config.rws.integration == 'retrain',
            "config.rws.integration='retrain'")
F = config_lib.Field
# config.rws: every RWS setting and switch, declared once (docs/methods.md RWS has a line per
# switch, `config.rws.<key>: a | b`; tests/test_rws.py checks them against this table).
FIELDS = {
    'stage1_steps': F(600, 'steps of the global model (stage 1)'),
    'stage2_steps': F(300, 'steps of the local model on the weak slices, per round'),
    'stage2_warmup': F(0, "steps of stage 2's linear warm-up to config.train.lr"),
    'stage3_steps': F(300, 'steps of the refined global model, per round', read_when=_RETRAIN),
    'stage3_init': F('stage1', "stage1: continue the global model's weights and optimizer "
                     'state after a warm-up from its final rate | fresh: from the initial '
                     'weights with a full schedule', ('stage1', 'fresh'), _RETRAIN),
    'stage3_lr': F(1.5e-3, "stage 3's peak rate (after the warm-up; fresh: initial rate)",
                   read_when=_RETRAIN),
    'stage3_warmup': F(30, 'steps of the linear warm-up (stage3_init=stage1)', read_when=(
        lambda config: (config.rws.integration == 'retrain'
                        and config.rws.stage3_init == 'stage1'),
        "config.rws.integration='retrain' and config.rws.stage3_init='stage1'")),
    'slice_size': F(128, 'window side in pixels (paper Fig. 10)'),
    'slice_stride': F(64, 'window stride in pixels'),
    'local_scale': F(2.0, 'slices are resized by this factor for the local model', read_when=(
        lambda config: not config.rws.local_size, 'config.rws.local_size=0')),
    'local_size': F(0, 'side the slice crops are resized to; 0 = local_scale * size'),
    'local_batch_size': F(16, 'global batch of stage 2'),
    'local_init': F('global', 'global: the local model is fine-tuned from the current global '
                    "model, so its features share the global model's channels | init: "
                    "trained from the global model's initialisation", ('global', 'init')),
    'attention_region': F('prediction', 'A_i^c restricted to the predicted (eq. 2) or the '
                          'ground-truth region of c (training only)',
                          ('prediction', 'ground_truth')),
    'attention': F('last', 'window attention from A_layer4 (last) or Gamma (gamma)',
                   ('last', 'gamma')),
    'max_classes': F(6, 'Seg-Grad-CAM class slots per image (most frequent classes)'),
    'weak_rule': F('curve', 'curve: T from the IoU-attention curve | fixed: T = t_fixed',
                   ('curve', 'fixed')),
    't_fixed': F(0.3, 'T of weak_rule=fixed', read_when=(
        lambda config: config.rws.weak_rule == 'fixed', "config.rws.weak_rule='fixed'")),
    't_rule': F('first_flat', 'first_flat: lowest flat point (paper) | last_flat | robust: the '
                "lowest flat point judged against the curve's noise",
                ('first_flat', 'last_flat', 'robust')),
    't_noise_z': F(2.0, 't_rule=robust: a step is clearly flat or steep beyond z standard '
                   "errors of its rise; the knee's rise must pass z too", read_when=(
                       lambda config: config.rws.t_rule == 'robust',
                       "config.rws.t_rule='robust'")),
    't_bins': F(20, 'bins of the IoU-attention curve'),
    't_slope': F(0.02, 'the slope below which the curve is flat'),
    't_slope_unit': F('attention', 'slope per unit of attention | per bin step',
                      ('attention', 'bin')),
    't_min_share': F(0.01, "share of a class's windows a bin needs to be on the curve"),
    't_min_windows': F(10, 'windows a class needs to take part in T'),
    'min_pixels': F(1, 'region pixels of a class for it to count in a window'),
    'slices': F('weak', 'weak | arbitrary (ablation: random windows, same count)',
                ('weak', 'arbitrary')),
    'weak_classes': F('foreground', 'foreground: config.dataset.background_class takes no part '
                      'in T or the weak decision | all | own_threshold: the background is held '
                      'to its own T_c', ('foreground', 'all', 'own_threshold')),
    'select_omega': F(True, 'eq. 5 selection; False = integrate every weak-slice pixel'),
    'weighted_lambda': F(True, 'eq. 7 lambda; False = n 0.5'),
    'eps': F(1e-3, 'omega threshold of eq. 5'),
    'fuse_layers': F((4,), 'layer outputs the local features are fused into: (4,) the '
                     "deepest (measured better, README) | (1, 2, 3, 4) the paper's | () = plain "
                     'fine-tuning'),
    'max_slices': F(0, 'weak slices refined per image; 0 = every weak slice'),
    'slice_chunk': F(32, 'slices per call of the local model (memory bound)'),
    'pair_chunk': F(0, "the local model's Seg-Grad-CAM: 0 = one backward pass per class "
                    'slot over the slices of a call, slots no slice fills skipped | n = a '
                    'forward and backward pass per filled (slice, class) pair, n pairs per '
                    'call'),
    'max_rounds': F(4, 'rounds at most'),
    'min_weak_delta': F(20, 'stop when the weak-slice count changes less than this'),
    'inference': F('fused', 'the RWS network (fused) | the refined network alone (plain)',
                   ('fused', 'plain')),
    'integration': F('inference', 'inference: no stage 3, the fusion joins the global model at '
                     'inference only (measured better, README) | retrain: stage 3 trains the '
                     'global model with the fusion', ('inference', 'retrain')),
    'premise': F(True, "measure each round part by part on the evaluation split's weak "
                 'windows (round_N/premise.json)'),
    'baseline': F(True, 'also train the equal-budget supervised baseline'),
}
del F


def default_config():
  """config.rws: every RWS setting and switch of `FIELDS` at its default."""
  return config_lib.section(FIELDS)


def paper_config(*, dataset, num_classes, crop_size, batch_size, eval_pad_size, lr,
                 weight_decay, iterations, max_classes, background_class=None,
                 eval_batch_size=None):
  """A full experiment config with the RWS paper's section V settings for a real dataset.

  DeepLabv3 on ResNet-101 at output stride 8, SGD with momentum 0.9 and poly decay at `lr`
  and `weight_decay`, 128 x 128 slices at stride 64. The paper gives one iteration count for
  its three training stages: it is stage 1's here, and stages 2 and 3 of each round run a
  third of it each. `background_class` is the dataset's background (VOC: 0; None where class
  0 is a real class). `eval_batch_size` defaults to `batch_size`.
  """
  config = config_lib.base_config()
  config.method = 'rws'
  config.dataset.name = dataset
  config.dataset.num_classes = num_classes
  config.dataset.background_class = background_class
  config.input.crop_size = crop_size
  config.input.batch_size = batch_size
  config.input.eval_batch_size = eval_batch_size or batch_size
  config.input.eval_pad_size = eval_pad_size
  config.model.name = 'deeplabv3'
  config.model.backbone = 'resnet101'
  config.model.output_stride = 8
  config.model.width = 1.0
  config.model.head_channels = 256
  config.train.optimizer = 'sgd'
  config.train.momentum = 0.9
  config.train.lr = lr
  config.train.weight_decay = weight_decay
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.rws = default_config()
  config.rws.stage1_steps = iterations
  config.rws.stage2_steps = iterations // 3
  config.rws.stage3_steps = iterations // 3
  config.rws.stage3_lr = lr
  config.rws.stage3_warmup = iterations // 30
  config.rws.integration = 'retrain'  # the paper's three training stages (section V)
  config.rws.fuse_layers = (1, 2, 3, 4)  # the paper's integration across layers (eq. 5-7)
  config.rws.slice_size = 128
  config.rws.slice_stride = 64
  config.rws.min_pixels = 128 * 128 // 16
  config.rws.local_batch_size = 16
  config.rws.max_classes = max_classes
  return config


def shrink_for_smoke(config):
  """`rwsjax.config.shrink_for_smoke` plus one round of two-step stages on 16 x 16 slices of
  a ResNet-18: seconds on a CPU core."""
  config_lib.shrink_for_smoke(config)
  config.model.backbone = 'resnet18'
  config.rws.stage1_steps = 2
  config.rws.stage2_steps = 2
  config.rws.stage3_steps = 2
  config.rws.stage3_warmup = 1
  config.rws.slice_size = 16
  config.rws.slice_stride = 8
  config.rws.min_pixels = 16 * 16 // 16
  config.rws.local_batch_size = 4
  config.rws.t_min_windows = 1
  config.rws.max_rounds = 1
  return config
