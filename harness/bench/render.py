"""The bench's output: the table lines and the JSON object of a measured Report.

Each figure is shown with its spread over the interleaved rounds and judged against it
(:mod:`harness.bench.judge`: :data:`~harness.bench.judge.RULE`). Nothing here measures or
prints; :mod:`harness.cli.bench` prints the lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from harness.bench.judge import (
    CONFIDENCE,
    INTERVAL,
    MET,
    MIN_ROUNDS,
    MISSED,
    RULE,
    SKIPPED,
    TOO_FEW,
    TOO_NOISY,
    Spread,
    exact,
    judge,
    spread_of,
    verdicts,
    worst,
)
from harness.bench.measure import Report, Settings
from harness.bench.plan import Target

#: The met? column of each verdict.
VERDICT = {MET: "yes", MISSED: "NO", TOO_NOISY: "too noisy", TOO_FEW: "too few rounds"}
VERDICT[SKIPPED] = "skipped"


def format_value(value: float | None) -> str:
    """``-`` when unmeasured; thousands separators above 100 (images/s); else 3 decimals."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value > 100 else f"{value:.3f}"


def format_spread(spread: Spread | None) -> str:
    """``[0.670-0.910] n=5`` (the interval and the rounds), ``exact`` (counted, not timed),
    ``n=1`` (one round: no interval) or empty (not measured)."""
    if spread is None:
        return ""
    if spread.exact:
        return "exact"
    if spread.n == 1:
        return "n=1"
    return f"[{format_value(spread.low)}-{format_value(spread.high)}] n={spread.n}"


def per_depth_spreads(report: Report) -> dict[str, dict[str, Spread]]:
    """Key -> depth -> the spread of that depth's rounds (depths in numeric order)."""
    return {
        key: {d: spread_of(depths[d]) for d in sorted(depths, key=int)}
        for key, depths in report.per_depth_rounds.items()
    }


def spreads(report: Report, targets: Mapping[str, Target]) -> dict[str, Spread | None]:
    """Each figure's spread: None when not measured; exact when counted; the worse of its
    depths' when measured per depth (:func:`~harness.bench.judge.worst`); else from its rounds
    (a figure measured without rounds counts as one round)."""
    depths = per_depth_spreads(report)
    out: dict[str, Spread | None] = {}
    for key, value in report.ratios.items():
        if value is None:
            out[key] = None
        elif key in report.exact:
            out[key] = exact(value)
        elif depths.get(key):
            named = {f"ResNet-{d}": spread for d, spread in depths[key].items()}
            out[key] = worst(named, targets[key])
        else:
            out[key] = spread_of(report.rounds.get(key) or [value])
    return out


def format_table(report: Report, targets: Mapping[str, Target]) -> str:
    """Figure, value (the median of its rounds), spread, target, met? (and the per-depth values
    below their figure), then one line per skipped figure or group. met? is the verdict of
    :func:`~harness.bench.judge.judge` on the spread."""
    rows = [("figure", "value", "spread", "target", "met?")]
    figure_spreads, depths = spreads(report, targets), per_depth_spreads(report)
    for key, value in report.ratios.items():
        target, spread = targets[key], figure_spreads[key]
        shown = target.text + (f" (goal {target.goal:g})" if target.goal is not None else "")
        verdict = VERDICT[judge(target, spread)]
        rows.append((key, format_value(value), format_spread(spread), shown, verdict))
        for depth, per in sorted(report.per_depth.get(key, {}).items(), key=lambda kv: int(kv[0])):
            at = depths.get(key, {}).get(depth)
            judged = VERDICT[judge(target, at)] if at is not None else ""
            rows.append((f"  ResNet-{depth}", f"{per:.3f}", format_spread(at), "", judged))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
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
    """The ``--out`` object: ratios (exactly the plan's keys; the median of each figure's
    rounds), each figure's ``spread`` (rounds, median, interval, confidence), targets with
    verdicts, the ``judgement`` rule, per-depth values and spreads, details, throughput rows,
    skipped figures, seconds and the machine."""
    figure_spreads = spreads(report, targets)
    return {
        "quick": quick,
        "machine": dict(machine),
        "settings": dataclasses.asdict(settings),
        "ratios": report.ratios,
        "spread": {k: None if s is None else s.as_dict() for k, s in figure_spreads.items()},
        "targets": verdicts(targets, report.ratios, figure_spreads),
        "judgement": {
            "rule": RULE,
            "interval": INTERVAL,
            "confidence": CONFIDENCE,
            "min_rounds": MIN_ROUNDS,
        },
        "per_depth": report.per_depth,
        "per_depth_spread": {
            key: {depth: spread.as_dict() for depth, spread in depths.items()}
            for key, depths in per_depth_spreads(report).items()
        },
        "details": report.details,
        "throughput": report.throughput,
        "skipped": report.skipped,
        "seconds": report.seconds,
    }


def summary_lines(report: Report, targets: Mapping[str, Target]) -> list[str]:
    """What the command prints after measuring: the table, how met? judges and the spread is
    made, and the time the bench took."""
    return [
        format_table(report, targets),
        RULE,
        f"value: {INTERVAL}",
        f"bench took {report.seconds['total']:.0f} s",
    ]
