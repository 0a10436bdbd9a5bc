"""``pact-harness bench``: speed you can see, as ratios measured side by side in one process.

Every figure is a ratio of two (or more) things timed in turn (interleaved repeats after warm-up,
medians: :func:`harness.costs.timing.time_interleaved`), so that a machine whose load drifts
(other jobs on the same cores) cancels out of it. The figures and their targets (:data:`TARGETS`):

- ``harness_vs_bare_train``: a slice of a ResNet-32 training epoch through the harness's loop
  (:func:`harness.train.train_one_epoch`) over a bare PyTorch loop written here (forward,
  cross-entropy, backward, SGD step), same model, batches and batch size.
- ``<method>_train_vs_vanilla``: one training step of ACT, PACT, SACT and spatial PACT over the
  vanilla ResNet of the same depth (the harness's loop for all).
- ``act_early_exit_speedup_over_flop_reduction``, ``pact_det_early_exit_...``: the realized
  speed-up of the early exit over the vanilla backbone (batch 128), divided by its FLOP reduction,
  at ResNet-56 and ResNet-110 (the key holds the worse; ``per_depth`` both). The halting pattern
  is set through the halting branches (:func:`calibrate_halting`) on images that differ as whole
  images do (:func:`varied_images`): BN statistics of the batch, random directions in each
  branch's last layer and, block by block, a bias found by bisection so that about half of each
  block's units run, differently for different images.
- ``spatial_gathered_speedup_over_flop_reduction``: the same for spatial PACT's gathered
  execution (every unit gathered) at about 50% active positions.
- ``pact_det_memory_vs_vanilla``, ``pact_det_memory_vs_act``: peak memory (exact on CPU) of
  deterministic PACT's early exit over the vanilla network's and ACT's early exit's, with
  halting that halts (the same calibrated models).
- ``grid_vs_loop``: the smoke preset through Ray Tune (``pact-harness grid``) over the same
  trials in a plain loop of :func:`harness.train.run_trial` (``--quick``: two trials).
- CUDA only: ``train_images_per_s_resnet32`` and ``_resnet110`` through the fast path (device
  resident data, bf16 autocast, channels-last, one host sync per epoch).

The JSON (``--out``) holds ``ratios`` (exactly these keys; a figure that could not be measured
is null with its reason under ``skipped``), ``targets``, ``per_depth``, ``details`` (times,
FLOP reductions, executed fractions), ``throughput`` (one entry per method and depth trained:
``method, depth, device, batch_size, train_images_per_s``, read by ``grid --estimate``) and the
machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from harness import store
from harness.config import SpeedConfig
from harness.contract import AdaptiveModel, EvalSpec
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.costs.memory import measure_peak_memory
from harness.costs.timing import time_interleaved
from harness.data import ArrayDataset, ArrayLoader
from harness.errors import ConfigError
from harness.models import create_model
from harness.runs import resolve_device
from harness.speed import Speed, resolve_speed
from harness.train import train_one_epoch

#: Target of each ratio: (comparison, bound). ``<=``: at most; ``>=``: at least.
TARGETS: dict[str, tuple[str, float]] = {
    "harness_vs_bare_train": ("<=", 1.05),
    "act_train_vs_vanilla": ("<=", 1.3),
    "pact_train_vs_vanilla": ("<=", 1.3),
    "sact_train_vs_vanilla": ("<=", 1.5),
    "spatial_pact_train_vs_vanilla": ("<=", 1.5),
    "act_early_exit_speedup_over_flop_reduction": (">=", 0.8),
    "pact_det_early_exit_speedup_over_flop_reduction": (">=", 0.8),
    "spatial_gathered_speedup_over_flop_reduction": (">=", 0.5),
    "pact_det_memory_vs_vanilla": ("<=", 1.01),
    "pact_det_memory_vs_act": ("<", 1.0),
    "grid_vs_loop": ("<=", 1.15),
    "train_images_per_s_resnet32": (">=", 21000.0),
    "train_images_per_s_resnet110": (">=", 0.0),
}
#: The early-exit figures aim higher than their target.
GOALS = {
    "act_early_exit_speedup_over_flop_reduction": 0.9,
    "pact_det_early_exit_speedup_over_flop_reduction": 0.9,
}
CPU_KEYS = tuple(k for k in TARGETS if not k.startswith("train_images_per_s"))
TRAIN_METHODS = ("act", "pact", "sact", "spatial_pact")


@dataclass
class BenchOptions:
    """What ``pact-harness bench`` was asked to do."""

    quick: bool = False
    device: str = "cpu"
    out: str | None = None
    data_root: str | None = None  # for grid_vs_loop (CIFAR-10); else $PACT_DATA_ROOT
    threads: int | None = None
    skip: Sequence[str] = ()  # figure groups to leave out: train, methods, early_exit, ...
    settings: Settings | None = None  # sizes; default Settings.for_run(quick)


@dataclass
class Settings:
    """Sizes of every figure (``--quick`` shrinks them to finish in minutes on 2 cores)."""

    warmup: int = 1
    repeats: int = 5
    bare_depth: int = 32
    bare_batch: int = 64
    bare_steps: int = 4
    method_depth: int = 32
    method_batch: int = 64
    method_steps: int = 2
    exit_depths: tuple[int, ...] = (56, 110)
    exit_batch: int = 128
    exit_repeats: int = 5
    calibration_batch: int = 32
    calibration_steps: int = 10
    gather_depth: int = 32
    gather_batch: int = 128
    memory_depth: int = 110
    grid_trials: int | None = None  # None: the whole smoke preset
    cuda_batch: int = 256
    cuda_steps: int = 30

    @classmethod
    def for_run(cls, quick: bool) -> Settings:
        if not quick:
            return cls()
        return cls(
            warmup=1,
            repeats=3,
            bare_batch=32,
            bare_steps=2,
            method_depth=20,
            method_batch=32,
            method_steps=1,
            exit_repeats=2,
            calibration_batch=8,
            calibration_steps=5,
            gather_depth=20,
            gather_batch=64,
            memory_depth=56,
            grid_trials=2,
            cuda_steps=10,
        )


@dataclass
class Report:
    """Everything the bench measured."""

    ratios: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(CPU_KEYS))
    per_depth: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# -- inputs --------------------------------------------------------------------------------------


def synthetic_batches(
    count: int, batch: int, device: torch.device, channels_last: bool = False, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` CIFAR-sized training batches from the harness's loader (random uint8 images,
    crop and flip, per-channel normalization), materialised once so that every loop timed
    against another gets the very same tensors."""
    generator = torch.Generator().manual_seed(seed)
    n = count * batch
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    dataset = ArrayDataset(images, labels, tuple(str(i) for i in range(10)))
    loader = ArrayLoader(
        dataset,
        batch,
        shuffle=True,
        drop_last=True,
        augment=True,
        seed=seed,
        channels_last=channels_last,
        device=device,
    )
    return [(x.to(device), y.to(device)) for x, y in loader]


