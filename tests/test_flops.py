"""FLOP accounting: golden values, agreement with fvcore and FlopCounterMode, spatial charging.

Hand-computed costs of the SACT-variant CIFAR ResNet-14 used below (MACs, batch 1):
3x3 conv C->C at HxW costs 9*C*C*H*W, so per output position 9*C*C:
block 0 (16 ch, 32x32) 2,304 per conv per position; block 1 (32 ch, 16x16) 9,216;
block 2 (64 ch, 8x8) 36,864. The spatial halting branch after unit 1 costs a 3x3 conv C->1
(9*C per position) plus a pooled linear C->1 (C per image).
"""

from __future__ import annotations

import pytest
import torch
from halting_helpers import calibrate_bn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.contract import EvalSpec, ModelOutput, ModelSpec, prefix_mask
from harness.costs import flops as flops_module
from harness.costs.flops import CONVENTION, FlopAccountant, count_macs
from harness.registry import get_method


def build(method: str, depth: int, dataset: str = "cifar10", **config):
    spec = get_method(method)
    torch.manual_seed(0)
    model = spec.build(ModelSpec(dataset=dataset, depth=depth), spec.config_cls(**config))
    return model.eval()


class Logits(nn.Module):
    """The whole model as fvcore sees it: images -> logits of one evaluation spec."""

    def __init__(self, model: nn.Module, spec: EvalSpec | None):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.spec).logits


def fvcore_flops(model: nn.Module, spec: EvalSpec | None, size: int = 32) -> int:
    """2 x fvcore MACs (conv + linear, BN off) of the whole model at batch 1."""
    total, _ = count_macs(Logits(model, spec), torch.randn(1, 3, size, size))
    return 2 * total


# -- golden values (DESIGN.md section 5) ------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "depth", "size", "golden"),
    [
        ("cifar10", 110, 32, 505_775_360),
        ("cifar10", 32, 32, 137_725_184),
        ("imagenet", 101, 224, 15_602_814_976),
        ("imagenet", 50, 224, 8_178_372_608),
    ],
)
def test_golden_vanilla_flops(dataset, depth, size, golden):
    model = build("resnet", depth, dataset)
    accountant = FlopAccountant(model, (size, size))
    assert accountant.vanilla_flops == golden
    assert accountant.full_flops == golden  # no halting branches
    out = ModelOutput(logits=torch.zeros(3, model.backbone.num_classes))
    total, per_block = accountant.per_image(out)
    assert total.tolist() == [golden] * 3
    assert per_block.shape == (3, len(model.backbone.blocks))
    assert per_block.sum(1).add(2 * (accountant.stem_macs + accountant.head_macs)).eq(golden).all()


def test_vanilla_accounting_equals_fvcore_on_whole_model():
    model = build("resnet", 32)
    assert FlopAccountant(model, (32, 32)).vanilla_flops == fvcore_flops(model, None)


def test_convention_is_stated():
    assert "2 x multiply-accumulates" in CONVENTION and "biases excluded" in CONVENTION


# -- fully executed adaptive models agree with fvcore on the whole model ----------------------
@pytest.mark.parametrize(
    ("method", "mode", "execution"),
    [
        ("act", "act", "masked"),
        ("pact", "stochastic", "masked"),
        ("sact", "act", "masked"),
        ("spatial_pact", "stochastic", "masked"),
    ],
)
def test_fully_executed_model_agrees_with_fvcore(method, mode, execution):
    model = build(method, 14, halting_bias_init=-30.0)
    generator = torch.Generator().manual_seed(0)
    spec = EvalSpec(mode, execution, generator=generator)
    accountant = FlopAccountant(model, (32, 32))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images, spec)
    # Halting biases of -30 never halt: every unit of every block ran.
    for block, counts in zip(model.backbone.blocks, out.units_executed, strict=True):
        assert (counts == len(block)).all()
    total, _ = accountant.per_image(out)
    assert total.tolist() == [accountant.full_flops] * 2
    assert accountant.full_flops == fvcore_flops(model, EvalSpec(mode, execution))
    assert accountant.full_flops > accountant.vanilla_flops  # halting branches are counted


