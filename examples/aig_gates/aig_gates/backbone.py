"""ConvNet-AIG's CIFAR ResNet (``--variant convnet-aig``), as its code builds it.

github.com/andreasveit/convnet-aig at 47633cd, ``convnet_aig.py``: a 3x3 conv stem (16
channels) with BN and ReLU (``ResNet_cifar``, lines 211-248); three stages of post-activation
``BasicBlock``\\ s (16, 32, 64 channels; stride 2 opens stages 2 and 3); a **projection
shortcut**, 1x1 conv + BN, wherever the shape changes (lines 71-76); average pool and a linear
classifier. The gates are not part of the backbone (``aig_gates.AIGResNet`` adds them).

Each unit follows the harness's unit protocol: ``forward(x, residual_mask)`` computes
``relu(shortcut(x) + residual(x) * mask)`` (the peer's ``shortcut(x) + out * w``, line 99),
``skipped(x)`` the shortcut alone, and ``SHORTCUT_MODULES`` names the shortcut so that a closed
gate on a stage-opening unit is charged its 1x1 projection.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import ConfigError


class PeerBasicUnit(nn.Module):
    """``relu(shortcut(x) + BN(conv2(relu(BN(conv1(x))))) * mask)``, projection shortcut."""

    DILATED_CONVS = ("conv1",)
    SHORTCUT_MODULES = ("shortcut",)

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.identity_shortcut = stride == 1 and in_channels == out_channels
        if self.identity_shortcut:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor, residual_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if residual_mask is not None:
            residual = residual * residual_mask
        return torch.relu(self.shortcut(x) + residual)

    def skipped(self, x: torch.Tensor) -> torch.Tensor:
        """The unit with its residual branch skipped: only the shortcut runs."""
        return torch.relu(self.shortcut(x))


class PeerCifarResNet(nn.Module):
    """Stem, three stages of :class:`PeerBasicUnit`, pooled linear head (depth 6n + 2)."""

    name = "convnet-aig cifar resnet (projection shortcuts)"

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"depth={depth}: the convnet-aig CIFAR ResNet needs 6n + 2 >= 8")
        units = (depth - 2) // 6
        self.dataset, self.variant, self.depth, self.num_classes = (
            "cifar10",
            "convnet-aig",
            depth,
            num_classes,
        )
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, channels, width = [], [], 16
        for stage, out in enumerate((16, 32, 64)):
            stride = 1 if stage == 0 else 2
            blocks.append(
                nn.ModuleList(
                    PeerBasicUnit(width if u == 0 else out, out, stride if u == 0 else 1)
                    for u in range(units)
                )
            )
            channels.append(out)
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.block_channels = channels
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:
            for unit in block:
                x = unit(x)
        return self.head(x)
