"""SACT: ACT at every spatial position of each block (Figurnov et al. 2017; SACT code).

The first unit of a block holds the stride and runs at every position. Each later unit updates
only positions that have not halted: ``unit(x, residual_mask)`` adds the residual where the mask
is 1, so halted positions keep their value. Halting scores come from
:class:`~methods.common.SpatialHalting`; the ACT rule (N, R, p, N + R) is applied per position and
the ponder cost is averaged over positions and the batch.

Executions: ``masked`` (the SACT code's behaviour) evaluates every conv densely and masks;
``gathered`` (the default) runs a unit on its active positions only (plus the 3x3 halo its first
conv needs, :mod:`methods.common.gather`) when the active fraction is below the break-even of its
width, and masked otherwise. The FLOP accounting charges only active (and, for convs feeding a
3x3 conv, 3x3-dilated active) positions in both: what the gathered execution pays.
"""

from __future__ import annotations

import torch

from baselines import build_backbone
from harness.contract import EvalSpec
from methods.act.halting import act_step
from methods.common import BlockResult, HaltingResNet, take
from methods.common.gather import masked_unit
from methods.sact.config import SACTConfig


class SACTResNet(HaltingResNet):
    """Spatially adaptive computation time."""

    eval_modes = ("act",)
    spatial = True

    def __init__(self, backbone, config: SACTConfig):
        super().__init__(backbone, config.tau, config.halting_bias_init)
        self.eps = config.eps

    #: Active fraction below which ``gathered`` gathers a unit (None: the measured break-even
    #: of its width, :data:`methods.common.gather.BREAK_EVEN`; 1.0: always, 0.0: never).
    gather_below: float | None = None

    def computes_only_what_ran(self, execution: str) -> bool:
        """No execution computes only what the accountant charges: ``gathered`` runs dense
        (masked) units above the break-even fraction, and even when it gathers every unit
        (``gather_below >= 1``) the halting branch's 3x3 conv runs at every position."""
        return False

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """``gathered`` (each unit gathered or masked, whichever its active fraction makes
        faster) or ``masked``; both exact, FLOPs charged on active positions."""
        return ("gathered", "masked")

    def run_block(self, b: int, x, spec: EvalSpec | None) -> BlockResult:
        """Per-position ACT; output = sum_l p^l x^l accumulated unit by unit."""
        units, branches = self.backbone.blocks[b], self.halting[b]
        x = take(x)
        out = cum = n = ponder = active = None
        gathered = spec is not None and spec.execution == "gathered"
        for l, unit in enumerate(units):
            if l == 0:
                x = unit(x, None)
            else:
                x = masked_unit(unit, x, active, gathered, self.gather_below)
            if out is None:
                batch, _, height, width = x.shape
                cum = x.new_zeros(batch, height, width)
                n = torch.zeros(batch, height, width, dtype=torch.long, device=x.device)
                ponder = x.new_zeros(batch, height, width)
                active = torch.ones(batch, height, width, dtype=torch.bool, device=x.device)
                out = x.new_zeros(x.shape)
            last = l == len(units) - 1
            h = torch.ones_like(cum) if last else torch.sigmoid(branches[l](x))
            weight, halts, new_cum = act_step(cum, h, self.eps, last)
            halts = halts & active
            weight = torch.where(active, weight, torch.zeros_like(weight))
            out = out + weight.unsqueeze(1) * x
            n = torch.where(halts, l + 1, n)
            ponder = torch.where(halts, (l + 1) + (1.0 - cum), ponder)
            cum = torch.where(active, new_cum, cum)
            active = active & ~halts
            if spec is not None and not bool(active.any()):  # no host read in training
                break  # batch-level early stop (SACT code's act_early_stopping)
        return BlockResult(out, n, ponder, penalty=ponder)


def build_sact(model, config: SACTConfig) -> SACTResNet:
    """SACT on the requested backbone (its units must accept a residual mask)."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return SACTResNet(backbone, config)
