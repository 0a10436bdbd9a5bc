"""The backbone container: ``stem -> blocks of residual units -> head``.

Methods (ACT, SACT, PACT) wrap each block of ``backbone.blocks`` and call its units one by one;
the vanilla network is :meth:`ResNetBackbone.forward`.
"""

from collections.abc import Iterator

from torch import Tensor, nn

from baselines.units import ResidualUnit


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
    ):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(nn.ModuleList(units) for units in blocks)
        self.head = head
        self.block_channels: list[int] = [units[-1].out_channels for units in blocks]
        self.num_classes = num_classes
        self.dataset = dataset
        self.variant = variant
        self.depth = depth

    def units_per_block(self) -> list[int]:
        """Number of residual units in each block."""
        return [len(block) for block in self.blocks]

    def units(self) -> Iterator[tuple[int, int, ResidualUnit]]:
        """Yield ``(block_index, unit_index, unit)`` in execution order."""
        for i, block in enumerate(self.blocks):
            for j, unit in enumerate(block):
                yield i, j, unit

    def forward(self, images: Tensor) -> Tensor:
        """Vanilla network: stem, every unit of every block (dense), head."""
        x = self.stem(images)
        for block in self.blocks:
            for unit in block:
                x = unit(x)
        return self.head(x)

    def extra_repr(self) -> str:
        return (
            f"dataset={self.dataset!r}, variant={self.variant!r}, depth={self.depth}, "
            f"num_classes={self.num_classes}"
        )


def init_weights(module: nn.Module) -> None:
    """He init for convs (kaiming normal, fan_out, ReLU gain), BN weight 1 and bias 0.

    Linear layers keep PyTorch's default init (as torchvision's ResNet does).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
