"""Helpers for tests that need untrained halting models whose positions/images really halt.

An untrained network in eval mode normalises with BN running statistics of 0 and 1, so its
halting logits hardly differ between images and positions. :func:`calibrate_bn` sets every
running statistic to the exact batch statistics of one training-mode pass, as a trained network's
would be; together with a halting bias around 0 (``halting_bias_init=0``), images and positions
then halt at different units.
"""

from __future__ import annotations

import torch
from torch import nn


def calibrate_bn(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Running BN statistics := those of ``images`` (one training-mode pass); returns ``model``
    in eval mode. Parameters are not touched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one pass, exactly the batch statistics
    model.train()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return model.eval()
