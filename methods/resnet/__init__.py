"""The plain ResNet (``resnet``): every unit runs; the vanilla points of every trade-off plot."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines import build_backbone
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput, ModelSpec


@dataclass(frozen=True)
class ResNetConfig:
    """The plain ResNet has no method hyper-parameters."""

    def validate(self) -> None:
        """Nothing to check."""


class PlainResNet(AdaptiveModel):
    """A backbone run unit by unit; one evaluation mode, ``standard``."""

    eval_modes = ("standard",)

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Stem, every unit of every block, head."""
        return ModelOutput(logits=self.backbone(images))

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Every unit runs on the whole batch: the masked execution is the only one."""
        return ("masked",)

    def decision_branches(self) -> list[list[nn.Module]]:
        """No halting branches."""
        return [[] for _ in self.backbone.blocks]


def build(model: ModelSpec, config: ResNetConfig) -> PlainResNet:
    """Build the plain ResNet on the requested backbone."""
    return PlainResNet(build_backbone(model.dataset, model.depth, model.variant, model.num_classes))


SPEC = MethodSpec(
    name="resnet",
    config_cls=ResNetConfig,
    model_cls=PlainResNet,
    build=build,
    search_space={},
    time_penalty_field=None,
    description="Vanilla ResNet (no halting); the depth series of the trade-off plots.",
    label="ResNet",
    train_cost=1.0,
)
