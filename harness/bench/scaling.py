"""``pact-harness bench --scaling``: the harness's own cost as a study grows.

For each size (default 10, 100, 1,000 and 5,000 trials) a synthetic study
(:mod:`harness.bench.synthetic`: a finished grid's folder, no training) is planned and written
to a temporary folder, then each operation is timed once on it, in the order a grid does them:

- ``plan``: ``grid --dry-run --estimate --gpus 8`` (planning, the trial list, the estimate);
- ``trials_rewrite``: one full ``trials.csv`` rewrite, which each state change of a running
  grid cost before the table was kept in memory (so ``2 n`` of them per grid);
- ``bookkeeping``: a whole grid's state changes, each trial started then finished, through the
  table a running launch keeps (:class:`harness.study.TrialsTable`) and its final write;
- ``gather``: the grid's ``results.csv`` of every trial's rows;
- ``report``: ``pact-harness report`` of the study (tables, figures, comparisons).

The grid sits above the bench in the layers, so the command line passes the grid's side of
the work (:class:`ScalingOps`); the report is below and called here. Each operation's growth
is the log-log slope of its time between consecutive sizes, and a least-squares fit over all:
1 is linear, 2 quadratic.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from harness.bench.synthetic import SyntheticStudy, synthetic_preset, write_synthetic_study
from harness.errors import ConfigError
from harness.report import make_report

#: The sizes measured by default (trials).
SIZES = (10, 100, 1000, 5000)
#: The operations, in the order they are measured (and shown).
OPERATIONS = ("plan", "trials_rewrite", "bookkeeping", "gather", "report")
#: What each operation is, for the table and the JSON.
DESCRIPTIONS = {
    "plan": "grid --dry-run --estimate --gpus 8",
    "trials_rewrite": "one full trials.csv rewrite (each of a grid's 2n state changes before)",
    "bookkeeping": "a grid's 2n state changes (start, finish) and the final trials.csv",
    "gather": "the grid's results.csv of every trial",
    "report": "pact-harness report (tables, figures, comparisons)",
}


class ScalingOps(Protocol):
    """The grid's own work on a study folder (the command line implements it)."""

    def plan(self, preset: Path, folder: Path) -> None:
        """Run ``grid --dry-run --estimate`` of ``preset`` for ``folder`` (this is timed)."""
        ...

    def record(self, preset: Path, folder: Path) -> Mapping[str, Any]:
        """The study record ``study.yaml`` holds for ``preset`` in ``folder``."""
        ...

    def data_root(self, folder: Path) -> Path:
        """A data root the plans read (made once, before anything is timed)."""
        ...

    def trials_rewrite(self, preset: Path, folder: Path) -> None:
        """Rewrite the study's whole ``trials.csv`` once."""
        ...

    def bookkeeping(self, preset: Path, folder: Path) -> None:
        """Every trial started then finished, through a running launch's table."""
        ...

    def gather(self, preset: Path, folder: Path) -> None:
        """Write the study's ``results.csv``."""
        ...


@dataclass
class ScalingResult:
    """Per size: the trials, result rows and experiments of its study and each operation's
    seconds; the growth exponents; the table lines; the JSON object."""

    sizes: list[int]
    rows: list[int]
    experiments: list[int]
    seconds: dict[str, list[float]]
    exponents: dict[str, dict[str, float | None]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def growth(sizes: Sequence[int], seconds: Sequence[float]) -> dict[str, float | None]:
    """The log-log slope of ``seconds`` over ``sizes`` between consecutive sizes
    (``"10-100"``...) and fitted over all (``"fit"``); None where a time is not positive."""
    out: dict[str, float | None] = {}
    points = list(zip(sizes, seconds, strict=True))
    for (n1, t1), (n2, t2) in zip(points, points[1:], strict=False):
        ok = t1 > 0 and t2 > 0 and n2 != n1
        out[f"{n1}-{n2}"] = math.log(t2 / t1) / math.log(n2 / n1) if ok else None
    usable = [(n, t) for n, t in zip(sizes, seconds, strict=True) if t > 0]
    if len({n for n, _ in usable}) >= 2:
        x = np.log([n for n, _ in usable])
        y = np.log([t for _, t in usable])
        out["fit"] = float(np.polyfit(x, y, 1)[0])
    else:
        out["fit"] = None
    return out


def parse_sizes(text: str | Sequence[int] | None) -> list[int]:
    """``10,100,1000`` as increasing distinct trial counts (at least one)."""
    if text is None:
        return list(SIZES)
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = sorted({int(v) for v in values if str(v).strip()})
    except ValueError:
        raise ConfigError(f"--sizes {text}: give trial counts such as 10,100,1000") from None
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"--sizes {text}: give positive trial counts such as 10,100,1000")
    return sizes