# -- independent cross-check: what really ran, under FlopCounterMode --------------------------
@pytest.mark.parametrize(
    ("method", "mode", "bias"),
    [("act", "act", 0.0), ("pact", "deterministic", 0.0), ("pact", "sampled", -1.0)],
)
def test_early_exit_matches_flop_counter_mode(method, mode, bias):
    model = build(method, 26, halting_bias_init=bias)  # four units per block
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    calibrate_bn(model, images)  # halting scores that differ between images
    accountant = FlopAccountant(model, (32, 32))
    spec = EvalSpec(mode, "early_exit", generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(images, spec)
    units = torch.stack(out.units_executed, 1)
    assert (units != units[0]).any(), "the test needs images that halt at different units"
    total, per_block = accountant.per_image(out)
    assert total.shape == (8,) and per_block.shape == (8, 3)
    assert total.sum().item() == counter.get_total_flops()
    assert total.sum().item() < 8 * accountant.full_flops
    # The masked execution of the same halting decisions is charged the same.
    spec = EvalSpec(mode, "masked", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masked = model(images, spec)
    assert torch.equal(accountant.per_image(masked)[0], total)


def test_count_macs_excludes_bias_and_batch_norm():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4))
    total, by_module = count_macs(net, torch.zeros(1, 3, 5, 5))
    assert total == 9 * 3 * 4 * 25 and by_module["0"] == total and by_module["1"] == 0


# -- spatial accounting on hand-made maps -----------------------------------------------------
STEM = 9 * 3 * 16 * 1024
HEAD = 64 * 10
UNIT = {0: 2 * 2304 * 1024, 1: 2 * 9216 * 256, 2: 2 * 36864 * 64}
UNIT0 = {0: UNIT[0], 1: 9 * 16 * 32 * 256 + 9216 * 256, 2: 9 * 32 * 64 * 64 + 36864 * 64}
PER_POS = {0: 2304, 1: 9216, 2: 36864}
HALT_POS = {0: 9 * 16, 1: 9 * 32, 2: 9 * 64}
HALT_IMG = {0: 16, 1: 32, 2: 64}
SIZE = {0: 32, 1: 16, 2: 8}


def _maps(batch: int) -> list[torch.Tensor]:
    return [torch.ones(batch, SIZE[b], SIZE[b], dtype=torch.long) for b in range(3)]


def _block_macs(b: int, dilated: int, active: int) -> int:
    """Unit 1 dense + halting at every position + unit 2 (conv1 dilated, conv2 active)."""
    halting = HALT_POS[b] * SIZE[b] ** 2 + HALT_IMG[b]
    return UNIT0[b] + halting + PER_POS[b] * (dilated + active)


@pytest.mark.parametrize("method", ["sact", "spatial_pact"])
def test_spatial_accounting_on_hand_made_maps(method):
    model = build(method, 14)
    accountant = FlopAccountant(model, (32, 32))
    assert accountant.vanilla_flops == 2 * (STEM + HEAD + sum(UNIT0.values()) + sum(UNIT.values()))
    maps = _maps(5)
    # image 0: nothing after the first unit; 1: one interior position (3x3 halo: 9);
    # 2: a corner (halo 4); 3: two neighbours (halo 3x4 = 12); 4: everything.
    maps[0][1, 5, 7] = 2
    maps[0][2, 0, 0] = 2
    maps[0][3, 2, 2] = maps[0][3, 2, 3] = 2
    maps[0][4] = 2
    # block 1: image 1 a 2x2 square in the middle (halo 4x4 = 16); block 2: image 2 one edge cell.
    maps[1][1, 7:9, 7:9] = 2
    maps[2][2, 0, 4] = 2  # top edge, not a corner: halo 2x3 = 6
    out = ModelOutput(logits=torch.zeros(5, 10), units_ran=[prefix_mask(m, 2) for m in maps])
    total, per_block = accountant.per_image(out)
    assert total.shape == (5,) and per_block.shape == (5, 3)
    expected_block0 = [
        _block_macs(0, 0, 0),
        _block_macs(0, 9, 1),
        _block_macs(0, 4, 1),
        _block_macs(0, 12, 2),
        _block_macs(0, 1024, 1024),
    ]
    assert per_block[:, 0].tolist() == [2 * m for m in expected_block0]
    assert per_block[:, 1].tolist() == [
        2 * _block_macs(1, 16 if i == 1 else 0, 4 if i == 1 else 0) for i in range(5)
    ]
    assert per_block[:, 2].tolist() == [
        2 * _block_macs(2, 6 if i == 2 else 0, 1 if i == 2 else 0) for i in range(5)
    ]
    assert total.tolist() == (per_block.sum(1) + 2 * (STEM + HEAD)).tolist()
    # Everything executed everywhere = the full network.
    full = ModelOutput(
        logits=torch.zeros(2, 10), units_ran=[prefix_mask(m[:2] * 0 + 2, 2) for m in maps]
    )
    assert accountant.per_image(full)[0].tolist() == [accountant.full_flops] * 2


