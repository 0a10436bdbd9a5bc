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
through :mod:`harness.contract`; read its docstrings for the exact shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines import build_backbone
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput, ModelSpec
from harness.errors import ConfigError


@dataclass(frozen=True)
class TemplateConfig:
    """Your method's hyper-parameters; the defaults should be the paper's.

    Fields become config keys: ``--set method.time_penalty=0.1`` (a trailing underscore is
    dropped, so ``lambda_`` is written ``lambda``). Unknown keys are rejected by the harness.
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

    def __init__(self, backbone, config: TemplateConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        # TODO: create your halting/gating modules here, one per unit you may skip, and return
        # them from halting_branches() so the FLOP accounting charges them.

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Executions that give this mode's exact outputs, fastest first."""
        return ("masked",)

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """``spec is None`` while training; otherwise ``spec.mode`` says how to evaluate."""
        x = self.backbone.stem(images)
        units = []
        for block in self.backbone.blocks:
            for unit in block:
                x = unit(x)  # TODO: decide per sample (or position) whether to run the unit
            # Units that really contributed, per sample: the FLOP accounting multiplies these by
            # the fvcore cost of each unit, so report what your execution would pay.
            units.append(torch.full((images.shape[0],), len(block), dtype=torch.long))
        # TODO: put your time penalty (already weighted) into aux_losses; loss() adds it to CE.
        penalty = images.new_zeros(())
        return ModelOutput(
            logits=self.backbone.head(x),
            units_executed=units,
            ponder_cost=[u.to(images.dtype) for u in units],
            aux_losses={"time_penalty_loss": self.config.time_penalty * penalty},
        )


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
