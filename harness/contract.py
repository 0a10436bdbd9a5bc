"""The method contract: everything the harness needs from a method, in one file.

A *method* (ResNet, ACT, SACT, PACT, yours) is a :class:`MethodSpec` published under the
``pact_harness.methods`` entry-point group. Its ``build`` hook returns an :class:`AdaptiveModel`,
an ``nn.Module`` whose ``forward`` returns a :class:`ModelOutput`. The harness trains, evaluates,
counts FLOPs, profiles memory and runs grids through these hooks only; it never imports a method
by name. Start a new method from ``methods/template/``.

Shapes: ``B`` is the batch, ``L`` the number of residual units in a block, ``H, W`` the spatial
size of a block's state. Image-level methods report per-sample counts ``[B]``; spatial methods
report per-position counts ``[B, H, W]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from harness.errors import ConfigError, check_choice

#: Executions of a deterministic evaluation. ``masked`` runs every unit on the whole batch and
#: masks (the reference); ``early_exit`` removes halted samples from the batch as it goes;
#: ``gathered`` runs only active positions (spatial methods).
EXECUTIONS = ("masked", "early_exit", "gathered")


@dataclass(frozen=True)
class EvalSpec:
    """How to run one evaluation forward pass.

    ``mode`` is one of the model's ``eval_modes``; ``execution`` one of its ``executions``;
    ``threshold`` is the halting threshold of a deterministic mode (PACT: the mode of q is
    ``h > 0.5``); ``generator`` seeds the random modes.
    """

    mode: str
    execution: str = "masked"
    threshold: float = 0.5
    generator: torch.Generator | None = None


@dataclass
class ModelOutput:
    """What every forward pass returns.

    ``units_executed`` holds, per block, the number of residual units that really contribute to
    each sample (``[B]``, int64) or position (``[B, H, W]``, int64): the FLOP accounting multiplies
    these by per-unit costs. ``halting_evaluated`` holds, per block, how many halting branches
    were evaluated (same shapes; absent means ``min(units_executed, L - 1)``).
    ``ponder_cost`` holds the per-sample or per-position ponder cost per block (ACT's N + R,
    PACT's expected N), for maps and logging. ``aux_losses`` are scalar terms, already weighted,
    that :meth:`AdaptiveModel.loss` adds to the task loss.
    """

    logits: torch.Tensor
    units_executed: list[torch.Tensor] = field(default_factory=list)
    halting_evaluated: list[torch.Tensor] | None = None
    ponder_cost: list[torch.Tensor] = field(default_factory=list)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class AdaptiveModel(nn.Module, ABC):
    """Base class of every model a method builds. Subclasses set the class attributes."""

    #: Evaluation modes the model supports; the first is its default.
    eval_modes: ClassVar[tuple[str, ...]] = ("standard",)
    #: Modes that draw random numbers (take a seed and a repeat count).
    random_modes: ClassVar[tuple[str, ...]] = ()
    #: Modes whose halting rule has a threshold parameter.
    threshold_modes: ClassVar[tuple[str, ...]] = ()
    #: True when units_executed is per position ``[B, H, W]`` rather than per sample ``[B]``.
    spatial: ClassVar[bool] = False

    #: The wrapped backbone (``stem``, ``blocks`` of units, ``head``; see ``baselines``).
    backbone: nn.Module

    @abstractmethod
    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Run the network; ``spec=None`` is the training forward pass."""

    def loss(
        self, output: ModelOutput, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Return the training objective as a dict; ``loss`` (scalar) is required.

        The default is cross-entropy (with ``label_smoothing``, the run's
        ``optim.label_smoothing``) plus every auxiliary loss; other entries are for logging.
        """
        task = nn.functional.cross_entropy(output.logits, targets, label_smoothing=label_smoothing)
        terms = {"task_loss": task}
        terms.update(output.aux_losses)
        terms["loss"] = sum(terms.values())
        return terms

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Executions (of :data:`EXECUTIONS`) giving this mode's exact outputs; first = fastest."""
        return ("masked",)

    def halting_branches(self) -> list[list[nn.Module]]:
        """Per block, the halting branch after each unit but the last (empty if none)."""
        return [[] for _ in self.backbone.blocks]

    def on_epoch_start(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Hook called before each training epoch (e.g. temperature annealing); returns logs."""
        return {}

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes left fresh when initialising from a vanilla checkpoint."""
        return ()


def check_eval_spec(model: AdaptiveModel, spec: EvalSpec) -> None:
    """Refuse a mode the model lacks, an execution the mode does not offer, a bad threshold."""
    name = type(model).__name__
    check_choice(f"eval mode ({name})", spec.mode, model.eval_modes)
    check_choice(
        f"execution of mode {spec.mode!r}", spec.execution, model.executions_for(spec.mode)
    )
    if not 0.0 < spec.threshold < 1.0:
        raise ConfigError(f"threshold={spec.threshold} must be in (0, 1)")


@dataclass(frozen=True)
class ModelSpec:
    """The backbone a run asks for (method-independent)."""

    dataset: str = "cifar10"
    depth: int = 32
    variant: str = "sact"
    num_classes: int | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    ``config_cls`` is a frozen dataclass of the method's hyper-parameters (its defaults are the
    paper's); ``build(model_spec, method_config)`` returns an instance of ``model_cls`` (whose
    class attributes tell the harness the modes and executions); ``search_space`` maps config
    fields to the default grid of values; ``time_penalty_field`` names the field that trades
    accuracy for compute (``tau``, ``lambda_``) or is None for a non-adaptive method.
    """

    name: str
    config_cls: type
    model_cls: type[AdaptiveModel]
    build: Callable[[ModelSpec, Any], AdaptiveModel]
    search_space: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    time_penalty_field: str | None = None
    description: str = ""
    #: Display name in tables and figures (``PACT (reconstruction)``); empty: ``name``.
    label: str = ""
