"""ACT halting maths (Graves 2016, eqs. 4-12; SACT code ``act.py``) as pure functions.

For a block of L units with halting probabilities h^1..h^{L-1} (h^L = 1, the last unit halts):

    N = min{ n : sum_{l<=n} h^l >= 1 - eps }                       (halting step, 1-based)
    R = 1 - sum_{l<N} h^l                                          (remainder)
    p^l = h^l for l < N,  p^N = R,  p^l = 0 for l > N              (halting distribution)
    rho = N + R                                                    (ponder cost; N gets no gradient)

Everything works per sample (``h`` of shape ``[B, L-1]``) or per position (``[B, L-1, H, W]``).
The running sum is accumulated unit by unit in the input's dtype, in the same order as the
early-exit executions accumulate it (:func:`act_step`), so both halt at the same unit even at ties
with the 1 - eps boundary.
"""

from __future__ import annotations

import torch

from harness.errors import ConfigError


def check_eps(eps: float) -> None:
    """eps must lie in (0, 1) (the SACT code uses 0.01)."""
    if not 0.0 < eps < 1.0:
        raise ConfigError(f"eps={eps} must be in (0, 1); the SACT code uses 0.01")


def running_sum(h_full: torch.Tensor) -> torch.Tensor:
    """Cumulative sum over dim 1, one addition per unit (matches :func:`act_step`)."""
    total = torch.zeros_like(h_full[:, 0])
    sums = []
    for step in h_full.unbind(1):
        total = total + step
        sums.append(total)
    return torch.stack(sums, dim=1)


def act_halting(
    halting_proba: torch.Tensor, eps: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halting distribution ``[B, L, ...]``, ponder cost N + R ``[B, ...]`` and N (int64).

    ``halting_proba`` holds h^1..h^{L-1}, shape ``[B, L-1]`` or ``[B, L-1, H, W]``; the last unit
    is forced to halt. Gradients reach the ponder cost only through R.
    """
    check_eps(eps)
    if halting_proba.dim() not in (2, 4):
        raise ValueError(
            f"halting_proba must be [B, L-1] or [B, L-1, H, W], got {tuple(halting_proba.shape)}"
        )
    batch, _, *rest = halting_proba.shape
    ones = halting_proba.new_ones((batch, 1, *rest))
    h_full = torch.cat([halting_proba, ones], dim=1)  # [B, L, ...], h^L = 1
    num_units = h_full.shape[1]
    cum = running_sum(h_full)
    step = torch.arange(1, num_units + 1, device=h_full.device)
    step = step.view(1, num_units, *([1] * (h_full.dim() - 2)))
    reached = cum >= 1.0 - eps
    # The last unit always reaches the threshold (cum^L >= 1 > 1 - eps), so N <= L.
    n = torch.where(reached, step, num_units + 1).amin(dim=1)  # [B, ...] int64, no gradient
    # sum_{l<N} h^l = cum^{N-1}, with cum^0 = 0.
    cum_padded = torch.cat([torch.zeros_like(cum[:, :1]), cum], dim=1)
    before = torch.gather(cum_padded, 1, (n - 1).unsqueeze(1)).squeeze(1)
    remainder = 1.0 - before
    is_before = step < n.unsqueeze(1)
    at_n = step == n.unsqueeze(1)
    distribution = torch.where(is_before, h_full, torch.zeros_like(h_full))
    distribution = distribution + at_n.to(h_full.dtype) * remainder.unsqueeze(1)
    ponder = n.to(h_full.dtype) + remainder
    return distribution, ponder, n


def act_step(
    cum: torch.Tensor, h: torch.Tensor, eps: float, last: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One unit of on-the-fly ACT for positions still running.

    Given the running sum ``cum`` = sum_{j<l} h^j and this unit's ``h`` = h^l, returns the
    weight p^l of this unit's output (h^l, or the remainder 1 - cum if it halts here), whether
    it halts here, and the new running sum.
    """
    new_cum = cum + h
    halts = new_cum >= 1.0 - eps
    if last:
        halts = torch.ones_like(halts)
    weight = torch.where(halts, 1.0 - cum, h)
    return weight, halts, new_cum
