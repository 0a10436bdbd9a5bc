"""ConvNet-AIG-style per-unit gates as a pact-harness plug-in (see README.md).

Everything a method needs: a config dataclass (defaults, ``validate``), an ``AdaptiveModel``
subclass (modes, executions, decision branches, forward returning which units ran) and the
``MethodSpec`` published under the ``pact_harness.methods`` entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from baselines import build_backbone
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput
from harness.errors import ConfigError
from methods.common.gates import binary_concrete, straight_through


@dataclass(frozen=True)
class AIGConfig:
    """``target_rate``: fraction of images each gated unit should run (the time penalty field:
    the trade-off knob); ``rate_weight``: weight of the target-rate loss; ``temperature`` of the
    Gumbel (binary Concrete) relaxation; ``gate_bias_init``: initial gate logit (open)."""

    target_rate: float = 0.6
    rate_weight: float = 2.0
    temperature: float = 1.0
    gate_hidden: int = 16
    gate_bias_init: float = 2.0

    def validate(self) -> None:
        """0 < target_rate <= 1; positive weight, temperature and hidden width."""
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"method.target_rate={self.target_rate} must be in (0, 1]")
        for name in ("rate_weight", "temperature", "gate_hidden"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"method.{name}={getattr(self, name)} must be > 0")


class Gate(nn.Module):
    """Pooled state -> Linear -> ReLU -> Linear: one gate logit per image ``[B]``."""

    def __init__(self, channels: int, hidden: int, bias_init: float):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.constant_(self.fc2.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3))))).squeeze(1)


class AIGResNet(AdaptiveModel):
    """A gate before every unit but the first of each block; per-image skips of any unit."""

    eval_modes = ("deterministic",)
    spatial = False
    #: Each gate runs before its unit, on every image, whether or not the unit then runs; the
    #: forward reports where (branches_ran).
    branch_placement = "before"

    def __init__(self, backbone: nn.Module, config: AIGConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.gates = nn.ModuleList(
            nn.ModuleList(
                Gate(channels, config.gate_hidden, config.gate_bias_init)
                for _ in range(len(block) - 1)
            )
            for channels, block in zip(backbone.block_channels, backbone.blocks, strict=True)
        )

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """``gathered`` (only open images run a unit) first: it is the fast one."""
        return ("gathered", "masked")

    def decision_branches(self) -> list[list[nn.Module]]:
        """Per block, the gate of each unit after the first."""
        return [list(gates) for gates in self.gates]

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Training (``spec=None``): straight-through Gumbel gates and the target-rate loss.
        Evaluation: a unit runs for the images whose gate logit is positive."""
        x = self.backbone.stem(images)
        units_ran, rates = [], []
        for block, gates in zip(self.backbone.blocks, self.gates, strict=True):
            ran = [torch.ones(x.shape[0], dtype=torch.bool, device=x.device)]
            x = block[0](x)
            for unit, gate in zip(list(block)[1:], gates, strict=True):
                logit = gate(x)
                if spec is None:
                    soft = binary_concrete(logit, self.config.temperature)
                    g = straight_through(soft)
                    rates.append(g.mean())
                    x = x + g.view(-1, 1, 1, 1) * (unit(x) - x)
                    ran.append(g.detach() > 0.5)
                    continue
                opened = logit > 0
                ran.append(opened)
                if spec.execution == "masked":
                    x = torch.where(opened.view(-1, 1, 1, 1), unit(x), x)
                else:  # gathered: only the images whose gate is open run the unit
                    idx = opened.nonzero().squeeze(1)
                    if len(idx):
                        x = x.index_copy(0, idx, unit(x.index_select(0, idx)))
            units_ran.append(torch.stack(ran, 1))
        aux = {}
        if rates:
            target = self.config.target_rate
            loss = sum((rate - target) ** 2 for rate in rates)
            aux["target_rate_loss"] = self.config.rate_weight * loss
        return ModelOutput(
            logits=self.backbone.head(x),
            units_ran=units_ran,
            # every gate is evaluated on every image, whether or not the unit before it ran
            branches_ran=[torch.ones_like(r[:, 1:]) for r in units_ran],
            ponder_cost=[r.sum(1).float() for r in units_ran],
            aux_losses=aux,
        )

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """Gates stay fresh when starting from a vanilla network."""
        return ("gates.",)


def build_aig(model, config: AIGConfig) -> AIGResNet:
    """Gates on the requested backbone."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return AIGResNet(backbone, config)


SPEC = MethodSpec(
    name="aig",
    config_cls=AIGConfig,
    model_cls=AIGResNet,
    build=build_aig,
    search_space={"target_rate": [0.4, 0.6, 0.8]},
    time_penalty_field="target_rate",
    description="ConvNet-AIG-style per-unit gates (example plug-in, examples/aig_gates).",
    label="AIG gates (example plug-in)",
)

#: The plug-in's preset (entry point group ``pact_harness.presets``): its YAML file.
AIG_MINI_PRESET = Path(__file__).with_name("aig-mini.yaml")
