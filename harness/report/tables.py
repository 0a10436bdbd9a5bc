"""Tables: the tidy CSV and the compact paper-style tables (Markdown and LaTeX), formatted as
the schema declares (:attr:`harness.results.Column.display`), with the FLOP convention and the
notes of the methods they show under each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness import results
from harness.costs.flops import CONVENTION
from harness.errors import HarnessError
from harness.inference import EQUIVALENT, INCONCLUSIVE, Interval
from harness.registry import get_method
from harness.report.aggregate import (
    _ORDER,
    ACCURACY,
    ACCURACY_STD,
    FLOPS,
    FRACTION,
    MEDIAN_MEMORY,
    MEMORY,
    SEEDS,
    _at_default_threshold,
    _default_mode_rows,
    _penalty_text,
    _vanilla_fraction,
)
from harness.report.compare import (
    CurveComparison,
    DiffComparison,
    PairComparison,
    Planned,
    VanillaComparison,
)
from harness.store import atomic_write_text

_ACCURACY = results.SCHEMA["accuracy"].display
_GFLOPS = results.SCHEMA["flops_per_image_mean"].display
_MEMORY = results.SCHEMA["peak_memory_bytes"].display
_MEDIAN = results.SCHEMA["peak_memory_median_bytes"].display


def _mib(value: Any) -> str:
    return _MEMORY.format(value)


def _accuracy_text(row: pd.Series) -> str:
    """Mean ± sample std over seeds; the mean alone for one seed (no spread was measured)."""
    mean = _ACCURACY.format(row[ACCURACY])
    if int(row[SEEDS]) < 2:
        return mean
    return f"{mean} ± {_ACCURACY.format(row[ACCURACY_STD])}"


def paper_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The SACT paper's layout, one row per experiment in its default mode (threshold 0.5 for
    threshold modes), on ``split``."""
    data = _default_mode_rows(table)
    data = data[(data["split"] == split) & _at_default_threshold(data)].copy()
    if FRACTION in data:  # the model's own full network
        data["fraction"] = 100 * data[FRACTION]
    else:  # tables written before rows carried it: the vanilla run of the same architecture
        data["fraction"] = _vanilla_fraction(table).loc[data.index]
    data = (
        data.sort_values(_ORDER, kind="stable")
        .groupby("experiment_id", sort=False, as_index=False)
        .first()
    )
    rows = []
    for _, row in data.iterrows():
        record = {
            "method": row["method_label"],
            "depth": int(row["depth"]),
            "penalty": _penalty_text(row),
            "mode": row["eval_mode"],
            _ACCURACY.header: _accuracy_text(row),
            "seeds": int(row[SEEDS]),
            _GFLOPS.header: _flops_text(row),
            "% of vanilla": "-" if pd.isna(row["fraction"]) else f"{row['fraction']:.1f}",
            _MEMORY.header: _mib(row.get(MEMORY)),
            **(
                {_MEDIAN.header: _MEDIAN.format(row.get(MEDIAN_MEMORY))}
                if MEDIAN_MEMORY in table and table[MEDIAN_MEMORY].notna().any()
                else {}
            ),
        }
        for key in table.attrs.get("differing", []):
            record[key] = row[key]
        if table.attrs.get("show_code"):
            record["code"] = row["code"]
        rows.append(record)
    return pd.DataFrame(rows)


#: After a FLOPs cell whose rows' FLOPs were not all verified (see :data:`NOTE`).
UNVERIFIED = " *"


def _flops_text(row: pd.Series) -> str:
    text = _GFLOPS.format(row[FLOPS])
    verified = row.get("flops_verified")
    if text != "-" and not (isinstance(verified, str) and verified):
        text += UNVERIFIED
    return text


