"""One entry point, :func:`build_backbone`, with validation that names the offending field."""

import numbers

from baselines.backbone import ResNetBackbone
from baselines.cifar import CIFAR_VARIANTS, build_cifar_resnet
from baselines.imagenet import IMAGENET_UNITS, IMAGENET_VARIANTS, build_imagenet_resnet
from harness.errors import ConfigError

#: Allowed variants per dataset; the first one is the default (the SACT code's model).
BACKBONE_VARIANTS: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR_VARIANTS,
    "imagenet": IMAGENET_VARIANTS,
}

#: Default number of classes: TF-slim ImageNet checkpoints have a background class (1001).
DEFAULT_NUM_CLASSES: dict[tuple[str, str], int] = {
    ("cifar10", "sact"): 10,
    ("cifar10", "he"): 10,
    ("imagenet", "sact"): 1001,
    ("imagenet", "torchvision"): 1000,
}

_CIFAR_DEPTH_EXAMPLES = "8, 14, 20, 32, 56, 110"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def cifar_units(depth: int) -> int:
    """Units per block ``n`` of a CIFAR ResNet of ``depth = 6n + 2``; ConfigError otherwise."""
    if not _is_int(depth) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"depth={depth!r} is not of the form 6n+2 (n>=1) for cifar10; "
            f"e.g. {_CIFAR_DEPTH_EXAMPLES}"
        )
    return (int(depth) - 2) // 6


def imagenet_units(depth: int) -> tuple[int, ...]:
    """Units per block of an ImageNet bottleneck ResNet; ConfigError for other depths."""
    if not _is_int(depth) or depth not in IMAGENET_UNITS:
        allowed = ", ".join(str(d) for d in IMAGENET_UNITS)
        raise ConfigError(f"depth={depth!r} is not supported for imagenet; allowed: {allowed}")
    return IMAGENET_UNITS[int(depth)]


def _check_choice(field: str, value: object, allowed: tuple[str, ...], context: str = "") -> None:
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{field}={value!r} is not supported{context}; allowed: {choices}")


def build_backbone(
    dataset: str, depth: int, variant: str = "sact", num_classes: int | None = None
) -> ResNetBackbone:
    """Build a ResNet backbone (stem, blocks of residual units, head), He-initialised.

    Args:
        dataset: ``"cifar10"`` (ResNet-(6n+2)) or ``"imagenet"`` (bottleneck ResNet-50/101/152).
        depth: network depth, e.g. 32 or 110 for CIFAR, 101 for ImageNet.
        variant: see ``BACKBONE_VARIANTS``; ``"sact"`` is the SACT code's model.
        num_classes: classifier outputs; default 10 for cifar10, 1001 for imagenet ``"sact"``
            (TF-slim's background class), 1000 for ``"torchvision"``.

    Raises:
        ConfigError: a field is out of range; the message names it and the allowed values.
    """
    _check_choice("dataset", dataset, tuple(BACKBONE_VARIANTS))
    _check_choice("variant", variant, BACKBONE_VARIANTS[dataset], f" for {dataset}")
    if num_classes is None:
        num_classes = DEFAULT_NUM_CLASSES[(dataset, variant)]
    elif not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} is not allowed; must be an integer >= 1")
    if dataset == "cifar10":
        return build_cifar_resnet(cifar_units(depth), variant, int(num_classes), int(depth))
    imagenet_units(depth)
    return build_imagenet_resnet(int(depth), variant, int(num_classes))
