"""The bench's measurements: calibrated halting, the timed loops and one function per figure.

Each ``bench_*`` function measures one group of figures of a :class:`~harness.bench.plan.BenchPlan`
at the sizes of :class:`Settings` and returns a :class:`Report` holding only what it measured;
nothing here judges a value against its target (:mod:`harness.bench.judge`) or formats it
(:mod:`harness.bench.render`). The arithmetic that turns times and FLOPs into a figure is the
pure :func:`speedup_vs_flops`.

A timed figure is computed once per interleaved round (round ``r`` of each callable timed by
:func:`~harness.costs.timing.time_interleaved` ran next to round ``r`` of the others), so each
figure comes with one value per round (``Report.rounds``, ``Report.per_depth_rounds``); its
value is their median, and :mod:`harness.bench.judge` makes its interval from them.

Halting models are made to halt as a trained network would (:func:`calibrate_halting`) on
images that differ as whole images do (:func:`varied_images`).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.bench.plan import BenchPlan, GridPlan, Subject
from harness.config import SpeedConfig
from harness.contract import AdaptiveModel, EvalSpec
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.costs.memory import measure_peak_memory
from harness.costs.timing import TimingReport, time_interleaved
from harness.data import ArrayDataset, ArrayLoader
from harness.models import create_model
from harness.speed import Speed, resolve_speed
from harness.train import train_one_epoch


@dataclass
class Settings:
    """Sizes of every figure (``--quick`` shrinks them to finish in minutes on 2 cores).

    ``repeats`` (training and harness figures, CUDA throughput) and ``exit_repeats`` (early
    exits, gathering) are the interleaved rounds, one value of each figure per round; a target
    is judged only from :data:`harness.bench.judge.MIN_ROUNDS` (5) rounds on, so ``--quick``
    keeps 5 (``--rounds`` sets both)."""

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
    grid_trials: int | None = None  # None: the whole preset
    cuda_batch: int = 256
    cuda_steps: int = 30

    @classmethod
    def for_run(cls, quick: bool) -> Settings:
        if not quick:
            return cls()
        return cls(
            warmup=1,
            repeats=5,
            bare_batch=32,
            bare_steps=2,
            method_depth=20,
            method_batch=32,
            method_steps=1,
            exit_repeats=5,
            calibration_batch=8,
            calibration_steps=5,
            gather_depth=20,
            gather_batch=64,
            memory_depth=56,
            grid_trials=2,
            cuda_steps=10,
        )

    def with_rounds(self, rounds: int | None) -> Settings:
        """These sizes with ``rounds`` interleaved rounds for every timed figure (None: as
        they are)."""
        if rounds is None:
            return self
        return dataclasses.replace(self, repeats=rounds, exit_repeats=rounds)


@dataclass
class Report:
    """What the bench measured: ``ratios`` (figure key -> value, None when not measured; the
    median of its rounds), ``rounds`` (key -> the figure in each interleaved round, in order),
    ``per_depth`` (key -> depth -> value) and ``per_depth_rounds`` (key -> depth -> rounds) for
    figures measured per depth (their key holds the worse depth), ``exact`` (keys counted, not
    timed: no rounds), ``details``, ``throughput`` rows, ``skipped`` (figure key or group ->
    why) and ``seconds`` per group."""

    ratios: dict[str, float | None] = field(default_factory=dict)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    per_depth: dict[str, dict[str, float]] = field(default_factory=dict)
    per_depth_rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    exact: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def merge(self, other: Report) -> None:
        """Add what ``other`` measured (its keys replace these)."""
        self.ratios.update(other.ratios)
        self.rounds.update(other.rounds)
        self.per_depth.update(other.per_depth)
        self.per_depth_rounds.update(other.per_depth_rounds)
        self.exact += [key for key in other.exact if key not in self.exact]
        self.details.update(other.details)
        self.throughput += other.throughput
        self.skipped.update(other.skipped)
        self.seconds.update(other.seconds)


# -- the arithmetic ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedupVsFlops:
    """A realized speed-up beside the FLOP reduction that promised it."""

    speedup: float  # vanilla seconds / seconds
    flop_reduction: float  # vanilla FLOPs / mean FLOPs per image

    @property
    def ratio(self) -> float:
        """1.0: the time fell exactly as the FLOPs did; below 1: overheads ate some of it."""
        return self.speedup / self.flop_reduction


def flop_reduction(vanilla_flops: float, flops_per_image: Sequence[float] | torch.Tensor) -> float:
    """Vanilla FLOPs per image over the mean FLOPs per image of a pass."""
    values = torch.as_tensor(flops_per_image, dtype=torch.float64)
    return float(vanilla_flops / values.mean().item())


def speedup_vs_flops(
    vanilla_seconds: float,
    seconds: float,
    vanilla_flops: float,
    flops_per_image: Sequence[float] | torch.Tensor,
) -> SpeedupVsFlops:
    """The figure of an early exit or a gathered execution, from the times of one batch (the
    vanilla network's and the execution's) and the FLOPs per image of that batch."""
    return SpeedupVsFlops(vanilla_seconds / seconds, flop_reduction(vanilla_flops, flops_per_image))


def per_round(
    numerator: TimingReport, denominator: TimingReport, scale: float = 1.0
) -> list[float]:
    """``scale * numerator / denominator`` of each interleaved round (round ``r`` of one timed
    beside round ``r`` of the other): the sample a figure's spread is made from."""
    pairs = zip(numerator.seconds, denominator.seconds, strict=True)
    return [scale * top / bottom for top, bottom in pairs]


