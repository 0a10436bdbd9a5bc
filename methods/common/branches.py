"""Halting branches (SACT code, ``resnet_act.get_halting_proba`` / ``get_halting_proba_conv``).

Both return halting *logits*; ``sigmoid(logit)`` is the halting probability h^l. Working in
logits keeps PACT's Concrete relaxation and thresholds numerically exact.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageHalting(nn.Module):
    """h^l = sigmoid(Linear(BN(GlobalAvgPool(x^l)))), one logit per image ``[B]``.

    The SACT code uses a 1x1 conv on the pooled features (the same map as a Linear) with its bias
    initialised to -3, so that early in training h ~ 0.047 and most units run.
    """

    def __init__(self, channels: int, bias_init: float = -3.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, 1)
        nn.init.constant_(self.fc.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halting logit per image, ``[B]``."""
        return self.fc(self.bn(x.mean((2, 3)))).squeeze(1)


class SpatialHalting(nn.Module):
    """Per-position halting logit (SACT): 3x3 conv on BN(x) (bias -3) + Linear on pooled BN(x).

    The local term sees the 3x3 neighbourhood; the global term (no bias) is shared by all
    positions of an image. Output ``[B, H, W]``.
    """

    def __init__(self, channels: int, bias_init: float = -3.0):
        super().__init__()
        self.local_bn = nn.BatchNorm2d(channels)
        self.local_conv = nn.Conv2d(channels, 1, kernel_size=3, padding=1, bias=True)
        nn.init.constant_(self.local_conv.bias, bias_init)
        self.global_bn = nn.BatchNorm1d(channels)
        self.global_fc = nn.Linear(channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halting logit per position, ``[B, H, W]``."""
        local = self.local_conv(self.local_bn(x)).squeeze(1)
        pooled = self.global_fc(self.global_bn(x.mean((2, 3))))
        return local + pooled.view(-1, 1, 1)
