"""ACT on ResNet blocks (Figurnov et al. 2017, image-level; SACT code ``act.py``).

Block output = sum_l p^l x^l with the halting distribution p of :func:`act_halting`; the loss adds
tau * sum over blocks of the batch-mean ponder cost N + R. Two executions give the same logits:
``masked`` runs every unit on the whole batch (the training forward and the reference), and
``early_exit`` removes each sample from the batch as soon as it halts and stops the block when
every sample has halted (the SACT code's batch-level ``act_early_stopping`` is the special case
where all samples halt together).
"""

from __future__ import annotations

import torch

from baselines import build_backbone
from harness.contract import EvalSpec
from methods.act.config import ACTConfig
from methods.act.halting import act_halting, act_step
from methods.common import BlockResult, HaltingResNet, take
from methods.common.execution import (
    ACT_COMPACT_FRACTION,
    MIN_ROWS,
    compaction_keep,
    count,
    should_compact,
)


class ACTResNet(HaltingResNet):
    """Image-level ACT: one halting score per image after each unit but the last."""

    eval_modes = ("act",)
    spatial = False
    #: Early exit: compact the batch once this fraction of it has halted (0: at every halt).
    compact_fraction: float = ACT_COMPACT_FRACTION
    #: Early exit: a compaction never leaves fewer rows (halted rows pad; 1: exact).
    min_rows: int = MIN_ROWS

    def __init__(self, backbone, config: ACTConfig):
        super().__init__(backbone, config.tau, config.halting_bias_init)
        self.eps = config.eps

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Early exit (fastest) or the masked reference."""
        return ("early_exit", "masked")

    def run_block(self, b: int, x, spec: EvalSpec | None) -> BlockResult:
        """Training and ``masked`` run all units; ``early_exit`` drops halted samples."""
        if spec is not None and spec.execution == "early_exit":
            return self._early_exit(b, x)
        return self._masked(b, x)

    def _masked(self, b: int, x) -> BlockResult:
        units, branches = self.backbone.blocks[b], self.halting[b]
        x = take(x)
        states, logits = [], []
        for l, unit in enumerate(units):
            x = unit(x)
            states.append(x)
            if l < len(branches):
                logits.append(branches[l](x))
        h = torch.sigmoid(torch.stack(logits, 1)) if logits else x.new_zeros(x.shape[0], 0)
        distribution, ponder, n = act_halting(h, self.eps)
        out = distribution[:, 0].view(-1, 1, 1, 1) * states[0]
        for l in range(1, len(states)):
            out = out + distribution[:, l].view(-1, 1, 1, 1) * states[l]
        return BlockResult(out, n, ponder, penalty=ponder)

    def _early_exit(self, b: int, x) -> BlockResult:
        """Halted samples leave the batch once enough have halted (:mod:`methods.common.execution`).

        Rows that halted but are still in the batch get weight 0, so the output equals the
        masked execution's; the accumulator keeps the state's memory format.
        """
        units, branches = self.backbone.blocks[b], self.halting[b]
        x = take(x)
        batch = x.shape[0]
        device = x.device
        rows: torch.Tensor | None = None  # batch index of each row of x (None: all, in order)
        alive = torch.ones(batch, dtype=torch.bool, device=device)
        cum = torch.zeros(batch, device=device, dtype=x.dtype)
        n = torch.zeros(batch, device=device, dtype=torch.long)
        ponder = torch.zeros(batch, device=device, dtype=x.dtype)
        n_all, ponder_all = n, ponder  # per batch sample (written back at each compaction)
        out = acc = None
        for l, unit in enumerate(units):
            x = unit(x)
            last = l == len(units) - 1
            h = torch.ones_like(cum) if last else torch.sigmoid(branches[l](x))
            weight, halts, new_cum = act_step(cum, h, self.eps, last)
            halts = halts & alive
            weight = torch.where(alive, weight, torch.zeros_like(weight))
            n = torch.where(halts, l + 1, n)
            ponder = torch.where(halts, (l + 1) + (1.0 - cum), ponder)
            cum = new_cum
            alive = alive & ~halts
            # The accumulator of sum_l p^l x^l (ACT must keep it), one row per row of x: a
            # dense fused multiply-add in place (index_add_ into the full batch is slow on CPU:
            # a scatter per unit); the first term keeps the state's memory format.
            if acc is None:
                acc = weight.view(-1, 1, 1, 1) * x
            else:
                acc.addcmul_(weight.view(-1, 1, 1, 1), x)
            if last:
                break
            running = count(alive)
            if running == 0:
                break
            if should_compact(running, len(alive), self.compact_fraction, self.min_rows):
                if rows is None:  # the full-batch results; leaving rows are final in them
                    out, n_all, ponder_all = acc, n.clone(), ponder.clone()
                    rows = torch.arange(batch, device=device)
                else:
                    out.index_copy_(0, rows, acc)
                    n_all[rows], ponder_all[rows] = n, ponder
                keep = compaction_keep(alive, running, self.min_rows)
                rows, x, acc = rows[keep], x[keep], acc[keep]
                n, ponder, cum = n[keep], ponder[keep], cum[keep]
                alive = alive[keep]
        if rows is None:
            out, n_all, ponder_all = acc, n, ponder
        else:
            out.index_copy_(0, rows, acc)
            n_all[rows], ponder_all[rows] = n, ponder
        return BlockResult(out, n_all, ponder_all, penalty=ponder_all)


def build_act(model, config: ACTConfig) -> ACTResNet:
    """ACT on the requested backbone."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return ACTResNet(backbone, config)
