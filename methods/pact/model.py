"""PACT and spatial PACT: discrete halting variables, Concrete training, three eval modes.

A reconstruction: the PACT paper's method section was not available, so the prior, the objective,
the relaxation, the temperature schedule and the evaluation rules below are this project's
choices (each a knob; see README.md, "What is ours, not the paper's").

Training (and the ``stochastic`` mode) is the relaxed forward: every unit runs, binary Concrete
samples z~^l = sigmoid((logit h^l + logistic noise) / T) give stick-breaking weights
w^l = z~^l s^{l-1} with the survival s^{l-1} = prod_{j<l} (1 - z~^j) (z~^L = 1), and the block
output is sum_l w^l x^l. The loss is cross-entropy (a one-sample estimate of -E_q log p(y|x,z))
plus the closed form -E_q[log p(N)] per block (:mod:`methods.pact.prior`), averaged over the batch
(and positions).

``deterministic`` halts at the first unit whose halting variable has mode 1 under q, i.e. the
first h^l > threshold (0.5 by default). That is the mode of the factorised q(z), *not* the mode
argmax_n q(N = n) of the halting step: for h = (0.4, 0.4) the rule runs all three units while
q(N) = (0.4, 0.24, 0.36) peaks at N = 1. It is the rule that allows an early exit (the decision
at unit l needs only h^1..h^l). ``sampled`` halts at the first hard sample z^l = 1
(z^l = [logit h^l + noise > 0], the same noise the relaxed forward uses). Both keep only the
current state, x^N. Executions: ``early_exit`` (halted samples leave the batch; their final states
are set aside, no accumulator) and ``masked`` (every unit on the whole batch, halted samples or
positions frozen in place).

Spatial PACT applies all of this per position with the SACT halting branch; its hard modes run
masked (a halted position keeps its value, SACT's rule) or gathered (only active positions are
computed, :mod:`methods.common.gather`). Its relaxed forward follows the same
masked trajectory: the relaxed survival s^{l-1} is the residual mask of unit l, so at T -> 0 the
relaxed forward is the ``sampled`` forward on the same noise.
"""

from __future__ import annotations

import torch

from baselines import build_backbone
from harness.contract import EvalSpec
from methods.common import BlockResult, HaltingResNet, logistic_noise, take
from methods.common.execution import (
    MIN_ROWS,
    PACT_COMPACT_FRACTION,
    compaction_keep,
    count,
    should_compact,
)
from methods.common.gather import masked_unit
from methods.pact.config import PACTConfig
from methods.pact.prior import expected_log_prior, expected_units, log_prior


