"""Segmentation models: backbones registered by name (the contract in `backbone`), dilated
ResNets, heads, built from config.model."""
from rwsjax.models.backbone import LAYER_NAMES, layer_output
from rwsjax.models.heads import (DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, FCNHead,
                                 UNetHead, resize_bilinear)
from rwsjax.models.pretrained import (backbone_state_dict, load_pretrained_backbone,
                                      save_state_dict)
from rwsjax.models.registry import (BACKBONES, HEAD_NAMES, SegmentationModel, make_backbone,
                                    make_head, make_model, compute_dtype, feature_strides,
                                    register_backbone)
from rwsjax.models.resnet import ResNet
