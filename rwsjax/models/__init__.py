"""Segmentation models: dilated ResNets, heads, and a registry by config string."""
from rwsjax.models.heads import (DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, FCNHead,
                                 UNetHead, resize_bilinear)
from rwsjax.models.pretrained import load_pretrained_backbone
from rwsjax.models.registry import (BACKBONES, HEAD_NAMES, SegmentationModel, build_backbone,
                                    build_head, build_model, feature_strides)
from rwsjax.models.resnet import STAGE_NAMES, ResNet
