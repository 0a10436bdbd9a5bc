"""Peak memory: exact live-tensor tracking on CPU (analytic cases, determinism, mode ordering)."""

from __future__ import annotations

import pytest
import torch
from halting_helpers import calibrate_bn
from torch import nn

from harness.contract import EvalSpec, ModelSpec
from harness.costs.memory import LiveTensorTracker, measure_peak_memory
from harness.registry import get_method

F32 = 4
I64 = 8


def state_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, element by element (state-dict entries)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_tracker_counts_new_storage_only():
    x = torch.randn(8, 16)  # created outside: not counted
    with LiveTensorTracker() as tracker:
        y = x * 2  # new: 512 B
        y.add_(1)  # in place: nothing new
        flat = y.view(-1)  # a view: nothing new
        z = flat * 3  # new: 512 B, both alive
        del y, flat
        w = z + 1  # z alive while w is made: still two tensors
        del z
    assert tracker.peak_bytes == 2 * 8 * 16 * F32
    assert tracker.live_bytes == 8 * 16 * F32  # only w is left
    assert w.shape == (128,)


def test_linear_relu_peak_is_analytic():
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU()).eval()
    x = torch.randn(5, 32)
    with torch.no_grad():
        report, out = measure_peak_memory(lambda: net(x), net, x)
    # The linear's output and the relu's output are alive together; weight.t() is a view.
    assert report.activation_bytes == 2 * 5 * 64 * F32
    assert report.parameter_bytes == (32 * 64 + 64) * F32
    assert report.input_bytes == 5 * 32 * F32
    assert report.peak_bytes == report.parameter_bytes + report.input_bytes + 2 * 5 * 64 * F32
    assert report.device == "cpu" and report.technique.startswith("live tensor")
    assert report.live_at_peak[0].shape == (5, 64)
    assert out.shape == (5, 64)