def _flop_reduction(model: AdaptiveModel, output, size=(32, 32)) -> float:
    """The FLOP reduction of one pass of ``model`` (its output) over its vanilla backbone."""
    accountant = FlopAccountant(model, size)
    per_image, _ = accountant.per_image(output)
    return flop_reduction(accountant.vanilla_flops, per_image)


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


def _subject_model(subject: Subject, depth: int, device, channels_last: bool) -> AdaptiveModel:
    return _model(subject.method, depth, device, channels_last, **subject.overrides)


def throughput_row(
    method: str, depth: int, device: torch.device, batch: int, seconds_per_step: float
) -> dict[str, Any]:
    """One ``throughput`` entry (read by ``grid --estimate``)."""
    return {
        "method": method,
        "depth": depth,
        "device": device.type,
        "batch_size": batch,
        "train_images_per_s": batch / seconds_per_step,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dataset": "cifar10",
    }


def _images(batch: int, device, channels_last: bool, seed: int = 7) -> torch.Tensor:
    images = varied_images(batch, seed=seed).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


# -- the figures ---------------------------------------------------------------------------------


def bench_harness_vs_bare(plan: BenchPlan, s: Settings, device, speed: Speed, cl: bool) -> Report:
    """A slice of a training epoch through the harness's loop over a bare PyTorch loop (the
    plan's vanilla network, same batches and batch size)."""
    report = Report()
    if plan.harness_vs_bare is None:
        return report
    key = plan.harness_vs_bare.key
    batches = synthetic_batches(s.bare_steps, s.bare_batch, device, cl)
    harness_model = _model(plan.vanilla, s.bare_depth, device, cl)
    bare_model = _model(plan.vanilla, s.bare_depth, device, cl)
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
    report.rounds[key] = per_round(times["harness"], times["bare"])
    report.ratios[key] = statistics.median(report.rounds[key])
    report.details[key] = {
        "depth": s.bare_depth,
        "batch_size": s.bare_batch,
        "steps_per_call": s.bare_steps,
        "harness_seconds": harness,
        "bare_seconds": bare,
    }
    report.throughput.append(
        throughput_row(plan.vanilla, s.bare_depth, device, s.bare_batch, bare / s.bare_steps)
    )
    return report


def bench_method_training(plan: BenchPlan, s: Settings, device, speed: Speed, cl: bool) -> Report:
    """One training step of each of the plan's ``train`` methods over the vanilla network's."""
    report = Report()
    if not plan.train:
        return report
    batches = synthetic_batches(s.method_steps, s.method_batch, device, cl)
    vanilla_model = _model(plan.vanilla, s.method_depth, device, cl)
    runs = {plan.vanilla: harness_loop(vanilla_model, batches, device, speed)}
    for entry in plan.train:
        model = _subject_model(entry.subject, s.method_depth, device, cl)
        runs[entry.subject.method] = harness_loop(model, batches, device, speed)
    times = time_interleaved(runs, device, s.warmup, s.repeats)
    details: dict[str, Any] = {"depth": s.method_depth, "batch_size": s.method_batch, "seconds": {}}
    for name, timing in times.items():
        details["seconds"][name] = timing.seconds_per_batch
        step = timing.seconds_per_batch / s.method_steps
        report.throughput.append(throughput_row(name, s.method_depth, device, s.method_batch, step))
    for entry in plan.train:
        key = entry.figure.key
        report.rounds[key] = per_round(times[entry.subject.method], times[plan.vanilla])
        report.ratios[key] = statistics.median(report.rounds[key])
    report.details["train_vs_vanilla"] = details
    return report