def _branch_heads(branch: nn.Module) -> list[nn.Module]:
    """The layers of a decision branch that produce its logit: convs/linears with one output."""
    heads = []
    for module in branch.modules():
        if isinstance(module, nn.Linear) and module.out_features == 1:
            heads.append(module)
        elif isinstance(module, nn.Conv2d) and module.out_channels == 1:
            heads.append(module)
    return heads


def varied_images(batch: int, seed: int = 7) -> torch.Tensor:
    """Normalized-scale random images that differ as whole images do: standard-normal pixels
    with a per-image contrast (x0.5..2) and a per-image colour offset (N(0, 1) per channel).
    Pure noise images would all pool to the same features, so nothing would tell their halting
    apart."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 32, 32, generator=generator)
    contrast = torch.empty(batch, 1, 1, 1).uniform_(0.5, 2.0, generator=generator)
    colour = torch.randn(batch, 3, 1, 1, generator=generator)
    return pixels * contrast + colour


def calibrate_halting(
    model: AdaptiveModel,
    images: torch.Tensor,
    mode: str,
    execution: str,
    target: float = 0.5,
    spread: float = 2.0,
    steps: int = 8,
    seed: int = 0,
) -> float:
    """Make an untrained halting model run about ``target`` of the units of *every block*,
    differently for different images (and positions); returns the fraction reached on
    ``images`` (units that ran / units, over the whole network).

    As a trained network would: BN running statistics := the batch statistics of ``images``
    (one training-mode pass), so that halting features vary from image to image with unit
    scale; each decision branch's logit layer gets a random direction of norm ``spread``; then,
    block by block, one bias shared by the block's branches is set by bisection (``steps``
    forward passes) on the fraction of the block's units that run.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    heads = [[h for b in block for h in _branch_heads(b)] for block in model.decision_branches()]
    low_bias, high_bias = -8.0, 8.0  # low: every unit runs; high: the first unit only

    def set_bias(block: int, bias: float) -> None:
        with torch.no_grad():
            for head in heads[block]:
                if head.bias is not None:
                    head.bias.fill_(bias)

    with torch.no_grad():
        for block_heads in heads:
            for head in block_heads:
                direction = torch.randn(head.weight.shape, generator=generator)
                head.weight.copy_(direction * spread / direction.norm())
        for block in range(len(heads)):
            set_bias(block, low_bias)
    blocks = model.backbone.blocks

    def run() -> list[float]:
        with torch.no_grad():
            out = model(images, EvalSpec(mode, execution))
        return [u.double().mean().item() for u in out.units_executed]

    for block in range(len(heads)):
        if not heads[block]:
            continue
        low, high = low_bias, high_bias
        for _ in range(steps):
            middle = (low + high) / 2
            set_bias(block, middle)
            if run()[block] / len(blocks[block]) > target:
                low = middle
            else:
                high = middle
        set_bias(block, (low + high) / 2)
    return sum(run()) / sum(len(block) for block in blocks)


