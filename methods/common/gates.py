"""Stochastic gates that plug-ins may reuse instead of writing them by hand.

- :func:`logistic_noise`: ``logit + noise > 0`` is a Bernoulli(sigmoid(logit)) draw;
- :func:`binary_concrete`: the relaxed (Gumbel / binary Concrete) sample at a temperature;
- :func:`straight_through`: hard 0/1 forward, the soft sample's gradient backward.
"""

from __future__ import annotations

import torch

from methods.common.model import logistic_noise


def binary_concrete(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``sigmoid((logits + Logistic noise) / temperature)`` (Maddison et al. 2017)."""
    noise = logistic_noise(tuple(logits.shape), generator, logits.device)
    return torch.sigmoid((logits + noise) / temperature)


def straight_through(soft: torch.Tensor) -> torch.Tensor:
    """``round(soft)`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


__all__ = ["binary_concrete", "logistic_noise", "straight_through"]