def bench_early_exit(
    plan: BenchPlan,
    s: Settings,
    device,
    cl: bool,
    keep: dict[int, dict[Subject, AdaptiveModel]],
) -> Report:
    """Each ``early_exit`` figure of the plan against the vanilla backbone, per depth (the key
    holds the worse depth). The calibrated models of each depth are left in ``keep``."""
    report = Report()
    if not plan.early_exit:
        return report
    figures = plan.early_exit
    for depth in s.exit_depths:
        images = _images(s.exit_batch, device, cl)
        calibration = images[: s.calibration_batch]
        models, fractions = [], []
        runs: dict[str, Callable[[], Any]] = {}
        for i, entry in enumerate(figures):
            model = _subject_model(entry.subject, depth, device, cl)
            fractions.append(
                calibrate_halting(
                    model, calibration, entry.subject.mode, "early_exit", steps=s.calibration_steps
                )
            )
            models.append(model)
            spec = EvalSpec(entry.subject.mode, "early_exit")
            runs[f"figure {i}"] = lambda model=model, spec=spec, x=images: model(x, spec)
        vanilla_net = models[0].backbone
        runs = {"vanilla": lambda net=vanilla_net, x=images: net(x), **runs}
        with torch.no_grad(), evaluating(vanilla_net):
            times = time_interleaved(runs, device, s.warmup, s.exit_repeats)
            vanilla_seconds = times["vanilla"].seconds_per_batch
            for i, (entry, model) in enumerate(zip(figures, models, strict=True)):
                key = entry.figure.key
                output = model(images, EvalSpec(entry.subject.mode, "early_exit"))
                seconds = times[f"figure {i}"].seconds_per_batch
                figure = SpeedupVsFlops(vanilla_seconds / seconds, _flop_reduction(model, output))
                ran = sum(u.double().mean().item() for u in output.units_executed)
                spread = [u.double().std().item() for u in output.units_executed]
                rounds = per_round(
                    times["vanilla"], times[f"figure {i}"], 1.0 / figure.flop_reduction
                )
                report.per_depth_rounds.setdefault(key, {})[str(depth)] = rounds
                report.per_depth.setdefault(key, {})[str(depth)] = statistics.median(rounds)
                report.details.setdefault(key, {})[str(depth)] = {
                    "batch_size": s.exit_batch,
                    "vanilla_seconds": vanilla_seconds,
                    "early_exit_seconds": seconds,
                    "speedup": figure.speedup,
                    "flop_reduction": figure.flop_reduction,
                    "units_fraction": ran / sum(len(b) for b in model.backbone.blocks),
                    "calibration_fraction": fractions[i],
                    "units_std_per_block": spread,
                }
        keep[depth] = {entry.subject: model for entry, model in zip(figures, models, strict=True)}
    for entry in figures:
        key = entry.figure.key
        if key in report.per_depth:
            report.ratios[key] = min(report.per_depth[key].values())
    return report


