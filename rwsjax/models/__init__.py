"""Segmentation models: backbones and heads registered by name (the backbone contract in
`backbone`), dilated ResNets, built from config.model."""
from rwsjax.models.backbone import LAYER_NAMES, layer_output
from rwsjax.models.heads import (DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, FCNHead,
                                 UNetHead, resize_bilinear)
from rwsjax.models.pretrained import (backbone_state_dict, load_pretrained_backbone,
                                      save_state_dict)
from rwsjax.models.registry import (BACKBONES, HEADS, SegmentationModel, compute_dtype,
                                    feature_strides, head, head_options, make_backbone, make_head,
                                    make_model, register_backbone, register_head)
from rwsjax.models.resnet import ResNet
