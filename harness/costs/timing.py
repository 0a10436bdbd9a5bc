"""Wall-clock time per batch: warm up, synchronize, repeat, take the median (timm's benchmark).

The median of a few repeats resists the occasional slow call (another process, a page fault).
On CUDA every call is bracketed by ``torch.cuda.synchronize`` so that the time covers the
kernels, not just their launch. The report names nothing about *what* ran: the caller records
the execution (masked, early exit, gathered) next to it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import ConfigError


@dataclass(frozen=True)
class TimingReport:
    """Median seconds per call after ``warmup`` calls, and every timed call."""

    seconds_per_batch: float
    seconds: tuple[float, ...]
    warmup: int
    device: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    runs: Mapping[str, Callable[[], Any]],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, TimingReport]:
    """Median seconds of each callable, timed in turn (a, b, a, b, ...) after warm-up.

    Interleaving makes ratios between the callables (a realized speed-up) robust to a machine
    whose load drifts during the measurement: each repeat of one sits next to one of the other.
    """
    if warmup < 0:
        raise ConfigError(f"warmup={warmup} must be >= 0")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be a positive integer (>= 1)")
    device = torch.device(device)
    for _ in range(warmup):
        for run in runs.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {
        name: TimingReport(statistics.median(values), tuple(values), warmup, device.type)
        for name, values in seconds.items()
    }


def set_threads(threads: int | None, flag: str = "--threads") -> None:
    """Set torch's CPU intra-op threads for the measurements to come (None: leave torch's)."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"{flag} {threads} must be >= 1")
    torch.set_num_threads(threads)
