"""The backbone container: ``stem -> blocks of residual units -> head``.

Methods (ACT, SACT, PACT) wrap each block of ``backbone.blocks`` and call its units one by one;
the vanilla network is :meth:`ResNetBackbone.forward`.
"""

import math
from dataclasses import dataclass

from torch import Tensor, nn

from baselines.torchvision_compat import load_torchvision_state_dict
from baselines.units import TORCH_BN, ResidualUnit


@dataclass(frozen=True)
class HaltingConventions:
    """How a backbone variant wants the halting branches that methods attach to it built.

    The SACT code builds its halting branches inside the model's TF-slim arg scope, so they
    inherit the backbone's batch-norm decay and epsilon, the activation that the arg scope puts
    on ``slim.batch_norm`` (leaky ReLU 0.1 in the CIFAR model, none in the ImageNet model) and
    the weight initialiser (``variance_scaling_initializer``). A method asks the backbone for
    these (:meth:`norm`, :meth:`init`) instead of fixing them itself.

    Attributes:
        bn_eps, bn_momentum: of every halting BN (PyTorch momentum = 1 - TF decay).
        leakiness: slope of the leaky ReLU after each halting BN; ``None``: no activation.
        tf_init: initialise the halting convs and linears like the SACT code
            (:func:`tf_variance_scaling_`); ``False`` keeps PyTorch's default init.
    """

    bn_eps: float = TORCH_BN["eps"]
    bn_momentum: float = TORCH_BN["momentum"]
    leakiness: float | None = None
    tf_init: bool = False

    def norm(self, channels: int, spatial: bool) -> tuple[nn.Module, nn.Module]:
        """``(BN, activation)`` for a halting branch's input: ``BatchNorm2d`` or ``1d``."""
        bn_cls = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        bn = bn_cls(channels, eps=self.bn_eps, momentum=self.bn_momentum)
        act = nn.Identity() if self.leakiness is None else nn.LeakyReLU(self.leakiness)
        return bn, act

    def init(self, module: nn.Module) -> None:
        """Initialise the convs and linears of a freshly built halting branch."""
        if self.tf_init:
            init_tf_variance_scaling(module)


#: Halting branches as the PyTorch defaults build them (the ``he``/``torchvision`` variants).
TORCH_HALTING = HaltingConventions()


class Stem(nn.Module):
    """Images -> first state: ``conv``, then optional ``bn``/``act`` and ``pool``."""

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.Module | None = None,
        act: nn.Module | None = None,
        pool: nn.Module | None = None,
    ):
        super().__init__()
        self.conv = conv
        self.bn = bn if bn is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        """Return the state fed to the first unit of the first block."""
        return self.pool(self.act(self.bn(self.conv(images))))


class ClassifierHead(nn.Module):
    """Final state ``[B, C, H, W]`` -> logits ``[B, num_classes]``.

    ``pre_pool`` (e.g. the v2 ``postnorm`` BN + ReLU), global average pool, ``post_pool`` (the
    SACT CIFAR model's BN + leaky ReLU on the pooled features), then the linear classifier ``fc``
    (with bias; the SACT code's 1x1 ``logits`` conv is the same map).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pre_pool: nn.Module | None = None,
        post_pool: nn.Module | None = None,
    ):
        super().__init__()
        self.pre_pool = pre_pool if pre_pool is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.post_pool = post_pool if post_pool is not None else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits."""
        x = self.pool(self.pre_pool(x)).flatten(1)
        return self.fc(self.post_pool(x))


