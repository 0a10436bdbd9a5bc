"""Tests for the ResNet backbones in ``baselines``.

Kept fast: CIFAR models run at 32x32 with small depths, ImageNet ResNet-50 at 64x64, and the
large ImageNet models (and all FLOP counts) are built on the meta device, where
``FlopCounterMode`` counts shapes without computing anything.
"""

import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from baselines import (
    BACKBONE_VARIANTS,
    BottleneckV1Unit,
    BottleneckV2Unit,
    CifarBasicUnit,
    CifarPreActUnit,
    OptionAShortcut,
    ResNetBackbone,
    TFSameConv2d,
    build_backbone,
    cifar_units,
    imagenet_units,
    load_torchvision_state_dict,
    tf_same_padding,
    tf_variance_scaling_,
    torchvision_key,
)
from harness.errors import ConfigError

ALL_VARIANTS = [(d, v) for d, vs in BACKBONE_VARIANTS.items() for v in vs]
IMAGENET_UNITS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def units_of(model: ResNetBackbone):
    """``(block, unit index, unit)`` in execution order, from ``model.blocks``."""
    for i, block in enumerate(model.blocks):
        for j, unit in enumerate(block):
            yield i, j, unit


def meta_backbone(dataset: str, depth: int, variant: str, **kw: int) -> ResNetBackbone:
    with torch.device("meta"):
        return build_backbone(dataset, depth, variant, **kw)


def count_flops(model: nn.Module, size: int, batch: int = 1) -> int:
    """FLOPs (2 per MAC of convs and matmuls) of one forward pass on the meta device."""
    model = model.to("meta").eval()
    images = torch.empty(batch, 3, size, size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


# --- shapes and structure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "depth", "variant", "size", "classes"),
    [
        ("cifar10", 8, "sact", 32, 10),
        ("cifar10", 14, "sact", 32, 10),
        ("cifar10", 8, "he", 32, 10),
        ("cifar10", 14, "he", 32, 10),
        ("imagenet", 50, "sact", 64, 1001),
        ("imagenet", 50, "torchvision", 64, 1000),
    ],
)
def test_forward_shapes(dataset: str, depth: int, variant: str, size: int, classes: int) -> None:
    torch.manual_seed(0)
    model = build_backbone(dataset, depth, variant)
    assert model.num_classes == classes
    images = torch.randn(2, 3, size, size)
    logits = model(images)  # training mode: batch statistics
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()
    model.eval()
    # The vanilla forward is exactly stem -> every unit (dense) -> head.
    x = model.stem(images)
    for _, _, unit in units_of(model):
        x = unit(x)
    torch.testing.assert_close(model.head(x), model(images), rtol=0, atol=0)


@pytest.mark.parametrize("variant", BACKBONE_VARIANTS["imagenet"])
@pytest.mark.parametrize("depth", [101, 152])
def test_imagenet_meta_shapes(depth: int, variant: str) -> None:
    model = meta_backbone("imagenet", depth, variant).eval()
    images = torch.empty(2, 3, 224, 224, device="meta")
    state = model.stem(images)
    assert state.shape == (2, 64, 56, 56)  # 7x7/2 conv to 112, 3x3/2 max-pool to 56
    sizes = []
    for block in model.blocks:
        for unit in block:
            state = unit(state)
        sizes.append(tuple(state.shape[1:]))
    assert sizes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert model.head(state).shape == (2, model.num_classes)


