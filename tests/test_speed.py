"""Speed work (issue 13): early exit that pays, gathered spatial execution, the fast training
path (device-resident data, bf16 autocast, one host sync per epoch, torch.compile) and the
decompressed-data cache. Each fast path is checked for equivalence with the reference on CPU."""

from __future__ import annotations

import pytest
import torch
from halting_helpers import calibrate_bn

from harness.contract import EvalSpec
from harness.models import create_model
from methods.common.execution import compaction_keep
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
@pytest.mark.parametrize(
    ("compact_fraction", "min_rows"), [(0.0, 1), (0.125, 4), (0.5, 1), (1.0, 8)]
)
def test_early_exit_equals_masked_at_every_compaction_policy(
    method, mode, compact_fraction, min_rows
):
    images = _images()
    model = _halting(method, 20, images)
    model.compact_fraction, model.min_rows = compact_fraction, min_rows
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
    model.compact_fraction, model.min_rows = 0.5, 4
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
            # not compacted unless at least half of the previous batch had halted; never
            # below MIN_ROWS rows (halted rows pad a tiny batch)
            shrunk = max(previous - previous // 2, min(4, previous))
            assert seen[(b, u)] == previous or seen[(b, u)] <= shrunk
            assert seen[(b, u)] >= min(4, previous)
            previous = seen[(b, u)]


def test_compaction_pads_tiny_batches_with_halted_rows():
    alive = torch.tensor([False, True, False, False, False, False])
    keep = compaction_keep(alive, 1, min_rows=4)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert torch.equal(compaction_keep(alive, 1, min_rows=1), alive)
    assert compaction_keep(alive[:2], 1, min_rows=4).all()


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


# -- the fast training path --------------------------------------------------------------------


def _dataset(n: int = 64, seed: int = 0):
    from harness.data import ArrayDataset

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    return ArrayDataset(images, labels, tuple(str(i) for i in range(10)))


def _loader(device=None, **kwargs):
    from harness.data import ArrayLoader

    options = dict(shuffle=True, drop_last=True, augment=True, seed=3, crop_padding=4)
    options.update(kwargs)
    return ArrayLoader(_dataset(), 16, device=device, **options)


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_resident_loader_yields_the_host_loaders_batches(channels_last):
    host, resident = (
        _loader(channels_last=channels_last),
        _loader("cpu", channels_last=channels_last),
    )
    for epoch in (0, 1):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        pairs = list(zip(host, resident, strict=True))
        assert len(pairs) == 4
        for (a, la), (b, lb) in pairs:
            assert torch.equal(a, b) and torch.equal(la, lb)
            assert a.stride() == b.stride()


def test_resolve_speed_auto_is_on_for_cuda_only():
    from harness.config import SpeedConfig
    from harness.speed import resolve_speed

    cpu = resolve_speed(SpeedConfig(), torch.device("cpu"))
    assert not cpu.device_data and cpu.amp is None and cpu.sync_every_step and not cpu.compile
    cuda = resolve_speed(SpeedConfig(), torch.device("cuda"))
    assert cuda.device_data and cuda.amp is torch.bfloat16 and not cuda.sync_every_step
    forced = resolve_speed(SpeedConfig(amp="on", host_sync="epoch"), torch.device("cpu"))
    assert forced.amp is torch.bfloat16 and not forced.sync_every_step


def _epoch(speed, method: str = "act", forward=None, loader=None, lr: float = 0.05):
    from harness.train import train_one_epoch

    torch.manual_seed(0)
    model = create_model(method, depth=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loader = loader or _loader()
    loader.set_epoch(0)
    if forward == "compile":
        from harness.speed import compiled

        forward = compiled(model, speed)
    metrics = train_one_epoch(
        model, loader, optimizer, scheduler, torch.device("cpu"), speed=speed, forward=forward
    )
    return model, metrics


def test_one_host_sync_per_epoch_gives_the_same_metrics_and_weights():
    from harness.speed import Speed

    stepwise_model, stepwise = _epoch(Speed(sync_every_step=True))
    epochwise_model, epochwise = _epoch(Speed(sync_every_step=False))
    assert stepwise == epochwise  # bitwise: float64 sums on the device in the same order
    for a, b in zip(stepwise_model.parameters(), epochwise_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert {"train_loss", "train_accuracy", "train_units_executed", "lr"} <= set(stepwise)


def test_epoch_sync_names_the_first_diverging_step():
    from harness.errors import DivergenceError
    from harness.speed import Speed

    with pytest.raises(DivergenceError, match="at the end of the epoch") as deferred:
        _epoch(Speed(sync_every_step=False), lr=float("inf"))
    with pytest.raises(DivergenceError) as at_once:
        _epoch(Speed(sync_every_step=True), lr=float("inf"))
    assert deferred.value.step == at_once.value.step == 2  # step 1's update made it infinite


def test_bf16_autocast_trains_close_to_float32():
    from harness.speed import Speed

    _, full = _epoch(Speed())
    model, bf16 = _epoch(Speed(amp=torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert bf16["train_loss"] == pytest.approx(full["train_loss"], rel=0.05)
    assert bf16["train_units_executed"] == pytest.approx(full["train_units_executed"], rel=0.05)


def test_compiled_forward_trains_like_the_model():
    """``speed.compile`` with the ``eager`` backend (graph capture, no code generation)."""
    from harness.speed import Speed

    model, plain = _epoch(Speed(), method="resnet")
    compiled_model, compiled = _epoch(
        Speed(compile=True, compile_backend="eager"), method="resnet", forward="compile"
    )
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    for a, b in zip(model.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_speed_config_is_validated():
    from harness.config import RunConfig, SpeedConfig, validate_run_config
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="speed.amp"):
        validate_run_config(RunConfig(speed=SpeedConfig(amp="fp8")))
    with pytest.raises(ConfigError, match="speed.host_sync"):
        validate_run_config(RunConfig(speed=SpeedConfig(host_sync="never")))


# -- the decompressed-data cache ---------------------------------------------------------------


def test_npz_arrays_are_cached_memory_mapped_and_verified(tmp_path, monkeypatch):
    import numpy as np

    from harness.data import readers

    monkeypatch.setenv(readers.NPZ_CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        np.savez_compressed(
            root / f"{split}.npz",
            images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            labels=np.arange(n) % 10,
        )
    reads = []
    original = readers._read_npz
    monkeypatch.setattr(readers, "_read_npz", lambda path: reads.append(path) or original(path))
    first = readers.load_npz(root)
    assert len(reads) == 2  # decompressed once per file
    second = readers.load_npz(root)
    assert len(reads) == 2  # then memory-mapped from the cache
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # A corrupted cache entry fails its checksum and is rebuilt from the archive.
    (cached,) = (tmp_path / "cache").glob("train-*/images.npy")
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    third = readers.load_npz(root)
    assert len(reads) == 3
    assert torch.equal(third[0].images, first[0].images)
    # A changed archive is a new cache entry.
    np.savez_compressed(
        root / "test.npz",
        images=np.zeros((20, 32, 32, 3), np.uint8),
        labels=np.arange(20) % 10,
    )
    assert readers.load_npz(root)[1].images.sum() == 0
    monkeypatch.setenv(readers.NPZ_CACHE_ENV, "off")
    readers.load_npz(root)
    assert len(reads) == 6
