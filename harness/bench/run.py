"""The whole bench: check the options, measure each group of figures, judge, render, write.

:func:`run_bench` prints nothing: it returns a :class:`BenchResult` (the report, the JSON object
and the lines to show) and reports progress through the callback it is given.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import store
from harness.bench.measure import (
    GridRunner,
    Report,
    Settings,
    bench_cuda_throughput,
    bench_early_exit,
    bench_gathered,
    bench_grid,
    bench_harness_vs_bare,
    bench_memory,
    bench_method_training,
)
from harness.bench.plan import BenchPlan, Subject, load_plan
from harness.bench.render import bench_json, summary_lines
from harness.config import SpeedConfig
from harness.contract import AdaptiveModel
from harness.costs.timing import set_threads
from harness.errors import ConfigError
from harness.runs import resolve_device
from harness.speed import resolve_speed

#: Figure groups, in the order they are measured (``--skip`` names them).
GROUPS = ("train", "methods", "early_exit", "memory", "gathered", "grid")


@dataclass
class BenchOptions:
    """What ``pact-harness bench`` was asked to do."""

    quick: bool = False
    device: str = "cpu"
    out: str | None = None
    threads: int | None = None
    skip: Sequence[str] = ()  # figure groups to leave out (GROUPS)
    settings: Settings | None = None  # sizes; default Settings.for_run(quick)
    rounds: int | None = None  # interleaved rounds of every timed figure; default the settings'
    plan: str | None = None  # a plan file; default harness/preset_files/bench.yaml
    #: Times the grid figure (the command line passes one; without it the figure is skipped).
    grid_runner: GridRunner | None = None


@dataclass
class BenchResult:
    """What the bench measured (``report``), its JSON object (``data``, written to ``--out``)
    and the lines to show (the table, the time taken, the file written)."""

    report: Report
    data: dict[str, Any]
    lines: list[str] = field(default_factory=list)


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine the figures were measured on (load average at the start)."""
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


def _steps(
    plan: BenchPlan, options: BenchOptions, settings: Settings, device: torch.device
) -> tuple[list[tuple[str, Callable[[], Report]]], Callable[[], None]]:
    """The groups to measure, in order, and how to free the models they share afterwards."""
    speed = resolve_speed(SpeedConfig(), device)
    cl = device.type == "cuda"
    kept: dict[int, dict[Subject, AdaptiveModel]] = {}
    steps: list[tuple[str, Callable[[], Report]]] = [
        ("train", lambda: bench_harness_vs_bare(plan, settings, device, speed, cl)),
        ("methods", lambda: bench_method_training(plan, settings, device, speed, cl)),
        ("early_exit", lambda: bench_early_exit(plan, settings, device, cl, kept)),
        ("memory", lambda: bench_memory(plan, settings, device, cl, kept)),
        ("gathered", lambda: bench_gathered(plan, settings, device, cl)),
        ("grid", lambda: bench_grid(plan, settings, options.grid_runner)),
    ]
    if device.type == "cuda":
        steps.append(("cuda", lambda: bench_cuda_throughput(plan, settings, device)))
    return steps, kept.clear


def run_bench(options: BenchOptions, progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measure every figure of the plan, judge it, render the table and write the JSON.

    Every input (skip groups, output path, plan file) is checked before the first measurement.
    A figure that fails is recorded under ``skipped`` with its error; the others go on.
    """
    unknown = sorted(set(options.skip) - set(GROUPS))
    if unknown:
        raise ConfigError(f"--skip {','.join(unknown)}: unknown; allowed: {', '.join(GROUPS)}")
    if options.rounds is not None and options.rounds < 1:
        raise ConfigError(f"--rounds {options.rounds} must be >= 1")
    if options.out is not None:
        store.check_writable_file(options.out, "--out")
    plan = load_plan(options.plan)
    device = resolve_device(options.device)
    set_threads(options.threads)
    settings = (options.settings or Settings.for_run(options.quick)).with_rounds(options.rounds)
    targets = plan.targets(cuda=device.type == "cuda")
    report = Report(ratios=dict.fromkeys(targets))
    machine = machine_info(device)
    steps, free_models = _steps(plan, options, settings, device)
    total = time.perf_counter()
    for name, step in steps:
        if name in options.skip:
            report.skipped[name] = "--skip"
            continue
        tic = time.perf_counter()
        if progress is not None:
            progress(f"bench: {name} ...")
        try:
            report.merge(step())
        except Exception as err:  # noqa: BLE001 - one failed figure must not lose the others
            report.skipped[name] = f"{type(err).__name__}: {err}"
        report.seconds[name] = time.perf_counter() - tic
        if name == "memory":
            free_models()  # the early-exit models were kept for the memory figure only
    report.seconds["total"] = time.perf_counter() - total
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    data = bench_json(report, targets, settings, machine, options.quick)
    lines = summary_lines(report, targets)
    if options.out:
        strict = json.loads(store.json_text(data))
        store.atomic_write_text(options.out, store.json_text(strict, indent=2) + "\n")
        lines.append(f"wrote {options.out}")
    return BenchResult(report, data, lines)
