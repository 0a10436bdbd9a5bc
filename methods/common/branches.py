"""Halting branches (SACT code, ``resnet_act.get_halting_proba`` / ``get_halting_proba_conv``).

Both return halting *logits*; ``sigmoid(logit)`` is the halting probability h^l. Working in
logits keeps PACT's Concrete relaxation and thresholds numerically exact.

The SACT code builds the branches inside the backbone's TF-slim arg scope, so their batch norm
(decay, epsilon), the activation after it and the weight init are the backbone's: the backbone
supplies them as :class:`baselines.HaltingConventions` (``backbone.halting_conventions``). For
the ``sact`` CIFAR model that is BN (decay 0.9, eps 1e-3) -> leaky ReLU 0.1 -> conv/linear with
TF variance-scaling init; for the ``sact`` ImageNet model BN (decay 0.997, eps 1e-5) with no
activation; for ``he``/``torchvision`` PyTorch's BN and init defaults and no activation.
"""

from __future__ import annotations

import torch
from torch import nn

from baselines import TORCH_HALTING, HaltingConventions


class ImageHalting(nn.Module):
    """h^l = sigmoid(Linear(act(BN(GlobalAvgPool(x^l))))), one logit per image ``[B]``.

    The SACT code uses a 1x1 conv on the pooled features (the same map as a Linear) with its bias
    initialised to -3, so that early in training h ~ 0.047 and most units run. ``act`` is the
    backbone's halting activation (leaky ReLU 0.1 for the ``sact`` CIFAR model, else identity).
    """

    def __init__(
        self,
        channels: int,
        bias_init: float = -3.0,
        conventions: HaltingConventions = TORCH_HALTING,
    ):
        super().__init__()
        self.bn, self.act = conventions.norm(channels, spatial=False)
        self.fc = nn.Linear(channels, 1)
        conventions.init(self)
        nn.init.constant_(self.fc.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halting logit per image, ``[B]``."""
        return self.fc(self.act(self.bn(x.mean((2, 3))))).squeeze(1)


class SpatialHalting(nn.Module):
    """Per-position halting logit (SACT): local 3x3 conv on act(BN(x)) (bias -3) plus a global
    linear term on act(BN(GlobalAvgPool(x))) (no bias), shared by all positions of an image.

    The BN of the global term normalises the pooled features (``global_bn`` after
    ``reduce_mean`` in the SACT code). Output ``[B, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        bias_init: float = -3.0,
        conventions: HaltingConventions = TORCH_HALTING,
    ):
        super().__init__()
        self.local_bn, self.local_act = conventions.norm(channels, spatial=True)
        self.local_conv = nn.Conv2d(channels, 1, kernel_size=3, padding=1, bias=True)
        self.global_bn, self.global_act = conventions.norm(channels, spatial=False)
        self.global_fc = nn.Linear(channels, 1, bias=False)
        conventions.init(self)
        nn.init.constant_(self.local_conv.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halting logit per position, ``[B, H, W]``."""
        local = self.local_conv(self.local_act(self.local_bn(x))).squeeze(1)
        pooled = self.global_fc(self.global_act(self.global_bn(x.mean((2, 3)))))
        return local + pooled.view(-1, 1, 1)
