"""CIFAR ResNet-(6n+2): three blocks of n units, 16/32/64 channels.

Variants:

- ``"sact"``: the SACT code's ``cifar_model.py`` (the paper default). Pre-activation units with
  leaky ReLU 0.1 and option-A shortcuts (average pool + zero channels); stem a bare 3x3 conv;
  head ``global average pool -> BN -> leaky ReLU -> linear``. The SACT code pools *before* the
  final BN (``tf.reduce_mean`` then ``slim.batch_norm`` with the ``lrelu`` arg scope, then the
  1x1 ``logits`` conv), and so does this module.
- ``"he"``: He et al. 2016, post-activation with ReLU and option-A shortcuts (strided identity
  + zero channels); stem ``conv -> BN -> ReLU``; head ``global average pool -> linear``.

Both stride 2 on the first unit of blocks 2 and 3.
"""

from torch import nn

from baselines.backbone import ClassifierHead, ResNetBackbone, Stem, init_weights
from baselines.units import (
    CIFAR_LEAKINESS,
    CIFAR_SACT_BN,
    TORCH_BN,
    CifarBasicUnit,
    CifarPreActUnit,
    ResidualUnit,
    conv3x3,
)

CIFAR_CHANNELS = (16, 32, 64)
CIFAR_VARIANTS = ("sact", "he")


def _unit(variant: str, in_ch: int, out_ch: int, stride: int, first: bool) -> ResidualUnit:
    if variant == "sact":
        return CifarPreActUnit(in_ch, out_ch, stride, activate_before_residual=first)
    return CifarBasicUnit(in_ch, out_ch, stride)


def build_cifar_resnet(
    units_per_block: int, variant: str, num_classes: int, depth: int
) -> ResNetBackbone:
    """Build a CIFAR ResNet with ``units_per_block`` units in each of the three blocks.

    Arguments are assumed valid (see :func:`baselines.build_backbone`).
    """
    stem_ch = CIFAR_CHANNELS[0]
    if variant == "sact":
        stem = Stem(conv3x3(3, stem_ch))
        head = ClassifierHead(
            CIFAR_CHANNELS[-1],
            num_classes,
            post_pool=nn.Sequential(
                nn.BatchNorm1d(CIFAR_CHANNELS[-1], **CIFAR_SACT_BN),
                nn.LeakyReLU(CIFAR_LEAKINESS),
            ),
        )
    else:
        stem = Stem(conv3x3(3, stem_ch), nn.BatchNorm2d(stem_ch, **TORCH_BN), nn.ReLU())
        head = ClassifierHead(CIFAR_CHANNELS[-1], num_classes)

    blocks: list[list[ResidualUnit]] = []
    in_ch = stem_ch
    for b, out_ch in enumerate(CIFAR_CHANNELS):
        units = []
        for u in range(units_per_block):
            stride = 2 if (b > 0 and u == 0) else 1
            units.append(_unit(variant, in_ch, out_ch, stride, first=(b == 0 and u == 0)))
            in_ch = out_ch
        blocks.append(units)

    model = ResNetBackbone(
        stem, blocks, head, num_classes=num_classes, dataset="cifar10", variant=variant, depth=depth
    )
    init_weights(model)
    return model
