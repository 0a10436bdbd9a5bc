"""Residual units: the pieces that ACT, SACT and PACT wrap.

Every unit computes ``shortcut(x) + residual(x) * residual_mask`` (post-activation units then
apply their ReLU to that sum). The mask is ``[B, 1, H_out, W_out]`` and broadcasts over channels;
``None`` means dense. Where the mask is 0 the output is the shortcut value, so a stride-1 unit
with an identity shortcut leaves those positions untouched: this is how SACT freezes halted
positions (``cifar_model.residual`` and ``imagenet_model.bottleneck`` of the SACT code multiply
the residual by the mask before the add in the same way).

``DILATED_CONVS`` names the convs (attribute names on the unit) whose output feeds a 3x3 conv.
Spatial FLOP accounting charges them on the 3x3-dilated active set (the SACT code's
``max_pool2d(residual_mask, 3, stride=1, SAME)``); every other conv of the unit is charged on
the active set itself.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Leaky ReLU slope of the SACT code's CIFAR model (``cifar_model.lrelu``).
CIFAR_LEAKINESS = 0.1
#: TF batch norm of the SACT code's CIFAR model: decay 0.9, epsilon 1e-3.
CIFAR_SACT_BN = {"eps": 1e-3, "momentum": 0.1}
#: TF-slim ``resnet_arg_scope`` used by the SACT ImageNet model: decay 0.997, epsilon 1e-5.
IMAGENET_SACT_BN = {"eps": 1e-5, "momentum": 0.003}
#: PyTorch defaults, as in He et al. re-implementations and torchvision.
TORCH_BN = {"eps": 1e-5, "momentum": 0.1}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 conv with padding 1 on both sides.

    That is TF ``SAME`` at stride 1, and TF-slim ``conv2d_same`` (explicit pad 1/1, then
    ``VALID``) at any stride. TF ``SAME`` at stride 2 on an even input pads 0 before and 1 after
    instead: use :class:`TFSameConv2d` for that.
    """
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 conv (no padding: TF ``SAME`` pads nothing for a 1x1 kernel on an even input)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


def tf_same_padding(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``F.pad`` amounts ``(left, right, top, bottom)`` that TF ``padding='SAME'`` uses.

    TF keeps ``ceil(in / stride)`` outputs and pads ``max((out - 1) * stride + k - in, 0)`` in
    total, the smaller half before: a 3x3 conv at stride 2 on 32 pixels pads 0 before, 1 after.
    """
    pads = []
    for n, k, s in zip(size, kernel, stride, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class TFSameConv2d(nn.Conv2d):
    """A conv with TF ``padding='SAME'``: explicit (possibly asymmetric) zero pad, then no pad.

    At stride 1 with an odd kernel this is symmetric padding; at stride 2 on an even input it pads
    one row and one column after the input only, as ``slim.conv2d(..., stride=2, padding='SAME')``
    does in the SACT code's CIFAR model. The pad itself costs no FLOPs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """Pad as TF ``SAME`` for this input size, then convolve without padding."""
        pad = tf_same_padding(tuple(x.shape[-2:]), self.kernel_size, self.stride)
        return super().forward(F.pad(x, pad) if any(pad) else x)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut for a change of shape (He et al. 2016, option A).

    Downsamples spatially by ``stride`` and zero-pads the channels equally on both sides.
    ``mode="avg"`` average-pools ``stride x stride`` windows (the SACT code:
    ``avg_pool2d(VALID)`` then ``tf.pad``); ``mode="subsample"`` takes every ``stride``-th
    position (He et al.'s strided identity). Neither costs FLOPs.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, mode: str = "avg"):
        super().__init__()
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError(
                f"option-A shortcut needs an even channel increase, got {in_channels}->"
                f"{out_channels}"
            )
        if mode not in ("avg", "subsample"):
            raise ValueError(f"mode={mode!r}; allowed: 'avg', 'subsample'")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        """Downsample and zero-pad the channels."""
        if self.stride > 1:
            if self.mode == "avg":
                x = F.avg_pool2d(x, self.stride, self.stride)
            else:
                x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))
        return x


