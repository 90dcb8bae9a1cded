"""COCO-Stuff 164k segmentation dataset ('cocostuff'), read from a local directory.

Splits: 'train' = COCO train2017 (118,287 images), 'validation' = val2017 (5,000). Labels are
the 171 classes of the dataset (80 things, then 91 stuff classes; class 0 is 'person', not a
background) with 255 = unlabeled. Images are stored as their JPEG bytes.

Two annotation layouts are read, per split:
  - mmsegmentation's converted maps annotations/{split}2017/<id>_labelTrainIds.png with values
    0..170 and 255; used when the folder holds any such file;
  - otherwise the raw stuffthingmaps_trainval2017 PNGs annotations/{split}2017/<id>.png, whose
    values are the 182 COCO category ids minus one (0..181) and 255. The 11 ids no annotation
    uses (COCO ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91, stored as `UNUSED_RAW_IDS`) are
    dropped: the remaining 171 keep their order (raw 0..10 -> 0..10, raw 12 -> 11, ...,
    raw 91 'banner', the first stuff class, -> 80, raw 181 'wood' -> 170), as mmsegmentation's
    coco_stuff164k converter does; the unused ids read as 255.
"""
import os

import tensorflow_datasets as tfds

from rwsjax.data import folder
from rwsjax.losses import IGNORE_LABEL

THING_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book',
    'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')
STUFF_NAMES = (
    'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet', 'cage',
    'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds',
    'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence',
    'floor-marble', 'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog',
    'food-other', 'fruit', 'furniture-other', 'grass', 'gravel', 'ground-other', 'hill',
    'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss', 'mountain', 'mud',
    'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform',
    'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug', 'salad',
    'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs', 'stone',
    'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree', 'vegetable',
    'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile',
    'wall-wood', 'water-other', 'waterdrops', 'window-blind', 'window-other', 'wood')
CLASS_NAMES = THING_NAMES + STUFF_NAMES
NUM_CLASSES = len(CLASS_NAMES)

NUM_RAW_IDS = 182
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
USED_RAW_IDS = tuple(sorted(set(range(NUM_RAW_IDS)) - set(UNUSED_RAW_IDS)))

TRAIN_ID_MAP = folder.label_map(
    {**{i: i for i in range(NUM_CLASSES)}, IGNORE_LABEL: IGNORE_LABEL},
    f'train ids 0..{NUM_CLASSES - 1} or {IGNORE_LABEL}')
RAW_MAP = folder.label_map(
    {**{raw: i for i, raw in enumerate(USED_RAW_IDS)},
     **{raw: IGNORE_LABEL for raw in UNUSED_RAW_IDS + (IGNORE_LABEL,)}},
    f'raw COCO-Stuff ids 0..{NUM_RAW_IDS - 1} or {IGNORE_LABEL}')
TRAIN_ID_SUFFIX = '_labelTrainIds.png'


def annotation_format(label_dir):
  """(file suffix, LabelMap): converted train ids when `label_dir` holds any, else raw ids."""
  with os.scandir(label_dir) as entries:
    if any(e.name.endswith(TRAIN_ID_SUFFIX) for e in entries):
      return TRAIN_ID_SUFFIX, TRAIN_ID_MAP
  return '.png', RAW_MAP


DATASET = folder.FolderDataset(
    'cocostuff', CLASS_NAMES,
    folder.split_folders({'train': 'train2017', 'validation': 'val2017'}, 'images',
                         'annotations'),
    'Unzip COCO train2017.zip and val2017.zip into images/ and stuffthingmaps_trainval2017.zip '
    'into annotations/ (optionally converted by mmsegmentation to *_labelTrainIds.png) in one '
    'directory',
    folder.paired_examples('.jpg', annotation_format))


class CocoStuff164k(folder.FolderBuilder):
  """COCO-Stuff 164k (171 classes); the data is read from `manual_dir`."""

  DATASET = DATASET
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'train2017 and val2017 with the 171 used classes.'}