@pytest.mark.parametrize(
    ("depth", "units"), [(8, 1), (14, 2), (20, 3), (32, 5), (56, 9), (110, 18)]
)
@pytest.mark.parametrize("variant", BACKBONE_VARIANTS["cifar10"])
def test_cifar_structure(depth: int, units: int, variant: str) -> None:
    assert cifar_units(depth) == units
    model = meta_backbone("cifar10", depth, variant)
    assert [len(block) for block in model.blocks] == [units] * 3
    assert model.block_channels == [16, 32, 64]
    assert (model.dataset, model.variant, model.depth) == ("cifar10", variant, depth)
    assert [block[0].stride for block in model.blocks] == [1, 2, 2]
    for i, j, unit in units_of(model):
        assert unit.stride == (2 if i > 0 and j == 0 else 1)
        # Option A everywhere: no shortcut parameters; identity for every later unit.
        assert not any(p.numel() for p in unit.shortcut.parameters())
        assert isinstance(unit.shortcut, OptionAShortcut) == (i > 0 and j == 0)
        first_of_net = variant == "sact" and i == 0 and j == 0  # activate_before_residual
        assert unit.identity_shortcut == (j > 0 or (i == 0 and not first_of_net))


@pytest.mark.parametrize("variant", BACKBONE_VARIANTS["imagenet"])
@pytest.mark.parametrize("depth", [50, 101, 152])
def test_imagenet_structure(depth: int, variant: str) -> None:
    assert list(imagenet_units(depth)) == IMAGENET_UNITS[depth]
    model = meta_backbone("imagenet", depth, variant)
    assert [len(block) for block in model.blocks] == IMAGENET_UNITS[depth]
    assert model.block_channels == [256, 512, 1024, 2048]
    for i, j, unit in units_of(model):
        assert unit.stride == (2 if i > 0 and j == 0 else 1)
        assert unit.conv2.stride == (unit.stride, unit.stride)  # stride on the 3x3 (v1.5)
        assert unit.conv1.stride == (1, 1)
        # A 1x1 projection (with the stride) in the first unit of every block, identity after.
        assert (unit.shortcut_conv is not None) == (j == 0)
        assert unit.identity_shortcut == (j > 0)
        if j == 0:
            assert unit.shortcut_conv.kernel_size == (1, 1)
            assert unit.shortcut_conv.stride == (unit.stride, unit.stride)


def test_default_num_classes_and_override() -> None:
    assert meta_backbone("cifar10", 8, "sact").num_classes == 10
    assert meta_backbone("imagenet", 50, "sact").num_classes == 1001
    assert meta_backbone("imagenet", 50, "torchvision").num_classes == 1000
    model = meta_backbone("cifar10", 8, "he", num_classes=100)
    assert model.head.fc.out_features == 100


# --- parameter counts ---------------------------------------------------------------------------


def cifar_parameter_count(units: int, variant: str, classes: int = 10) -> int:
    """Parameters of a CIFAR ResNet-(6n+2), counted from the architecture by hand.

    A 3x3 conv C->D has 9*C*D weights, a BN 2*C, the classifier 64*classes + classes.
    ``sact`` (SACT code): stem conv with bias; unit = pre-activation BN, conv1, BN, conv2 with
    bias; head BN on the pooled 64 features. ``he``: stem conv + BN, no biases; unit = conv1, BN,
    conv2, BN.
    """
    widths = (16, 32, 64)
    count = 9 * 3 * 16 + (16 if variant == "sact" else 2 * 16)  # stem: bias or BN
    c_in = 16
    for width in widths:
        for _ in range(units):
            convs = 9 * c_in * width + 9 * width * width
            if variant == "sact":
                count += 2 * c_in + convs + 2 * width + width  # preact BN, bn1, conv2 bias
            else:
                count += convs + 2 * width + 2 * width  # bn1, bn2
            c_in = width
    head_bn = 2 * 64 if variant == "sact" else 0
    return count + head_bn + 64 * classes + classes


def imagenet_v2_parameter_count(units: tuple[int, ...], classes: int = 1001) -> int:
    """Parameters of the ``sact`` (pre-activation v2) ImageNet ResNet, by hand: stem 7x7 conv with
    bias; unit = pre-activation BN, 1x1 conv, BN, 3x3 conv, BN, 1x1 conv with bias (+ a 1x1
    projection with bias in the first unit of a block); postnorm BN; classifier."""
    count = 7 * 7 * 3 * 64 + 64
    c_in = 64
    for n, width in zip(units, (64, 128, 256, 512), strict=True):
        out = 4 * width
        for u in range(n):
            count += 2 * c_in + c_in * width + 2 * width + 9 * width * width + 2 * width
            count += width * out + out
            if u == 0:
                count += c_in * out + out
            c_in = out
    return count + 2 * 2048 + 2048 * classes + classes


