"""The bench's output: the table lines and the JSON object of a measured Report.

Nothing here measures or prints; :mod:`harness.cli.bench` prints the lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from harness.bench.judge import met, verdicts
from harness.bench.measure import Report, Settings
from harness.bench.plan import Target

VERDICT = {True: "yes", False: "NO", None: "skipped"}


def format_value(value: float | None) -> str:
    """``-`` when unmeasured; thousands separators above 100 (images/s); else 3 decimals."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value > 100 else f"{value:.3f}"


def format_table(report: Report, targets: Mapping[str, Target]) -> str:
    """Figure, value, target, met? (and the per-depth values below their figure), then one
    line per skipped figure or group."""
    rows = [("figure", "value", "target", "met?")]
    for key, value in report.ratios.items():
        target = targets[key]
        shown = target.text + (f" (goal {target.goal:g})" if target.goal is not None else "")
        rows.append((key, format_value(value), shown, VERDICT[met(target, value)]))
        for depth, per in sorted(report.per_depth.get(key, {}).items(), key=lambda kv: int(kv[0])):
            rows.append((f"  ResNet-{depth}", f"{per:.3f}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for key, why in report.skipped.items():
        lines.append(f"skipped {key}: {why}")
    return "\n".join(lines)


def bench_json(
    report: Report,
    targets: Mapping[str, Target],
    settings: Settings,
    machine: Mapping[str, Any],
    quick: bool,
) -> dict[str, Any]:
    """The ``--out`` object: ratios (exactly the plan's keys), targets with verdicts,
    per-depth values, details, throughput rows, skipped figures, seconds and the machine."""
    return {
        "quick": quick,
        "machine": dict(machine),
        "settings": dataclasses.asdict(settings),
        "ratios": report.ratios,
        "targets": verdicts(targets, report.ratios),
        "per_depth": report.per_depth,
        "details": report.details,
        "throughput": report.throughput,
        "skipped": report.skipped,
        "seconds": report.seconds,
    }


def summary_lines(report: Report, targets: Mapping[str, Target]) -> list[str]:
    """What the command prints after measuring: the table and the time the bench took."""
    return [format_table(report, targets), f"bench took {report.seconds['total']:.0f} s"]
