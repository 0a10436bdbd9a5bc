"""FLOPs per image under one convention, from fvcore unit costs and executed-unit counts.

Convention (printed with every table, :data:`CONVENTION`): FLOPs = 2 x multiply-accumulates of
convolutions and linear layers, as the SACT code's flopsometer counts them. Batch norm,
activations, pooling, additions and biases are not counted; halting branches are. For spatial
methods a unit after the first of a block is charged per active position, and a conv that feeds a
3x3 conv (the unit's ``DILATED_CONVS``) on the 3x3-dilated active set; the first unit of each
block (it holds the stride) is dense.

How fvcore meets input-dependent control flow, and why the accounting does not trace the adaptive
model: fvcore runs one forward pass under the TorchScript tracer and counts the ops of the recorded
graph. The trace freezes the Python control flow of the example batch: an early-exit forward
records the units that batch ran (a batch runs until its last sample halts, so every image is
charged the batch maximum), and a halting decision taken through ``.item()`` or ``bool()`` is a
constant in the graph. Worse, ops whose result only feeds such a decision are dead code in the
graph and are dropped silently: a halting branch used only to decide when to stop counts zero
(the tracer warning that would reveal it is off by default). So fvcore counts each unit, each
halting branch, the stem and the head *once*, at batch 1, each as a plain module whose output
depends on every op it holds; no control flow is traced. The forward pass itself reports what
ran, per image (``units_executed`` ``[B]``) or per position (``[B, H, W]``), and the accountant
multiplies. ``torch.utils.flop_counter.FlopCounterMode``, which sees every op that really runs,
cross-checks the result on real early-exit executions (``tests/test_flops.py``).

fvcore is unmaintained and rests on TorchScript tracing; only :func:`count_macs` touches it, so it
can be swapped for ``FlopCounterMode`` if tracing goes away.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.contract import AdaptiveModel, ModelOutput
from harness.costs import evaluating

CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of convolutions and linear layers (fvcore per unit, "
    "combined with executed-unit counts); halting branches included; BN, activations, pooling, "
    "additions and biases excluded; spatial: convs feeding a 3x3 conv on the 3x3-dilated "
    "active set, first unit of each block dense"
)

# fvcore handles that count something other than conv/linear MACs: switch them off (a handle
# returning 0; setting a handle to None does not remove fvcore's default batch-norm handle).
_ZEROED_OPS = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)


def _zero(inputs, outputs) -> int:
    return 0


def count_macs(module: nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """fvcore multiply-accumulates of conv/linear ops of ``module(example)``: total and by module.

    ``example`` should be a batch of one. The by-module counter is keyed by submodule name
    relative to ``module`` ("" is the module itself).
    """
    with warnings.catch_warnings():
        # fvcore.nn scripts a few losses at import; torch deprecates torch.jit.script.
        warnings.filterwarnings("ignore", ".*torch.jit.script.*", FutureWarning)
        warnings.filterwarnings("ignore", ".*jit.*deprecated.*", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis

        logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
        with evaluating(module):
            analysis = FlopCountAnalysis(module, (example,))
            analysis.set_op_handle(**{name: _zero for name in _ZEROED_OPS})
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            total = int(analysis.total())
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
    return total, by_module


class _Head(nn.Module):
    """Wraps the backbone head so fvcore sees a module (the head may be a plain callable)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@dataclass
class UnitCost:
    """MACs of one residual unit at batch 1, split for spatial charging."""

    total: int  # dense cost of the unit
    dilated_per_position: float  # convs feeding a 3x3 conv, per output position
    active_per_position: float  # the other convs, per output position


@dataclass
class HaltingCost:
    """MACs of one halting branch: per-position convs and per-image (pooled) layers."""

    per_position: float
    per_image: int
    total: int  # dense cost (per_position * H * W + per_image)


def _architecture_costs(model: AdaptiveModel, image_size: tuple[int, int]):
    backbone = model.backbone
    device = next(backbone.parameters()).device
    shapes: dict[tuple[int, int], torch.Size] = {}
    hooks = []
    for b, block in enumerate(backbone.blocks):
        for u, unit in enumerate(block):
            hooks.append(
                unit.register_forward_hook(
                    lambda mod, args, out, key=(b, u): shapes.__setitem__(key, out.shape)
                )
            )
    image = torch.zeros(1, 3, *image_size, device=device)
    try:
        with torch.no_grad(), evaluating(backbone):
            stem_out = backbone.stem(image)
            x = stem_out
            for block in backbone.blocks:
                for unit in block:
                    x = unit(x)
            final = x
    finally:
        for hook in hooks:
            hook.remove()

    stem, _ = count_macs(backbone.stem, image)
    head, _ = count_macs(_Head(backbone.head), torch.zeros_like(final))
    units: list[list[UnitCost]] = []
    halting: list[list[HaltingCost]] = []
    x = stem_out
    branches = model.halting_branches()
    for b, block in enumerate(backbone.blocks):
        units.append([])
        halting.append([])
        for u, unit in enumerate(block):
            out_shape = shapes[(b, u)]
            positions = out_shape[2] * out_shape[3]
            total, by_module = count_macs(unit, torch.zeros(1, *x.shape[1:], device=device))
            dilated = sum(by_module.get(name, 0) for name in getattr(unit, "DILATED_CONVS", ()))
            units[-1].append(UnitCost(total, dilated / positions, (total - dilated) / positions))
            x = torch.zeros(1, *out_shape[1:], device=device)
            if b < len(branches) and u < len(branches[b]):
                branch = branches[b][u]
                h_total, h_by_module = count_macs(branch, x)
                per_position = sum(
                    h_by_module.get(name, 0)
                    for name, sub in branch.named_modules()
                    if isinstance(sub, nn.Conv2d)
                )
                halting[-1].append(
                    HaltingCost(per_position / positions, h_total - per_position, h_total)
                )
    return stem, head, units, halting