def bench_memory(
    plan: BenchPlan,
    s: Settings,
    device,
    cl: bool,
    keep: dict[int, dict[Subject, AdaptiveModel]],
) -> Report:
    """Peak memory of the plan's memory subject's early exit over the vanilla network's and
    over the other side's early exit (calibrated halting; the early-exit figures' models when
    they are the same)."""
    report = Report()
    memory = plan.memory
    if memory is None:
        return report
    depth = s.memory_depth
    images = _images(s.exit_batch, device, cl)
    kept = keep.get(depth, {})
    # The other side first: the JSON's details list it before the subject.
    sides = ((memory.against_label, memory.against), (memory.label, memory.subject))
    models: dict[str, AdaptiveModel] = {}
    for label, subject in sides:
        model = kept.get(subject)
        if model is None:
            model = _subject_model(subject, depth, device, cl)
            calibrate_halting(
                model,
                images[: s.calibration_batch],
                subject.mode,
                "early_exit",
                steps=s.calibration_steps,
            )
        models[label] = model
    vanilla_net = models[memory.against_label].backbone
    halted_per_block: dict[str, list[int]] = {}
    with torch.no_grad(), evaluating(vanilla_net):
        peaks = {
            "vanilla": measure_peak_memory(lambda: vanilla_net(images), vanilla_net, images)[0],
        }
        for label, subject in sides:
            model = models[label]
            spec = EvalSpec(subject.mode, "early_exit")
            peaks[label], out = measure_peak_memory(
                lambda m=model, p=spec: m(images, p), model, images
            )
            halted_per_block[label] = [
                int((u < len(b)).sum())
                for u, b in zip(out.units_executed, model.backbone.blocks, strict=True)
            ]
    report.details["memory_halted_per_block"] = halted_per_block

    # Compare activations plus input: the parameters differ by the halting branches only.
    def used(name: str) -> int:
        return peaks[name].activation_bytes + peaks[name].input_bytes

    report.ratios[memory.vs_vanilla.key] = used(memory.label) / used("vanilla")
    report.ratios[memory.vs_against.key] = used(memory.label) / used(memory.against_label)
    # Bytes counted, not timed: no rounds (the same pass allocates the same bytes each time).
    report.exact += [memory.vs_vanilla.key, memory.vs_against.key]
    report.details["memory"] = {
        "depth": depth,
        "batch_size": s.exit_batch,
        "device": peaks["vanilla"].device,
        "technique": peaks["vanilla"].technique,
        "counted": "activation peak + input batch (parameters excluded)",
        **{f"{k}_bytes": used(k) for k in peaks},
        **{f"{k}_peak_bytes": p.peak_bytes for k, p in peaks.items()},
    }
    return report


def bench_gathered(plan: BenchPlan, s: Settings, device, cl: bool) -> Report:
    """The plan's gathered figure: its execution vs its compared execution vs vanilla."""
    report = Report()
    entry = plan.gathered
    if entry is None:
        return report
    key, mode = entry.figure.key, entry.subject.mode
    images = varied_images(s.gather_batch, seed=9).to(device)
    model = _subject_model(entry.subject, s.gather_depth, device, cl)
    fraction = calibrate_halting(
        model, images[: s.calibration_batch], mode, entry.compare, steps=s.calibration_steps
    )
    missing = [name for name, _ in entry.attributes if not hasattr(model, name)]
    if missing or entry.execution not in model.executions_for(mode):
        why = f"the model has no {missing[0]!r}" if missing else f"not offered in mode {mode!r}"
        report.skipped[key] = f"no {entry.execution} execution ({why})"
        return report
    for name, value in entry.attributes:
        setattr(model, name, value)
    vanilla_net = model.backbone
    fast, compare = EvalSpec(mode, entry.execution), EvalSpec(mode, entry.compare)
    with torch.no_grad(), evaluating(vanilla_net):
        times = time_interleaved(
            {
                "vanilla": lambda: vanilla_net(images),
                entry.execution: lambda: model(images, fast),
                entry.compare: lambda: model(images, compare),
            },
            device,
            s.warmup,
            s.exit_repeats,
        )
        output = model(images, fast)
    reduction = _flop_reduction(model, output)
    vanilla_seconds = times["vanilla"].seconds_per_batch
    figure = SpeedupVsFlops(vanilla_seconds / times[entry.execution].seconds_per_batch, reduction)
    compared = SpeedupVsFlops(vanilla_seconds / times[entry.compare].seconds_per_batch, reduction)
    ran = sum(u.double().mean().item() for u in output.units_executed)
    report.rounds[key] = per_round(times["vanilla"], times[entry.execution], 1.0 / reduction)
    report.ratios[key] = statistics.median(report.rounds[key])
    report.details["spatial_gathered"] = {
        "method": entry.subject.method,
        "depth": s.gather_depth,
        "batch_size": s.gather_batch,
        "active_fraction": ran / sum(len(b) for b in model.backbone.blocks),
        "calibration_fraction": fraction,
        "flop_reduction": reduction,
        f"{entry.execution}_speedup": figure.speedup,
        f"{entry.compare}_speedup": compared.speedup,
        f"{entry.compare}_speedup_over_flop_reduction": compared.ratio,
        **{f"{k}_seconds": t.seconds_per_batch for k, t in times.items()},
    }
    return report


