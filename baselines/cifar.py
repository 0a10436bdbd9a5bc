"""CIFAR ResNet-(6n+2): three blocks of n units, 16/32/64 channels.

Variants:

- ``"sact"``: the SACT code's ``cifar_model.py`` (the paper default). Pre-activation units with
  leaky ReLU 0.1 and option-A shortcuts (average pool + zero channels); stem a bare 3x3 conv;
  head ``global average pool -> BN -> leaky ReLU -> linear``. The SACT code pools *before* the
  final BN (``tf.reduce_mean`` then ``slim.batch_norm`` with the ``lrelu`` arg scope, then the
  1x1 ``logits`` conv), and so does this module. As in the code: the convs without a BN after
  them (stem, each unit's ``conv2``) and the classifier have biases; strided convs pad like TF
  ``SAME`` (0 before, 1 after); every conv and linear is initialised with TF's
  ``variance_scaling_initializer`` (:func:`~baselines.backbone.init_tf_variance_scaling`); BN
  decay 0.9, epsilon 1e-3. Halting branches attached to it get the same BN, a leaky ReLU 0.1
  after it and the same init (:data:`SACT_CIFAR_HALTING`), as the code's arg scope gives them.
- ``"he"``: He et al. 2016, post-activation with ReLU and option-A shortcuts (strided identity
  + zero channels); stem ``conv -> BN -> ReLU``; head ``global average pool -> linear``. No conv
  biases, He (fan_out) init, PyTorch BN defaults; halting branches keep PyTorch's defaults
  (BN -> conv/linear, no activation).

Both stride 2 on the first unit of blocks 2 and 3.

Not matched (deliberately): in the SACT code ``conv1`` of a unit is a ``slim.conv2d`` with
``normalizer_fn=slim.batch_norm`` under an arg scope that gives *both* ``slim.conv2d`` and
``slim.batch_norm`` ``activation_fn=lrelu``, so TF-slim applies the leaky ReLU twice after that BN
(slope 0.01 for negative inputs). Here ``act1`` is a single leaky ReLU 0.1, as the paper's
description of the model and the ``resnet_model.py`` it derives from have it.
"""

from torch import nn

from baselines.backbone import (
    TORCH_HALTING,
    ClassifierHead,
    HaltingConventions,
    ResNetBackbone,
    Stem,
    initialise,
)
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
#: Halting branches of the ``sact`` CIFAR model: ``cifar_model.resnet_arg_scope`` gives
#: ``slim.batch_norm`` decay 0.9, epsilon 1e-3 and ``activation_fn=lrelu``, and every conv the
#: variance-scaling init (``resnet_act.get_halting_proba``/``get_halting_proba_conv``).
SACT_CIFAR_HALTING = HaltingConventions(
    bn_eps=CIFAR_SACT_BN["eps"],
    bn_momentum=CIFAR_SACT_BN["momentum"],
    leakiness=CIFAR_LEAKINESS,
    tf_init=True,
)


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
        stem = Stem(conv3x3(3, stem_ch, bias=True))
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
        stem,
        blocks,
        head,
        num_classes=num_classes,
        dataset="cifar10",
        variant=variant,
        depth=depth,
        halting_conventions=SACT_CIFAR_HALTING if variant == "sact" else TORCH_HALTING,
    )
    return initialise(model, variant)