def test_parameter_bytes_count_buffers_by_hand():
    """Parameters and buffers: a BN's running statistics and its int64 step counter count."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        report, _ = measure_peak_memory(lambda: net(x), net, x)
    parameters = 8 * 3 * 3 * 3 + 8 + 8  # conv weight, BN weight and bias
    buffers = 8 + 8  # BN running mean and variance (float32) ...
    assert report.parameter_bytes == (parameters + buffers) * F32 + I64  # ... num_batches_tracked
    assert report.input_bytes == 2 * 3 * 6 * 6 * F32


def test_cpu_never_reads_cuda_statistics(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.cuda statistics read for a CPU measurement")

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", refuse)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", refuse)
    net = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.no_grad():
        report, _ = measure_peak_memory(lambda: net(x), net, x)
    assert report.device == "cpu"


def _model(method: str, depth: int = 14, **config):
    spec = get_method(method)
    torch.manual_seed(0)
    return spec.build(ModelSpec(depth=depth), spec.config_cls(**config)).eval()


def _halting_model(method: str, depth: int, images: torch.Tensor):
    """A model whose images/positions really halt at different units: halting bias 0 and BN
    running statistics of ``images`` (see ``halting_helpers``)."""
    return calibrate_bn(_model(method, depth, halting_bias_init=0.0), images)


def _peak(model, images, mode: str, execution: str):
    return _peak_and_output(model, images, mode, execution)[0]


def _peak_and_output(model, images, mode: str, execution: str):
    def run():
        generator = torch.Generator().manual_seed(0)
        return model(images, EvalSpec(mode, execution, generator=generator))

    with torch.no_grad():
        return measure_peak_memory(run, model, images)


@pytest.mark.parametrize(
    ("mode", "execution"), [("deterministic", "early_exit"), ("stochastic", "masked")]
)
def test_cpu_peak_is_identical_run_to_run(mode, execution):
    model = _model("pact")
    images = torch.randn(8, 3, 32, 32)
    first, second = _peak(model, images, mode, execution), _peak(model, images, mode, execution)
    assert first == second
    assert first.peak_bytes > first.parameter_bytes + first.input_bytes
    assert first.parameter_bytes == state_bytes(model)  # parameters and buffers (BN statistics)
    assert first.input_bytes == 8 * 3 * 32 * 32 * F32


def test_deterministic_pact_needs_less_memory_than_act_and_stochastic():
    """ResNet-20 (3 units per block), batch 16, images that halt at different units."""
    batch = 16
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    resnet = _model("resnet", 20)
    with torch.no_grad():
        vanilla = measure_peak_memory(lambda: resnet(images), resnet, images)[0].activation_bytes
    pact, act = _halting_model("pact", 20, images), _halting_model("act", 20, images)
    report, out = _peak_and_output(pact, images, "deterministic", "early_exit")
    deterministic = report.activation_bytes
    units = torch.stack(out.units_executed, 1)
    assert (units < 3).any() and (units != units[0]).any()  # early exits really happen
    deterministic_masked = _peak(pact, images, "deterministic", "masked").activation_bytes
    sampled = _peak(pact, images, "sampled", "early_exit").activation_bytes
    stochastic = _peak(pact, images, "stochastic", "masked").activation_bytes
    act_report, act_out = _peak_and_output(act, images, "act", "early_exit")
    act_units = torch.stack(act_out.units_executed, 1)
    assert (act_units < 3).any() and (act_units != act_units[0]).any()
    act_early = act_report.activation_bytes
    act_masked = _peak(act, images, "act", "masked").activation_bytes
    state = batch * 16 * 32 * 32 * F32  # one block-1 state of the batch
    # The hard PACT modes keep only x^N: the vanilla network's peak plus per-sample bookkeeping
    # (halting logits, indices, N). ACT keeps its accumulator sum_l p^l x^l and the relaxed PACT
    # forward its weighted sum: about one state more.
    assert vanilla <= deterministic <= vanilla + 64 * batch
    assert sampled <= vanilla + 64 * batch
    assert deterministic + state // 2 < act_early
    assert deterministic + state // 2 < stochastic
    assert deterministic_masked < act_masked


def test_spatial_deterministic_pact_needs_less_memory_than_sact():
    """Masked spatial executions of ResNet-20 with positions halting at different units."""
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    spatial, sact = _halting_model("spatial_pact", 20, images), _halting_model("sact", 20, images)
    report, out = _peak_and_output(spatial, images, "deterministic", "masked")
    assert all(u.min() < 3 and u.min() < u.max() for u in out.units_executed)
    sact_report, sact_out = _peak_and_output(sact, images, "act", "masked")
    assert all(u.min() < 3 and u.min() < u.max() for u in sact_out.units_executed)
    stochastic = _peak(spatial, images, "stochastic", "masked").activation_bytes
    state = 8 * 16 * 32 * 32 * F32
    assert report.activation_bytes + state // 2 < sact_report.activation_bytes
    assert report.activation_bytes + state // 2 < stochastic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_from_allocator():
    net = nn.Linear(256, 1024).cuda().eval()
    x = torch.randn(64, 256, device="cuda")
    with torch.no_grad():
        net(x)  # warm-up (cuBLAS workspace)
        report, _ = measure_peak_memory(lambda: net(x), net, x)
    assert report.device == "cuda"
    assert report.activation_bytes >= 64 * 1024 * F32


@pytest.mark.slow
def test_resnet110_batch128_memory_table():
    """The memory claim at full size: CIFAR ResNet-110, batch 128, CPU (exact bytes), with
    images that halt at different units."""
    images = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    resnet = _model("resnet", 110)
    act, pact = _halting_model("act", 110, images), _halting_model("pact", 110, images)
    with torch.no_grad():
        vanilla = measure_peak_memory(lambda: resnet(images), resnet, images)[0]
    deterministic, out = _peak_and_output(pact, images, "deterministic", "early_exit")
    units = torch.stack(out.units_executed, 1)
    assert (units < 18).any() and (units != units[0]).any()
    table = {
        "act": _peak(act, images, "act", "early_exit"),
        "stochastic": _peak(pact, images, "stochastic", "masked"),
        "sampled": _peak(pact, images, "sampled", "early_exit"),
    }
    assert _peak(pact, images, "deterministic", "early_exit") == deterministic
    assert deterministic.peak_bytes < table["act"].peak_bytes
    assert deterministic.peak_bytes < table["stochastic"].peak_bytes
    assert table["sampled"].peak_bytes < table["stochastic"].peak_bytes
    assert vanilla.activation_bytes <= deterministic.activation_bytes
    assert deterministic.activation_bytes <= vanilla.activation_bytes + 64 * 128
