"""ADE20K SceneParsing (ADEChallengeData2016, 150 classes) dataset ('ade20k'), read from a local
directory.

Splits: 'train' = images/training (20,210 images), 'validation' = images/validation (2,000).
The annotations annotations/{training,validation}/<id>.png store 0 = 'other objects' and
1..150 = the classes; 0 becomes 255 (ignore) and 1..150 become 0..149 (mmsegmentation's
reduce_zero_label), so class 0 is 'wall', not a background. Images are stored as their JPEG
bytes. The release has images of many sizes: the short side is at most 512, the long side
reaches about 1,600 pixels.
"""
import tensorflow_datasets as tfds

from rwsjax.data import folder
from rwsjax.losses import IGNORE_LABEL

CLASS_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
    'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
    'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug',
    'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub',
    'railing', 'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter',
    'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs',
    'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
    'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier',
    'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
    'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave',
    'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
    'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')
NUM_CLASSES = len(CLASS_NAMES)

LABEL_MAP = folder.label_map({0: IGNORE_LABEL, **{i + 1: i for i in range(NUM_CLASSES)}},
                             f'0..{NUM_CLASSES}')

DATASET = folder.FolderDataset(
    'ade20k', CLASS_NAMES,
    folder.split_folders({'train': 'training', 'validation': 'validation'}, 'images',
                         'annotations'),
    'Unzip ADEChallengeData2016.zip, whose ADEChallengeData2016 directory is laid out',
    folder.paired_examples('.jpg', lambda _: ('.png', LABEL_MAP)))


class Ade20k(folder.FolderBuilder):
  """ADE20K SceneParsing (150 classes); the data is read from `manual_dir`."""

  DATASET = DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'training and validation, 0 -> ignore, 1..150 -> 0..149.'}