def test_image_level_accounting_by_hand():
    model = build("act", 14)
    accountant = FlopAccountant(model, (32, 32))
    units = [torch.tensor([1, 2]), torch.tensor([2, 1]), torch.tensor([1, 1])]
    out = ModelOutput(logits=torch.zeros(2, 10), units_ran=[prefix_mask(u, 2) for u in units])
    total, per_block = accountant.per_image(out)
    # A sample that stops at unit 1 evaluated the halting branch after it; one at unit 2 too.
    b0 = [UNIT0[0] + HALT_IMG[0], UNIT0[0] + HALT_IMG[0] + UNIT[0]]
    b1 = [UNIT0[1] + HALT_IMG[1] + UNIT[1], UNIT0[1] + HALT_IMG[1]]
    b2 = [UNIT0[2] + HALT_IMG[2]] * 2
    assert per_block.tolist() == [[2 * a, 2 * b, 2 * c] for a, b, c in zip(b0, b1, b2, strict=True)]
    assert total.tolist() == [
        2 * (STEM + HEAD + a + b + c) for a, b, c in zip(b0, b1, b2, strict=True)
    ]
    # branches_ran overrides the default (branch k ran where unit k ran).
    none = [torch.zeros(2, 1, dtype=torch.bool)] * 3
    out = ModelOutput(
        logits=torch.zeros(2, 10), units_ran=[prefix_mask(u, 2) for u in units], branches_ran=none
    )
    assert (accountant.per_image(out)[0] == total - 2 * sum(HALT_IMG.values())).all()


def test_spatial_branches_ran_overrides_the_default():
    model = build("sact", 14)
    accountant = FlopAccountant(model, (32, 32))
    ran = [prefix_mask(m, 2) for m in _maps(2)]
    default = accountant.per_image(ModelOutput(torch.zeros(2, 10), ran))[0]
    none = [torch.zeros_like(r[:, :1]) for r in ran]
    out = ModelOutput(torch.zeros(2, 10), ran, branches_ran=none)
    halting = sum(HALT_POS[b] * SIZE[b] ** 2 + HALT_IMG[b] for b in range(3))
    assert (accountant.per_image(out)[0] == default - 2 * halting).all()


def test_fvcore_trace_of_an_early_exit_drops_the_decision_branches():
    """The pitfall the design avoids: traced whole, the halting branches (which only feed
    ``bool()`` decisions) vanish from fvcore's count; the accountant charges them."""
    model = build("pact", 14, halting_bias_init=-30.0)
    accountant = FlopAccountant(model, (32, 32))
    spec = EvalSpec("deterministic", "early_exit")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), spec)
    assert [int(u) for u in out.units_executed] == [2, 2, 2]  # bias -30: no halting
    assert accountant.per_image(out)[0].item() == accountant.full_flops
    assert fvcore_flops(model, spec) == accountant.vanilla_flops < accountant.full_flops


@pytest.mark.parametrize("training", [False, True])
def test_accountant_leaves_training_flags_alone(training, monkeypatch):
    monkeypatch.setattr(flops_module, "_CACHE", {})  # make it count, not reuse
    model = build("sact", 14).train(training)
    model.backbone.blocks[0][0].preact_bn.eval()  # a mixed state must survive too
    before = {name: m.training for name, m in model.named_modules()}
    FlopAccountant(model, (32, 32))
    assert {name: m.training for name, m in model.named_modules()} == before


# -- independent re-implementation of the SACT code's flopsometer on a real forward ------------
def _dilate3x3(mask: torch.Tensor) -> torch.Tensor:
    """``slim.max_pool2d(mask, [3, 3], stride=1, padding='SAME')`` of a 0/1 map ``[B, H, W]``:
    1 where any of the 3x3 neighbours (inside the map) is 1."""
    height, width = mask.shape[1:]
    padded = nn.functional.pad(mask, (1, 1, 1, 1))
    shifts = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    return torch.stack(shifts).amax(0)


def _conv_flops(conv: nn.Conv2d, positions: torch.Tensor) -> torch.Tensor:
    """``flopsometer.conv2d``: 2 * positions * C_out * k_h * k_w * C_in, biases ignored."""
    c_out, c_in, k_h, k_w = conv.weight.shape
    return 2 * positions * c_out * k_h * k_w * c_in


