"""Halting branches against the SACT code (``resnet_act.get_halting_proba[_conv]`` built inside
``cifar_model.resnet_arg_scope`` / TF-slim ``resnet_arg_scope``): per backbone variant, the BN
parameters, the activation after the BN, the init, and the function each branch computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines import TORCH_HALTING, build_backbone
from baselines.cifar import SACT_CIFAR_HALTING
from baselines.imagenet import SACT_IMAGENET_HALTING
from harness.contract import ModelSpec
from harness.registry import get_method
from methods.common import ImageHalting, SpatialHalting

# (variant conventions, BN eps, BN momentum = 1 - TF decay, leaky slope or None, TF init)
CONVENTIONS = {
    "cifar-sact": (SACT_CIFAR_HALTING, 1e-3, 0.1, 0.1, True),
    "imagenet-sact": (SACT_IMAGENET_HALTING, 1e-5, 0.003, None, True),
    "torch": (TORCH_HALTING, 1e-5, 0.1, None, False),
}


def _randomise_bn(branch: nn.Module, gen: torch.Generator) -> None:
    for m in branch.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)


def _bn(x: torch.Tensor, bn: nn.Module, eps: float) -> torch.Tensor:
    """Eval-mode batch norm written out, channels on dim 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + eps) * bn.weight.view(shape) + bn.bias.view(shape)


def _act(x: torch.Tensor, slope: float | None) -> torch.Tensor:
    return x if slope is None else torch.maximum(x, slope * x)  # the SACT code's lrelu


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_spatial_branch_is_bn_act_conv_plus_pooled_bn_act_linear(name: str) -> None:
    conventions, eps, momentum, slope, _ = CONVENTIONS[name]
    torch.manual_seed(0)
    branch = SpatialHalting(16, -3.0, conventions).eval()
    for bn in (branch.local_bn, branch.global_bn):
        assert (bn.eps, bn.momentum) == (eps, momentum)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _randomise_bn(branch, gen)
        x = torch.randn(3, 16, 6, 5, generator=gen) * 2
        # get_halting_proba_conv: conv3x3(act(local_bn(x))) + bias, plus
        # conv1x1(act(global_bn(mean_hw(x)))) without bias, broadcast over positions.
        local = F.conv2d(
            _act(_bn(x, branch.local_bn, eps), slope),
            branch.local_conv.weight,
            branch.local_conv.bias,
            padding=1,
        )[:, 0]
        pooled = _act(_bn(x.mean((2, 3)), branch.global_bn, eps), slope)
        expected = local + (pooled @ branch.global_fc.weight.t()).view(3, 1, 1)
        torch.testing.assert_close(branch(x), expected, rtol=1e-5, atol=1e-5)
    assert branch.global_fc.bias is None
    assert torch.equal(branch.local_conv.bias, torch.tensor([-3.0]))


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_image_branch_is_pool_bn_act_linear(name: str) -> None:
    conventions, eps, momentum, slope, _ = CONVENTIONS[name]
    torch.manual_seed(0)
    branch = ImageHalting(16, -3.0, conventions).eval()
    assert (branch.bn.eps, branch.bn.momentum) == (eps, momentum)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        _randomise_bn(branch, gen)
        x = torch.randn(4, 16, 5, 5, generator=gen) * 2
        # get_halting_proba: conv1x1(act(global_bn(mean_hw(x)))) + bias (-3).
        pooled = _act(_bn(x.mean((2, 3)), branch.bn, eps), slope)
        expected = pooled @ branch.fc.weight.t() + branch.fc.bias
        torch.testing.assert_close(branch(x), expected[:, 0], rtol=1e-5, atol=1e-5)
    assert torch.equal(branch.fc.bias, torch.tensor([-3.0]))


def test_sact_variants_initialise_halting_weights_like_the_backbone() -> None:
    """variance_scaling_initializer (fan_in, factor 2, truncated at 2 sigma, sigma^2 = 2.6/fan_in)
    for the halting convs and linears of the ``sact`` variants; PyTorch's default otherwise."""
    torch.manual_seed(0)
    normalised = []
    for _ in range(40):
        branch = SpatialHalting(64, -3.0, SACT_CIFAR_HALTING)
        for layer in (branch.local_conv, branch.global_fc):
            fan_in = layer.weight[0].numel()
            assert layer.weight.abs().max() <= 2 * math.sqrt(2.6 / fan_in)
            normalised.append(layer.weight.flatten() / math.sqrt(2 / fan_in))
    pooled = torch.cat(normalised)  # 40 * (576 + 64) = 25,600 draws: SE of the std ~0.5%
    assert abs(pooled.std().item() / 1.0029 - 1) < 0.02
    torch_branch = SpatialHalting(64, -3.0, TORCH_HALTING)
    # PyTorch's default (kaiming_uniform, a = sqrt(5)): |w| <= 1/sqrt(fan_in), std 1/sqrt(3 n).
    assert torch_branch.local_conv.weight.abs().max() <= 1 / math.sqrt(576)


@pytest.mark.parametrize(
    ("method", "variant", "name"),
    [
        ("sact", "sact", "cifar-sact"),
        ("act", "sact", "cifar-sact"),
        ("spatial_pact", "sact", "cifar-sact"),
        ("pact", "he", "torch"),
        ("sact", "he", "torch"),
    ],
)
def test_methods_take_the_conventions_from_the_backbone(method, variant, name) -> None:
    conventions, eps, momentum, slope, _ = CONVENTIONS[name]
    spec = get_method(method)
    model = spec.build(ModelSpec("cifar10", 14, variant), spec.config_cls())
    assert model.backbone.halting_conventions == conventions
    for branches in model.decision_branches():
        for branch in branches:
            acts = [m for m in branch.modules() if isinstance(m, nn.LeakyReLU)]
            norms = [m for m in branch.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
            assert [a.negative_slope for a in acts] == ([slope] * len(norms) if slope else [])
            assert all((m.eps, m.momentum) == (eps, momentum) for m in norms)


def test_backbones_name_their_halting_conventions() -> None:
    with torch.device("meta"):
        assert build_backbone("cifar10", 8, "sact").halting_conventions == SACT_CIFAR_HALTING
        assert build_backbone("cifar10", 8, "he").halting_conventions == TORCH_HALTING
        assert build_backbone("imagenet", 50, "sact").halting_conventions == SACT_IMAGENET_HALTING
        assert build_backbone("imagenet", 50, "torchvision").halting_conventions == TORCH_HALTING
