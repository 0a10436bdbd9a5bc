"""FLOPs per image under one convention, from fvcore unit costs and executed-unit counts.

Convention (printed with every table, :data:`CONVENTION`): FLOPs = 2 x multiply-accumulates of
convolutions and linear layers, as the SACT code's flopsometer counts them. Batch norm,
activations, pooling, additions and biases are not counted; halting branches are. For spatial
methods a unit after the first of a block is charged per active position, and a conv that feeds a
3x3 conv (the unit's ``DILATED_CONVS``) on the 3x3-dilated active set; the first unit of each
block (it holds the stride) is dense. A unit that did not run still pays its shortcut (the
unit's ``SHORTCUT_MODULES``: a projection shortcut must change the state's shape even when the
residual branch is skipped; parameter-free shortcuts cost 0).

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
from harness.errors import ConfigError

CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of convolutions and linear layers (fvcore per unit, "
    "combined with executed-unit counts); halting branches included; BN, activations, pooling, "
    "additions and biases excluded; spatial: convs feeding a 3x3 conv on the 3x3-dilated "
    "active set, first unit of each block dense; a skipped unit's projection shortcut charged"
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
    active_per_position: float  # the other residual convs, per output position
    shortcut: int = 0  # its SHORTCUT_MODULES (a projection): run, and charged, where it skipped


@dataclass
class HaltingCost:
    """MACs of one halting branch: per-position convs and per-image (pooled) layers."""

    per_position: float
    per_image: int
    total: int  # dense cost (per_position * H * W + per_image)


def _input_shapes(model: AdaptiveModel, image_size: tuple[int, int]):
    """Input and output shapes of every unit (one dense batch-1 pass of the backbone) and the
    input shape of every decision branch (one batch-1 training-mode forward of the model,
    ``spec=None``, modules in eval mode, the random state restored), recorded by hooks."""
    backbone = model.backbone
    device = next(backbone.parameters()).device
    unit_io: dict[tuple[int, int], tuple[torch.Size, torch.Size]] = {}
    branch_in: dict[tuple[int, int], torch.Size] = {}
    image = torch.zeros(1, 3, *image_size, device=device)
    with torch.no_grad(), evaluating(backbone):
        x = backbone.stem(image)
        for b, block in enumerate(backbone.blocks):
            for u, unit in enumerate(block):
                out = unit(x)
                unit_io[(b, u)] = (x.shape, out.shape)
                x = out
    branches = model.decision_branches()
    if not any(branches):
        return unit_io, branch_in, x
    hooks = []
    for b, block_branches in enumerate(branches):
        for k, branch in enumerate(block_branches):

            def record(mod, args, key=(b, k)) -> None:  # a pre-hook must return None
                branch_in.setdefault(key, args[0].shape)

            hooks.append(branch.register_forward_pre_hook(record))
    try:
        with torch.no_grad(), evaluating(model), torch.random.fork_rng(devices=[]):
            model(image)  # the training forward evaluates every decision branch
    finally:
        for hook in hooks:
            hook.remove()
    return unit_io, branch_in, x


def _architecture_costs(model: AdaptiveModel, image_size: tuple[int, int]):
    backbone = model.backbone
    device = next(backbone.parameters()).device
    unit_io, branch_in, final = _input_shapes(model, image_size)
    image = torch.zeros(1, 3, *image_size, device=device)
    stem, _ = count_macs(backbone.stem, image)
    head, _ = count_macs(_Head(backbone.head), torch.zeros_like(final))
    units: list[list[UnitCost]] = []
    halting: list[list[HaltingCost]] = []
    for b, block in enumerate(backbone.blocks):
        units.append([])
        for u, unit in enumerate(block):
            in_shape, out_shape = unit_io[(b, u)]
            positions = out_shape[2] * out_shape[3]
            total, by_module = count_macs(unit, torch.zeros(1, *in_shape[1:], device=device))
            dilated = sum(by_module.get(name, 0) for name in getattr(unit, "DILATED_CONVS", ()))
            shortcut = sum(by_module.get(name, 0) for name in getattr(unit, "SHORTCUT_MODULES", ()))
            units[-1].append(
                UnitCost(
                    total,
                    dilated / positions,
                    (total - dilated - shortcut) / positions,
                    shortcut,
                )
            )
    for b, branches in enumerate(model.decision_branches()):
        halting.append([])
        for k, branch in enumerate(branches):
            if (b, k) not in branch_in:
                raise ConfigError(
                    f"{type(model).__name__}: decision branch {k} of block {b} did not run in "
                    "the training forward (spec=None), so its FLOPs cannot be counted; every "
                    "branch of decision_branches() must run there"
                )
            shape = branch_in[(b, k)]
            positions = shape[2] * shape[3] if len(shape) == 4 else 1
            h_total, h_by_module = count_macs(branch, torch.zeros(1, *shape[1:], device=device))
            per_position = sum(
                h_by_module.get(name, 0)
                for name, sub in branch.named_modules()
                if isinstance(sub, nn.Conv2d)
            )
            halting[-1].append(
                HaltingCost(per_position / positions, h_total - per_position, h_total)
            )
    while len(halting) < len(units):
        halting.append([])
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
            tuple(
                tuple(type(b).__qualname__ for b in block) for block in model.decision_branches()
            ),
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
        """FLOPs per image ``[B]`` and per block ``[B, num_blocks]`` (stem/head not in blocks).

        Each unit that ran (``output.units_ran``) is charged at its own cost, whatever the
        pattern; each decision branch where ``output.branches_ran`` says it ran (default: where
        the unit of the same index ran)."""
        batch = output.logits.shape[0]
        if not output.units_ran:  # a non-adaptive model executes everything
            per_block = torch.tensor(
                [[2.0 * sum(c.total for c in block) for block in self.units]], dtype=torch.float64
            ).expand(batch, -1)
        else:
            blocks = []
            for b, ran in enumerate(output.units_ran):
                ran = ran.detach().cpu().bool()
                branches = self._branches_ran(output, b, ran)
                if ran.dim() == 2:
                    blocks.append(self._block_per_sample(b, ran, branches))
                else:
                    blocks.append(self._block_per_position(b, ran, branches))
            per_block = 2.0 * torch.stack(blocks, dim=1)
        total = per_block.sum(1) + 2.0 * (self.stem_macs + self.head_macs)
        return total, per_block

    def _branches_ran(self, output: ModelOutput, b: int, ran: torch.Tensor) -> torch.Tensor:
        count = len(self.halting[b])
        if output.branches_ran is not None:
            return output.branches_ran[b].detach().cpu().bool()
        return ran[:, :count]  # the contract's default: branch k ran where unit k ran

    def _block_per_sample(self, b: int, ran: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
        """MACs of block ``b`` per sample: every unit and branch that ran, at its own cost."""
        return self._block(b, ran, branches)

    def _block_per_position(
        self, b: int, ran: torch.Tensor, branches: torch.Tensor
    ) -> torch.Tensor:
        """Spatial charging from the per-position masks ``[B, L, H, W]`` and ``[B, K, H, W]``.

        A unit is charged at the positions where it ran, its ``DILATED_CONVS`` (the convs that
        feed a 3x3 conv) on the 3x3 dilation of that set (SACT code: ``max_pool2d(mask, 3, 1,
        SAME)``); a unit that ran everywhere (the first unit of a SACT block, which holds the
        stride) costs exactly its dense count. A decision branch is charged per position where it
        ran and its pooled part once per image where it ran anywhere.
        """
        return self._block(b, ran, branches)

    def _block(self, b: int, ran: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
        macs = torch.zeros(ran.shape[0], dtype=torch.float64)
        for u in range(len(self.units[b])):
            macs += self.unit_macs(b, u, ran[:, u])
        for k in range(len(self.halting[b])):
            macs += self.branch_macs(b, k, branches[:, k])
        return macs

    def unit_macs(self, b: int, u: int, ran: torch.Tensor) -> torch.Tensor:
        """MACs per sample ``[B]`` of unit ``u`` of block ``b`` from its mask: ``[B]`` (the
        unit's dense cost where it ran, its shortcut's where it skipped) or ``[B, H, W]``
        (spatial charging, see :meth:`_block_per_position`, plus the dense shortcut)."""
        cost = self.units[b][u]
        ran = ran.detach().cpu().bool()
        if ran.dim() == 1:  # where it skipped, its shortcut still ran
            return torch.where(ran, float(cost.total), float(cost.shortcut)).to(torch.float64)
        active = ran.to(torch.float64).unsqueeze(1)  # [B, 1, H, W]
        dilated = F.max_pool2d(active, 3, stride=1, padding=1)
        charged = dilated.sum((1, 2, 3)) * cost.dilated_per_position
        charged += active.sum((1, 2, 3)) * cost.active_per_position
        charged += float(cost.shortcut)  # the shortcut runs on every position
        everywhere = ran.flatten(1).all(1)  # exact dense count, no rounding
        return torch.where(everywhere, float(cost.total), charged)

    def branch_macs(self, b: int, k: int, ran: torch.Tensor) -> torch.Tensor:
        """MACs per sample ``[B]`` of decision branch ``k`` of block ``b`` from where it ran
        (``[B]`` or ``[B, H, W]``): per position where it ran, its pooled part once per image."""
        halt = self.halting[b][k]
        here = ran.detach().cpu().to(torch.float64)
        if here.dim() == 1:
            return here * float(halt.total)
        here = here.flatten(1)
        return here.sum(1) * halt.per_position + (here.amax(1) > 0).to(torch.float64) * (
            halt.per_image
        )

    def branches_ran(self, output: ModelOutput, b: int) -> torch.Tensor:
        """Where the decision branches of block ``b`` ran (the contract's default applied)."""
        return self._branches_ran(output, b, output.units_ran[b].detach().cpu().bool())