@dataclass(frozen=True)
class GridTimes:
    """What a grid runner measured: the trials, the seconds of the grid and of the plain loop
    over the same trials, and whether the grid finished every trial."""

    trials: list[str]
    grid_seconds: float
    loop_seconds: float
    complete: bool
    #: Each trial's wall seconds in the plain loop and in the grid (``trials.csv``'s
    #: ``seconds``: from the driver's start of the trial to its end).
    loop_trial_seconds: dict[str, float] = field(default_factory=dict)
    grid_trial_seconds: dict[str, float] = field(default_factory=dict)
    #: Starting and stopping a local Ray with nothing to run (seconds), or None.
    ray_fixed_seconds: float | None = None


#: Runs the plan's grid figure: ``(grid plan, trial count or None for the whole preset) ->``
#: :class:`GridTimes`. The command line passes one (it alone may import the grid).
GridRunner = Callable[[GridPlan, int | None], GridTimes]


def bench_grid(plan: BenchPlan, s: Settings, runner: GridRunner | None) -> Report:
    """The preset through the grid vs the same trials in a plain loop (timed by ``runner``)."""
    report = Report()
    if plan.grid is None:
        return report
    key = plan.grid.figure.key
    if runner is None:
        report.skipped[key] = "no grid runner given (the command line passes one)"
        return report
    times = runner(plan.grid, s.grid_trials)
    if not times.complete:
        report.skipped[key] = "the grid did not finish every trial"
        return report
    paired = [
        n for n in times.trials if n in times.loop_trial_seconds and n in times.grid_trial_seconds
    ]
    details: dict[str, Any] = {
        "trials": list(times.trials),
        "grid_seconds": times.grid_seconds,
        "loop_seconds": times.loop_seconds,
        "whole_grid_over_loop": times.grid_seconds / times.loop_seconds,
        "ray_fixed_seconds": times.ray_fixed_seconds,
        "loop_trial_seconds": dict(times.loop_trial_seconds),
        "grid_trial_seconds": dict(times.grid_trial_seconds),
        "min_trial_seconds": plan.grid.min_trial_seconds,
        "note": (
            "per trial: its wall time in the grid (Ray's start of its worker included) over "
            "its wall time in a plain loop, one trial at a time in both; the figure is their "
            "median. whole_grid_over_loop adds planning, Ray's start and stop and gathering; "
            "ray_fixed_seconds is a local Ray's start and stop alone"
        ),
    }
    report.details[key] = details
    if not paired:
        report.skipped[key] = "trials.csv of the grid holds no trial's seconds"
        return report
    shortest = min(times.loop_trial_seconds[n] for n in paired)
    if shortest < plan.grid.min_trial_seconds:
        report.skipped[key] = (
            f"the shortest trial took {shortest:.0f} s in the loop, under the plan's "
            f"min_trial_seconds {plan.grid.min_trial_seconds:g}: the ratio would weigh Ray's "
            "start, not the grid's per-trial cost (lengthen the trials with grid.set)"
        )
        return report
    report.rounds[key] = [times.grid_trial_seconds[n] / times.loop_trial_seconds[n] for n in paired]
    report.ratios[key] = statistics.median(report.rounds[key])
    return report


def bench_cuda_throughput(plan: BenchPlan, s: Settings, device) -> Report:
    """Training images/s of the vanilla network at each of the plan's depths, fast path."""
    report = Report()
    speed = resolve_speed(SpeedConfig(), device)
    for entry in plan.cuda_throughput:
        batches = synthetic_batches(s.cuda_steps, s.cuda_batch, device, channels_last=True)
        model = _model(plan.vanilla, entry.depth, device, channels_last=True)
        timing = time_interleaved(
            {"train": harness_loop(model, batches, device, speed)}, device, 1, s.repeats
        )["train"]
        per_s = s.cuda_steps * s.cuda_batch / timing.seconds_per_batch
        report.rounds[entry.figure.key] = [s.cuda_steps * s.cuda_batch / t for t in timing.seconds]
        report.ratios[entry.figure.key] = statistics.median(report.rounds[entry.figure.key])
        report.throughput.append(
            throughput_row(plan.vanilla, entry.depth, device, s.cuda_batch, s.cuda_batch / per_s)
        )
    return report