# -- timing helpers ------------------------------------------------------------------------------


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)


def harness_loop(
    model: AdaptiveModel, batches, device: torch.device, speed: Speed
) -> Callable[[], Any]:
    """One call: the batches through :func:`harness.train.train_one_epoch`."""
    optimizer = _sgd(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def run() -> dict[str, float]:
        return train_one_epoch(model, batches, optimizer, scheduler, device, speed=speed)

    return run


def bare_loop(net: nn.Module, batches, speed: Speed, device: torch.device) -> Callable[[], Any]:
    """One call: the batches through a bare PyTorch loop (what a user would write)."""
    optimizer = _sgd(net)

    def run() -> float:
        net.train()
        total = torch.zeros((), device=device)
        for images, labels in batches:
            with speed.autocast(device):
                loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        return float(total)

    return run


def _model(method: str, depth: int, device: torch.device, channels_last: bool, **config):
    torch.manual_seed(0)
    model = create_model(method, depth=depth, **config).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# -- the figures ---------------------------------------------------------------------------------


def bench_harness_vs_bare(report: Report, s: Settings, device, speed: Speed, cl: bool) -> None:
    batches = synthetic_batches(s.bare_steps, s.bare_batch, device, cl)
    harness_model = _model("resnet", s.bare_depth, device, cl)
    bare_model = _model("resnet", s.bare_depth, device, cl)
    times = time_interleaved(
        {
            "harness": harness_loop(harness_model, batches, device, speed),
            "bare": bare_loop(bare_model.backbone, batches, speed, device),
        },
        device,
        s.warmup,
        s.repeats,
    )
    harness, bare = times["harness"].seconds_per_batch, times["bare"].seconds_per_batch
    report.ratios["harness_vs_bare_train"] = harness / bare
    report.details["harness_vs_bare_train"] = {
        "depth": s.bare_depth,
        "batch_size": s.bare_batch,
        "steps_per_call": s.bare_steps,
        "harness_seconds": harness,
        "bare_seconds": bare,
    }
    _throughput(report, "resnet", s.bare_depth, device, s.bare_batch, bare / s.bare_steps)


def _throughput(report: Report, method, depth, device, batch, seconds_per_step) -> None:
    report.throughput.append(
        {
            "method": method,
            "depth": depth,
            "device": device.type,
            "batch_size": batch,
            "train_images_per_s": batch / seconds_per_step,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "dataset": "cifar10",
        }
    )


def bench_method_training(report: Report, s: Settings, device, speed: Speed, cl: bool) -> None:
    batches = synthetic_batches(s.method_steps, s.method_batch, device, cl)
    runs = {
        "resnet": harness_loop(_model("resnet", s.method_depth, device, cl), batches, device, speed)
    }
    for method in TRAIN_METHODS:
        model = _model(method, s.method_depth, device, cl)
        runs[method] = harness_loop(model, batches, device, speed)
    times = time_interleaved(runs, device, s.warmup, s.repeats)
    vanilla = times["resnet"].seconds_per_batch
    details = {"depth": s.method_depth, "batch_size": s.method_batch, "seconds": {}}
    for name, timing in times.items():
        details["seconds"][name] = timing.seconds_per_batch
        step = timing.seconds_per_batch / s.method_steps
        _throughput(report, name, s.method_depth, device, s.method_batch, step)
        if name != "resnet":
            report.ratios[f"{name}_train_vs_vanilla"] = timing.seconds_per_batch / vanilla
    report.details["train_vs_vanilla"] = details


def _flop_reduction(model: AdaptiveModel, output, size=(32, 32)) -> float:
    accountant = FlopAccountant(model, size)
    per_image, _ = accountant.per_image(output)
    return accountant.vanilla_flops / per_image.mean().item()


def bench_early_exit(
    report: Report, s: Settings, device, cl: bool, keep: dict[int, dict[str, AdaptiveModel]]
) -> None:
    """ACT and deterministic PACT early exits against the vanilla backbone, per depth."""
    figures = {
        "act": ("act", "act", "act_early_exit_speedup_over_flop_reduction"),
        "pact": ("pact", "deterministic", "pact_det_early_exit_speedup_over_flop_reduction"),
    }
    for depth in s.exit_depths:
        images = varied_images(s.exit_batch).to(device)
        if cl:
            images = images.contiguous(memory_format=torch.channels_last)
        calibration = images[: s.calibration_batch]
        models, runs, fractions = {}, {}, {}
        for name, (method, mode, _) in figures.items():
            model = _model(method, depth, device, cl, halting_bias_init=0.0)
            fractions[name] = calibrate_halting(
                model, calibration, mode, "early_exit", steps=s.calibration_steps
            )
            models[name] = model
            spec = EvalSpec(mode, "early_exit")
            runs[name] = lambda model=model, spec=spec, x=images: model(x, spec)
        vanilla_net = models["act"].backbone
        runs = {"vanilla": lambda net=vanilla_net, x=images: net(x), **runs}
        with torch.no_grad(), evaluating(vanilla_net):
            times = time_interleaved(runs, device, s.warmup, s.exit_repeats)
            for name, (_, mode, key) in figures.items():
                output = models[name](images, EvalSpec(mode, "early_exit"))
                reduction = _flop_reduction(models[name], output)
                speedup = times["vanilla"].seconds_per_batch / times[name].seconds_per_batch
                ran = sum(u.double().mean().item() for u in output.units_executed)
                spread = [u.double().std().item() for u in output.units_executed]
                report.per_depth.setdefault(key, {})[str(depth)] = speedup / reduction
                report.details.setdefault(key, {})[str(depth)] = {
                    "batch_size": s.exit_batch,
                    "vanilla_seconds": times["vanilla"].seconds_per_batch,
                    "early_exit_seconds": times[name].seconds_per_batch,
                    "speedup": speedup,
                    "flop_reduction": reduction,
                    "units_fraction": ran / sum(len(b) for b in models[name].backbone.blocks),
                    "calibration_fraction": fractions[name],
                    "units_std_per_block": spread,
                }
        keep[depth] = models
    for _, _, key in figures.values():
        if key in report.per_depth:
            report.ratios[key] = min(report.per_depth[key].values())


def bench_memory(
    report: Report, s: Settings, device, cl: bool, keep: dict[int, dict[str, AdaptiveModel]]
) -> None:
    """Peak memory of deterministic PACT's early exit vs the vanilla net and ACT's early exit."""
    depth = s.memory_depth
    images = varied_images(s.exit_batch).to(device)
    if cl:
        images = images.contiguous(memory_format=torch.channels_last)
    models = keep.get(depth)
    if models is None:
        models = {}
        for name, mode in (("act", "act"), ("pact", "deterministic")):
            model = _model(name, depth, device, cl, halting_bias_init=0.0)
            calibrate_halting(
                model, images[: s.calibration_batch], mode, "early_exit", steps=s.calibration_steps
            )
            models[name] = model
    vanilla_net = models["act"].backbone
    with torch.no_grad(), evaluating(vanilla_net):
        peaks = {
            "vanilla": measure_peak_memory(lambda: vanilla_net(images), vanilla_net, images)[0],
        }
        for name, mode in (("act", "act"), ("pact", "deterministic")):
            model = models[name]
            spec = EvalSpec(mode, "early_exit")
            peaks[name], out = measure_peak_memory(
                lambda m=model, p=spec: m(images, p), model, images
            )
            halted = [
                int((u < len(b)).sum())
                for u, b in zip(out.units_executed, model.backbone.blocks, strict=True)
            ]
            report.details.setdefault("memory_halted_per_block", {})[name] = halted

    # Compare activations plus input: the parameters differ by the halting branches only.
    def used(name: str) -> int:
        return peaks[name].activation_bytes + peaks[name].input_bytes

    report.ratios["pact_det_memory_vs_vanilla"] = used("pact") / used("vanilla")
    report.ratios["pact_det_memory_vs_act"] = used("pact") / used("act")
    report.details["memory"] = {
        "depth": depth,
        "batch_size": s.exit_batch,
        "device": peaks["vanilla"].device,
        "method": peaks["vanilla"].method,
        "counted": "activation peak + input batch (parameters excluded)",
        **{f"{k}_bytes": used(k) for k in peaks},
        **{f"{k}_peak_bytes": p.peak_bytes for k, p in peaks.items()},
    }


def bench_gathered(report: Report, s: Settings, device, cl: bool) -> None:
    """Spatial PACT (deterministic) gathered (every unit gathered) vs masked vs vanilla."""
    images = varied_images(s.gather_batch, seed=9).to(device)
    model = _model("spatial_pact", s.gather_depth, device, cl, halting_bias_init=0.0)
    fraction = calibrate_halting(
        model, images[: s.calibration_batch], "deterministic", "masked", steps=s.calibration_steps
    )
    if not hasattr(model, "gather_below"):
        report.skipped["spatial_gathered_speedup_over_flop_reduction"] = "no gathered execution"
        return
    model.gather_below = 1.0  # the gathered figure: every unit that can be gathered is
    vanilla_net = model.backbone
    gathered, masked = EvalSpec("deterministic", "gathered"), EvalSpec("deterministic", "masked")
    with torch.no_grad(), evaluating(vanilla_net):
        times = time_interleaved(
            {
                "vanilla": lambda: vanilla_net(images),
                "gathered": lambda: model(images, gathered),
                "masked": lambda: model(images, masked),
            },
            device,
            s.warmup,
            s.exit_repeats,
        )
        output = model(images, gathered)
    reduction = _flop_reduction(model, output)
    speedup = times["vanilla"].seconds_per_batch / times["gathered"].seconds_per_batch
    masked_speedup = times["vanilla"].seconds_per_batch / times["masked"].seconds_per_batch
    ran = sum(u.double().mean().item() for u in output.units_executed)
    report.ratios["spatial_gathered_speedup_over_flop_reduction"] = speedup / reduction
    report.details["spatial_gathered"] = {
        "method": "spatial_pact",
        "depth": s.gather_depth,
        "batch_size": s.gather_batch,
        "active_fraction": ran / sum(len(b) for b in model.backbone.blocks),
        "calibration_fraction": fraction,
        "flop_reduction": reduction,
        "gathered_speedup": speedup,
        "masked_speedup": masked_speedup,
        "masked_speedup_over_flop_reduction": masked_speedup / reduction,
        **{f"{k}_seconds": t.seconds_per_batch for k, t in times.items()},
    }


def _grid_preset(folder: Path, trials: int | None) -> str:
    """The smoke preset, or (``trials``) a copy cut to ACT + one vanilla depth per extra trial."""
    from harness.presets import load_preset_tree

    tree, _ = load_preset_tree("smoke")
    if trials is not None:
        tree = dict(tree)
        tree["name"] = f"smoke-{trials}"
        tree["methods"] = {"act": {}}
        tree["vanilla_depths"] = list(tree.get("vanilla_depths", [8]))[: max(trials - 1, 0)]
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def bench_grid(report: Report, s: Settings, data_root: str | None) -> None:
    """The smoke preset through Ray Tune vs the same trials in a plain loop of run_trial."""
    from harness.data import resolve_data_root
    from harness.grid import run_grid
    from harness.study import GridOptions, plan_study
    from harness.train import run_trial

    root = str(resolve_data_root(data_root))
    with tempfile.TemporaryDirectory(prefix="pact-bench-grid-") as tmp:
        folder = Path(tmp)
        preset = _grid_preset(folder, s.grid_trials)
        loop_options = GridOptions(preset=preset, out=str(folder / "loop"), data_root=root)
        grid_options = GridOptions(preset=preset, out=str(folder / "grid"), data_root=root)
        study = plan_study(loop_options)
        names = [t.name for t in study.trials]
        threads = torch.get_num_threads()
        # The loop first: it also fills the decompressed-data cache both then read.
        tic = time.perf_counter()
        for trial in study.trials:
            torch.set_num_threads(max(1, int(study.preset.resources.get("cpu", 1))))
            run_trial(trial.run_config, study.run_dir(trial), init_from=trial.init_from)
        loop = time.perf_counter() - tic
        torch.set_num_threads(threads)
        tic = time.perf_counter()
        outcome = run_grid(grid_options)
        grid = time.perf_counter() - tic
    if outcome is None or not outcome.complete:
        report.skipped["grid_vs_loop"] = "the grid did not finish every trial"
        return
    report.ratios["grid_vs_loop"] = grid / loop
    report.details["grid_vs_loop"] = {
        "trials": names,
        "grid_seconds": grid,
        "loop_seconds": loop,
        "note": "grid includes starting and stopping a local Ray; trials ran one CPU each",
    }


def bench_cuda_throughput(report: Report, s: Settings, device) -> None:
    """Training images/s of ResNet-32 and -110 through the fast path on the GPU."""
    speed = resolve_speed(SpeedConfig(), device)
    for depth in (32, 110):
        batches = synthetic_batches(s.cuda_steps, s.cuda_batch, device, channels_last=True)
        model = _model("resnet", depth, device, channels_last=True)
        timing = time_interleaved(
            {"train": harness_loop(model, batches, device, speed)}, device, 1, 3
        )["train"]
        per_s = s.cuda_steps * s.cuda_batch / timing.seconds_per_batch
        report.ratios[f"train_images_per_s_resnet{depth}"] = per_s
        _throughput(report, "resnet", depth, device, s.cuda_batch, s.cuda_batch / per_s)


# -- the whole bench -----------------------------------------------------------------------------

GROUPS = ("train", "methods", "early_exit", "memory", "gathered", "grid")


def met(key: str, value: float | None) -> bool | None:
    """Whether ``value`` meets the target of ``key`` (None if unmeasured)."""
    if value is None:
        return None
    comparison, bound = TARGETS[key]
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound}[comparison]


