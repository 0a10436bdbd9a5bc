"""Stochastic gates that plug-ins may reuse instead of writing them by hand.

- :func:`logistic_noise`: ``logit + noise > 0`` is a Bernoulli(sigmoid(logit)) draw;
- :func:`binary_concrete`: the relaxed (Gumbel / binary Concrete) sample at a temperature;
- :func:`straight_through`: hard 0/1 forward, the soft sample's gradient backward;
- :func:`run_or_shortcut`: a gated unit, its shortcut alone where the gate closed.
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


def run_or_shortcut(
    unit: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor, execution: str
) -> torch.Tensor:
    """A gated unit: the unit where ``keep`` (bool ``[B]``), its shortcut alone elsewhere
    (``unit.skipped``). ``masked`` computes both on the whole batch and selects; ``gathered``
    runs each on its own images only (what the FLOP accounting charges)."""
    if execution == "masked":
        return torch.where(keep.view(-1, 1, 1, 1), unit(x), unit.skipped(x))
    run, skip = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
    parts = []
    if len(run):
        parts.append((run, unit(x.index_select(0, run))))
    if len(skip):
        parts.append((skip, unit.skipped(x.index_select(0, skip))))
    new = parts[0][1].new_empty(x.shape[0], *parts[0][1].shape[1:])
    for idx, values in parts:
        new = new.index_copy(0, idx, values)
    return new


__all__ = ["binary_concrete", "logistic_noise", "run_or_shortcut", "straight_through"]
