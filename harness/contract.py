"""The method contract: everything the harness needs from a method, in one file.

A *method* (ResNet, ACT, SACT, PACT, yours) is a :class:`MethodSpec` published under the
``pact_harness.methods`` entry-point group. Its ``build`` hook returns an :class:`AdaptiveModel`,
an ``nn.Module`` whose ``forward`` returns a :class:`ModelOutput`. The harness trains, evaluates,
counts FLOPs, profiles memory and runs grids through these hooks only; it never imports a method
by name. Start a new method from ``methods/template/``.

The contract, in four parts (the first three are checked when the method is registered, see
:func:`harness.registry.check_spec`; a built backbone by :func:`check_backbone`):

- :class:`MethodSpec`: the name, the config class, the model class, ``build`` and the time
  penalty (one spelling rule: a *field name* of the config class).
- :class:`MethodConfig`: the config class, a dataclass with a default for every field and a
  ``validate()`` method.
- :class:`AdaptiveModel`: the model class; ``forward``, ``executions_for`` and
  ``decision_branches`` are required (abstract), ``loss``, ``on_epoch_start`` and
  ``finetune_skip_prefixes`` are optional (their defaults fit a method without them).
- :class:`Backbone`: what the harness reads from ``model.backbone`` (stem, blocks of units,
  head, block channels); :class:`SpatialUnit` for the units spatial methods mask.

Shapes: ``B`` is the batch, ``L`` the number of residual units in a block, ``C`` channels,
``H, W`` the spatial size of a block's state. A forward reports *masks* of the units that ran:
image-level methods ``[B, L]`` per block, spatial methods ``[B, L, H, W]``; the harness
verifies them before it charges them (:mod:`harness.costs.verify`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from harness.errors import ConfigError, check_choice

#: Executions of a deterministic evaluation. ``masked`` runs every unit on the whole batch and
#: masks (the reference); ``early_exit`` removes halted samples from the batch as it goes;
#: ``gathered`` runs only active positions (spatial methods).
EXECUTIONS = ("masked", "early_exit", "gathered")
#: Where a model's decision branches sit relative to their units (``branch_placement``).
BRANCH_PLACEMENTS = ("after", "before")


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
    """What every forward pass returns: the logits and, for adaptive models, *which* units ran.

    ``units_ran`` holds, per block, a bool mask of the residual units that really ran: per
    sample ``[B, L]`` (``L`` units in the block), or per position ``[B, L, H, W]`` for spatial
    methods (``H, W``: the block's state size; ``spatial = True``). Any pattern is allowed: a
    halting method runs a prefix (units 1..N), a gate (ConvNet-AIG, SkipNet, BlockDrop) skips
    any unit. The FLOP accountant charges each unit that ran at its own cost.

    ``branches_ran`` holds, per block, the same kind of mask for the model's decision branches
    (:meth:`AdaptiveModel.decision_branches`: ``[B, K]`` or ``[B, K, H, W]`` for the block's
    ``K`` branches): where each branch was evaluated. ``None`` is allowed only for a model that
    declares ``branch_placement = "after"`` (:class:`AdaptiveModel`): branch ``k`` reads unit
    ``k``'s output and ran exactly where unit ``k`` ran (the halting convention: the branch after
    unit ``k`` decides whether unit ``k + 1`` runs). A gate evaluated before its unit
    (``branch_placement = "before"``) reports its own mask: it runs wherever it is asked, also
    where its unit is then skipped. There is no default pairing.

    ``units_executed`` (derived, read-only) is the count per sample or position, ``[B]`` or
    ``[B, H, W]``, for logs and maps. ``ponder_cost`` holds the per-sample or per-position
    ponder cost per block (ACT's N + R, PACT's expected N; empty if the method has none).
    ``aux_losses`` are scalar terms, already weighted, that :meth:`AdaptiveModel.loss` adds to
    the task loss. Build masks for prefix patterns with :func:`prefix_mask`.
    """

    logits: torch.Tensor
    units_ran: list[torch.Tensor] = field(default_factory=list)
    branches_ran: list[torch.Tensor] | None = None
    ponder_cost: list[torch.Tensor] = field(default_factory=list)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def units_executed(self) -> list[torch.Tensor]:
        """Per block, the number of units that ran per sample ``[B]`` or position ``[B, H, W]``."""
        return [mask.sum(1) for mask in self.units_ran]


def prefix_mask(counts: torch.Tensor, length: int) -> torch.Tensor:
    """The mask of units ``1..N`` for per-sample ``[B]`` or per-position ``[B, H, W]`` counts
    ``N``: bool ``[B, length]`` or ``[B, length, H, W]`` (unit ``l`` ran iff ``l < N``)."""
    steps = torch.arange(length, device=counts.device)
    if counts.dim() == 1:
        return steps.unsqueeze(0) < counts.unsqueeze(1)
    return steps.view(1, -1, *([1] * (counts.dim() - 1))) < counts.unsqueeze(1)


class Backbone(Protocol):
    """What the harness (FLOPs, memory, timing, ``--init-from``) reads from ``model.backbone``.

    ``baselines.ResNetBackbone`` is the reference implementation; any ``nn.Module`` with these
    attributes works. The backbone must be an attribute named ``backbone`` of the model, so that
    its state-dict keys start with ``backbone.`` (``--init-from`` copies exactly those).

    Attributes:
        stem: images ``[B, 3, H_in, W_in]`` -> first state ``[B, C_0, H_0, W_0]``.
        blocks: an ``nn.ModuleList`` of blocks, each an ``nn.ModuleList`` (or other iterable
            module with ``len``) of residual units; ``blocks[i][j]`` is unit ``j`` of block ``i``
            and maps ``[B, C, H, W]`` -> ``[B, block_channels[i], H', W']`` (the first unit of a
            block may change channels and stride, the others keep the shape). FLOPs are counted
            once per unit by calling it on one image.
        head: final state ``[B, block_channels[-1], H, W]`` -> logits ``[B, num_classes]``
            (final BN/activation, pooling and classifier included).
        block_channels: output channels of each block (``len(block_channels) == len(blocks)``);
            methods size their halting branches with it.
        load_torchvision_state_dict (optional): a method taking a torchvision ResNet state
            dict, for ``--init-from torchvision:resnetNN`` (``baselines``' torchvision variant).

    Calling the backbone, ``backbone(images) -> logits``, runs every unit densely (the vanilla
    network the timing compares against). Optional attributes, read with ``getattr``:
    ``dataset``, ``variant``, ``depth``, ``num_classes`` (part of the FLOP cache key) and
    ``halting_conventions`` (how methods build halting branches; ``baselines``).
    :func:`check_backbone` checks an instance (``isinstance`` cannot: ``nn.Module`` keeps its
    submodules out of the instance dict).
    """

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module
    block_channels: Sequence[int]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The vanilla forward pass: ``[B, 3, H_in, W_in]`` -> logits ``[B, num_classes]``."""
        ...


class SpatialUnit(Protocol):
    """A residual unit that spatial methods (``spatial = True``) can mask per position.

    ``unit(x, residual_mask)`` returns ``shortcut(x) + residual(x) * residual_mask`` with
    ``residual_mask`` ``[B, 1, H_out, W_out]`` (``None``: dense). ``DILATED_CONVS`` names the conv
    submodules whose output feeds a 3x3 conv (charged on the 3x3-dilated active set);
    ``identity_shortcut`` is True when ``shortcut(x) is x``, so that a zero mask keeps the state.
    """

    DILATED_CONVS: tuple[str, ...]
    identity_shortcut: bool

    def __call__(self, x: torch.Tensor, residual_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C_out, H_out, W_out]``, the residual gated by the mask."""
        ...


@runtime_checkable
class MethodConfig(Protocol):
    """A method's hyper-parameters: the type of :attr:`MethodSpec.config_cls`.

    A dataclass (frozen by convention) whose every field has a default, the paper's value. The
    harness builds it from the ``method`` section of a run config: a field ``lambda_`` is the
    key ``method.lambda`` in files and flags (:func:`harness.config.config_key` drops a trailing
    underscore); values are checked against the field annotations. Unknown keys are an error.
    """

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the bad field (``method.tau=-1 must be >= 0``)."""
        ...


class AdaptiveModel(nn.Module, ABC):
    """Base class of every model a method builds.

    Subclasses set the class attributes and implement the three abstract hooks
    (``forward``, ``executions_for``, ``decision_branches``): the harness cannot guess how a model
    halts or what it costs. ``loss``, ``on_epoch_start`` and ``finetune_skip_prefixes`` are
    optional hooks whose defaults suit a method that needs nothing special.
    """

    #: Evaluation modes the model supports; the first is its default.
    eval_modes: ClassVar[tuple[str, ...]] = ("standard",)
    #: Modes that draw random numbers (take a seed and a repeat count); a subset of eval_modes.
    random_modes: ClassVar[tuple[str, ...]] = ()
    #: Modes whose halting rule has a threshold parameter; a subset of eval_modes.
    threshold_modes: ClassVar[tuple[str, ...]] = ()
    #: Where the decision branches sit (:data:`BRANCH_PLACEMENTS`): ``"after"`` their unit (a
    #: halting branch: branch ``k`` reads unit ``k``'s output, runs where unit ``k`` ran, and
    #: ``ModelOutput.branches_ran`` may be None), or ``"before"`` it (a gate: every output must
    #: report ``branches_ran``). Required when the model has decision branches and returns
    #: ``branches_ran=None``; checked by :func:`harness.conformance.check_output`.
    branch_placement: ClassVar[str | None] = None
    #: Relaxed modes: the forward mixes every unit's output (e.g. a Concrete relaxation's
    #: weighted sum of all states), so every unit runs everywhere by construction. Their masks
    #: must say so, and their FLOPs are verified by counting, not by perturbing unit outputs (a
    #: weight that underflowed to 0 would look like a discarded unit); a subset of eval_modes.
    relaxed_modes: ClassVar[tuple[str, ...]] = ()
    #: True when units_executed is per position ``[B, H, W]`` rather than per sample ``[B]``
    #: (the backbone's units must then be :class:`SpatialUnit`).
    spatial: ClassVar[bool] = False

    #: The wrapped backbone (see :class:`Backbone`).
    backbone: Backbone

    @abstractmethod
    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Required: images ``[B, 3, H, W]`` -> :class:`ModelOutput`; ``spec=None`` trains."""

    @abstractmethod
    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Required: executions (of :data:`EXECUTIONS`) exact for ``mode``; first = fastest."""

    @abstractmethod
    def decision_branches(self) -> list[list[nn.Module]]:
        """Required: per block, the modules whose output decides which units run ([] if none).

        ACT/PACT: the halting branch after each unit but the last; a gate method: the gate of
        each unit it may skip. Their FLOPs are charged where ``ModelOutput.branches_ran`` says
        they ran; each must run in the training forward (``spec=None``), where its input shape
        is recorded for the count."""

    def loss(
        self, output: ModelOutput, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Optional: the training objective as a dict; ``loss`` (scalar) is required.

        The default is cross-entropy (with ``label_smoothing``, the run's
        ``optim.label_smoothing``) plus every auxiliary loss; other entries are for logging.
        """
        task = nn.functional.cross_entropy(output.logits, targets, label_smoothing=label_smoothing)
        terms = {"task_loss": task}
        terms.update(output.aux_losses)
        terms["loss"] = sum(terms.values())
        return terms

    def on_epoch_start(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Optional: called before each training epoch (e.g. annealing); returns logs."""
        return {}

    def computes_only_what_ran(self, execution: str) -> bool:
        """Optional: True if ``execution`` computes exactly the units and branches it reports
        (what the FLOP accountant charges), so that an independent count of the real forward
        must equal the accounting (``check-method``). Default: every execution but ``masked``.
        An execution that falls back to dense work for speed returns False."""
        return execution != "masked"

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """Optional: state-dict key prefixes left fresh when initialising from a vanilla run."""
        return ()


def check_backbone(backbone: Any, spatial: bool = False) -> None:
    """Raise ``ConfigError`` naming the first way ``backbone`` misses :class:`Backbone`.

    With ``spatial``, every unit must also be a :class:`SpatialUnit` (mask argument,
    ``DILATED_CONVS``, ``identity_shortcut``).
    """
    name = type(backbone).__name__
    for attr in ("stem", "blocks", "head", "block_channels"):
        if not hasattr(backbone, attr):
            raise ConfigError(f"backbone {name} has no {attr!r} (see harness.contract.Backbone)")
    if not callable(backbone):
        raise ConfigError(f"backbone {name} is not callable (backbone(images) -> logits)")
    blocks, channels = backbone.blocks, list(backbone.block_channels)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"backbone {name}: blocks is a {type(blocks).__name__}, not a ModuleList")
    if len(channels) != len(blocks):
        raise ConfigError(
            f"backbone {name}: {len(channels)} block_channels for {len(blocks)} blocks"
        )
    for b, block in enumerate(blocks):
        if not isinstance(block, nn.Module) or len(block) == 0:
            raise ConfigError(f"backbone {name}: block {b} is not a non-empty module of units")
        for u, unit in enumerate(block if spatial else ()):
            missing = [a for a in ("DILATED_CONVS", "identity_shortcut") if not hasattr(unit, a)]
            forward = getattr(unit, "forward", unit)
            if "residual_mask" not in inspect.signature(forward).parameters:
                missing.append("residual_mask argument")
            if missing:
                raise ConfigError(
                    f"backbone {name}: unit {u} of block {b} ({type(unit).__name__}) is not a "
                    f"SpatialUnit: no {', '.join(missing)}"
                )


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
    """The backbone a run asks for (method-independent).

    ``dataset`` (``cifar10``: 32x32 inputs; ``imagenet``: 224x224), ``depth`` (CIFAR 6n+2,
    ImageNet 50/101/152), ``variant`` (``sact``, ``he``, ...; see ``baselines``) and
    ``num_classes`` (None: the dataset's, or the data's when a run knows it).
    """

    dataset: str = "cifar10"
    depth: int = 32
    variant: str = "sact"
    num_classes: int | None = None


#: A method's config class (``MethodSpec[ACTConfig]``: ``build`` takes an ``ACTConfig``).
ConfigT = TypeVar("ConfigT", bound=MethodConfig)


@dataclass(frozen=True)
class MethodSpec(Generic[ConfigT]):
    """A registered method.

    ``name`` is the method's name (``--method``), equal to its entry-point name.
    ``config_cls`` is a :class:`MethodConfig` dataclass of the method's hyper-parameters (its
    defaults are the paper's); ``build(model_spec, method_config)``, called with an instance of
    ``config_cls`` (built from the run's ``method`` section and validated by the harness),
    returns an instance of ``model_cls``, an :class:`AdaptiveModel` subclass whose class
    attributes tell the harness the modes and executions.

    One spelling rule: ``time_penalty_field`` and the keys of ``search_space`` are *field names*
    of ``config_cls``, exactly as in the dataclass (``tau``, ``lambda_``). Files, flags, presets
    and result columns use the derived *config key* (:func:`harness.config.config_key`: a
    trailing underscore dropped, ``lambda``). Registration refuses any other spelling.
    ``time_penalty_field`` names the field that trades accuracy for compute, or is None for a
    non-adaptive method; ``search_space`` maps fields to the default grid of values;
    ``label`` is the display name of reports (empty: ``name``).
    """

    name: str
    config_cls: type[ConfigT]
    model_cls: type[AdaptiveModel]
    build: Callable[[ModelSpec, ConfigT], AdaptiveModel]
    search_space: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    time_penalty_field: str | None = None
    description: str = ""
    #: Display name in tables and figures (``PACT (reconstruction)``); empty: ``name``.
    label: str = ""
    #: A note printed under every report table that holds this method's rows (for example that
    #: the method is a reconstruction, not the paper's code); empty: none.
    table_note: str = ""
    #: Training cost per image relative to the vanilla backbone of the same depth (masked
    #: execution, halting branches included), for ``grid --estimate`` when no throughput of this
    #: method was measured; None: unknown (the estimate then assumes the dearest registered
    #: method's cost and says so).
    train_cost: float | None = None
    #: The backbone variants ``build`` accepts (``model.variant``, ``--variant``), checked
    #: before it is called; a method that builds its own backbone names it here. Empty: the
    #: harness backbones' variants (``baselines``), which check them themselves.
    variants: tuple[str, ...] = ()