def sact_code_flops(model: nn.Module, images: torch.Tensor, spec: EvalSpec):
    """Per-image FLOPs of a CIFAR SACT forward by the SACT code's rule, and the pooled halting
    FLOPs that the harness leaves out (see the test). Returns ``(flops, output, omitted)``.

    The rule, from ``flopsometer.py``, ``cifar_model.residual``, ``resnet_act`` and
    ``act.spatially_adaptive_computation_time``: each conv costs 2 * counted positions *
    C_out * k * k * C_in. Unit 1 of a block (``residual_mask=None``) and the stem and logits
    count every position; a later unit counts ``conv1`` on the 3x3-dilated residual mask and
    ``conv2`` on the mask itself; the halting branch after unit u < L counts its 3x3 conv on
    unit u's mask (all positions for unit 1) and its pooled 1x1 conv (2 * C) always. Every unit
    is called in the code (no early stop), so a unit that the model skipped because the whole
    batch had halted counts as called with an all-zero mask.

    The masks are the ones the model's units really received (recorded by hooks), so nothing
    of the harness's accounting (``units_executed``, ``DILATED_CONVS``, fvcore) is used.
    """
    calls: dict[tuple[int, int], torch.Tensor | None] = {}
    hooks = []
    for b, block in enumerate(model.backbone.blocks):
        for u, unit in enumerate(block):

            def record(module, args, output, key=(b, u)):
                mask = args[1] if len(args) > 1 else None
                calls[key] = None if mask is None else mask[:, 0].detach().clone()

            hooks.append(unit.register_forward_hook(record))
    try:
        with torch.no_grad():
            out = model(images, spec)
    finally:
        for hook in hooks:
            hook.remove()
    batch = images.shape[0]
    total = torch.zeros(batch, dtype=torch.int64)
    omitted = torch.zeros(batch, dtype=torch.int64)
    total += _conv_flops(model.backbone.stem.conv, images.shape[2] * images.shape[3])
    size = images.shape[2]
    for b, block in enumerate(model.backbone.blocks):
        size = size // block[0].stride
        everywhere = torch.ones(batch, size, size)
        for u, unit in enumerate(block):
            if u == 0:
                assert calls[(b, 0)] is None  # the first unit is dense
                mask = everywhere
                dilated = everywhere
            else:
                mask = calls.get((b, u), torch.zeros(batch, size, size))  # skipped: all zero
                assert mask is not None
                dilated = _dilate3x3(mask)
            total += _conv_flops(unit.conv1, dilated.sum((1, 2)).long())
            total += _conv_flops(unit.conv2, mask.sum((1, 2)).long())
            if u < len(block) - 1:
                branch = model.halting[b][u]
                total += _conv_flops(branch.local_conv, mask.sum((1, 2)).long())
                pooled = 2 * branch.global_fc.weight.numel()  # 1x1 conv on the pooled map
                total += pooled
                # The harness charges the pooled term only where the branch ran at some
                # position of the image (methods/sact/README.md, "Deviations").
                omitted += pooled * (mask.flatten(1).amax(1) == 0).long()
    total += 2 * model.backbone.head.fc.weight.numel()
    return total, out, omitted


@pytest.mark.parametrize(
    ("method", "mode", "bias"),
    [
        ("sact", "act", 0.0),
        ("spatial_pact", "deterministic", -1.0),
        ("spatial_pact", "sampled", -2.0),
    ],
)
def test_spatial_accounting_equals_the_sact_code_flopsometer(method, mode, bias):
    """A real SACT ResNet-32 forward in which positions really halt, charged by an independent
    re-implementation of the SACT code's FLOP counter: the same FLOPs to the unit, once the one
    documented difference (the pooled halting term of a unit no position of the image ran) is
    put back."""
    model = build(method, 32, halting_bias_init=bias)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    calibrate_bn(model, images)
    spec = EvalSpec(mode, "masked", generator=torch.Generator().manual_seed(1))
    expected, out, omitted = sact_code_flops(model, images, spec)
    spreads = []
    for counts in out.units_executed:  # halting really happens, at different units
        assert counts.min() < 5
        spreads.append(int(counts.max() - counts.min()))
    assert max(spreads) >= 2
    total, _ = FlopAccountant(model, (32, 32)).per_image(out)
    assert total.dtype == torch.float64 and (total == total.round()).all()
    assert (total.long() + omitted).tolist() == expected.tolist()
    assert (expected < 137_725_184).all()  # less than vanilla ResNet-32
    assert omitted.max() <= 2 * (16 + 32 + 64) * 3  # at most units 2..4 of each block