def format_table(report: Report) -> str:
    """Figure, value, target, met? (and the per-depth values below their figure)."""
    rows = [("figure", "value", "target", "met?")]
    for key, value in report.ratios.items():
        comparison, bound = TARGETS[key]
        target = f"{comparison} {bound:g}" + (f" (goal {GOALS[key]:g})" if key in GOALS else "")
        shown = "-" if value is None else (f"{value:,.0f}" if value > 100 else f"{value:.3f}")
        verdict = {True: "yes", False: "NO", None: "skipped"}[met(key, value)]
        rows.append((key, shown, target, verdict))
        for depth, per in sorted(report.per_depth.get(key, {}).items(), key=lambda kv: int(kv[0])):
            rows.append((f"  ResNet-{depth}", f"{per:.3f}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for key, why in report.skipped.items():
        lines.append(f"skipped {key}: {why}")
    return "\n".join(lines)


def _machine(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Measure every figure, print the table, write the JSON; returns the JSON object."""
    unknown = sorted(set(options.skip) - set(GROUPS))
    if unknown:
        raise ConfigError(f"--skip {','.join(unknown)}: unknown; allowed: {', '.join(GROUPS)}")
    if options.out is not None:
        store.check_writable_file(options.out, "--out")
    device = resolve_device(options.device)
    if options.threads is not None:
        if options.threads < 1:
            raise ConfigError(f"--threads {options.threads} must be >= 1")
        torch.set_num_threads(options.threads)
    settings = options.settings or Settings.for_run(options.quick)
    speed = resolve_speed(SpeedConfig(), device)
    channels_last = device.type == "cuda"
    report = Report()
    if device.type == "cuda":
        report.ratios.update(
            {"train_images_per_s_resnet32": None, "train_images_per_s_resnet110": None}
        )
    machine = _machine(device)
    kept: dict[int, dict[str, AdaptiveModel]] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("train", lambda: bench_harness_vs_bare(report, settings, device, speed, channels_last)),
        ("methods", lambda: bench_method_training(report, settings, device, speed, channels_last)),
        ("early_exit", lambda: bench_early_exit(report, settings, device, channels_last, kept)),
        ("memory", lambda: bench_memory(report, settings, device, channels_last, kept)),
        ("gathered", lambda: bench_gathered(report, settings, device, channels_last)),
        ("grid", lambda: bench_grid(report, settings, options.data_root)),
    ]
    if device.type == "cuda":
        steps.append(("cuda", lambda: bench_cuda_throughput(report, settings, device)))
    total = time.perf_counter()
    for name, step in steps:
        if name in options.skip:
            report.skipped[name] = "--skip"
            continue
        tic = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        try:
            step()
        except Exception as err:  # noqa: BLE001 - one failed figure must not lose the others
            report.skipped[name] = f"{type(err).__name__}: {err}"
        report.seconds[name] = time.perf_counter() - tic
        if name == "memory":
            kept.clear()
    report.seconds["total"] = time.perf_counter() - total
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    result = {
        "quick": options.quick,
        "machine": machine,
        "settings": dataclasses.asdict(settings),
        "ratios": report.ratios,
        "targets": {
            key: {
                "target": f"{TARGETS[key][0]} {TARGETS[key][1]:g}",
                "goal": GOALS.get(key),
                "met": met(key, value),
            }
            for key, value in report.ratios.items()
        },
        "per_depth": report.per_depth,
        "details": report.details,
        "throughput": report.throughput,
        "skipped": report.skipped,
        "seconds": report.seconds,
    }
    print(format_table(report))
    print(f"bench took {report.seconds['total']:.0f} s")
    if options.out:
        strict = json.loads(store.json_text(result))
        store.atomic_write_text(options.out, store.json_text(strict, indent=2) + "\n")
        print(f"wrote {options.out}")
    return result