class PACTResNet(HaltingResNet):
    """Probabilistic adaptive computation time, one halting variable per image and unit."""

    eval_modes = ("deterministic", "stochastic", "sampled")
    random_modes = ("stochastic", "sampled")
    relaxed_modes = ("stochastic",)  # the relaxed forward: every unit, a mixture of states
    threshold_modes = ("deterministic",)
    spatial = False
    penalty_name = "prior_loss"
    #: Early exit: compact the batch once this fraction of it has halted (0: at every halt).
    compact_fraction: float = PACT_COMPACT_FRACTION
    #: Early exit: a compaction never leaves fewer rows (halted rows pad; 1: exact).
    min_rows: int = MIN_ROWS
    #: Spatial ``gathered``: gather a unit below this active fraction (None: the measured
    #: break-even of its width, :data:`methods.common.gather.BREAK_EVEN`; 1.0: always).
    gather_below: float | None = None

    def computes_only_what_ran(self, execution: str) -> bool:
        """Image level: every execution but ``masked``. Spatial: none (``gathered`` runs dense
        units above the break-even fraction, and the halting 3x3 conv runs at every position)."""
        return not self.spatial and execution != "masked"

    def __init__(self, backbone, config: PACTConfig):
        # The prior term already carries lambda: the penalty weight is 1 (MAP objective).
        super().__init__(backbone, 1.0, config.halting_bias_init)
        self.config = config
        self.register_buffer("temperature", torch.tensor(float(config.temperature)))

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Hard modes: early exit (spatial: gathered) or masked; the relaxed forward needs
        every unit."""
        if mode == "stochastic":
            return ("masked",)
        if self.spatial:
            return ("gathered", "masked")
        return ("early_exit", "masked")

    def on_epoch_start(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Anneal the Concrete temperature; it is a buffer, so checkpoints keep it."""
        value = self.config.temperature_at(epoch, num_epochs)
        self.temperature.fill_(value)
        return {"temperature": value}

    # -- helpers ---------------------------------------------------------------------------
    def _noise(self, x: torch.Tensor, count: int, generator) -> torch.Tensor:
        """Logistic noise for the block's halting variables, ``[B, L-1(, H, W)]``."""
        shape = (x.shape[0], count) + (tuple(x.shape[2:]) if self.spatial else ())
        return logistic_noise(shape, generator, x.device)

    def _expand(self, value: torch.Tensor) -> torch.Tensor:
        """Per-sample ``[B]`` or per-position ``[B, H, W]`` -> broadcastable over channels."""
        return value.view(-1, 1, 1, 1) if not self.spatial else value.unsqueeze(1)

    def _stack(self, logits: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if logits:
            return torch.stack(logits, 1)
        return x.new_zeros(x.shape[0], 0, *(x.shape[2:] if self.spatial else ()))

    # -- forward passes --------------------------------------------------------------------
    def run_block(self, b: int, x, spec: EvalSpec | None) -> BlockResult:
        """Relaxed for training/``stochastic``; hard halting for the other modes."""
        if spec is None or spec.mode == "stochastic":
            return self._relaxed(b, x, None if spec is None else spec.generator)
        if spec.execution == "early_exit":
            return self._hard_early_exit(b, x, spec)
        return self._hard_masked(b, x, spec)

    def _relaxed(self, b: int, x, generator) -> BlockResult:
        units, branches = self.backbone.blocks[b], self.halting[b]
        x = take(x)
        temperature = self.temperature  # a device tensor: no host read at each step
        out = survive = noise = None
        logits = []
        for l, unit in enumerate(units):
            if l > 0 and self.spatial:
                # Spatial: follow the hard modes' masked trajectory. The relaxed survival
                # s^{l-1} = prod_{j<l} (1 - z~^j) gates the residual, so a position whose
                # survival is ~0 keeps its value as a halted position does (SACT's rule).
                x = unit(x, survive.unsqueeze(1))
            else:
                x = unit(x)
            if l == 0:
                noise = self._noise(x, len(branches), generator)
                survive = x.new_ones(x.shape[:1] + (x.shape[2:] if self.spatial else ()))
            if l < len(branches):
                logit = branches[l](x)
                logits.append(logit)
                z = torch.sigmoid((logit + noise[:, l]) / temperature)
                if self.config.straight_through:
                    hard = (logit + noise[:, l] > 0).to(z.dtype)
                    z = hard + z - z.detach()
                weight = survive * z
                survive = survive * (1.0 - z)
            else:
                weight = survive
            contribution = self._expand(weight) * x
            out = contribution if out is None else out + contribution
        h = torch.sigmoid(self._stack(logits, x))
        units_run = torch.full_like(h[:, 0] if h.shape[1] else survive, len(units)).long()
        penalty = -expected_log_prior(h, self.config.lambda_, self.config.prior)
        return BlockResult(out, units_run, expected_units(h), penalty)

    def _hard_noise(self, x: torch.Tensor, count: int, spec: EvalSpec) -> torch.Tensor | None:
        """The noise of the ``sampled`` mode; the deterministic rule draws none (so evaluating
        it never moves the global random state training draws from)."""
        return self._noise(x, count, spec.generator) if spec.mode == "sampled" else None

    def _halts(self, logit: torch.Tensor, noise: torch.Tensor | None, spec: EvalSpec):
        if spec.mode == "sampled":
            return logit + noise > 0
        return torch.sigmoid(logit) > spec.threshold

    def _hard_result(self, out: torch.Tensor, n: torch.Tensor, num_units: int) -> BlockResult:
        penalty = -log_prior(n, num_units, self.config.lambda_, self.config.prior).to(out.dtype)
        return BlockResult(out, n, n.to(out.dtype), penalty)

    def _hard_masked(self, b: int, x, spec: EvalSpec) -> BlockResult:
        """Every unit on the whole batch; halted samples/positions keep their state x^N."""
        units, branches = self.backbone.blocks[b], self.halting[b]
        x = take(x)
        n = active = noise = None
        for l, unit in enumerate(units):
            if l == 0:
                x = unit(x)
                noise = self._hard_noise(x, len(branches), spec)
                shape = x.shape[:1] + (x.shape[2:] if self.spatial else ())
                n = torch.full(shape, len(units), dtype=torch.long, device=x.device)
                active = torch.ones(shape, dtype=torch.bool, device=x.device)
            elif self.spatial:
                gathered = spec.execution == "gathered"
                x = masked_unit(unit, x, active, gathered, self.gather_below)
            else:
                new = unit(x)
                frozen = ~active
                new[frozen] = x[frozen]  # in place: no second state-sized tensor survives
                x = new
            if l < len(branches):
                noise_l = None if noise is None else noise[:, l]
                halts = self._halts(branches[l](x), noise_l, spec) & active
                n = torch.where(halts, l + 1, n)
                active = active & ~halts
        return self._hard_result(x, n, len(units))

    def _hard_early_exit(self, b: int, x, spec: EvalSpec) -> BlockResult:
        """Halted samples leave the batch; only the running samples' state is computed.

        A halted sample's state x^N is set aside at once (PACT keeps nothing else); the batch is
        compacted as :attr:`compact_fraction` says (default: at every halt). Set-aside states
        and the assembled output keep the state's memory format.
        """
        units, branches = self.backbone.blocks[b], self.halting[b]
        x = take(x)
        batch = x.shape[0]
        device = x.device
        rows: torch.Tensor | None = None  # batch index of each row of x (None: all, in order)
        alive = torch.ones(batch, dtype=torch.bool, device=device)
        n = torch.full((batch,), len(units), dtype=torch.long, device=device)
        finished: list[tuple[torch.Tensor, torch.Tensor]] = []
        noise = None
        running = batch
        for l, unit in enumerate(units):
            x = unit(x)
            if l == 0:
                noise = self._hard_noise(x, len(branches), spec)
            whole = running == len(alive)  # no halted row left in the batch
            if l == len(units) - 1:
                index = torch.arange(batch, device=device) if rows is None else rows
                finished.append((index, x) if whole else (index[alive], x[alive]))
                break
            noise_l = None if noise is None else (noise[:, l] if rows is None else noise[rows, l])
            halts = self._halts(branches[l](x), noise_l, spec)
            if not whole:
                halts = halts & alive
            halted = count(halts)  # the one host sync of this unit
            if halted == 0:
                continue  # nobody halted here: no copy, no bookkeeping
            index = torch.arange(batch, device=device) if rows is None else rows
            running -= halted
            finished.append((index[halts], x[halts]))
            n[index[halts]] = l + 1
            alive = alive & ~halts
            if running == 0:
                break
            if should_compact(running, len(alive), self.compact_fraction, self.min_rows):
                keep = compaction_keep(alive, running, self.min_rows)
                rows, x, alive = index[keep], x[keep], alive[keep]
        first = finished[0][1]
        if len(finished) == 1 and first.shape[0] == batch:
            return self._hard_result(first, n, len(units))  # nobody halted before the end
        channels_last = not first.is_contiguous() and first.is_contiguous(
            memory_format=torch.channels_last
        )
        out = torch.empty(
            (batch, *first.shape[1:]),
            dtype=first.dtype,
            device=first.device,
            memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        )
        while finished:  # index_copy_: a row copy (index_put_ is far slower on CPU)
            rows_done, states = finished.pop()
            out.index_copy_(0, rows_done, states)
        return self._hard_result(out, n, len(units))


class SpatialPACTResNet(PACTResNet):
    """PACT per position: SACT halting branch, first unit dense, later units masked."""

    spatial = True


def build_pact(model, config: PACTConfig) -> PACTResNet:
    """Image-level PACT on the requested backbone."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return PACTResNet(backbone, config)


def build_spatial_pact(model, config: PACTConfig) -> SpatialPACTResNet:
    """Spatial PACT on the requested backbone."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return SpatialPACTResNet(backbone, config)
