"""Template for a new method: copy this folder into your own package and fill it in.

It is a complete, runnable method that executes every unit (so it trains and evaluates like the
plain ResNet) and marks with ``TODO`` the places where an adaptive method decides what to run.
It is deliberately **not** registered; publish your copy through an entry point in *your*
package's ``pyproject.toml``::

    [project.entry-points."pact_harness.methods"]
    my_method = "my_package.my_method:SPEC"

then ``pip install -e .`` (entry points are read from the installed metadata, so reinstall after
adding one) and run ``pact-harness methods`` to see it and
``pact-harness train --method my_method ...`` to train it. The harness talks to your method only
through :mod:`harness.contract`; read its docstrings for the exact shapes. A spec that breaks the
contract (an abstract hook left out, a time-penalty field the config lacks) is listed as broken
by ``pact-harness methods`` with the reason; ``harness.registry.check_spec(SPEC)`` says the same
in your tests, and ``harness.models.create_model("my_method", depth=20)`` builds the model in a
notebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines import build_backbone
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput, ModelSpec
from harness.errors import ConfigError


@dataclass(frozen=True)
class TemplateConfig:
    """Your method's hyper-parameters; the defaults should be the paper's.

    Every field needs a default. Fields become config keys: ``--set method.time_penalty=0.1``
    (a trailing underscore is dropped, so ``lambda_`` is written ``lambda``). Unknown keys are
    rejected by the harness. ``SPEC.time_penalty_field`` and ``SPEC.search_space`` name fields
    as spelled here (``lambda_``), never the config key.
    """

    time_penalty: float = 0.0

    def validate(self) -> None:
        """Called before any work starts: raise ConfigError naming the field and allowed values."""
        if self.time_penalty < 0:
            raise ConfigError(f"method.time_penalty={self.time_penalty} must be >= 0")


class TemplateModel(AdaptiveModel):
    """Wraps a backbone (``stem``, ``blocks`` of units, ``head``) and runs it block by block."""

    #: Modes your evaluation offers; the first is the default. Random modes get a seeded
    #: ``spec.generator`` and are repeated; threshold modes get ``spec.threshold``.
    eval_modes = ("standard",)
    random_modes = ()
    threshold_modes = ()
    #: True if you count executed units per position ([B, H, W]) instead of per sample ([B]).
    spatial = False
    #: Where your decision branches (decision_branches()) sit: "after" their unit (a halting
    #: branch reading the unit's output: it ran where the unit ran, branches_ran may be None) or
    #: "before" it (a gate: report branches_ran, where each gate was evaluated).
    branch_placement = "after"

    def __init__(self, backbone, config: TemplateConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        # TODO: create your halting/gating modules here, one per unit you may skip, and return
        # them from decision_branches() so the FLOP accounting charges them.

    # -- required hooks (abstract in AdaptiveModel) --------------------------------------

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Executions that give this mode's exact outputs, fastest first."""
        return ("masked",)

    def decision_branches(self) -> list[list[nn.Module]]:
        """Per block, the modules that decide which units run (halting branches, gates)."""
        # TODO: return your halting modules, e.g. [list(branches) for branches in self.halting]
        return [[] for _ in self.backbone.blocks]

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """``spec is None`` while training; otherwise ``spec.mode`` says how to evaluate."""
        x = self.backbone.stem(images)
        ran = []
        for block in self.backbone.blocks:
            for unit in block:
                x = unit(x)  # TODO: decide per sample (or position) whether to run the unit
            # Which units really ran, per sample [B, L] (spatial: [B, L, H, W]): the FLOP
            # accounting charges each unit that ran at its own fvcore cost, whatever the pattern.
            ran.append(torch.ones(images.shape[0], len(block), dtype=torch.bool, device=x.device))
        # TODO: put your time penalty (already weighted) into aux_losses; loss() adds it to CE.
        penalty = images.new_zeros(())
        return ModelOutput(
            logits=self.backbone.head(x),
            units_ran=ran,
            # branches_ran=None: branch k ran where unit k ran (branch_placement "after");
            # a gate before its unit ("before") reports a mask of where it was evaluated.
            ponder_cost=[r.sum(1).to(images.dtype) for r in ran],
            aux_losses={"time_penalty_loss": self.config.time_penalty * penalty},
        )

    # -- optional hooks: AdaptiveModel's defaults are shown; delete the ones you do not need --

    def on_epoch_start(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Called before each training epoch (PACT anneals its temperature); returns logs."""
        return {}

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes left fresh by ``--init-from`` a vanilla run (your branches)."""
        return ()


def build(model: ModelSpec, config: TemplateConfig) -> TemplateModel:
    """Build the model for the requested backbone (dataset, depth, variant, classes)."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return TemplateModel(backbone, config)


SPEC = MethodSpec(
    name="template",
    config_cls=TemplateConfig,
    model_cls=TemplateModel,
    build=build,
    search_space={"time_penalty": [0.0, 0.01]},
    time_penalty_field="time_penalty",
    description="Template: runs every unit; copy it to start a new method.",
)