def modes_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Experiments of methods with several evaluation modes, their modes side by side."""
    data = table[table["split"] == split]
    multi = data.groupby("experiment_id")["eval_mode"].nunique()
    data = data[data["experiment_id"].isin(multi[multi > 1].index)]
    data = data[_at_default_threshold(data)]
    data = data.sort_values(_ORDER, kind="stable")
    rows = []
    for _, group in data.groupby("experiment_id", sort=False):
        first = group.iloc[0]
        record = {
            "method": first["method_label"],
            "depth": int(first["depth"]),
            "penalty": _penalty_text(first),
        }
        for _, row in group.iterrows():
            mode = row["eval_mode"]
            record[f"{mode} acc %"] = _ACCURACY.format(row[ACCURACY])
            record[f"{mode} GFLOPs"] = _flops_text(row)
            record[f"{mode} MiB"] = _mib(row.get(MEMORY))
        for key in table.attrs.get("differing", []):
            record[key] = first[key]
        if table.attrs.get("show_code"):
            record["code"] = "; ".join(sorted(set("; ".join(group["code"]).split("; "))))
        rows.append(record)
    return pd.DataFrame(rows)


#: Under every table: the FLOP convention, what the accuracy cells hold, how memory was measured.
NOTE = (
    f"FLOPs: {CONVENTION}. Accuracy: mean ± sample std over seeds (the mean alone for one "
    "seed). "
    "% of vanilla: FLOPs over those of the same model with every unit executed (its own "
    "backbone and input size, decision branches excluded). "
    "Peak memory: the maximum over the evaluation pass's measured batches (memory_batches of "
    "cost_batch_size images; eval.memory_batches, 0 = every batch), the median beside it; rows "
    "made before the whole pass was measured hold the first test batch only (no median). "
    "GFLOPs marked * were not verified on an evaluation batch (results column flops_verified: "
    "runs made before FLOPs were verified, or an execution neither check could run on); the "
    "others were counted with FlopCounterMode or checked by perturbing unit outputs."
)


def method_notes(table: pd.DataFrame) -> list[str]:
    """The table notes (:attr:`harness.contract.MethodSpec.table_note`) of the methods whose
    rows ``table`` holds, each once, in method order."""
    notes: list[str] = []
    for method in sorted(set(table["method"].astype(str))):
        try:
            note = get_method(method).table_note
        except HarnessError:  # a method no longer installed: its rows carry no note
            continue
        if note and note not in notes:
            notes.append(note)
    return notes


def table_note(table: pd.DataFrame) -> str:
    """:data:`NOTE` and the notes of the methods in ``table``."""
    return " ".join([NOTE, *method_notes(table)])


_NUMBER = r"^(-|-?\d+(\.\d+)?( ± \d+(\.\d+)?)?)$"


def _markdown(compact: pd.DataFrame) -> str:
    """A compact table as Markdown with its cells exactly as formatted (no re-parsing: 0.0760
    stays 0.0760), number columns right-aligned."""
    align = [
        "right" if compact[col].astype(str).str.match(_NUMBER).all() else "left"
        for col in compact.columns
    ]
    return compact.to_markdown(index=False, disable_numparse=True, colalign=align)


def write_tables(table: pd.DataFrame, out: Path) -> list[Path]:
    """The full tidy CSV and the compact paper-style tables (Markdown and LaTeX)."""
    paths = [out / "results_table.csv"]
    atomic_write_text(paths[0], table.to_csv(index=False))
    splits = [s for s in ("test", "val") if s in set(table["split"])]
    note = table_note(table)
    for stem, build in (("paper_table", paper_table), ("modes_table", modes_table)):
        parts_md, parts_tex = [], []
        for split in splits:
            compact = build(table, split)
            if compact.empty:
                continue
            parts_md.append(f"### {split} split\n\n{_markdown(compact)}\n")
            parts_tex.append(
                compact.to_latex(index=False, caption=f"{split} split. {note}", escape=True)
            )
        if not parts_md:
            continue
        atomic_write_text(out / f"{stem}.md", "\n".join(parts_md) + f"\n{note}\n")
        atomic_write_text(out / f"{stem}.tex", "\n".join(parts_tex))
        paths += [out / f"{stem}.md", out / f"{stem}.tex"]
    return paths


# ------------------------------------------------------------------------------ comparisons
def _interval_text(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    return f"{interval.estimate:+.2f} [{interval.low95:+.2f}, {interval.high95:+.2f}]"


def _verdict_text(verdict: str, margin: float) -> str:
    return f"equivalent within ±{margin:g}" if verdict == EQUIVALENT else verdict


def format_pair(c: PairComparison) -> list[str]:
    """The lines ``compare`` prints for two experiments paired by seed."""
    lines = [
        f"A: {c.a.label}" + (f"; {c.a.note}" if c.a.note else ""),
        f"B: {c.b.label}" + (f"; {c.b.note}" if c.b.note else ""),
        f"split {c.a.rows['split'].iloc[0]}, {c.a.images} images, paired seeds "
        f"{c.seeds} (n = {len(c.seeds)}); code: {'; '.join(c.codes)}",
        "accuracy %  A: "
        + ", ".join(f"{v:.2f}" for v in c.a.accuracy)
        + "  B: "
        + ", ".join(f"{v:.2f}" for v in c.b.accuracy),
        "A - B per seed: " + ", ".join(f"{d:+.2f}" for d in c.differences),
        f"A - B, paired t 95% CI:               {_interval_text(c.t)}",
        f"A - B, bootstrap seeds x images 95%:  {_interval_text(c.bootstrap)}"
        + (f"  ({c.bootstrap_note})" if c.bootstrap_note else ""),
        f"test-set noise floor of one accuracy: SE {c.noise_se:.2f}, 95% ±{c.noise_half_width:.2f} "
        f"points ({c.a.images} images)",
    ]
    needed = "" if c.seeds_needed is None else f"; about {c.seeds_needed} seeds would decide it"
    if c.seeds_needed is not None and c.seeds_needed <= len(c.seeds):
        # the seeds' spread (paired t) decides already; the basis is the wider bootstrap
        needed = (
            f"; the paired t alone would decide it at n = {len(c.seeds)}, the bootstrap over "
            f"seeds and the {c.a.images} test images does not (the images' noise): more test "
            "images, or more seeds, would narrow it"
        )
    if c.verdict != INCONCLUSIVE:
        needed = ""
    lines.append(
        f"verdict: {_verdict_text(c.verdict, c.margin)} (margin ±{c.margin:g} points, "
        f"basis: {c.basis}, n = {len(c.seeds)}){needed}"
    )
    return lines


def format_vanilla(c: VanillaComparison) -> list[str]:
    """The lines for an experiment against the vanilla series at matched FLOPs."""
    lo, hi = c.neighbours
    return [
        f"A: {c.a.label}; B: vanilla depth series interpolated at A's "
        f"{c.a.flops / 1e9:.4f} GFLOPs between {lo.label} and {hi.label}",
        f"accuracy %  A: {c.a.accuracy.mean():.2f} (n = {len(c.a.accuracy)})  vanilla there: "
        f"{c.vanilla_accuracy:.2f} (n = {len(lo.accuracy)}/{len(hi.accuracy)})",
        f"A - vanilla, 95% CI ({c.interval.method}): {_interval_text(c.interval)}"
        if c.interval
        else f"A - vanilla: {c.difference:+.2f} ({c.note})",
        f"verdict: {_verdict_text(c.verdict, c.margin)} (margin ±{c.margin:g} points)",
    ]


def _points_text(points: list) -> str:
    return "; ".join(
        f"{p.label} {p.flops / 1e9:.4f} GFLOPs {p.mean:.2f}% (n = {len(p.accuracy)})"
        for p in points
    )


def format_curves(c: CurveComparison) -> list[str]:
    """The lines for the mean gap between two curves."""
    if c.interval is not None:
        gap = f"{_interval_text(c.interval)}  ({c.interval.method})"
    else:
        gap = f"{c.gap:+.2f} ({c.note})"
    lines = [
        f"A: {c.a_label}: {_points_text(c.a)}",
        f"B: {c.b_label}: {_points_text(c.b)}",
        f"common FLOPs range {c.low_flops / 1e9:.4f}-{c.high_flops / 1e9:.4f} GFLOPs; mean "
        f"A - B over it (area between the curves / range width), 95% CI: {gap}",
    ]
    for point in c.matched:
        share = (point.flops - c.low_flops) / (c.high_flops - c.low_flops)
        text = _interval_text(point.interval) if point.interval else f"{point.difference:+.2f}"
        lines.append(
            f"  at {point.flops / 1e9:.4f} GFLOPs ({share:.0%} into the range): A - B {text}; "
            f"{_verdict_text(point.verdict, c.margin)}"
        )
    needed = ""
    n = min((len(p.accuracy) for p in [*c.a, *c.b]), default=0)
    if c.verdict == INCONCLUSIVE and c.seeds_needed is not None:
        needed = f"; about {c.seeds_needed} seeds per point would decide the mean gap"
    elif c.verdict == INCONCLUSIVE and n < 2:
        needed = "; with one seed per point the spread, and so the seeds needed, is unknown"
    elif c.verdict == INCONCLUSIVE:
        needed = "; no seed count up to 1,000 would decide it at this gap"
    lines.append(
        f"verdict: {_verdict_text(c.verdict, c.margin)} for the mean gap (margin "
        f"±{c.margin:g} points, n = {n} seeds per point){needed}"
    )
    return lines


def format_difference(c: DiffComparison) -> list[str]:
    """The lines for ``(A - B) - (C - D)``."""
    first, second = c.first, c.second
    n = f"n = {len(first.seeds)} and {len(second.seeds)} seeds"
    needed = ""
    if c.verdict == INCONCLUSIVE and c.seeds_needed is not None:
        needed = f"; about {c.seeds_needed} seeds per condition would decide it"
    return [
        f"A: {first.a.label}; B: {first.b.label}",
        f"C: {second.a.label}; D: {second.b.label}",
        f"split {first.a.rows['split'].iloc[0]}; code: {'; '.join(c.codes)}",
        "A - B per seed: "
        + ", ".join(f"{d:+.2f}" for d in first.differences)
        + f"  (paired t 95% CI {_interval_text(first.t)})",
        "C - D per seed: "
        + ", ".join(f"{d:+.2f}" for d in second.differences)
        + f"  (paired t 95% CI {_interval_text(second.t)})",
        f"(A - B) - (C - D), 95% CI ({c.interval.method}): {_interval_text(c.interval)}"
        if c.interval
        else "(A - B) - (C - D): no interval (a condition has one seed)",
        f"verdict: {_verdict_text(c.verdict, c.margin)} (margin ±{c.margin:g} points, {n})"
        + needed,
    ]


def comparison_lines(item: Planned) -> list[str]:
    """One planned comparison's lines (its result, or why it has none)."""
    if item.result is None:
        return [f"not computed: {item.error}"]
    if isinstance(item.result, CurveComparison):
        return format_curves(item.result)
    if isinstance(item.result, PairComparison):
        return format_pair(item.result)
    return format_vanilla(item.result)


def write_comparisons(planned: list[Planned], margin: float, source: str, out: Path) -> Path | None:
    """``comparisons.md``: each comparison with its command, its evidence and its verdict."""
    if not planned:
        return None
    parts = [
        f"Margin ±{margin:g} accuracy points, declared by {source}. Verdicts: equivalent when "
        "the 90% interval of A - B lies inside ±margin (TOST), A or B better when the 95% "
        "interval excludes 0, else inconclusive.",
        "",
    ]
    for item in planned:
        flags = f"--a '{item.a}' --b '{item.b}'" + (" --curve" if item.curve else "")
        flags += f" --split {item.split}" if item.split != "test" else ""
        parts += [
            f"### {item.a} vs {item.b}" + (" (curves)" if item.curve else ""),
            "",
            f"`pact-harness compare INPUTS {flags}`",
            "",
            "```",
            *comparison_lines(item),
            "```",
            "",
        ]
    path = out / "comparisons.md"
    atomic_write_text(path, "\n".join(parts))
    return path