def _time(call: Callable[[], Any]) -> float:
    tic = time.perf_counter()
    call()
    return time.perf_counter() - tic


def _fmt_seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _fmt_slope(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def scaling_lines(result: ScalingResult) -> list[str]:
    """The table: one line per operation, seconds per size, then the growth exponents."""
    sizes = result.sizes
    pairs = [f"{a}-{b}" for a, b in zip(sizes, sizes[1:], strict=False)]
    head = ["operation".ljust(16)] + [f"{n:>9}" for n in sizes]
    head += [f"{p:>10}" for p in pairs] + [f"{'fit':>6}"]
    lines = [
        "seconds per operation at each study size (trials), and growth exponents "
        "(log-log slopes; 1 = linear)",
        "".join(head),
    ]
    for op in OPERATIONS:
        if op not in result.seconds:
            continue
        cells = [op.ljust(16)] + [f"{_fmt_seconds(t):>9}" for t in result.seconds[op]]
        slopes = result.exponents[op]
        cells += [f"{_fmt_slope(slopes.get(p)):>10}" for p in pairs]
        cells += [f"{_fmt_slope(slopes.get('fit')):>6}"]
        lines.append("".join(cells))
    lines.append(
        "result rows: "
        + ", ".join(
            f"{r} ({e} experiments)" for r, e in zip(result.rows, result.experiments, strict=True)
        )
    )
    lines.append(
        "before the in-memory table, a grid's bookkeeping was 2n full rewrites: "
        + ", ".join(
            f"{n}: {_fmt_seconds(2 * n * t)} s"
            for n, t in zip(sizes, result.seconds.get("trials_rewrite", []), strict=False)
        )
    )
    return lines


def _measure(
    ops: ScalingOps, n: int, base: Path, progress: Callable[[str], None] | None
) -> tuple[dict[str, float], SyntheticStudy]:
    """Plan and write a synthetic study of ``n`` trials under ``base``, time each operation."""
    base.mkdir(parents=True)
    folder, preset, out = base / "study", base / f"synthetic-{n}.yaml", base / "report"
    preset.write_text(yaml.safe_dump(synthetic_preset(n), sort_keys=False))
    if progress is not None:
        progress(f"bench --scaling: {n} trials: planning and writing the study ...")
    times = {"plan": _time(lambda: ops.plan(preset, folder))}
    written = write_synthetic_study(folder, ops.record(preset, folder))
    if progress is not None:
        progress(f"bench --scaling: {n} trials, {written.rows} rows: timing ...")
    times["trials_rewrite"] = _time(lambda: ops.trials_rewrite(preset, folder))
    times["bookkeeping"] = _time(lambda: ops.bookkeeping(preset, folder))
    times["gather"] = _time(lambda: ops.gather(preset, folder))
    times["report"] = _time(lambda: make_report([folder], out, warn=lambda line: None))
    return times, written


def run_scaling(
    ops: ScalingOps,
    sizes: Sequence[int] = SIZES,
    progress: Callable[[str], None] | None = None,
    workdir: str | Path | None = None,
) -> ScalingResult:
    """Measure every operation at every size (:data:`OPERATIONS`); prints nothing."""
    sizes = list(sizes)
    seconds: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    rows, experiments = [], []
    with tempfile.TemporaryDirectory(prefix="pact-harness-scaling-", dir=workdir) as tmp:
        base = Path(tmp)
        ops.data_root(base)
        # the smallest size twice, the first untimed: imports and caches warm up on it
        for step, n in enumerate([sizes[0], *sizes]):
            times, written = _measure(ops, n, base / f"{n}-{step}", progress)
            for op, value in times.items():
                seconds[op].append(value)
            rows.append(written.rows)
            experiments.append(written.experiments)
    seconds = {op: times[1:] for op, times in seconds.items()}
    result = ScalingResult(sizes, rows[1:], experiments[1:], seconds)
    result.exponents = {op: growth(sizes, seconds[op]) for op in OPERATIONS}
    result.lines = scaling_lines(result)
    result.data = {
        "sizes": sizes,
        "result_rows": rows,
        "experiments": experiments,
        "operations": {op: DESCRIPTIONS[op] for op in OPERATIONS},
        "seconds": seconds,
        "exponents": result.exponents,
        "bookkeeping_before_seconds": [
            2 * n * t for n, t in zip(sizes, seconds["trials_rewrite"], strict=True)
        ],
    }
    return result
