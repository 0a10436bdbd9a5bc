"""ResNet backbones exposed as ``stem -> blocks of residual units -> head``.

``build_backbone(dataset, depth, variant)`` returns a :class:`ResNetBackbone`; methods wrap each
``backbone.blocks[i]`` and call its units as ``unit(x, residual_mask)``, which returns
``shortcut(x) + residual(x) * residual_mask`` (see :mod:`baselines.units`).
"""

from baselines.backbone import (
    TORCH_HALTING,
    ClassifierHead,
    HaltingConventions,
    ResNetBackbone,
    Stem,
    init_tf_variance_scaling,
    tf_variance_scaling_,
)
from baselines.factory import (
    BACKBONE_VARIANTS,
    DEFAULT_NUM_CLASSES,
    build_backbone,
    cifar_units,
    imagenet_units,
)
from baselines.torchvision_compat import load_torchvision_state_dict, torchvision_key
from baselines.units import (
    BottleneckV1Unit,
    BottleneckV2Unit,
    CifarBasicUnit,
    CifarPreActUnit,
    OptionAShortcut,
    ResidualUnit,
    TFSameConv2d,
    tf_same_padding,
)

__all__ = [
    "BACKBONE_VARIANTS",
    "DEFAULT_NUM_CLASSES",
    "BottleneckV1Unit",
    "BottleneckV2Unit",
    "CifarBasicUnit",
    "CifarPreActUnit",
    "ClassifierHead",
    "HaltingConventions",
    "OptionAShortcut",
    "ResNetBackbone",
    "ResidualUnit",
    "Stem",
    "TFSameConv2d",
    "TORCH_HALTING",
    "build_backbone",
    "cifar_units",
    "imagenet_units",
    "init_tf_variance_scaling",
    "load_torchvision_state_dict",
    "tf_same_padding",
    "tf_variance_scaling_",
    "torchvision_key",
]
