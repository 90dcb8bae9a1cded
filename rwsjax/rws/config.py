"""config.rws: every RWS setting and ablation switch with its default (docs/methods.md RWS).

Imports only ml_collections, so that config files load without jax.
"""
import ml_collections

from rwsjax import config as config_lib


def default_config():
  """config.rws: every RWS setting and ablation switch (docs/methods.md RWS), with its default."""
  c = ml_collections.ConfigDict()
  c.stage1_steps = 600          # global model (stage 1)
  c.stage2_steps = 300          # local model on weak slices, per round
  c.stage2_warmup = 0           # steps of stage 2's linear warm-up to config.train.lr
  c.stage3_steps = 300          # refined global model, per round
  c.stage3_init = 'stage1'      # stage1: continue the global model's weights and optimizer
                                # state after a warm-up from its final rate | fresh: from the
                                # initial weights with a full schedule
  c.stage3_lr = 1.5e-3          # stage 3's peak rate (after the warm-up; fresh: initial rate)
  c.stage3_warmup = 30          # steps of the linear warm-up (stage3_init=stage1)
  c.slice_size = 128            # window side in pixels (paper Fig. 10)
  c.slice_stride = 64
  c.local_scale = 2.0           # slices are resized by this factor for the local model
  c.local_size = 0              # side the slice crops are resized to; 0 = local_scale * size
  c.local_batch_size = 16       # global batch of stage 2
  c.local_init = 'global'       # local model fine-tuned from the current global model, so
                                # its features share the global model's channels (global) |
                                # trained from the global model's initialisation (init)
  c.attention_region = 'prediction'  # A_i^c restricted to the predicted (eq. 2) or the
                                     # ground-truth region of c (training only)
  c.attention = 'last'          # window attention from A_layer4 (last) or Gamma (gamma)
  c.max_classes = 6             # Seg-Grad-CAM class slots per image (most frequent classes)
  c.weak_rule = 'curve'         # curve: T from the IoU-attention curve | fixed: T = t_fixed
  c.t_fixed = 0.3
  c.t_rule = 'first_flat'       # first_flat: lowest flat point (paper) | last_flat | robust:
                                # the lowest flat point judged against the curve's noise
  c.t_noise_z = 2.0             # t_rule=robust: a step is clearly flat or steep beyond z
                                # standard errors of its rise; the knee's rise must pass z too
  c.t_bins = 20
  c.t_slope = 0.02
  c.t_slope_unit = 'attention'  # slope per unit of attention | per bin step
  c.t_min_share = 0.01          # share of a class's windows a bin needs to be on the curve
  c.t_min_windows = 10          # windows a class needs to take part in T
  c.min_pixels = 1              # region pixels of a class for it to count in a window
  c.slices = 'weak'             # weak | arbitrary (ablation: random windows, same count)
  c.weak_classes = 'foreground'  # foreground: config.dataset.background_class takes no part
                                 # in T or the weak decision | all
  c.select_omega = True         # eq. 5 selection; False = integrate every weak-slice pixel
  c.weighted_lambda = True      # eq. 7 lambda; False = n 0.5
  c.eps = 1e-3                  # omega threshold of eq. 5
  c.fuse_layers = (1, 2, 3, 4)  # layer outputs fused in stage 3; () = plain fine-tuning
  c.max_slices = 0              # weak slices refined per image; 0 = every weak slice
  c.slice_chunk = 32            # slices per call of the local model (memory bound)
  c.pair_chunk = 8              # (slice, class) pairs per Seg-Grad-CAM call of the local
                                # model: backward passes only for filled class slots | 0:
                                # one backward pass per slot over all slices of a call
  c.max_rounds = 4
  c.min_weak_delta = 20         # stop when the weak-slice count changes less than this
  c.inference = 'fused'         # the RWS network (fused) | the refined network alone (plain)
  c.integration = 'inference'   # inference: no stage 3, the fusion joins the global model
                                # at inference only (measured better, README) | retrain:
                                # stage 3 trains the global model with the fusion
  c.premise = True              # measure each round part by part on the evaluation split's
                                # weak windows (round_N/premise.json)
  c.baseline = True             # also train the equal-budget supervised baseline
  return c


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
