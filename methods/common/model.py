"""The block-by-block model that every halting method builds on.

:class:`HaltingResNet` owns the backbone and one halting branch after every unit but the last of
each block, runs ``stem -> run_block(0) -> ... -> head`` and turns the per-block results into a
:class:`~harness.contract.ModelOutput`. A method implements :meth:`HaltingResNet.run_block` for its
training forward and each evaluation mode and execution.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from baselines import TORCH_HALTING
from harness.contract import AdaptiveModel, EvalSpec, ModelOutput, check_eval_spec, prefix_mask
from harness.errors import ConfigError
from methods.common.branches import ImageHalting, SpatialHalting


@dataclass
class BlockResult:
    """What one block returns: its output state and per-sample/position bookkeeping.

    ``penalty`` is the per-sample (``[B]``) or per-position (``[B, H, W]``) quantity the method's
    time penalty multiplies (ACT: N + R; PACT: -E_q[log p(N)]).
    """

    state: torch.Tensor | None
    units: torch.Tensor
    ponder: torch.Tensor
    penalty: torch.Tensor
    halting_evaluated: torch.Tensor | None = None


def take(x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The block input; when handed over in a one-element list, the list is emptied.

    :meth:`HaltingResNet.forward` passes each block's input this way so that no caller keeps a
    reference to it: the input is freed as soon as the first unit has consumed it, and the peak
    memory of an evaluation pass is that of the method, not of the bookkeeping.
    """
    return x.pop() if isinstance(x, list) else x


def logistic_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Standard logistic noise log(u) - log(1 - u): ``logit(h) + noise > 0`` is Bernoulli(h)."""
    # No generator=None: under torch.compile with dynamic shapes, rand's generator overload
    # refuses a symbolic shape (the training forward of a method with noise failed to compile).
    if generator is None:
        u = torch.rand(shape, device=device)
    else:
        u = torch.rand(shape, generator=generator, device=device)
    tiny = torch.finfo(u.dtype).tiny
    u = u.clamp(tiny, 1.0 - torch.finfo(u.dtype).eps)
    return torch.log(u) - torch.log1p(-u)


class HaltingResNet(AdaptiveModel):
    """A backbone with a halting branch after every unit but the last of every block."""

    #: Name of the auxiliary loss term, and the config field that weights it.
    penalty_name: ClassVar[str] = "ponder_loss"
    #: Halting branch ``k`` reads unit ``k``'s output and runs where unit ``k`` ran.
    branch_placement = "after"

    def __init__(self, backbone: nn.Module, penalty_weight: float, bias_init: float = -3.0):
        super().__init__()
        self.backbone = backbone
        self.penalty_weight = float(penalty_weight)
        branch_cls = SpatialHalting if self.spatial else ImageHalting
        if self.spatial:
            self._check_spatial_backbone(backbone)
        # The backbone says how its halting branches are normalised and initialised (the SACT
        # code builds them inside the model's arg scope); a backbone that does not say gets
        # PyTorch's defaults.
        conventions = getattr(backbone, "halting_conventions", TORCH_HALTING)
        self.halting = nn.ModuleList(
            nn.ModuleList(
                branch_cls(channels, bias_init, conventions) for _ in range(len(block) - 1)
            )
            for channels, block in zip(backbone.block_channels, backbone.blocks, strict=True)
        )

    def _check_spatial_backbone(self, backbone: nn.Module) -> None:
        """Spatial methods freeze halted positions through ``unit(x, residual_mask)``."""
        name = type(self).__name__
        for b, block in enumerate(backbone.blocks):
            for u, unit in enumerate(block):
                takes_mask = "residual_mask" in inspect.signature(unit.forward).parameters
                if not takes_mask or not hasattr(unit, "DILATED_CONVS"):
                    raise ConfigError(
                        f"{name} is spatial and needs a backbone with spatial blocks (units "
                        f"called as unit(x, residual_mask) with DILATED_CONVS); block {b} unit "
                        f"{u} ({type(unit).__name__}) is not one"
                    )
                if u > 0 and not getattr(unit, "identity_shortcut", False):
                    raise ConfigError(
                        f"{name}: unit {u} of block {b} has no identity shortcut, so masked "
                        "positions would not keep their value"
                    )

    def decision_branches(self) -> list[list[nn.Module]]:
        """Per block, the branches after units 1..L-1."""
        return [list(branches) for branches in self.halting]

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """Halting branches stay fresh when starting from a vanilla network (SACT code)."""
        return ("halting.",)

    def check_spec(self, spec: EvalSpec | None) -> None:
        """Refuse an unknown mode, an execution the mode does not offer, a bad threshold."""
        if spec is not None:
            check_eval_spec(self, spec)

    def run_block(
        self, b: int, x: torch.Tensor | list[torch.Tensor], spec: EvalSpec | None
    ) -> BlockResult:
        """Run block ``b`` on state ``x`` (read it with :func:`take`); ``spec=None`` trains."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Stem, every block through :meth:`run_block`, head; the weighted time penalty."""
        self.check_spec(spec)
        state = [self.backbone.stem(images)]
        results = []
        for b in range(len(self.backbone.blocks)):
            result = self.run_block(b, state, spec)  # empties ``state`` (see ``take``)
            state = [result.state]
            result.state = None  # only the current state stays alive
            results.append(result)
        logits = self.backbone.head(state.pop())
        # tau * sum over blocks of the batch (and position) mean of the penalty (SACT code,
        # training_utils.add_all_ponder_costs).
        penalty = sum(r.penalty.float().mean() for r in results)
        # Units 1..N ran; the branch after unit k ran where unit k ran (the contract's default),
        # unless a block reports how many branches it evaluated. Masks are built after the
        # head, when the activations are gone, so they never raise the memory peak.
        blocks = self.backbone.blocks
        evaluated = [r.halting_evaluated for r in results]
        return ModelOutput(
            logits=logits,
            units_ran=[prefix_mask(r.units, len(blocks[b])) for b, r in enumerate(results)],
            branches_ran=None
            if all(e is None for e in evaluated)
            else [
                prefix_mask(
                    e if e is not None else r.units.clamp(max=len(self.halting[b])),
                    len(self.halting[b]),
                )
                for b, (e, r) in enumerate(zip(evaluated, results, strict=True))
            ],
            ponder_cost=[r.ponder.detach() for r in results],
            aux_losses={self.penalty_name: self.penalty_weight * penalty},
        )
