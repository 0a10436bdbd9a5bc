"""Speed work (issue 13): early exit that pays, gathered spatial execution, the fast training
path (device-resident data, bf16 autocast, one host sync per epoch, torch.compile) and the
decompressed-data cache. Each fast path is checked for equivalence with the reference on CPU."""

from __future__ import annotations

import pytest
import torch
from halting_helpers import calibrate_bn

from harness.contract import EvalSpec
from harness.models import create_model
from methods.common.gather import gathered_unit


def _halting(method: str, depth: int, images: torch.Tensor, channels_last: bool = False):
    torch.manual_seed(0)
    model = calibrate_bn(create_model(method, depth=depth, halting_bias_init=0.0), images)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _images(batch: int = 16, seed: int = 5, channels_last: bool = False) -> torch.Tensor:
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


# -- early exit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "mode"), [("act", "act"), ("pact", "deterministic")])
@pytest.mark.parametrize("compact_fraction", [0.0, 0.125, 0.5, 1.0])
def test_early_exit_equals_masked_at_every_compaction_policy(method, mode, compact_fraction):
    images = _images()
    model = _halting(method, 20, images)
    model.compact_fraction = compact_fraction
    with torch.no_grad():
        masked = model(images, EvalSpec(mode, "masked"))
        early = model(images, EvalSpec(mode, "early_exit"))
    units = torch.stack(masked.units_executed, 1)
    assert (units < 3).any() and (units != units[0]).any()  # halting really varies
    torch.testing.assert_close(early.logits, masked.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(masked.units_executed, early.units_executed, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(masked.ponder_cost, early.ponder_cost, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("method", "mode"), [("act", "act"), ("pact", "deterministic")])
def test_early_exit_keeps_channels_last(method, mode):
    """Every unit of a channels-last model gets a channels-last state (no NCHW after a block
    whose batch was compacted), and the result equals the NCHW execution's."""
    images = _images(channels_last=True)
    model = _halting(method, 20, images, channels_last=True)
    formats = []
    hooks = [
        unit.register_forward_pre_hook(
            lambda m, args: formats.append(
                args[0].is_contiguous(memory_format=torch.channels_last) or args[0].shape[0] == 1
            )
        )
        for block in model.backbone.blocks
        for unit in block
    ]
    try:
        with torch.no_grad():
            early = model(images, EvalSpec(mode, "early_exit"))
    finally:
        for hook in hooks:
            hook.remove()
    assert formats and all(formats)
    with torch.no_grad():
        masked = model(images, EvalSpec(mode, "masked"))
    torch.testing.assert_close(early.logits, masked.logits, rtol=1e-4, atol=1e-5)


def test_act_compacts_only_once_enough_have_halted():
    """With compact_fraction 1/2 a unit sees every sample not yet removed: at least those still
    running, and the batch shrinks only when half of it has halted."""
    images = _images(32)
    model = _halting("act", 20, images)
    model.compact_fraction = 0.5
    seen: dict[tuple[int, int], int] = {}
    hooks = [
        unit.register_forward_hook(
            lambda m, args, out, key=(b, u): seen.__setitem__(key, args[0].shape[0])
        )
        for b, block in enumerate(model.backbone.blocks)
        for u, unit in enumerate(block)
    ]
    try:
        with torch.no_grad():
            out = model(images, EvalSpec("act", "early_exit"))
    finally:
        for hook in hooks:
            hook.remove()
    for b, counts in enumerate(out.units_executed):
        previous = len(images)
        for u in range(1, len(model.backbone.blocks[b])):
            running = int((counts > u).sum())
            if running == 0:
                assert (b, u) not in seen
                continue
            assert running <= seen[(b, u)] <= previous
            # not compacted unless at least half of the previous batch had halted
            assert seen[(b, u)] == previous or seen[(b, u)] <= previous - previous // 2
            previous = seen[(b, u)]


# -- gathered spatial execution ----------------------------------------------------------------


@pytest.mark.parametrize("unit_cls", ["CifarPreActUnit", "CifarBasicUnit"])
def test_gathered_unit_equals_masked_unit(unit_cls):
    import baselines.units as units

    torch.manual_seed(0)
    unit = getattr(units, unit_cls)(16, 16).eval()
    for module in unit.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    x = torch.randn(4, 16, 8, 8)
    x = x.relu() if unit_cls == "CifarBasicUnit" else x
    active = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.3
    with torch.no_grad():
        reference = unit(x, active.unsqueeze(1).float())
        gathered = gathered_unit(unit, x, active)
        assert torch.equal(gathered_unit(unit, x, torch.zeros_like(active)), x)
    torch.testing.assert_close(gathered, reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(reference, x)


@pytest.mark.parametrize(("method", "mode"), [("sact", "act"), ("spatial_pact", "deterministic")])
def test_gathered_model_equals_masked(method, mode):
    images = _images(8)
    model = _halting(method, 20, images)
    assert model.executions_for(mode)[0] == "gathered"  # auto picks it
    model.gather_below = 1.0  # gather every unit that can be gathered
    with torch.no_grad():
        masked = model(images, EvalSpec(mode, "masked"))
        gathered = model(images, EvalSpec(mode, "gathered"))
    assert all(u.min() < 3 and u.min() < u.max() for u in masked.units_executed)
    torch.testing.assert_close(gathered.logits, masked.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(masked.units_executed, gathered.units_executed, strict=True):
        assert torch.equal(a, b)
