"""Gathered execution of a spatially masked unit: compute only the active positions.

A spatial method's unit after the first of a block computes ``x + residual(x) * mask``: halted
positions keep their value. The masked execution evaluates every conv densely and throws most of
it away; the gathered execution evaluates each conv only where its output is needed, as a
matrix product on gathered 3x3 patches (im2col at the chosen positions only):

1. ``conv1`` at the 3x3 dilation ``D`` of the active set ``A`` (``conv2`` at ``A`` reads those);
2. its BN and activation on those rows only;
3. the result scattered into a zero-padded map, ``conv2`` at ``A`` from patches of that map;
4. the state copied, ``x[A] += residual[A]`` (post-activation units: ``relu`` there).

This is what the FLOP convention charges (``DILATED_CONVS`` on the dilated set, the rest on the
active set), so the realized speed-up can be set beside the FLOP reduction. It is exact in
exact arithmetic; in float32 the sums run in another order than the dense conv's (agreement to
~1e-5). BN uses its running statistics: gathered is an evaluation execution (eval mode).

Supported units: the CIFAR units of :mod:`baselines.units` (``CifarPreActUnit``,
``CifarBasicUnit``) with an identity shortcut and stride 1, which are all the masked units of a
CIFAR spatial model. Any other unit runs masked (:func:`can_gather`).

Where it pays (:func:`gather_pays`): gathering has a fixed cost per unit (the pre-activation
and a padded copy of the state, the dilation, index building, a copy of the state for the
result) and its matrix products on gathered rows run slower per FLOP than the dense conv, so it
wins only below a break-even active fraction, which depends on the block's width and the
device. Measured on this project's CPU machine (2 cores shared with other jobs, batch 128, one
CIFAR unit of 16/32/64 channels at 32x32/16x16/8x8, coherent square active regions covering
5-50% of the positions; median of 5 interleaved calls): the gathered unit ran at 0.16-0.63x the
masked unit's speed at every fraction from 5% to 50% for 16 and 32 channels, and between 0.2x
and 0.5x (with noisy outliers) for 64 channels. The break-even lies below 5% active at every
CIFAR width on that CPU, so :data:`BREAK_EVEN` is 0 there: ``gathered`` then runs every unit
masked (no sync, no overhead). CUDA is unmeasured here and also 0 until a run measures it; set
a model's ``gather_below`` (1.0: always gather) to force the gathered path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.units import CifarBasicUnit, CifarPreActUnit

#: Active fraction below which the gathered unit is faster than the masked one, per block width
#: (channels); see the module docstring for the measurement. Widths not listed use the nearest.
BREAK_EVEN: dict[int, float] = {16: 0.0, 32: 0.0, 64: 0.0}


def break_even(channels: int) -> float:
    """The break-even active fraction of a block of ``channels`` channels."""
    nearest = min(BREAK_EVEN, key=lambda c: abs(c - channels))
    return BREAK_EVEN[nearest]


def can_gather(unit: torch.nn.Module) -> bool:
    """True for the units :func:`gathered_unit` implements (identity shortcut, stride 1)."""
    return (
        isinstance(unit, (CifarPreActUnit, CifarBasicUnit))
        and unit.stride == 1
        and unit.identity_shortcut
    )


def gather_pays(unit: torch.nn.Module, active_fraction: float, below: float | None) -> bool:
    """Run ``unit`` gathered at this active fraction? ``below`` overrides the break-even
    (1.0: always gather where possible, 0.0: never)."""
    if not can_gather(unit):
        return False
    limit = break_even(unit.out_channels) if below is None else below
    return active_fraction < limit


def gather_limit(unit: torch.nn.Module, below: float | None) -> float:
    """The active fraction below which ``unit`` runs gathered (0: never)."""
    if not can_gather(unit):
        return 0.0
    return break_even(unit.out_channels) if below is None else below


def _bn(bn: torch.nn.BatchNorm2d, rows: Tensor) -> Tensor:
    """Eval-mode batch norm of ``[N, C]`` rows (running statistics)."""
    return F.batch_norm(
        rows, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
    )


_OFFSETS: dict[tuple[int, torch.device], Tensor] = {}


def _patches(padded: Tensor, flat: Tensor, width: int) -> Tensor:
    """3x3 patches ``[N, 9 * C]`` (order kh, kw, c) of a zero-padded channels-last map.

    ``padded`` is ``[B * (H + 2) * (W + 2), C]``; ``flat`` the padded-map row of each wanted
    position's top-left neighbour; ``width`` = W + 2. One ``index_select`` of 9N rows.
    """
    key = (width, flat.device)
    if key not in _OFFSETS:
        _OFFSETS[key] = torch.tensor(
            [dy * width + dx for dy in range(3) for dx in range(3)], device=flat.device
        )
    index = (flat.unsqueeze(1) + _OFFSETS[key]).flatten()
    return padded.index_select(0, index).view(len(flat), -1)


def _padded(batch: int, height: int, width: int, channels: int, like: Tensor) -> Tensor:
    """An uninitialised ``[B, H + 2, W + 2, C]`` map whose one-pixel border is zero."""
    padded = like.new_empty(batch, height + 2, width + 2, channels)
    padded[:, 0].zero_()
    padded[:, -1].zero_()
    padded[:, :, 0].zero_()
    padded[:, :, -1].zero_()
    return padded


def _conv_rows(conv: torch.nn.Conv2d, patches: Tensor) -> Tensor:
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
    if conv.bias is None:
        return patches @ weight.t()
    return torch.addmm(conv.bias, patches, weight.t())


def gathered_unit(unit: torch.nn.Module, x: Tensor, active: Tensor) -> Tensor:
    """``unit(x, active)`` computed at the active positions only (``active`` bool ``[B, H, W]``).

    Returns a new state in channels-last layout (``x`` is not modified).
    """
    batch, channels, height, width = x.shape
    pw = width + 2
    dilated = F.max_pool2d(active.unsqueeze(1).to(x.dtype), 3, stride=1, padding=1)
    flat_d = torch.nonzero(F.pad(dilated.squeeze(1) > 0, (0, 2, 0, 2)).flatten()).squeeze(1)
    flat_a = torch.nonzero(F.pad(active, (0, 2, 0, 2)).flatten()).squeeze(1)
    # A position's row in the padded map [B, H+2, W+2] is its padded-frame index (i, j) + 0;
    # its 3x3 patch starts at that row (the map is padded by one before and after).
    # The new state, channels-last [B, H, W, C]: a copy (x may already be channels-last).
    out = x.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
    if flat_a.numel() == 0:
        return out.permute(0, 3, 1, 2)
    if isinstance(unit, CifarPreActUnit):
        source = unit.preact_act(unit.preact_bn(x))  # elementwise: dense is cheapest
        conv1, bn1, act1 = unit.conv1, unit.bn1, unit.act1
    else:
        source = x
        conv1, bn1, act1 = unit.conv1, unit.bn1, unit.relu
    padded = _padded(batch, height, width, channels, x)
    padded[:, 1:-1, 1:-1] = source.permute(0, 2, 3, 1)
    hidden = act1(_bn(bn1, _conv_rows(conv1, _patches(padded.view(-1, channels), flat_d, pw))))
    # conv2's patches at A read only D and the zero border: the rest of the map stays unset.
    mid = _padded(batch, height, width, hidden.shape[1], hidden).view(-1, hidden.shape[1])
    mid.index_copy_(0, flat_d + pw + 1, hidden)
    residual = _conv_rows(unit.conv2, _patches(mid, flat_a, pw))
    rows = out.view(batch, height, width, -1)
    # flat_a in the unpadded frame: b * H * W + i * W + j from the padded-frame index.
    b, rest = flat_a // ((height + 2) * pw), flat_a % ((height + 2) * pw)
    index = b * (height * width) + (rest // pw) * width + rest % pw
    flat_out = rows.view(-1, channels)
    if isinstance(unit, CifarBasicUnit):
        residual = _bn(unit.bn2, residual)
        flat_out.index_copy_(0, index, torch.relu(flat_out.index_select(0, index) + residual))
    else:
        flat_out.index_add_(0, index, residual)
    return out.permute(0, 3, 1, 2)


def masked_unit(
    unit: torch.nn.Module, x: Tensor, active: Tensor, gathered: bool, below: float | None = None
) -> Tensor:
    """``unit(x, mask)`` of a spatial method: masked, or (``gathered``) gathered where that pays.

    With ``gathered``, the unit runs :func:`gathered_unit` when the active fraction is below the
    break-even of its width (:func:`gather_pays`; ``below`` overrides it), else masked: both are
    exact, so the choice only changes the speed. Measuring the fraction is one host sync.
    """
    limit = gather_limit(unit, below) if gathered else 0.0
    if limit > 0.0:  # only then is the active fraction measured (a host sync)
        fraction = float(active.sum()) / max(active.numel(), 1)
        if fraction < limit:
            return gathered_unit(unit, x, active)
    return unit(x, active.unsqueeze(1).to(x.dtype))