@pytest.mark.parametrize(
    # By hand (cifar_parameter_count): he 464,154 and 1,727,962, as He et al. 2016, Table 6
    # (0.46M, 1.7M); sact 576 and 2,032 more (the SACT code's conv biases: stem 16, conv2 16/32/64
    # per unit).
    ("depth", "variant", "exact", "paper"),
    [
        (32, "he", 464_154, 0.46e6),
        (110, "he", 1_727_962, 1.7e6),
        (32, "sact", 464_730, 0.46e6),
        (110, "sact", 1_729_994, 1.7e6),
    ],
)
def test_cifar_parameter_counts(variant: str, depth: int, exact: int, paper: float) -> None:
    assert cifar_parameter_count(cifar_units(depth), variant) == exact
    count = n_params(meta_backbone("cifar10", depth, variant))
    assert count == exact
    assert abs(count - paper) / paper < 0.02


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_imagenet_parameter_counts(depth: int) -> None:
    ours = n_params(meta_backbone("imagenet", depth, "torchvision"))
    with torch.device("meta"):
        theirs = n_params(getattr(torchvision.models, f"resnet{depth}")(weights=None))
    assert ours == theirs
    sact = n_params(meta_backbone("imagenet", depth, "sact"))
    assert sact == imagenet_v2_parameter_count(tuple(IMAGENET_UNITS[depth]))
    if depth == 50:
        assert ours == 25_557_032
        # SACT (v2, 1001 classes): no BN in the stem or projections, a postnorm BN in the head,
        # biases on the stem, every conv3 and every projection (by hand: 25,570,409).
        assert sact == 25_570_409


# --- FLOPs (2 x MACs of convs and linear layers; BN, pooling, biases not counted) --------------


@pytest.mark.parametrize("variant", BACKBONE_VARIANTS["cifar10"])
@pytest.mark.parametrize(
    ("depth", "golden"),
    [(20, 81_102_080), (32, 137_725_184), (56, 250_971_392), (110, 505_775_360)],
)
def test_cifar_golden_flops(variant: str, depth: int, golden: int) -> None:
    # SACT code cifar_model_test: ResNet-110 505,775,360; the others re-derived from its rule.
    # Option-A shortcuts cost nothing, so the He variant counts the same.
    model = meta_backbone("cifar10", depth, variant)
    assert count_flops(model, 32) == golden
    assert count_flops(model, 32, batch=3) == 3 * golden


@pytest.mark.parametrize(
    ("depth", "golden"),
    [(50, 8_178_372_608), (101, 15_602_814_976), (152, 23_027_257_344)],
)
def test_imagenet_golden_flops(depth: int, golden: int) -> None:
    # SACT code imagenet_model_test: ResNet-101 at 224x224, 1001 classes: 15,602,814,976.
    assert count_flops(meta_backbone("imagenet", depth, "sact"), 224) == golden
    # Same convs in torchvision's model; its classifier has 1000 outputs instead of 1001.
    tv = meta_backbone("imagenet", depth, "torchvision")
    assert count_flops(tv, 224) == golden - 2 * 2048


def test_imagenet_flops_split() -> None:
    # code-anchors 5.2: ResNet-101 stem 236,027,904; blocks 1,335,885,824 / 2,055,208,960 /
    # 10,353,115,136 / 1,618,477,056; logits 4,100,096.
    model = meta_backbone("imagenet", 101, "sact").eval()
    state = torch.empty(1, 3, 224, 224, device="meta")
    parts = []
    with FlopCounterMode(display=False) as counter:
        for stage in [model.stem, *model.blocks, model.head]:
            before = counter.get_total_flops()
            if isinstance(stage, nn.ModuleList):
                for unit in stage:
                    state = unit(state)
            else:
                state = stage(state)
            parts.append(counter.get_total_flops() - before)
    assert parts == [
        236_027_904,
        1_335_885_824,
        2_055_208_960,
        10_353_115_136,
        1_618_477_056,
        4_100_096,
    ]


