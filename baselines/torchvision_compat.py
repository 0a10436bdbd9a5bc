"""Load torchvision ResNet weights into the ``"torchvision"`` ImageNet backbone.

Key names map one to one::

    conv1, bn1                      -> stem.conv, stem.bn
    layer{k}.{j}.conv1 ... bn3      -> blocks.{k-1}.{j}.conv1 ... bn3
    layer{k}.{j}.downsample.0 / .1  -> blocks.{k-1}.{j}.shortcut_conv / shortcut_bn
    fc                              -> head.fc
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from harness.errors import ConfigError

_LAYER = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_DOWNSAMPLE = {"downsample.0.": "shortcut_conv.", "downsample.1.": "shortcut_bn."}
_TOP = {"conv1.": "stem.conv.", "bn1.": "stem.bn.", "fc.": "head.fc."}


def torchvision_key(key: str) -> str:
    """Map a torchvision ResNet state-dict key onto this package's name for it."""
    match = _LAYER.match(key)
    if match:
        layer, unit, rest = match.groups()
        for old, new in _DOWNSAMPLE.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
        return f"blocks.{int(layer) - 1}.{unit}.{rest}"
    for old, new in _TOP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"not a torchvision ResNet state-dict key: {key!r}")


def load_torchvision_state_dict(
    backbone: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Copy a torchvision ``resnet50/101/152`` state dict into a ``"torchvision"`` backbone.

    ``backbone`` is a :class:`baselines.ResNetBackbone` (its ``dataset`` and ``variant`` say
    whether it can take the weights); this module needs only those two attributes, so that it
    does not import the backbone module, which imports it.

    Returns ``(missing_keys, unexpected_keys)`` as ``nn.Module.load_state_dict`` does.

    Raises:
        ConfigError: the backbone is not the ImageNet ``"torchvision"`` variant.
        KeyError: a key is not a torchvision ResNet key (only with ``strict``).
    """
    dataset, variant = getattr(backbone, "dataset", None), getattr(backbone, "variant", None)
    if dataset != "imagenet" or variant != "torchvision":
        raise ConfigError(
            f"variant={variant!r} (dataset={dataset!r}) cannot load torchvision "
            "weights; allowed: dataset 'imagenet' with variant 'torchvision'"
        )
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        try:
            mapped[torchvision_key(key)] = value
        except KeyError:
            if strict:
                raise
            mapped[key] = value
    return backbone.load_state_dict(mapped, strict=strict)
