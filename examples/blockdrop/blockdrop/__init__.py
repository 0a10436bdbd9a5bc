"""BlockDrop (Wu et al., CVPR 2018) as a pact-harness plug-in (see README.md).

A policy network looks at the image once, *before* the backbone runs, and gives one Bernoulli
probability per residual unit of the whole backbone; the units it drops run only their shortcut.
Training is REINFORCE with a self-critical baseline (the greedy policy's reward) plus the
cross-entropy of the backbone under the sampled policy, both in :meth:`BlockDropResNet.loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines import build_backbone
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput
from harness.errors import ConfigError
from methods.common.gates import run_or_shortcut


@dataclass(frozen=True)
class BlockDropConfig:
    """``penalty``: gamma, the reward of a wrong prediction is ``-penalty`` (the time penalty
    field: larger buys accuracy with compute; the peer's ``finetune.py`` default is 5);
    ``alpha``: the probability bound of the training samples, ``alpha p + (1 - alpha)(1 - p)``;
    ``policy_depth``: depth of the policy ResNet (8: one unit per stage, the peer's
    ``Policy32``); ``policy_downsample``: average pooling of the image before the policy
    (1 on CIFAR; the peer's ImageNet policy halves it); ``policy_weight``: weight of the
    policy-gradient term beside the cross-entropy; ``entropy_weight``: beta of the peer's
    curriculum stage (0: its joint finetuning has none)."""

    penalty: float = 5.0
    alpha: float = 0.8
    policy_depth: int = 8
    policy_downsample: int = 1
    policy_weight: float = 1.0
    entropy_weight: float = 0.0

    def validate(self) -> None:
        """penalty >= 0; 0.5 < alpha <= 1; policy_depth 6n+2; positive downsample."""
        if not self.penalty >= 0:
            raise ConfigError(f"method.penalty={self.penalty} must be >= 0 (reward -penalty)")
        if not 0.5 < self.alpha <= 1.0:
            raise ConfigError(f"method.alpha={self.alpha} must be in (0.5, 1]")
        if self.policy_depth < 8 or (self.policy_depth - 2) % 6:
            raise ConfigError(f"method.policy_depth={self.policy_depth} must be 6n+2 >= 8")
        if self.policy_downsample < 1:
            raise ConfigError(f"method.policy_downsample={self.policy_downsample} must be >= 1")
        for name in ("policy_weight", "entropy_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"method.{name}={getattr(self, name)} must be >= 0")


def reward(
    logits: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor, penalty: float
) -> torch.Tensor:
    """BlockDrop's reward per image ``[B]``: ``1 - (fraction of units kept)^2`` when the
    prediction is right, ``-penalty`` when it is wrong (``kept``: bool ``[B, units]``)."""
    usage = kept.float().mean(1)
    correct = logits.detach().argmax(1) == targets
    return torch.where(correct, 1.0 - usage**2, torch.full_like(usage, -float(penalty)))


class PolicyNetwork(nn.Module):
    """Images -> one logit per unit of the backbone ``[B, units]``: a small ResNet whose
    classifier has one output per unit (the peer's ``Policy32``: a ResNet with one unit per
    stage, its ``logit`` layer on the pooled features), after an optional average pooling."""

    def __init__(self, features: nn.Module, downsample: int):
        super().__init__()
        self.features = features
        self.downsample = downsample

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.downsample > 1:
            images = F.avg_pool2d(images, self.downsample)
        return self.features(images)


@dataclass
class BlockDropOutput(ModelOutput):
    """The training forward's output, with what the policy-gradient term needs: the sampled
    policy's log-probability ``[B]``, the bounded probabilities ``[B, units]``, the sampled and
    greedy policies (bool ``[B, units]``) and the greedy policy's logits (no gradient)."""

    log_prob: torch.Tensor | None = None
    bounded: torch.Tensor | None = None
    sampled: torch.Tensor | None = None
    greedy: torch.Tensor | None = None
    greedy_logits: torch.Tensor | None = None


class BlockDropResNet(AdaptiveModel):
    """A policy network decides, once per image and before the backbone, which units run.

    Every unit is a candidate, the stage-opening ones included: a dropped unit runs its shortcut
    only (``unit.skipped(x)``; a stage-opening unit must change the state's shape), as the
    peer's ``residual = self.ds[segment](x) if b == 0 else x`` does.
    """

    eval_modes = ("deterministic", "sampled")
    random_modes = ("sampled",)
    spatial = False
    #: The policy runs before the backbone, on every image; the forward reports where.
    branch_placement = "before"

    def __init__(self, backbone: nn.Module, policy: PolicyNetwork, config: BlockDropConfig):
        super().__init__()
        self.backbone = backbone
        self.policy = policy
        self.config = config
        self.units_per_block = [len(block) for block in backbone.blocks]

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """``gathered`` (only the kept images run a unit) first: it is the fast one."""
        return ("gathered", "masked")

    def decision_branches(self) -> list[list[nn.Module]]:
        """The policy network, listed under block 0: it runs once per image (``branches_ran``
        ``[B, 1]`` all true there, ``[B, 0]`` in the other blocks), so it is charged once."""
        return [[self.policy]] + [[] for _ in self.units_per_block[1:]]

    def _bounded(self, probs: torch.Tensor) -> torch.Tensor:
        alpha = self.config.alpha
        return probs * alpha + (1.0 - probs) * (1.0 - alpha)

    def _backbone(self, images: torch.Tensor, keep: torch.Tensor, execution: str):
        """Logits of the backbone under the policy ``keep`` (bool ``[B, units]``)."""
        x = self.backbone.stem(images)
        t = 0
        for block in self.backbone.blocks:
            for unit in block:
                x = run_or_shortcut(unit, x, keep[:, t], execution)
                t += 1
        return self.backbone.head(x)

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Training (``spec=None``): a policy sampled from the bounded probabilities (masked
        execution, gradients through the kept units) and the greedy policy's logits for the
        self-critical baseline. Evaluation: ``deterministic`` keeps a unit iff ``p >= 0.5``;
        ``sampled`` draws the training distribution from ``spec.generator``."""
        probs = torch.sigmoid(self.policy(images).float())
        greedy = probs.detach() >= 0.5
        extra = {}
        if spec is None:
            bounded = self._bounded(probs)
            keep = torch.bernoulli(bounded.detach()).bool()
            logits = self._backbone(images, keep, "masked")
            with torch.no_grad():
                greedy_logits = self._backbone(images, greedy, "masked")
            log_prob = torch.where(keep, bounded, 1.0 - bounded).clamp_min(1e-15).log().sum(1)
            extra = dict(
                log_prob=log_prob,
                bounded=bounded,
                sampled=keep,
                greedy=greedy,
                greedy_logits=greedy_logits,
            )
        else:
            if spec.mode == "sampled":
                draw = torch.rand(probs.shape, generator=spec.generator, device=probs.device)
                keep = draw < self._bounded(probs)
            else:
                keep = greedy
            logits = self._backbone(images, keep, spec.execution)
        units_ran = list(keep.split(self.units_per_block, dim=1))
        batch = images.shape[0]
        branches_ran = [torch.ones(batch, 1, dtype=torch.bool, device=images.device)]
        branches_ran += [r.new_zeros(batch, 0) for r in units_ran[1:]]
        return BlockDropOutput(
            logits=logits,
            units_ran=units_ran,
            branches_ran=branches_ran,
            ponder_cost=[r.sum(1).float() for r in units_ran],
            **extra,
        )

    def loss(
        self, output: ModelOutput, targets: torch.Tensor, label_smoothing: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy under the sampled policy plus REINFORCE: ``-(log pi(sample) *
        (R(sample) - R(greedy)))``, averaged over the batch, times ``policy_weight``; minus
        ``entropy_weight`` times the peer's ``sum(-p log p)`` of the bounded probabilities."""
        task = F.cross_entropy(output.logits, targets, label_smoothing=label_smoothing)
        terms = {"task_loss": task}
        log_prob = getattr(output, "log_prob", None)
        if log_prob is None:
            raise ConfigError(
                "blockdrop: loss() needs the training forward's BlockDropOutput (spec=None)"
            )
        penalty = self.config.penalty
        sampled = reward(output.logits, targets, output.sampled, penalty)
        baseline = reward(output.greedy_logits, targets, output.greedy, penalty)
        advantage = (sampled - baseline).detach()
        terms["policy_loss"] = -self.config.policy_weight * (log_prob * advantage).mean()
        total = task + terms["policy_loss"]
        if self.config.entropy_weight > 0:
            p = output.bounded.clamp(1e-15, 1 - 1e-15)
            entropy = (-p * p.log()).sum(1).mean()
            terms["entropy_loss"] = -self.config.entropy_weight * entropy
            total = total + terms["entropy_loss"]
        terms.update(output.aux_losses)
        total = total + sum(output.aux_losses.values())
        terms["reward"] = sampled.mean().detach()  # logged, not optimised
        terms["loss"] = total
        return terms

    def finetune_skip_prefixes(self) -> tuple[str, ...]:
        """The policy stays fresh when starting from a vanilla network."""
        return ("policy.",)


def build_blockdrop(model, config: BlockDropConfig) -> BlockDropResNet:
    """The requested backbone and a policy ResNet with one output per unit of it."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    units = sum(len(block) for block in backbone.blocks)
    variant = model.variant if model.dataset == "cifar10" else "he"
    features = build_backbone("cifar10", config.policy_depth, variant, units)
    return BlockDropResNet(backbone, PolicyNetwork(features, config.policy_downsample), config)


SPEC = MethodSpec(
    name="blockdrop",
    config_cls=BlockDropConfig,
    model_cls=BlockDropResNet,
    build=build_blockdrop,
    search_space={"penalty": [1.0, 5.0, 10.0]},
    time_penalty_field="penalty",
    description="BlockDrop: a policy network picks each image's units up front "
    "(example plug-in, examples/blockdrop).",
    label="BlockDrop (example plug-in)",
)