# --- residual_mask semantics -------------------------------------------------------------------


def _stride1_unit(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A stride-1 identity-shortcut unit in eval mode, with a realistic input for it."""
    torch.manual_seed(0)
    x = torch.randn(2, 64, 8, 8)
    unit: nn.Module
    if kind == "cifar-sact":
        unit = CifarPreActUnit(64, 64)
    elif kind == "cifar-he":
        unit, x = CifarBasicUnit(64, 64), x.relu()  # post-activation: inputs come from a ReLU
    elif kind == "imagenet-sact":
        unit = BottleneckV2Unit(64, 16, 64)
    else:
        unit, x = BottleneckV1Unit(64, 16, 64), x.relu()
    for m in unit.modules():  # non-trivial BN so that the residual is far from zero
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        if isinstance(m, nn.Conv2d) and m.bias is not None:  # biases are masked too
            m.bias.data.uniform_(-0.5, 0.5)
    return unit.eval(), x


UNIT_KINDS = ["cifar-sact", "cifar-he", "imagenet-sact", "imagenet-torchvision"]


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_zero_mask_keeps_input(kind: str) -> None:
    unit, x = _stride1_unit(kind)
    assert unit.identity_shortcut
    out = unit(x, torch.zeros(2, 1, 8, 8))
    assert torch.equal(out, x)
    assert not torch.allclose(unit(x), x)


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_ones_mask_equals_dense(kind: str) -> None:
    unit, x = _stride1_unit(kind)
    assert torch.equal(unit(x, torch.ones(2, 1, 8, 8)), unit(x))


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_partial_mask_freezes_exactly_masked_positions(kind: str) -> None:
    unit, x = _stride1_unit(kind)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :, :4] = 1.0  # sample 0: left half active
    mask[1] = (torch.arange(64).reshape(8, 8) % 3 == 0).float()  # sample 1: scattered
    out, dense = unit(x, mask), unit(x)
    active = mask.expand_as(x).bool()
    assert torch.equal(out[~active], x[~active])
    assert torch.equal(out[active], dense[active])


@pytest.mark.parametrize("kind", ["cifar-sact", "imagenet-sact"])
def test_residual_bias_is_added_before_the_mask(kind: str) -> None:
    """SACT code: ``conv_output`` (bias included) ``*= residual_mask``, then the shortcut add.
    With every residual weight 0, the residual is the last conv's bias, masked."""
    unit, x = _stride1_unit(kind)
    last = unit.conv2 if kind == "cifar-sact" else unit.conv3
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.linspace(-1.0, 1.0, last.out_channels))
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:7] = 1.0
    expected = x + last.bias.view(1, -1, 1, 1) * mask
    torch.testing.assert_close(unit(x, mask), expected, rtol=0, atol=1e-6)


def test_mask_on_downsampling_units_returns_shortcut() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    cifar = CifarPreActUnit(16, 32, stride=2).eval()
    expected = nn.functional.pad(nn.functional.avg_pool2d(x, 2), (0, 0, 0, 0, 8, 8))
    assert torch.equal(cifar(x, torch.zeros(2, 1, 4, 4)), expected)
    bottleneck = BottleneckV2Unit(16, 8, 32, stride=2).eval()
    preact = bottleneck.relu(bottleneck.preact_bn(x))
    assert bottleneck.shortcut_conv is not None
    torch.testing.assert_close(
        bottleneck(x, torch.zeros(2, 1, 4, 4)), bottleneck.shortcut_conv(preact)
    )


