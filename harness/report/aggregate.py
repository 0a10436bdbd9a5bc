"""Computing what the tables and figures show: seeds pooled per experiment as the schema
declares (:func:`aggregate`), the rows each table and figure draws, grouped, ordered and
labelled here so that :mod:`~harness.report.tables` and :mod:`~harness.report.figures` only
format and draw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness import results
from harness.config import flatten
from harness.errors import ConfigError
from harness.report.load import ROW_KEYS

#: The aggregated columns' names, as the schema declares them (:class:`harness.results.Seeds`).
ACCURACY = results.SCHEMA["accuracy"].seeds.mean
ACCURACY_STD = results.SCHEMA["accuracy"].seeds.std
FLOPS = results.SCHEMA["flops_per_image_mean"].seeds.mean
FLOPS_STD = results.SCHEMA["flops_per_image_mean"].seeds.std
SEEDS = results.SCHEMA["seed"].seeds.count
MEMORY = results.SCHEMA["peak_memory_bytes"].seeds.mean
FRACTION = results.SCHEMA["flops_fraction_of_vanilla"].seeds.mean
MEDIAN_MEMORY = results.SCHEMA["peak_memory_median_bytes"].seeds.mean
COST_BATCH = results.SCHEMA["cost_batch_size"].seeds.mean

#: Experiment-level columns shown in tables (constant within an experiment: the schema's
#: ``first`` columns).
SHOWN = [c.name for c in results.columns_aggregated("first")]
#: Config keys already shown by the columns above (never repeated as "differing" columns).
SHOWN_CONFIG = {"method", "model.depth", "model.dataset", "model.variant", "optim.epochs"}


def is_vanilla(frame: pd.DataFrame) -> pd.Series:
    """Rows of non-adaptive methods: their method declares no time penalty (the harness names
    no method; a plug-in's plain backbone is vanilla by the same rule)."""
    if "time_penalty_name" not in frame:
        return pd.Series(False, index=frame.index)
    names = frame["time_penalty_name"]
    return names.isna() | (names.astype(str).str.strip().isin(["", "nan"]))


# ------------------------------------------------------------------------------ aggregation
def _blank_nan(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for key in keys:  # NaN keys (no threshold) would drop the group in groupby
        if key in frame and frame[key].isna().any():
            frame[key] = frame[key].astype(object).where(frame[key].notna(), "")
    return frame


def differing_fields(frame: pd.DataFrame) -> list[str]:
    """Config keys that tell experiments apart beyond the shown columns: keys whose values
    differ between two experiments of the same method (a method-config field that only one
    method has is told apart by the method column already)."""
    experiments = frame.groupby("experiment_id")[["method", "experiment_config"]].first()
    by_method: dict[str, list[dict[str, Any]]] = {}
    for method, text in zip(experiments["method"], experiments["experiment_config"], strict=True):
        by_method.setdefault(str(method), []).append(flatten(json.loads(text)))
    penalties = set(frame.get("time_penalty_name", pd.Series(dtype=object)).dropna().astype(str))
    hidden = SHOWN_CONFIG | {f"method_config.{p}" for p in penalties}
    out: set[str] = set()
    for configs in by_method.values():
        for key in {k for c in configs for k in c}:
            values = {json.dumps(c.get(key), sort_keys=True, default=str) for c in configs}
            if len(values) > 1 and key not in hidden and not key.startswith("unpooled"):
                out.add(key)
    return sorted(out)


def _config_value(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _versions(values: pd.Series) -> list[str]:
    return sorted(set(map(str, values)))


def _verified(values: pd.Series) -> str:
    """The checks that verified every pooled row's FLOPs; "" if any row's were not."""
    labels = [v if isinstance(v, str) else "" for v in values]
    return "" if not all(labels) else "; ".join(sorted(set(labels)))


def check_code_versions(frame: pd.DataFrame, allow_mixed_code: bool = False) -> None:
    """Seeds of one experiment must come from one code version (:func:`harness.store.
    code_version`); else one ``ConfigError`` line naming the experiment and the versions,
    unless ``allow_mixed_code``. Seeds that ran on different backbone architectures (the
    ``backbone`` column's hashes) are never pooled, whatever the flag."""
    if "backbone" in frame:
        known = frame[frame["backbone"].map(lambda v: isinstance(v, str) and bool(v))]
        for _, group in known.groupby("experiment_id"):
            found = sorted(set(group["backbone"]))
            if len(found) > 1:
                first = group.iloc[0]
                name = f"{first['method']} d{first['depth']} {_penalty_text(first)}"
                raise ConfigError(
                    f"report: the seeds of {name} ran on {len(found)} backbone architectures "
                    f"({'; '.join(found)}); they are not pooled"
                )
    if allow_mixed_code or "code_version" not in frame:
        return
    versions = frame.groupby("experiment_id")["code_version"].agg(
        lambda v: sorted(set(map(str, v)))
    )
    for eid, found in versions.items():
        if len(found) > 1:
            first = frame[frame["experiment_id"] == eid].iloc[0]
            name = f"{first['method']} d{first['depth']} {_penalty_text(first)}"
            raise ConfigError(
                f"report: the seeds of {name} come from {len(found)} code versions "
                f"({'; '.join(found)}); they are not pooled or paired. Pass --allow-mixed-code "
                "to pool them anyway (tables then show a code column)"
            )


def aggregate(frame: pd.DataFrame, allow_mixed_code: bool = False) -> pd.DataFrame:
    """Seed statistics per (experiment, mode, threshold, execution, split), as the schema
    declares them (:attr:`harness.results.Column.seeds`): means, sample std over seeds (0 for
    one seed) and the seed count.

    Configuration fields that differ between experiments are added as columns, so that two
    experiments never look alike in a table. Seeds from different code versions are refused
    (:func:`check_code_versions`) unless ``allow_mixed_code``; each row's ``code`` lists the
    versions it pools, and ``table.attrs["show_code"]`` says whether tables must show them
    (rows spanning several versions, or a dirty tree)."""
    check_code_versions(frame, allow_mixed_code)
    keys = ["experiment_id"] + [k for k in ROW_KEYS if k in frame]
    frame = _blank_nan(frame, keys)
    stats: dict[str, tuple[str, str]] = {}
    for column in results.COLUMNS:
        if column.seeds is None or column.name not in frame:
            continue
        if column.aggregate == "count":
            stats[column.seeds.count] = (column.name, "count")
            continue
        stats[column.seeds.mean] = (column.name, "mean")
        if column.aggregate == "mean_std":
            stats[column.seeds.std] = (column.name, "std")
    if "code_version" in frame:
        stats["code"] = ("code_version", lambda v: "; ".join(_versions(v)))
    if "flops_verified" in frame:
        stats["flops_verified"] = ("flops_verified", _verified)
    table = frame.groupby(keys, dropna=False, sort=True).agg(**stats)
    for column in results.COLUMNS:
        if column.aggregate == "mean_std" and column.seeds.std in table:
            table[column.seeds.std] = table[column.seeds.std].fillna(0.0)
    table = table.reset_index()
    shown = [c for c in SHOWN if c in frame]
    first = frame.groupby(keys, dropna=False, sort=True)[shown].first().reset_index()
    table = first.merge(table, on=keys)
    differing = differing_fields(frame)
    configs = frame.groupby("experiment_id")["experiment_config"].first()
    for key in differing:
        table[key] = [
            _config_value(flatten(json.loads(configs[eid])).get(key))
            for eid in table["experiment_id"]
        ]
    if "code" in table:
        spans = table["code"].str.contains("; ") | table["code"].str.contains(r"\+dirty")
        table.attrs["show_code"] = bool(spans.any())
    table.attrs["differing"] = differing
    # The recipe facts a reader compares with the papers' (the SACT code's CIFAR crops pad 2).
    flat = [flatten(json.loads(text)) for text in configs]
    table.attrs["crop_padding"] = sorted(
        {c.get("data.crop_padding") for c in flat if c.get("data.augment", True)} - {None}
    )
    return table


def _vanilla_fraction(table: pd.DataFrame) -> pd.Series:
    """FLOPs as % of the vanilla network of the same depth, dataset and variant (the vanilla
    backbone's FLOPs do not depend on its training)."""
    vanilla = table[is_vanilla(table) & table["flops_per_image"].notna()]
    reference = vanilla.groupby(["dataset", "variant", "depth"])["flops_per_image"].mean()
    keys = list(zip(table["dataset"], table["variant"], table["depth"], strict=True))
    return pd.Series(
        [
            100 * f / reference.get(k, np.nan)
            for f, k in zip(table["flops_per_image"], keys, strict=True)
        ],
        index=table.index,
    )


def _penalty_text(row: pd.Series) -> str:
    name = row.get("time_penalty_name")
    if not isinstance(name, str) or not name.strip() or name == "nan":
        return "-"
    return f"{name} {row['time_penalty']:g}"


#: Row order of the compact tables.
_ORDER = ["method", "depth", "time_penalty"]


def _at_default_threshold(table: pd.DataFrame) -> pd.Series:
    """Rows of a mode without a threshold, or at the default threshold 0.5."""
    return table["threshold"].astype(str).isin(["", "0.5"])


def _default_mode_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows (every split and threshold) of each experiment's paper-table mode: the first
    mode, in the table's order, that has a row at the default threshold."""
    ordered = table[_at_default_threshold(table)].sort_values(_ORDER, kind="stable")
    default = ordered.groupby("experiment_id", sort=False)["eval_mode"].first()
    return table[table["eval_mode"] == table["experiment_id"].map(default)]


def _majority_values(table: pd.DataFrame, differing: list[str]) -> dict[tuple[str, str], Any]:
    """(method label, field) -> the value most of that method's experiments have."""
    out: dict[tuple[str, str], Any] = {}
    experiments = table.drop_duplicates("experiment_id")
    for label, group in experiments.groupby("method_label"):
        for key in differing:
            counts = group[key].value_counts()
            if len(counts) and counts.iloc[0] > (counts.iloc[1] if len(counts) > 1 else 0):
                out[(label, key)] = counts.index[0]
    return out


def _describe(data: pd.DataFrame) -> str:
    """What a figure's data were measured on: split(s), images, depth(s), training budget."""
    parts = []
    for key, name in (("num_images", "images"), ("depth", "depth"), ("num_train", "train imgs")):
        if key in data and data[key].notna().any():
            values = sorted({int(v) for v in data[key].dropna()})
            parts.append(f"{name} {'/'.join(map(str, values))}")
    if "epochs" in data and data["epochs"].notna().any():
        parts.append(f"{'/'.join(str(int(v)) for v in sorted(set(data['epochs'].dropna())))} ep")
    return ", ".join(parts)


def _crowded(placed: list[tuple[float, float]], point: tuple[float, float], data) -> bool:
    """True if ``point`` lies within 3% of the data range of a label already placed."""
    span_x = max(data["flops_per_image"].max() - data["flops_per_image"].min(), 1.0) / 1e9
    span_y = max(100 * (data["accuracy_mean"].max() - data["accuracy_mean"].min()), 1e-9)
    return any(
        abs(point[0] - x) < 0.03 * span_x and abs(point[1] - y) < 0.03 * span_y for x, y in placed
    )


def _two_lines(label: str) -> str:
    """A run label split before its depth (``NAME dNN ...``), so panel titles fit a panel."""
    head, sep, tail = label.partition(" d")
    return f"{head}\n d{tail}" if sep else label


# ------------------------------------------------------------------------------ figure data
#: Above this many adaptive curves, accuracy vs FLOPs shows each experiment's paper-table mode.
MAX_CURVES = 12
#: A family whose points' FLOPs lie within this fraction of their mean of each other sits at
#: one FLOPs value (a mode that runs every unit, e.g. PACT's ``stochastic``): a line joining
#: its points would be vertical and read as an error bar, so they are drawn unjoined.
SAME_FLOPS = 1e-3
#: An accuracy panel whose points' FLOPs span less than this fraction of their mean gets an x
#: axis of at least ``MIN_X_HALF_RANGE`` of the mean either side.
NARROW_X_SPAN = 0.05
MIN_X_HALF_RANGE = 0.05
#: Horizontal offset (display points) between unjoined points at one FLOPs value.
DODGE_POINTS = 5.0
#: z of the binomial 95% interval of a test-set accuracy.
Z95 = 1.959963984540054


@dataclass
class Curve:
    """One line of a panel, ready to draw: points in drawing order, their error bars and
    annotations. ``style``: ``vanilla`` (the depth series), ``method`` (a family over its
    penalties, joined in FLOPs order), ``points`` (a family at one FLOPs value: unjoined
    points, each with its own bars, ``dodge`` display points apart sideways) or ``sweep`` (one
    model's threshold sweep); ``color``: palette index; ``n``: seeds behind each point."""

    name: str
    style: str
    x: list[float]
    y: list[float]
    color: int | None = None
    xerr: list[float] | None = None
    yerr: list[float] | None = None
    labels: list[str | None] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    dodge: list[float] = field(default_factory=list)


@dataclass
class Panel:
    """One axes: its title, y label and curves in drawing order; ``notes``: lines under the
    title (what the error bars are, ranges narrower than the noise); ``xlim``: the x range
    (None: matplotlib's)."""

    title: str
    ylabel: str
    curves: list[Curve]
    notes: list[str] = field(default_factory=list)
    xlim: tuple[float, float] | None = None


@dataclass
class AccuracyFigure:
    """Accuracy vs FLOPs: one panel per split, the palette sized to the families."""

    panels: list[Panel]
    palette: str
    xlabel: str = (
        "GFLOPs per image, mean over seeds\n(2 x MACs, conv + linear, halting branches included)"
    )


def at_one_flops_value(x: list[float]) -> bool:
    """Two or more points whose FLOPs all lie within :data:`SAME_FLOPS` of their mean."""
    if len(x) < 2:
        return False
    values = np.asarray(x, dtype=float)
    return bool(values.max() - values.min() <= SAME_FLOPS * abs(values.mean()))


def _one_execution(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, threshold): a mode evaluated with several executions (exact
    ones: they agree) is one point, not several coinciding ones."""
    if "execution" not in rows:
        return rows
    ordered = rows.sort_values("execution", kind="stable")
    return ordered.drop_duplicates(["experiment_id", "threshold"], keep="first")


def accuracy_figure(table: pd.DataFrame) -> AccuracyFigure:
    """Per split, per experiment family (method, mode, depth, differing fields) a curve over
    the time penalties joined in FLOPs order (ties in penalty order), each point labelled by
    its penalty (labels that would overlap one already placed are dropped), error bars = ±1
    sample SD over seeds; a family whose points all sit at one FLOPs value
    (:func:`at_one_flops_value`) is drawn as unjoined points; threshold sweeps of one model;
    the vanilla depth series, one curve per training budget. Each panel says what its error
    bars are and on how many seeds, widens an x range narrower than
    :data:`NARROW_X_SPAN` of its mean FLOPs and notes an accuracy range narrower than the
    test set's binomial noise (:func:`_range_notes`)."""
    splits = [s for s in ("test", "val") if s in set(table["split"])]
    differing = table.attrs.get("differing", [])
    family_keys = ["method_label", "eval_mode", "depth", *differing]
    families = table[~is_vanilla(table)].groupby(family_keys).ngroups
    # Many curves (an ablation): each experiment in its paper-table mode only, so that the
    # figure stays readable; the other modes are in the modes table.
    default_only = families > MAX_CURVES
    if default_only:
        table = _default_mode_rows(table)
        families = table[~is_vanilla(table)].groupby(family_keys).ngroups
    majority = _majority_values(table, differing)
    panels = []
    for split in splits:
        data = table[(table["split"] == split) & table[FLOPS].notna()]
        curves = _vanilla_curves(data)
        adaptive = data[~is_vanilla(data)]
        placed: list[tuple[float, float]] = []
        for i, (family, group) in enumerate(adaptive.groupby(family_keys, sort=True)):
            name = f"{family[0]} ({family[1]}), d{family[2]}"
            # only the fields where this curve differs from most of its method's experiments
            shown = [
                f"{k.split('.')[-1]}={v}"
                for k, v in zip(differing, family[3:], strict=True)
                if v not in ("-", "") and v != majority.get((family[0], k))
            ]
            if shown:
                name += ", " + ", ".join(shown)
            default = _one_execution(group[_at_default_threshold(group)])
            default = default.sort_values([FLOPS, "time_penalty"], kind="stable")
            x = list(default[FLOPS] / 1e9)
            unjoined = at_one_flops_value(x)
            if unjoined:
                name += " (one FLOPs value: points not joined)"
            labels: list[str | None] = []
            for _, row in default.iterrows():
                point = (row[FLOPS] / 1e9, 100 * row[ACCURACY])
                if not unjoined and _crowded(placed, point, data):
                    labels.append(None)  # a label already sits there (coinciding points)
                    continue
                placed.append(point)
                labels.append(_penalty_text(row))
            curves.append(
                Curve(
                    name,
                    "points" if unjoined else "method",
                    x,
                    list(100 * default[ACCURACY]),
                    color=i,
                    xerr=list(default[FLOPS_STD] / 1e9),
                    yerr=list(100 * default[ACCURACY_STD]),
                    labels=labels,
                    n=[int(s) for s in default[SEEDS]] if SEEDS in default else [],
                    dodge=[DODGE_POINTS * (k - (len(x) - 1) / 2) for k in range(len(x))]
                    if unjoined
                    else [],
                )
            )
            sweep = group[~_at_default_threshold(group)]
            for _, one in _one_execution(pd.concat([sweep, default])).groupby("experiment_id"):
                if len(one) < 2 or one["threshold"].astype(str).eq("").all():
                    continue
                one = one.sort_values(FLOPS, kind="stable")
                curves.append(
                    Curve(
                        f"{name}: threshold sweep of one model",
                        "sweep",
                        list(one[FLOPS] / 1e9),
                        list(100 * one[ACCURACY]),
                        color=i,
                    )
                )
        mode_note = "; each experiment in its paper-table mode" if default_only else ""
        notes, xlim = _range_notes(curves, data, split)
        panels.append(
            Panel(
                f"{split} split: {_describe(data)}{mode_note}",
                f"{split} accuracy (%), mean over seeds",
                curves,
                [_error_bar_note(curves), *notes],
                xlim,
            )
        )
    return AccuracyFigure(panels, "tab10" if families <= 10 else "tab20")


def _error_bar_note(curves: list[Curve]) -> str:
    """What the error bars of a panel are and on how many seeds (from the points drawn)."""
    counts = [n for c in curves if c.style != "sweep" for n in c.n]
    if not counts or max(counts) < 2:
        return "one seed per point: no error bars (no spread measured)"
    low, high = min(counts), max(counts)
    seeds = f"n = {low} seeds per point" if low == high else f"n = {low}-{high} seeds per point"
    bars = "error bars: ±1 sample SD over seeds (y: accuracy, x: FLOPs)"
    return f"{bars}, {seeds}" + ("; no bar where n = 1" if low == 1 else "")


def _range_notes(
    curves: list[Curve], data: pd.DataFrame, split: str = "test"
) -> tuple[list[str], tuple[float, float] | None]:
    """Notes and x range for ranges narrower than the noise: FLOPs spanning less than
    :data:`NARROW_X_SPAN` of their mean get an x axis of :data:`MIN_X_HALF_RANGE` of the mean
    either side (so that models at nearly equal compute do not look far apart); an accuracy
    span narrower than the binomial 95% half-width of one evaluation set (``split``),
    ``1.96 sqrt(p (1 - p) / images)`` (p the panel's mean accuracy; images the fewest any
    point was evaluated on), gets a note."""
    x = np.array([v for c in curves for v in c.x], dtype=float)
    y = np.array([v for c in curves for v in c.y], dtype=float)
    notes: list[str] = []
    xlim = None
    if len(x) >= 2 and x.mean() > 0:
        center, span = x.mean(), x.max() - x.min()
        if span < NARROW_X_SPAN * center:
            errors = [
                (v - e, v + e)
                for c in curves
                for v, e in zip(c.x, c.xerr or [0.0] * len(c.x), strict=True)
            ]
            reach = max(max(center - lo, hi - center) for lo, hi in errors)
            half = max(MIN_X_HALF_RANGE * center, 1.1 * reach)
            xlim = (float(center - half), float(center + half))
            notes.append(
                f"x axis widened to ±{100 * half / center:.0f}% of the mean FLOPs: the points "
                f"span only {100 * span / center:.1f}%"
            )
    images = data["num_images"].dropna() if "num_images" in data else pd.Series(dtype=float)
    if len(y) >= 2 and len(images):
        p = float(np.clip(y.mean() / 100, 0.0, 1.0))
        fewest = int(images.min())
        half = 100 * Z95 * np.sqrt(p * (1 - p) / fewest)
        span = float(y.max() - y.min())
        if span < half:
            notes.append(
                f"accuracy span {span:.1f} points < ±{half:.1f}, the binomial 95% half-width "
                f"of one {split} set of {fewest} images: within {split}-set noise"
            )
    return notes, xlim


def _vanilla_curves(data: pd.DataFrame) -> list[Curve]:
    """The vanilla depth series of a panel, one curve per training budget, in FLOPs order."""
    vanilla = _one_execution(data[is_vanilla(data)])
    if vanilla.empty:
        return []
    budget = [k for k in ("num_train", "epochs") if k in data and data[k].notna().all()]
    groups = [g for _, g in vanilla.groupby(budget)] if budget else [vanilla]
    label = "/".join(sorted(set(vanilla["method_label"].astype(str))))
    curves = []
    for group in groups:
        group = group.sort_values([FLOPS, "depth"], kind="stable")
        name = f"vanilla {label} depth series"
        if len(groups) > 1:  # several budgets: say which curve is which
            first = group.iloc[0]
            name += f" ({int(first['num_train'])} train imgs, " if "num_train" in budget else " ("
            name += f"{int(first['epochs'])} ep)" if "epochs" in budget else ")"
        curves.append(
            Curve(
                name,
                "vanilla",
                list(group[FLOPS] / 1e9),
                list(100 * group[ACCURACY]),
                yerr=list(100 * group[ACCURACY_STD]),
                labels=[f"d{int(d)}" for d in group["depth"]],
                n=[int(s) for s in group[SEEDS]] if SEEDS in group else [],
            )
        )
    return curves


MIB = float(2**20)


@dataclass
class MemoryFigure:
    """Bars of peak evaluation memory, in drawing order: ``bars`` has columns
    ``configuration``, ``mean MiB`` (the bar), ``min MiB`` and ``max MiB`` (the range over
    seeds), ``seeds``, ``color`` (palette index: the method) and, when measured,
    ``median MiB`` (a marker); ``notes``: lines under the title (what bar, range and marker
    are; the measurement protocol)."""

    bars: pd.DataFrame
    title: str
    notes: list[str] = field(default_factory=list)
    xlabel: str = "peak evaluation memory (MiB)"


#: The most bars the memory figure draws (a study of thousands of configurations would draw
#: an unreadable figure, slowly); the tables keep every configuration.
MAX_MEMORY_BARS = 60


def memory_figure(table: pd.DataFrame, rows: pd.DataFrame | None = None) -> MemoryFigure | None:
    """Peak evaluation memory, one bar per (method, mode, depth, penalty) of the test split at
    the default threshold (and per differing field and execution, where experiments differ in
    them): the bar is the mean over seeds of the peak, the range its min-max over seeds (from
    ``rows``, the loaded per-seed rows; without them, no range), the marker the mean over
    seeds of the median over batches when that column exists. Ordered vanilla first, then by
    method, depth and penalty numerically, then mode. None when no row measured memory."""
    if MEMORY not in table or table[MEMORY].isna().all():
        return None
    data = table[(table["split"] == "test") & table[MEMORY].notna()]
    data = data[_at_default_threshold(data)].copy()
    if data.empty:
        return None
    keys = ["experiment_id", *[k for k in ROW_KEYS if k in data]]
    if rows is not None and "peak_memory_bytes" in rows:
        seeds = _blank_nan(rows, keys).groupby(keys, dropna=False)["peak_memory_bytes"]
        spread = seeds.agg(low="min", high="max", count="count").reset_index()
        data = data.merge(spread, on=keys, how="left")
    else:
        data["low"], data["high"] = data[MEMORY], data[MEMORY]
        data["count"] = data[SEEDS] if SEEDS in data else 1
    data["low"] = data["low"].fillna(data[MEMORY])
    data["high"] = data["high"].fillna(data[MEMORY])
    differing = table.attrs.get("differing", [])
    majority = _majority_values(data, differing)
    several = data.groupby(["experiment_id", "eval_mode"])["execution"].transform("nunique") > 1
    labels = []
    for (_, row), by_execution in zip(data.iterrows(), several, strict=True):
        label = f"{row['method_label']} / {row['eval_mode']} / d{int(row['depth'])}"
        penalty = _penalty_text(row)
        label += f" / {penalty}" if penalty != "-" else ""
        label += "".join(
            f", {k.split('.')[-1]}={row[k]}"
            for k in differing
            if row[k] not in ("-", "") and row[k] != majority.get((row["method_label"], k))
        )
        labels.append(label + (f" ({row['execution']})" if by_execution else ""))
    data["configuration"] = labels
    data["vanilla"] = is_vanilla(data)
    penalty = pd.to_numeric(data["time_penalty"], errors="coerce").fillna(0.0)
    data["_penalty"] = penalty.where(~data["vanilla"], 0.0)
    data["_depth"] = data["depth"].astype(int)
    order = ["vanilla", "method_label", "_depth", "_penalty", "eval_mode", "configuration"]
    data = data.sort_values(order, ascending=[False, True, True, True, True, True])
    methods = list(dict.fromkeys(data["method_label"]))
    total = len(data)
    if total > MAX_MEMORY_BARS:  # a study of thousands: evenly spaced in drawing order
        picks = np.unique(np.linspace(0, total - 1, MAX_MEMORY_BARS).round().astype(int))
        data = data.iloc[picks]
    bars = pd.DataFrame(
        {
            "configuration": data["configuration"].to_numpy(),
            "mean MiB": (data[MEMORY] / MIB).to_numpy(),
            "min MiB": (data["low"] / MIB).to_numpy(),
            "max MiB": (data["high"] / MIB).to_numpy(),
            "seeds": data["count"].astype(int).to_numpy(),
            "color": [methods.index(m) for m in data["method_label"]],
        }
    )
    if MEDIAN_MEMORY in data and data[MEDIAN_MEMORY].notna().any():
        bars["median MiB"] = (data[MEDIAN_MEMORY] / MIB).to_numpy()
    batch = table.get(COST_BATCH, table.get("eval_batch_size"))
    batches = sorted({int(b) for b in batch.dropna()}) if batch is not None else []
    title = "peak evaluation memory per method, mode, depth and penalty (test split"
    title += f"; batch {'/'.join(map(str, batches))})" if batches else ")"
    low, high = int(bars["seeds"].min()), int(bars["seeds"].max())
    n = f"n = {low}" if low == high else f"n = {low}-{high}"
    notes = [
        f"bar: mean over seeds; black line: min-max over seeds ({n} seed"
        f"{'' if high == 1 else 's'} per bar)"
    ]
    if "median MiB" in bars:
        notes.append("diamond: median over the measured batches (mean over seeds)")
    notes.append(_memory_protocol(rows if rows is not None else table))
    if len(bars) < total:
        notes.append(
            f"{len(bars)} of {total} configurations shown, evenly spaced in this order; "
            "every one is in the tables"
        )
    return MemoryFigure(bars, title, notes)


def _memory_protocol(rows: pd.DataFrame) -> str:
    """How the peaks were measured, from the rows: over how many evaluation batches (rows
    stored before ``memory_batches`` existed measured one batch) and on which device."""
    measured = rows[rows["peak_memory_bytes"].notna()] if "peak_memory_bytes" in rows else rows
    parts = []
    counts = measured.get("memory_batches", pd.Series(np.nan, index=measured.index))
    known = sorted({int(c) for c in counts.dropna()})
    if known:
        parts.append(f"max over the first {'/'.join(map(str, known))} evaluation batches")
    if counts.isna().any():
        parts.append("one evaluation batch (runs stored before memory was measured over the pass)")
    devices = sorted(set(measured.get("peak_memory_device", pd.Series(dtype=object)).dropna()))
    device = f" on {'/'.join(map(str, devices))}" if devices else ""
    return f"measured{device}: " + "; ".join(parts)


def run_fields(runs: list[tuple[str, dict]]) -> tuple[list[list[str]], list[str]]:
    """What tells runs apart beyond their labels (method, depth, penalty, seed, mode): the
    configuration fields whose values differ between runs, a ``method_config`` field among
    runs of the same method (it exists for that method only), any other field among all runs.

    Returns, per run, ``field=value`` for each such field where the run departs from the
    field's common value (the value most runs of the scope share, if more share it than any
    other), or every such field when there is no common value; and one line per scope naming
    the common values (``PACT: prior=truncated_geometric, ...``), so that a title that names
    no value for a field has that value. Runs whose configuration is unknown name nothing."""
    flat = [
        flatten(a["experiment_config"]) if a.get("experiment_config") else None for _, a in runs
    ]
    records = [a.get("record") or {} for _, a in runs]
    methods = [str(r.get("method", "")) for r in records]
    names = {m: str(r.get("method_label") or m) for m, r in zip(methods, records, strict=True)}
    penalties = {str(r.get("time_penalty_name")) for r in records if r.get("time_penalty_name")}
    hidden = {"method", "model.depth"} | {f"method_config.{p}" for p in penalties}
    keys = sorted({k for f in flat if f for k in f} - hidden)
    keys = [k for k in keys if not k.startswith("unpooled")]
    shorts = [k.split(".")[-1] for k in keys]
    out: list[list[str]] = [[] for _ in runs]
    common: dict[str, list[str]] = {}
    for key, short in zip(keys, shorts, strict=True):
        name = short if shorts.count(short) == 1 else key
        if key.startswith("method_config."):
            scopes = {names[m]: [i for i, n in enumerate(methods) if n == m] for m in set(methods)}
        else:
            scopes = {"all runs": list(range(len(runs)))}
        for scope, members in sorted(scopes.items()):
            known = [i for i in members if flat[i] is not None]
            values = [_config_value(flat[i].get(key)) for i in known]
            counts = pd.Series(values, dtype=object).value_counts()
            if len(counts) < 2:
                continue
            usual = counts.index[0] if counts.iloc[0] > counts.iloc[1] else None
            if usual is not None:
                common.setdefault(scope, []).append(f"{name}={usual}")
            for i, value in zip(known, values, strict=True):
                if value != usual:
                    out[i].append(f"{name}={value}")
    notes = [f"{scope}: {', '.join(fields)}" for scope, fields in sorted(common.items())]
    return out, notes


def _run_order(runs: list[tuple[str, dict]], fields: list[list[str]]) -> list[int]:
    """Runs in reading order: method, depth, the differing fields, penalty, seed, label."""

    def key(i: int) -> tuple:
        record = runs[i][1].get("record") or {}
        penalty = pd.to_numeric(pd.Series([record.get("time_penalty")]), errors="coerce")[0]
        seed = pd.to_numeric(pd.Series([record.get("seed")]), errors="coerce")[0]
        depth = pd.to_numeric(pd.Series([record.get("depth")]), errors="coerce")[0]
        return (
            str(record.get("method") or record.get("method_label") or ""),
            0.0 if np.isnan(depth) else float(depth),
            fields[i],
            0.0 if np.isnan(penalty) else float(penalty),
            0.0 if np.isnan(seed) else float(seed),
            runs[i][0],
        )

    return sorted(range(len(runs)), key=key)


#: The most runs the per-run figures draw: histogram panels and rows of ponder maps (a study
#: of thousands of runs would otherwise draw thousands of axes, minutes each hundred).
MAX_RUN_PANELS = 24
MAX_MAP_ROWS = 12


def some_runs(runs: list[tuple[str, dict]], limit: int) -> tuple[list[tuple[str, dict]], list[str]]:
    """At most ``limit`` of ``runs`` for a per-run figure, and a note saying which when some
    are left out: the first seed of each experiment (every run when there are fewer
    experiments than ``limit``), evenly spaced over them in reading order (:func:`_run_order`
    without configuration fields)."""
    if len(runs) <= limit:
        return runs, []
    order = _run_order(runs, [[] for _ in runs])
    firsts: dict[str, int] = {}
    for i in order:
        experiment = json.dumps(runs[i][1].get("experiment_config"), sort_keys=True, default=str)
        firsts.setdefault(experiment, i)
    pool = list(firsts.values()) if len(firsts) >= limit else order
    picks = sorted({pool[p] for p in np.linspace(0, len(pool) - 1, limit).round().astype(int)})
    among = f"one seed of {len(picks)} of {len(firsts)} experiments" if pool is not order else ""
    note = f"{len(picks)} of {len(runs)} runs shown, evenly spaced by method, depth and penalty"
    return [runs[i] for i in picks], [f"{note} ({among})" if among else note]


def _wrap(parts: list[str], width: int = 48) -> list[str]:
    """``parts`` joined by ", " into lines of at most about ``width`` characters."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ", " + part
        else:
            lines.append(part)
    return lines


@dataclass
class HistogramFigure:
    """Units executed per image: one panel (title, values) per adaptive run, shared bins;
    ``notes``: the values of the fields a panel title does not name (:func:`run_fields`)."""

    panels: list[tuple[str, np.ndarray]]
    bins: np.ndarray
    notes: list[str] = field(default_factory=list)
    xlabel: str = "units executed per test image (summed over blocks; spatial: mean over positions)"


def histogram_figure(runs: list[tuple[str, dict]]) -> HistogramFigure | None:
    """The adaptive runs' units executed per test image (summed over blocks); None if none.
    Panels in reading order (:func:`_run_order`), each titled by its run's label and the
    configuration fields in which it differs from the other panels (:func:`run_fields`: the
    fields it does not name have the common values the figure's notes state)."""
    adaptive = [(label, a) for label, a in runs if a["units"].size and a["adaptive"]]
    if not adaptive:
        return None
    adaptive, shown = some_runs(adaptive, MAX_RUN_PANELS)
    fields, common = run_fields(adaptive)
    most = max(a["units"].sum(1).max() for _, a in adaptive)
    bins = np.arange(0.5, np.ceil(most) + 1.5, 1.0 if most <= 60 else max(1.0, most / 40))
    panels = []
    for i in _run_order(adaptive, fields):
        label, arrays = adaptive[i]
        title = "\n".join([_two_lines(label), *_wrap(fields[i])])
        panels.append((title, arrays["units"].sum(1)))
    notes = [f"fields a title does not name: {line}" for line in common]
    return HistogramFigure(panels, bins, [*shown, *notes])


@dataclass
class PonderScale:
    """One colour scale of the ponder maps: the quantity its colour bar names, its range,
    and whether it is a count (integer values: one colour per value)."""

    label: str
    vmin: float
    vmax: float
    discrete: bool = False


@dataclass
class PonderRow:
    """One run's row of maps: its label, the maps shown, their images (or None) and the
    index of its colour scale in :attr:`PonderFigure.scales`."""

    label: str
    maps: list[np.ndarray]
    images: list[np.ndarray | None]
    scale: int = 0


@dataclass
class PonderFigure:
    """Spatial maps, rows grouped by colour scale (each group's rows contiguous, one colour bar
    per scale); ``columns`` maps per row (each beside its image when ``with_images``);
    ``notes``: the values of the fields a row label does not name (:func:`run_fields`)."""

    rows: list[PonderRow]
    scales: list[PonderScale]
    columns: int
    with_images: bool
    notes: list[str] = field(default_factory=list)


#: The one quantity the maps show for every method (``per_image.npz``'s ``units_map``).
UNITS_MAP_LABEL = "units executed per position\n(N, summed over blocks)"


def ponder_figure(runs: list[tuple[str, dict]], per_run: int = 6) -> PonderFigure | None:
    """Maps of the spatial runs: ``per_run`` of each run's stored maps evenly spaced over them
    (the same images in every row: every run of a study stores the same positions). None
    without a spatial run.

    Every method is shown in one declared quantity, the units executed per position N
    (``units_map``), on one colour scale. Runs stored before ``units_map`` existed have only
    their ponder cost (``ponder_map``), which each method defines its own way (SACT: N + R,
    at least 2 per block; spatial PACT: its expected N), so those maps are never put on the
    units' scale nor on another method's: each such method gets its own scale and a colour
    bar saying "ponder cost" (a report that mixes both kinds of run shows both, each on its
    own scale). Each scale is clipped at the 0.1 and 99.9 percentiles of every map it shows
    (SACT code, ``draw_ponder_maps.py``); the units' scale is a count, one colour per value."""
    spatial = [(label, a) for label, a in runs if "units_map" in a or "ponder_map" in a]
    if not spatial:
        return None
    spatial, picked = some_runs(spatial, MAX_MAP_ROWS)
    fields, common = run_fields(spatial)
    order = _run_order(spatial, fields)
    groups: dict[tuple[str, str], list[int]] = {}
    for i in order:
        arrays = spatial[i][1]
        if "units_map" in arrays:
            groups.setdefault(("units_map", ""), []).append(i)
        else:
            record = arrays.get("record") or {}
            method = str(record.get("method_label") or record.get("method") or "?")
            groups.setdefault(("ponder_map", method), []).append(i)
    with_images = any("thumbnails" in a for _, a in spatial)
    shown = min(per_run, max(len(a[kind]) for kind, _ in groups for _, a in spatial if kind in a))
    scales, rows = [], []
    for (kind, method), members in sorted(groups.items(), key=lambda g: g[0] != ("units_map", "")):
        everything = np.concatenate([spatial[i][1][kind].ravel() for i in members])
        vmin, vmax = (float(v) for v in np.percentile(everything, [0.1, 99.9]))
        if kind == "units_map":
            vmin, vmax = float(np.floor(vmin)), float(np.ceil(vmax))
            scales.append(PonderScale(UNITS_MAP_LABEL, vmin, max(vmax, vmin), discrete=True))
        else:
            scales.append(
                PonderScale(
                    f"ponder cost of {method} (as it defines it, not N;\n"
                    "stored before units maps were kept: own scale)",
                    vmin,
                    vmax if vmax > vmin else vmin + 1.0,
                )
            )
        for i in members:
            label, arrays = spatial[i]
            maps, thumbs = arrays[kind], arrays.get("thumbnails")
            count = min(shown, len(maps))
            picks = np.unique(np.linspace(0, len(maps) - 1, count).round().astype(int))
            images = [
                thumbs[p] if with_images and thumbs is not None and p < len(thumbs) else None
                for p in picks
            ]
            title = ", ".join([label, *fields[i]])
            rows.append(PonderRow(title, [maps[p] for p in picks], images, len(scales) - 1))
    notes = [f"fields a row label does not name: {line}" for line in common]
    return PonderFigure(rows, scales, shown, with_images, [*picked, *notes])
