"""The two reductions every job shares: a per-image mean of a contract tensor, a sample std."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def per_image_mean(value: torch.Tensor) -> torch.Tensor:
    """Reduce a per-sample ``[B]`` or per-position ``[B, H, W]`` tensor to ``[B]`` (float64)."""
    value = value.detach().to(torch.float64)
    return value.flatten(1).mean(1) if value.dim() > 1 else value


def sample_std(values: Sequence[float] | torch.Tensor) -> float:
    """Sample standard deviation (n - 1 in the denominator); 0.0 for fewer than two values."""
    values = [float(v) for v in (values.flatten().tolist() if torch.is_tensor(values) else values)]
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