@pytest.mark.parametrize(("dataset", "variant"), ALL_VARIANTS)
def test_dilated_convs_name_conv_submodules(dataset: str, variant: str) -> None:
    model = meta_backbone(dataset, 8 if dataset == "cifar10" else 50, variant)
    for _, _, unit in units_of(model):
        assert unit.DILATED_CONVS == ("conv1",)
        for name in unit.DILATED_CONVS:
            conv = unit.get_submodule(name)
            assert isinstance(conv, nn.Conv2d)
            assert conv.out_channels == unit.conv2.in_channels  # it feeds the 3x3 conv2
            assert unit.conv2.kernel_size == (3, 3)


# --- initialisation ---------------------------------------------------------------------------


def truncated_normal_std(cut: float) -> float:
    """Standard deviation of a standard normal truncated to [-cut, cut]."""
    pdf = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return math.sqrt(1 - 2 * cut * pdf / mass)


def test_tf_variance_scaling_matches_its_analytic_moments() -> None:
    # TF-contrib variance_scaling_initializer(): factor 2, FAN_IN, truncated normal with
    # sigma = sqrt(1.3 * 2 / fan_in), cut at 2 sigma; its std is sigma * 0.8796 = 1.0029 sqrt(2/n).
    torch.manual_seed(0)
    weight = torch.empty(256, 128, 3, 3)
    tf_variance_scaling_(weight)
    fan_in = 128 * 9
    sigma = math.sqrt(1.3 * 2 / fan_in)
    expected = sigma * truncated_normal_std(2.0)
    assert abs(expected / math.sqrt(2 / fan_in) - 1.0029) < 1e-4
    # 294,912 draws: the sample std is within 0.5% of its value (about 4 standard errors).
    assert abs(weight.std().item() / expected - 1) < 0.005
    assert weight.abs().max().item() <= 2 * sigma
    assert abs(weight.mean().item()) < 4 * expected / math.sqrt(weight.numel())
    linear = torch.empty(64, 1000)  # a linear layer's fan-in is its input features
    tf_variance_scaling_(linear)
    linear_std = math.sqrt(1.3 * 2 / 1000) * truncated_normal_std(2.0)
    assert abs(linear.std().item() / linear_std - 1) < 0.01


@pytest.mark.parametrize(("dataset", "depth"), [("cifar10", 110), ("imagenet", 50)])
def test_sact_variants_use_the_sact_code_init(dataset: str, depth: int) -> None:
    """Every conv and linear of a ``sact`` backbone: TF variance scaling (fan_in, factor 2), biases
    0. Pooled over the whole network, weight / sqrt(2 / fan_in) has std 1.0029 (not 1)."""
    torch.manual_seed(0)
    model = build_backbone(dataset, depth, "sact")
    normalised, layers = [], 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            layers += 1
            fan_in = m.weight[0].numel()
            sigma = math.sqrt(1.3 * 2 / fan_in)
            assert m.weight.abs().max().item() <= 2 * sigma
            normalised.append((m.weight / math.sqrt(2 / fan_in)).flatten())
            if m.bias is not None:
                assert torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    pooled = torch.cat(normalised)
    assert layers == len(list(units_of(model))) * (2 if dataset == "cifar10" else 3) + 2 + (
        4 if dataset == "imagenet" else 0  # projections
    )
    # 1.7M (CIFAR) / 25M (ImageNet) draws: standard error of the std below 0.06%.
    assert abs(pooled.std().item() - math.sqrt(1.3) * truncated_normal_std(2.0)) < 0.002
    assert abs(pooled.std().item() - 1.0) > 0.001  # not plain He normal


def test_cifar_sact_batch_norm_and_biases() -> None:
    model = build_backbone("cifar10", 20, "sact")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            assert (m.eps, m.momentum) == (1e-3, 0.1)  # TF epsilon 1e-3, decay 0.9
    # TF-slim convs without a normalizer have a bias: the stem and every unit's conv2.
    assert model.stem.conv.bias is not None
    for _, _, unit in units_of(model):
        assert unit.conv1.bias is None and unit.conv2.bias is not None
    assert isinstance(model.head.fc, nn.Linear) and model.head.fc.bias is not None