class ResidualUnit(nn.Module):
    """Base class: ``combine(shortcut, residual * residual_mask)``.

    Subclasses implement :meth:`branches` and set ``DILATED_CONVS``; post-activation units
    override :meth:`combine`.
    """

    #: Conv submodules (attribute names) that feed a 3x3 conv; see the module docstring.
    DILATED_CONVS: ClassVar[tuple[str, ...]] = ()
    #: The submodules (attribute names, in call order; the last one's output is the shortcut
    #: value) that make up the shortcut: a skipped unit still runs them (a stage-opening unit
    #: must change the state's shape), so the FLOP accountant charges them apart.
    SHORTCUT_MODULES: ClassVar[tuple[str, ...]] = ("shortcut",)

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        #: True when ``shortcut(x) is x``: a zero mask then returns the input unchanged.
        self.identity_shortcut = False

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(shortcut, residual)``, both ``[B, out_channels, H_out, W_out]``."""
        raise NotImplementedError

    def combine(self, shortcut: Tensor, residual: Tensor) -> Tensor:
        """Merge the branches (pre-activation units: a plain sum)."""
        return shortcut + residual

    def shortcut_value(self, x: Tensor) -> Tensor:
        """The shortcut branch alone (what :meth:`branches` returns first)."""
        raise NotImplementedError

    def skipped(self, x: Tensor) -> Tensor:
        """The unit's output with its residual branch skipped, computing only the shortcut:
        equal to ``forward(x, residual_mask=0)`` (a gate that closes a stage-opening unit)."""
        return self.combine(self.shortcut_value(x), x.new_zeros(()))

    def forward(self, x: Tensor, residual_mask: Tensor | None = None) -> Tensor:
        """Run the unit; ``residual_mask`` ``[B,1,H_out,W_out]`` gates the residual branch."""
        shortcut, residual = self.branches(x)
        if residual_mask is not None:
            residual = residual * residual_mask
        return self.combine(shortcut, residual)

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class CifarPreActUnit(ResidualUnit):
    """The SACT code's CIFAR unit (``cifar_model.residual``), pre-activation.

    ``preact = lrelu(BN(x))``; residual ``conv2(lrelu(BN(conv1(preact))))``; shortcut ``x``,
    or option A (average pool + zero channels) when the shape changes. The first unit of the
    network (``activate_before_residual``) takes its shortcut from ``preact`` instead, as in
    the SACT code and the TF ``resnet_model.py`` it derives from; it is never masked by SACT.

    As in the SACT code, ``conv2`` has a bias (``normalizer_fn=None`` gives a TF-slim conv a
    bias), which is part of the residual and so is multiplied by the residual mask, and a
    strided ``conv1`` pads like TF ``SAME`` (0 before, 1 after on an even input;
    :class:`TFSameConv2d`).
    """

    DILATED_CONVS = ("conv1",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activate_before_residual: bool = False,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.activate_before_residual = activate_before_residual
        self.preact_bn = nn.BatchNorm2d(in_channels, **CIFAR_SACT_BN)
        self.preact_act = nn.LeakyReLU(CIFAR_LEAKINESS)
        if stride == 1:
            self.conv1: nn.Conv2d = conv3x3(in_channels, out_channels)
        else:
            self.conv1 = TFSameConv2d(in_channels, out_channels, 3, stride)
        self.bn1 = nn.BatchNorm2d(out_channels, **CIFAR_SACT_BN)
        self.act1 = nn.LeakyReLU(CIFAR_LEAKINESS)
        self.conv2 = conv3x3(out_channels, out_channels, bias=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = OptionAShortcut(in_channels, out_channels, stride, "avg")
        else:
            self.shortcut = nn.Identity()
            self.identity_shortcut = not activate_before_residual

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preact = self.preact_act(self.preact_bn(x))
        shortcut = self.shortcut(preact if self.activate_before_residual else x)
        residual = self.conv2(self.act1(self.bn1(self.conv1(preact))))
        return shortcut, residual

    def shortcut_value(self, x: Tensor) -> Tensor:
        if self.activate_before_residual:
            return self.shortcut(self.preact_act(self.preact_bn(x)))
        return self.shortcut(x)


class CifarBasicUnit(ResidualUnit):
    """He et al. (2016) CIFAR basic unit, post-activation with ReLU and option-A shortcuts.

    ``relu(shortcut(x) + BN(conv2(relu(BN(conv1(x))))) * mask)``. Its inputs come from a ReLU,
    so they are non-negative and a zero mask still returns them unchanged.
    """

    DILATED_CONVS = ("conv1",)

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels, **TORCH_BN)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, **TORCH_BN)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = OptionAShortcut(
                in_channels, out_channels, stride, "subsample"
            )
        else:
            self.shortcut = nn.Identity()
            self.identity_shortcut = True

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        residual = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.shortcut(x), residual

    def shortcut_value(self, x: Tensor) -> Tensor:
        return self.shortcut(x)

    def combine(self, shortcut: Tensor, residual: Tensor) -> Tensor:
        return torch.relu(shortcut + residual)


class BottleneckV2Unit(ResidualUnit):
    """The SACT code's ImageNet unit (``imagenet_model.bottleneck``), pre-activation v2.

    ``preact = relu(BN(x))``; residual ``conv3(relu(BN(conv2(relu(BN(conv1(preact)))))))`` with
    the stride on the 3x3 ``conv2``; shortcut ``x``, or a 1x1 projection ``shortcut_conv`` of
    ``preact`` (with the stride) when the shape changes, as in TF-slim ``resnet_v2``.

    ``conv3`` and ``shortcut_conv`` have biases, as in the SACT code (TF-slim convs without a
    normalizer); ``conv3``'s is part of the residual and is masked with it. The strided 3x3
    ``conv2`` pads 1/1: the SACT code uses ``conv2d_same`` (explicit symmetric pad) for it.
    """

    DILATED_CONVS = ("conv1",)
    SHORTCUT_MODULES = ("shortcut_conv",)

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int = 1):
        super().__init__(in_channels, out_channels, stride)
        self.width = width
        self.preact_bn = nn.BatchNorm2d(in_channels, **IMAGENET_SACT_BN)
        self.relu = nn.ReLU()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width, **IMAGENET_SACT_BN)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width, **IMAGENET_SACT_BN)
        self.conv3 = conv1x1(width, out_channels, bias=True)
        self.shortcut_conv: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = conv1x1(in_channels, out_channels, stride, bias=True)
        else:
            self.identity_shortcut = True

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preact = self.relu(self.preact_bn(x))
        shortcut = x if self.shortcut_conv is None else self.shortcut_conv(preact)
        residual = self.relu(self.bn1(self.conv1(preact)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        return shortcut, self.conv3(residual)

    def shortcut_value(self, x: Tensor) -> Tensor:
        if self.shortcut_conv is None:
            return x
        return self.shortcut_conv(self.relu(self.preact_bn(x)))


class BottleneckV1Unit(ResidualUnit):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride on the 3x3 conv), post-activation.

    ``relu(shortcut(x) + BN(conv3(...)) * mask)`` with shortcut ``x`` or
    ``shortcut_bn(shortcut_conv(x))`` (torchvision's ``downsample.0`` / ``downsample.1``).
    Its inputs come from a ReLU, so a zero mask still returns them unchanged.
    """

    DILATED_CONVS = ("conv1",)
    SHORTCUT_MODULES = ("shortcut_conv", "shortcut_bn")

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int = 1):
        super().__init__(in_channels, out_channels, stride)
        self.width = width
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width, **TORCH_BN)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width, **TORCH_BN)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels, **TORCH_BN)
        self.relu = nn.ReLU()
        self.shortcut_conv: nn.Conv2d | None = None
        self.shortcut_bn: nn.BatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = conv1x1(in_channels, out_channels, stride)
            self.shortcut_bn = nn.BatchNorm2d(out_channels, **TORCH_BN)
        else:
            self.identity_shortcut = True

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shortcut = x
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x))
        residual = self.relu(self.bn1(self.conv1(x)))
        residual = self.relu(self.bn2(self.conv2(residual)))
        return shortcut, self.bn3(self.conv3(residual))

    def shortcut_value(self, x: Tensor) -> Tensor:
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            return self.shortcut_bn(self.shortcut_conv(x))
        return x

    def combine(self, shortcut: Tensor, residual: Tensor) -> Tensor:
        return torch.relu(shortcut + residual)
