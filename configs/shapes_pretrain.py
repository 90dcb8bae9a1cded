"""Pretraining the shapes configs' backbone (ResNet-18 at width 0.25) on the synthetic
classification corpus, whose 25 classes (silhouettes and two-colour patterns on the shapes
backgrounds, rwsjax/data/corpus.py) are none of the shapes data's: 20,000 training and 2,000
held-out 96 x 96 images. Writes the backbone as a torchvision state dict to
<workdir>/backbone.npz; the shapes configs' `:pretrained` argument reads it from
runs/shapes_pretrain/backbone.npz.

  python launch.py --config=configs/shapes_pretrain.py --workdir=runs/shapes_pretrain
  python launch.py --config=configs/shapes_pretrain.py:smoke --workdir=/tmp/pretrain_smoke

Schedule: 5,000 steps of batch 64 (16 epochs), AdamW 3e-3 with a 200-step warm-up and poly
decay, random rescaling by 0.7-1.3, flip and 96 x 96 crops. The backbone trains at output
stride 16, half the cost of the segmentation configs' 8: its weights do not depend on the
stride (layers 3 and 4 trade stride for dilation), as ImageNet weights serve any output stride.
Another backbone: --config.model.backbone, --config.model.width (then give the segmentation
config the same).
"""
import ml_collections

from rwsjax import config as config_lib

CORPUS_CLASSES = 25  # rwsjax.data.corpus.CLASSES (checked against the dataset before any work)


def get_config(arg=None):
  config = config_lib.base_config()
  config.method = 'pretrain'
  config.dataset.name = 'shapes_corpus'
  config.dataset.num_classes = CORPUS_CLASSES + 1  # the label map's background and classes
  config.dataset.corpus = ml_collections.ConfigDict(
      {'num_train': 20000, 'num_val': 2000, 'image_size': 96, 'clutter': 4, 'seed': 0})
  config.input.batch_size = 64
  config.input.eval_batch_size = 128
  config.input.scale_range = (0.7, 1.3)
  config.model.output_stride = 16
  config.train.steps = 5000
  config.train.lr = 3e-3
  config.train.warmup_steps = 200
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  if 'smoke' in config_lib.config_words(arg, ('smoke',)):
    config_lib.shrink_for_smoke(config)
    config.dataset.corpus.num_train = 2 * CORPUS_CLASSES
    config.dataset.corpus.num_val = CORPUS_CLASSES
    config.dataset.corpus.image_size = 32
    config.train.warmup_steps = 0
    # The width the segmentation configs' `:smoke,pretrained` read (config_lib.use_pretrained).
    config.model.width = 0.25
  return config