def test_imagenet_sact_biases_and_torchvision_none() -> None:
    sact = meta_backbone("imagenet", 50, "sact")
    assert sact.stem.conv.bias is not None
    for _, j, unit in units_of(sact):
        assert unit.conv1.bias is None and unit.conv2.bias is None
        assert unit.conv3.bias is not None
        assert (unit.shortcut_conv is not None) == (j == 0)
        if j == 0:
            assert unit.shortcut_conv.bias is not None
    tv = meta_backbone("imagenet", 50, "torchvision")
    assert all(m.bias is None for m in tv.modules() if isinstance(m, nn.Conv2d))


def test_he_variant_keeps_he_fan_out_init() -> None:
    torch.manual_seed(0)
    model = build_backbone("cifar10", 20, "he")
    conv = model.blocks[2][1].conv2
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5  # He, fan_out
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            assert (m.eps, m.momentum) == (1e-5, 0.1)


# --- TF "SAME" padding of strided CIFAR convs ---------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (32, 3, 2, (0, 1, 0, 1)),  # even input, stride 2: nothing before, one after
        (16, 3, 2, (0, 1, 0, 1)),
        (33, 3, 2, (1, 1, 1, 1)),  # odd input: ceil(33/2) = 17 outputs need 2 pixels
        (32, 3, 1, (1, 1, 1, 1)),
        (32, 1, 2, (0, 0, 0, 0)),
        (224, 7, 2, (2, 3, 2, 3)),  # what conv2d_same avoids by padding 3/3 explicitly
    ],
)
def test_tf_same_padding(size: int, kernel: int, stride: int, pads: tuple) -> None:
    assert tf_same_padding((size, size), (kernel, kernel), (stride, stride)) == pads


def test_tf_same_conv_on_a_hand_built_example() -> None:
    """A 4x4 input 0..15, a 3x3 all-ones kernel, stride 2. TF SAME: 2x2 outputs, padded with one
    zero row and column after the input, so output (i, j) sums rows 2i..2i+2, cols 2j..2j+2."""
    x = torch.arange(16.0).view(1, 1, 4, 4)
    conv = TFSameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    grid = x[0, 0]
    expected = torch.tensor(
        [
            [grid[0:3, 0:3].sum(), grid[0:3, 2:4].sum()],
            [grid[2:4, 0:3].sum(), grid[2:4, 2:4].sum()],
        ]
    )
    assert expected.tolist() == [[45.0, 39.0], [66.0, 50.0]]
    assert torch.equal(conv(x)[0, 0], expected)
    # PyTorch's symmetric padding=1 shifts every window up and left by one pixel.
    symmetric = nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
    assert not torch.equal(symmetric, conv(x))