_CACHE: dict[tuple, tuple] = {}


class FlopAccountant:
    """Per-image FLOPs of a forward pass, from cached fvcore unit costs and executed counts."""

    def __init__(self, model: AdaptiveModel, image_size: tuple[int, int]):
        backbone = model.backbone
        key = (
            type(model).__module__,
            type(model).__qualname__,
            getattr(backbone, "dataset", None),
            getattr(backbone, "variant", None),
            getattr(backbone, "depth", None),
            getattr(backbone, "num_classes", None),
            tuple(len(block) for block in backbone.blocks),
            tuple(type(b).__qualname__ for block in model.halting_branches() for b in block),
            sum(p.numel() for p in model.parameters()),
            tuple(image_size),
        )
        if key not in _CACHE:
            _CACHE[key] = _architecture_costs(model, tuple(image_size))
        self.stem_macs, self.head_macs, self.units, self.halting = _CACHE[key]
        self.spatial = model.spatial

    @property
    def full_flops(self) -> float:
        """FLOPs of the fully executed network with every halting branch evaluated."""
        macs = self.stem_macs + self.head_macs
        macs += sum(c.total for block in self.units for c in block)
        macs += sum(c.total for block in self.halting for c in block)
        return 2.0 * macs

    @property
    def vanilla_flops(self) -> float:
        """FLOPs of the plain backbone (no halting branches)."""
        macs = self.stem_macs + self.head_macs + sum(c.total for b in self.units for c in b)
        return 2.0 * macs

    def per_image(self, output: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """FLOPs per image ``[B]`` and per block ``[B, num_blocks]`` (stem/head not in blocks)."""
        batch = output.logits.shape[0]
        if not output.units_executed:  # a non-adaptive model executes everything
            per_block = torch.tensor(
                [[2.0 * sum(c.total for c in block) for block in self.units]], dtype=torch.float64
            ).expand(batch, -1)
        else:
            blocks = []
            for b, counts in enumerate(output.units_executed):
                evaluated = (
                    None if output.halting_evaluated is None else output.halting_evaluated[b]
                )
                if counts.dim() == 1:
                    blocks.append(self._block_per_sample(b, counts, evaluated))
                else:
                    blocks.append(self._block_per_position(b, counts, evaluated))
            per_block = 2.0 * torch.stack(blocks, dim=1)
        total = per_block.sum(1) + 2.0 * (self.stem_macs + self.head_macs)
        return total, per_block

    def _block_per_sample(self, b: int, counts: torch.Tensor, evaluated) -> torch.Tensor:
        """Units 1..N of block ``b`` and halting branches 1..min(N, L-1) (or ``evaluated``)."""
        counts = counts.detach().long().cpu()
        unit_cum = torch.tensor([0] + [c.total for c in self.units[b]], dtype=torch.float64)
        unit_cum = unit_cum.cumsum(0)
        halt_cum = torch.tensor([0] + [c.total for c in self.halting[b]], dtype=torch.float64)
        halt_cum = halt_cum.cumsum(0)
        if evaluated is None:
            evaluated = counts.clamp(max=len(self.halting[b]))
        evaluated = evaluated.detach().long().cpu()
        return unit_cum[counts] + halt_cum[evaluated]

    def _block_per_position(self, b: int, counts: torch.Tensor, evaluated) -> torch.Tensor:
        """Spatial charging from the per-position executed-unit map ``[B, H, W]``.

        Unit 1 is dense. Unit ``u > 1`` is charged at positions with ``counts >= u``, its
        ``DILATED_CONVS`` on the 3x3 dilation of that set (SACT code: ``max_pool2d(mask, 3, 1,
        SAME)``). The halting branch after unit ``u`` is charged per position where it was
        evaluated (``evaluated >= u``, default ``min(counts, L - 1)``) and its pooled part once
        per image where it ran anywhere.
        """
        counts = counts.detach().cpu()
        if evaluated is None:
            evaluated = counts.clamp(max=len(self.halting[b]))
        evaluated = evaluated.detach().cpu()
        batch = counts.shape[0]
        macs = torch.full((batch,), float(self.units[b][0].total), dtype=torch.float64)
        for u, cost in enumerate(self.units[b]):
            active = (counts > u).to(torch.float64).unsqueeze(1)  # [B, 1, H, W]
            if u > 0:
                dilated = F.max_pool2d(active, 3, stride=1, padding=1)
                macs += dilated.sum((1, 2, 3)) * cost.dilated_per_position
                macs += active.sum((1, 2, 3)) * cost.active_per_position
            if u < len(self.halting[b]):
                halt = self.halting[b][u]
                evaluated_here = (evaluated > u).to(torch.float64).flatten(1)
                macs += evaluated_here.sum(1) * halt.per_position
                macs += (evaluated_here.amax(1) > 0).to(torch.float64) * halt.per_image
        return macs