class ResNetBackbone(nn.Module):
    """A ResNet as ``stem``, ``blocks`` (a list of lists of residual units) and ``head``.

    Attributes:
        stem: images -> first state.
        blocks: ``blocks[i][j]`` is unit ``j`` of block ``i``; each unit is called as
            ``unit(x, residual_mask=None)``.
        head: final state -> logits (includes any final BN/activation, pooling, classifier).
        block_channels: output channels of each block.
        num_classes, dataset, variant, depth: what :func:`baselines.build_backbone` was given.
        halting_conventions: how halting branches attached to this backbone are built
            (:class:`HaltingConventions`).
    """

    def __init__(
        self,
        stem: nn.Module,
        blocks: list[list[ResidualUnit]],
        head: nn.Module,
        *,
        num_classes: int,
        dataset: str,
        variant: str,
        depth: int,
        halting_conventions: HaltingConventions = TORCH_HALTING,
    ):
        super().__init__()
        self.halting_conventions = halting_conventions
        self.stem = stem
        self.blocks = nn.ModuleList(nn.ModuleList(units) for units in blocks)
        self.head = head
        self.block_channels: list[int] = [units[-1].out_channels for units in blocks]
        self.num_classes = num_classes
        self.dataset = dataset
        self.variant = variant
        self.depth = depth

    def forward(self, images: Tensor) -> Tensor:
        """Vanilla network: stem, every unit of every block (dense), head."""
        x = self.stem(images)
        for block in self.blocks:
            for unit in block:
                x = unit(x)
        return self.head(x)

    def load_torchvision_state_dict(self, state_dict) -> None:
        """Copy a torchvision ResNet state dict in (the ``torchvision`` ImageNet variant only;
        ``ConfigError`` otherwise): ``--init-from torchvision:resnet101``."""
        load_torchvision_state_dict(self, state_dict)

    def extra_repr(self) -> str:
        return (
            f"dataset={self.dataset!r}, variant={self.variant!r}, depth={self.depth}, "
            f"num_classes={self.num_classes}"
        )


def init_weights(module: nn.Module) -> None:
    """He init for convs (kaiming normal, fan_out, ReLU gain), BN weight 1 and bias 0.

    Linear layers keep PyTorch's default init (as torchvision's ResNet does). The ``he`` and
    ``torchvision`` variants use this.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


#: TF's truncated normal redraws values beyond 2 standard deviations.
TRUNCATION = 2.0
#: ``variance_scaling_initializer`` scales the truncated normal's sigma by sqrt(1.3) so that
#: the truncated draw keeps about the variance factor / fan_in (a standard normal cut at +-2
#: has variance 0.7737, and 1.3 * 0.7737 = 1.006).
TRUNCATED_VARIANCE_CORRECTION = 1.3


def tf_variance_scaling_(weight: Tensor, factor: float = 2.0) -> Tensor:
    """TF ``variance_scaling_initializer()`` defaults: factor 2, ``FAN_IN``, truncated normal.

    sigma = sqrt(1.3 * factor / fan_in), draws cut at +-2 sigma; fan_in = k_h * k_w * C_in for a
    conv, the input features for a linear layer (TF-contrib ``initializers.py``). The resulting
    standard deviation is 1.0029 * sqrt(factor / fan_in).
    """
    fan_in = weight[0].numel()  # [out, in, kh, kw] or [out, in]
    sigma = math.sqrt(TRUNCATED_VARIANCE_CORRECTION * factor / fan_in)
    return nn.init.trunc_normal_(weight, 0.0, sigma, -TRUNCATION * sigma, TRUNCATION * sigma)


def init_tf_variance_scaling(module: nn.Module) -> None:
    """The SACT code's init: every conv and linear weight :func:`tf_variance_scaling_`, their
    biases 0 (TF-slim's ``zeros_initializer``), BN weight 1 and bias 0. The ``sact`` variants
    use this, and their halting branches too (see :class:`HaltingConventions`)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            tf_variance_scaling_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def initialise(model: nn.Module, variant: str) -> nn.Module:
    """The variant's initialisation: the SACT code's TF variance scaling for ``sact``, He et
    al.'s otherwise (see :func:`init_tf_variance_scaling`, :func:`init_weights`)."""
    if variant == "sact":
        init_tf_variance_scaling(model)
    else:
        init_weights(model)
    return model