def test_cifar_sact_strided_conv_pads_like_tf() -> None:
    torch.manual_seed(0)
    unit = CifarPreActUnit(16, 32, stride=2)
    assert isinstance(unit.conv1, TFSameConv2d)
    x = torch.randn(2, 16, 32, 32)
    reference = nn.functional.conv2d(
        nn.functional.pad(x, (0, 1, 0, 1)), unit.conv1.weight, stride=2, padding=0
    )
    out = unit.conv1(x)
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    assert not isinstance(CifarPreActUnit(16, 16).conv1, TFSameConv2d)  # stride 1: 1/1
    he = CifarBasicUnit(16, 32, stride=2)  # the He variant keeps PyTorch's symmetric pad
    assert not isinstance(he.conv1, TFSameConv2d) and he.conv1.padding == (1, 1)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (
            {"dataset": "cifar10", "depth": 33},
            ["depth=33", "6n+2", "cifar10", "8, 14, 20, 32, 56, 110"],
        ),
        ({"dataset": "cifar10", "depth": 2}, ["depth=2", "6n+2"]),
        ({"dataset": "cifar10", "depth": "32"}, ["depth='32'", "6n+2"]),
        ({"dataset": "imagenet", "depth": 34}, ["depth=34", "imagenet", "50, 101, 152"]),
        ({"dataset": "cifar100", "depth": 32}, ["dataset='cifar100'", "'cifar10', 'imagenet'"]),
        (
            {"dataset": "cifar10", "depth": 32, "variant": "torchvision"},
            ["variant='torchvision'", "cifar10", "'sact', 'he'"],
        ),
        (
            {"dataset": "imagenet", "depth": 50, "variant": "he"},
            ["variant='he'", "imagenet", "'sact', 'torchvision'"],
        ),
        ({"dataset": "cifar10", "depth": 32, "num_classes": 0}, ["num_classes=0"]),
    ],
)
def test_bad_config_raises(kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# --- torchvision weights ------------------------------------------------------------------------


def test_torchvision_key_mapping() -> None:
    assert torchvision_key("conv1.weight") == "stem.conv.weight"
    assert torchvision_key("bn1.running_var") == "stem.bn.running_var"
    assert torchvision_key("layer3.5.bn2.weight") == "blocks.2.5.bn2.weight"
    assert torchvision_key("layer1.0.downsample.0.weight") == "blocks.0.0.shortcut_conv.weight"
    assert torchvision_key("layer4.0.downsample.1.bias") == "blocks.3.0.shortcut_bn.bias"
    assert torchvision_key("fc.bias") == "head.fc.bias"
    with pytest.raises(KeyError):
        torchvision_key("classifier.weight")


def test_load_torchvision_resnet50_matches_outputs() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in reference.modules():  # random BN statistics and affine: a meaningful check
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    ours = build_backbone("imagenet", 50, "torchvision")
    assert n_params(ours) == n_params(reference) == 25_557_032
    missing, unexpected = load_torchvision_state_dict(ours, reference.state_dict())
    assert missing == [] and unexpected == []
    images = torch.randn(2, 3, 64, 64)
    reference.eval()
    ours.eval()
    with torch.no_grad():
        expected, got = reference(images), ours(images)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_load_torchvision_rejects_other_variants() -> None:
    model = meta_backbone("imagenet", 50, "sact")
    with pytest.raises(ConfigError, match="variant='sact'"):
        load_torchvision_state_dict(model, {})


@pytest.mark.parametrize(
    "make",
    [
        lambda: CifarPreActUnit(16, 16, activate_before_residual=True),
        lambda: CifarPreActUnit(16, 32, stride=2),
        lambda: CifarBasicUnit(16, 32, stride=2),
        lambda: BottleneckV2Unit(64, 16, 128, stride=2),
        lambda: BottleneckV1Unit(64, 16, 128, stride=2),
        lambda: BottleneckV1Unit(64, 16, 64),
    ],
)
def test_a_skipped_unit_computes_its_shortcut_alone_and_equals_a_zero_residual_mask(make):
    """``skipped(x)`` (a closed gate on the unit) equals the unit with its residual masked to
    zero, and runs exactly the declared SHORTCUT_MODULES' FLOPs (none of the residual's)."""
    torch.manual_seed(0)
    unit = make().eval()
    x = torch.randn(2, unit.in_channels, 8, 8).relu()
    with torch.no_grad():
        reference = unit(x, residual_mask=torch.zeros(1, 1, 1, 1))
        counter = FlopCounterMode(display=False)
        with counter:
            out = unit.skipped(x)
    assert torch.allclose(out, reference, atol=1e-6)
    shortcut = [getattr(unit, name, None) for name in unit.SHORTCUT_MODULES]
    expected = 0
    for module in shortcut:
        if isinstance(module, nn.Conv2d):  # 2 x MACs of a 1x1 conv on the strided output
            h, w = out.shape[-2:]
            expected += 2 * x.shape[0] * module.in_channels * module.out_channels * h * w
    assert counter.get_total_flops() == expected
