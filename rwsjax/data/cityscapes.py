"""Cityscapes fine annotations (19 train classes) dataset ('cityscapes'), read from a local
directory.

Splits: 'train' = leftImg8bit/train (2,975 images of 18 cities), 'validation' =
leftImg8bit/val (500). Labels come from gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png,
whose values are the label ids 0..33 of the official cityscapesScripts labels.py table; the 19
ids with a train id map to it (road 7 -> 0, ..., car 26 -> 13, ..., bicycle 33 -> 18) and the
other 15 (void classes, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
trailer) to 255. Images (2048x1024 PNG) are stored as their PNG bytes; the id of an image is
'<city>/<city>_<sequence>_<frame>'.
"""
import tensorflow_datasets as tfds

from rwsjax.data import folder
from rwsjax.losses import IGNORE_LABEL

CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
    'motorcycle', 'bicycle')
NUM_CLASSES = len(CLASS_NAMES)
NUM_LABEL_IDS = 34
# Label ids (labels.py) of the 19 train classes, in train id order.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

LABEL_MAP = folder.label_map(
    {**{i: IGNORE_LABEL for i in range(NUM_LABEL_IDS)},
     **{label_id: i for i, label_id in enumerate(TRAIN_LABEL_IDS)}},
    f'Cityscapes label ids 0..{NUM_LABEL_IDS - 1}')
DATASET = folder.FolderDataset(
    'cityscapes', CLASS_NAMES,
    folder.split_folders({'train': 'train', 'validation': 'val'}, 'leftImg8bit', 'gtFine'),
    'Unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into one directory',
    folder.paired_examples('_leftImg8bit.png', lambda _: ('_gtFine_labelIds.png', LABEL_MAP)),
    image_format='png')


class CityscapesFine(folder.FolderBuilder):
  """Cityscapes, fine annotations, 19 train classes; the data is read from `manual_dir`."""

  DATASET = DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'train and val with the 19 train ids of labels.py.'}
