"""ImageNet bottleneck ResNet-50/101/152: four blocks, widths 64/128/256/512, expansion 4.

Both variants put the stride 2 on the 3x3 conv of the first unit of blocks 2-4 and a 1x1
projection shortcut (with that stride) in the first unit of every block; the stem is a 7x7/2
conv (64 channels) to 112x112 and a 3x3/2 max-pool (padding 1) to 56x56.

- ``"sact"``: the SACT code's ``imagenet_model.py`` (TF-slim ``resnet_v2`` with the stride moved
  to the first unit of a block, as in the ResNet paper). Pre-activation bottlenecks, a bare stem
  conv, ``postnorm`` BN + ReLU before pooling, 1001 classes (class 0 = background). The TF code
  max-pools with ``SAME`` padding (pad 0 before, 1 after); here it is padding 1 on both sides,
  which gives the same shapes and FLOPs but shifts the pooling windows by one pixel.
- ``"torchvision"``: torchvision's ``resnet50/101/152`` (v1.5), same structure and numerics;
  load its weights with :func:`baselines.load_torchvision_state_dict`.

``"sact"`` convs not followed by a BN have a bias, as in the TF code (stem, ``conv3``, projection
shortcut); ``conv3``'s bias is part of the residual and is multiplied by SACT's residual mask, so it
is not redundant for spatial methods. Every conv and the classifier are initialised with TF's
``variance_scaling_initializer`` (:func:`~baselines.backbone.init_tf_variance_scaling`), and
halting branches attached to it get the ImageNet arg scope's BN (decay 0.997, epsilon 1e-5) with
no activation after it, and the same init (:data:`SACT_IMAGENET_HALTING`). ``"torchvision"`` has
torchvision's bias-free convs, He (fan_out) init, and halting branches with PyTorch defaults.
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
    IMAGENET_SACT_BN,
    TORCH_BN,
    BottleneckV1Unit,
    BottleneckV2Unit,
    ResidualUnit,
)

#: Units per block for each supported depth.
IMAGENET_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STEM_CHANNELS = 64
IMAGENET_VARIANTS = ("sact", "torchvision")
#: Halting branches of the ``sact`` ImageNet model: TF-slim ``resnet_arg_scope`` puts no
#: activation on ``slim.batch_norm`` (decay 0.997, epsilon 1e-5) and variance-scaling init on convs.
SACT_IMAGENET_HALTING = HaltingConventions(
    bn_eps=IMAGENET_SACT_BN["eps"],
    bn_momentum=IMAGENET_SACT_BN["momentum"],
    leakiness=None,
    tf_init=True,
)


def _stem(variant: str) -> Stem:
    # ``conv2d_same`` 7x7/2 pads 3/3 explicitly, as padding=3 does.
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    if variant == "sact":
        # Cf. the SACT code: no BN or activation in conv1 (so it has a bias); the first unit
        # pre-activates.
        conv = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=True)
        return Stem(conv, pool=pool)
    conv = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
    return Stem(conv, nn.BatchNorm2d(STEM_CHANNELS, **TORCH_BN), nn.ReLU(), pool)


def _unit(variant: str, in_ch: int, width: int, stride: int) -> ResidualUnit:
    cls = BottleneckV2Unit if variant == "sact" else BottleneckV1Unit
    return cls(in_ch, width, width * EXPANSION, stride)


def build_imagenet_resnet(depth: int, variant: str, num_classes: int) -> ResNetBackbone:
    """Build a bottleneck ResNet of ``depth`` in {50, 101, 152}.

    Arguments are assumed valid (see :func:`baselines.build_backbone`).
    """
    blocks: list[list[ResidualUnit]] = []
    in_ch = STEM_CHANNELS
    for b, (n_units, width) in enumerate(zip(IMAGENET_UNITS[depth], IMAGENET_WIDTHS, strict=True)):
        units = []
        for u in range(n_units):
            stride = 2 if (b > 0 and u == 0) else 1
            units.append(_unit(variant, in_ch, width, stride))
            in_ch = width * EXPANSION
        blocks.append(units)

    if variant == "sact":
        postnorm = nn.Sequential(nn.BatchNorm2d(in_ch, **IMAGENET_SACT_BN), nn.ReLU())
        head = ClassifierHead(in_ch, num_classes, pre_pool=postnorm)
    else:
        head = ClassifierHead(in_ch, num_classes)

    model = ResNetBackbone(
        _stem(variant),
        blocks,
        head,
        num_classes=num_classes,
        dataset="imagenet",
        variant=variant,
        depth=depth,
        halting_conventions=SACT_IMAGENET_HALTING if variant == "sact" else TORCH_HALTING,
    )
    return initialise(model, variant)
