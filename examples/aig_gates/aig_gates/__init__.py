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

from aig_gates.backbone import PeerCifarResNet
from baselines import build_backbone
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput
from harness.errors import ConfigError
from methods.common.gates import (
    binary_concrete,
    logistic_noise,
    run_or_shortcut,
    straight_through,
)


@dataclass(frozen=True)
class AIGConfig:
    """``target_rate``: fraction of images each gate should open (the time penalty field: the
    trade-off knob); ``rate_weight``: weight of the target-rate loss, a mean over gates
    (ConvNet-AIG's ``--lossfact``); ``temperature`` of the Gumbel (binary Concrete) relaxation;
    ``gate_hidden``: the gate's hidden width; ``gate_bias_init``: initial gate logit (ConvNet-AIG
    initialises its two-way gate's biases to 0.1 and 2: a logit difference of 1.9, about 87%
    open)."""

    target_rate: float = 0.6
    rate_weight: float = 2.0
    temperature: float = 1.0
    gate_hidden: int = 16
    gate_bias_init: float = 1.9

    def validate(self) -> None:
        """0 < target_rate <= 1; positive weight, temperature and hidden width."""
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"method.target_rate={self.target_rate} must be in (0, 1]")
        for name in ("rate_weight", "temperature", "gate_hidden"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"method.{name}={getattr(self, name)} must be > 0")


class Gate(nn.Module):
    """Pooled input -> Linear -> BN -> ReLU -> Linear: one gate logit per image ``[B]``
    (ConvNet-AIG's 1x1 convs on the pooled state are these linear layers; its last layer
    starts with weights of std 0.001, so every image starts at the bias)."""

    def __init__(self, channels: int, hidden: int, bias_init: float):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.normal_(self.fc2.weight, 0.0, 0.001)
        nn.init.constant_(self.fc2.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x.mean((2, 3)))))).squeeze(1)


class AIGResNet(AdaptiveModel):
    """A gate before every unit, the stage-opening ones included; per-image skips of any unit.

    A closed gate skips the unit's residual branch; its shortcut still runs (a stage-opening
    unit must change the state's shape), as in ConvNet-AIG's ``shortcut(x) + residual * g``.
    """

    eval_modes = ("deterministic", "stochastic")
    random_modes = ("stochastic",)
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
                Gate(unit.in_channels, config.gate_hidden, config.gate_bias_init) for unit in block
            )
            for block in backbone.blocks
        )

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """``gathered`` (only open images run a unit) first: it is the fast one."""
        return ("gathered", "masked")

    def decision_branches(self) -> list[list[nn.Module]]:
        """Per block, the gate of each unit."""
        return [list(gates) for gates in self.gates]

    def _opened(self, logit: torch.Tensor, spec: EvalSpec) -> torch.Tensor:
        """``deterministic``: the gate's mode (logit > 0); ``stochastic``: a hard Gumbel sample
        (ConvNet-AIG samples at test time too), from ``spec.generator``."""
        if spec.mode == "stochastic":
            noise = logistic_noise(tuple(logit.shape), spec.generator, logit.device)
            return logit + noise > 0
        return logit > 0

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Training (``spec=None``): straight-through Gumbel gates multiply each residual, and
        the target-rate loss. Evaluation: a unit runs for the images whose gate opened."""
        x = self.backbone.stem(images)
        units_ran, rates = [], []
        for block, gates in zip(self.backbone.blocks, self.gates, strict=True):
            ran = []
            for unit, gate in zip(block, gates, strict=True):
                logit = gate(x)
                if spec is None:
                    g = straight_through(binary_concrete(logit, self.config.temperature))
                    rates.append(g.mean())
                    x = unit(x, residual_mask=g.view(-1, 1, 1, 1))
                    ran.append(g.detach() > 0.5)
                    continue
                opened = self._opened(logit, spec)
                ran.append(opened)
                x = run_or_shortcut(unit, x, opened, spec.execution)
            units_ran.append(torch.stack(ran, 1))
        aux = {}
        if rates:  # ConvNet-AIG's train.py: the mean over gates of (target - rate)^2
            target = self.config.target_rate
            loss = torch.stack([(target - rate) ** 2 for rate in rates]).mean()
            aux["target_rate_loss"] = self.config.rate_weight * loss
        return ModelOutput(
            logits=self.backbone.head(x),
            units_ran=units_ran,
            # every gate is evaluated on every image, whether or not its unit then runs
            branches_ran=[torch.ones_like(r) for r in units_ran],
            ponder_cost=[r.sum(1).float() for r in units_ran],
            aux_losses=aux,
        )

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """Gates stay fresh when starting from a vanilla network."""
        return ("gates.",)


def build_aig(model, config: AIGConfig) -> AIGResNet:
    """Gates on the requested backbone: ``convnet-aig`` is the peer's own CIFAR ResNet
    (projection shortcuts, :mod:`aig_gates.backbone`), the others the harness's."""
    config.validate()
    if model.variant == PEER_VARIANT:
        if model.dataset != "cifar10":
            raise ConfigError(
                f"model.variant={PEER_VARIANT!r} is a CIFAR backbone; model.dataset must be cifar10"
            )
        backbone = PeerCifarResNet(model.depth, model.num_classes or 10)
    else:
        backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return AIGResNet(backbone, config)


#: The variant that builds ConvNet-AIG's own backbone.
PEER_VARIANT = "convnet-aig"


SPEC = MethodSpec(
    name="aig",
    config_cls=AIGConfig,
    model_cls=AIGResNet,
    build=build_aig,
    search_space={"target_rate": [0.4, 0.6, 0.8]},
    time_penalty_field="target_rate",
    description="ConvNet-AIG-style per-unit gates (example plug-in, examples/aig_gates).",
    label="AIG gates (example plug-in)",
    # the harness backbones' variants, and the peer's own CIFAR ResNet
    variants=("sact", "he", "torchvision", PEER_VARIANT),
)

#: The plug-in's preset (entry point group ``pact_harness.presets``): its YAML file.
AIG_MINI_PRESET = Path(__file__).with_name("aig-mini.yaml")
