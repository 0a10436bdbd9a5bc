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


def check_code_versions(frame: pd.DataFrame, allow_mixed_code: bool = False) -> None:
    """Seeds of one experiment must come from one code version (:func:`harness.store.
    code_version`); else one ``ConfigError`` line naming the experiment and the versions,
    unless ``allow_mixed_code``."""
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


@dataclass
class Curve:
    """One line of a panel, ready to draw: points in drawing order, their error bars and
    annotations. ``style``: ``vanilla`` (the depth series), ``method`` (a family over its
    penalties) or ``sweep`` (one model's threshold sweep); ``color``: palette index."""

    name: str
    style: str
    x: list[float]
    y: list[float]
    color: int | None = None
    xerr: list[float] | None = None
    yerr: list[float] | None = None
    labels: list[str | None] = field(default_factory=list)


@dataclass
class Panel:
    """One axes: its title, y label and curves in drawing order."""

    title: str
    ylabel: str
    curves: list[Curve]


@dataclass
class AccuracyFigure:
    """Accuracy vs FLOPs: one panel per split, the palette sized to the families."""

    panels: list[Panel]
    palette: str
    xlabel: str = "GFLOPs per image (2 x MACs, conv + linear, halting branches included)"


def accuracy_figure(table: pd.DataFrame) -> AccuracyFigure:
    """Per split, per experiment family (method, mode, depth, differing fields) a curve over
    the time penalties in FLOPs order, each point labelled by its penalty (labels that would
    overlap one already placed are dropped), error bars = std over seeds; threshold sweeps of
    one model; the vanilla depth series, one curve per training budget."""
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
            default = group[_at_default_threshold(group)].sort_values(FLOPS)
            labels: list[str | None] = []
            for _, row in default.iterrows():
                point = (row[FLOPS] / 1e9, 100 * row[ACCURACY])
                if _crowded(placed, point, data):
                    labels.append(None)  # a label already sits there (coinciding points)
                    continue
                placed.append(point)
                labels.append(_penalty_text(row))
            curves.append(
                Curve(
                    name,
                    "method",
                    list(default[FLOPS] / 1e9),
                    list(100 * default[ACCURACY]),
                    color=i,
                    xerr=list(default[FLOPS_STD] / 1e9),
                    yerr=list(100 * default[ACCURACY_STD]),
                    labels=labels,
                )
            )
            sweep = group[~_at_default_threshold(group)]
            for _, one in pd.concat([sweep, default]).groupby("experiment_id"):
                if len(one) < 2 or one["threshold"].astype(str).eq("").all():
                    continue
                one = one.sort_values(FLOPS)
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
        panels.append(
            Panel(f"{split} split: {_describe(data)}{mode_note}", f"{split} accuracy (%)", curves)
        )
    return AccuracyFigure(panels, "tab10" if families <= 10 else "tab20")


def _vanilla_curves(data: pd.DataFrame) -> list[Curve]:
    """The vanilla depth series of a panel, one curve per training budget, in FLOPs order."""
    vanilla = data[is_vanilla(data)]
    if vanilla.empty:
        return []
    budget = [k for k in ("num_train", "epochs") if k in data and data[k].notna().all()]
    groups = [g for _, g in vanilla.groupby(budget)] if budget else [vanilla]
    label = "/".join(sorted(set(vanilla["method_label"].astype(str))))
    curves = []
    for group in groups:
        group = group.sort_values(FLOPS)
        curves.append(
            Curve(
                f"vanilla {label} depth series",
                "vanilla",
                list(group[FLOPS] / 1e9),
                list(100 * group[ACCURACY]),
                yerr=list(100 * group[ACCURACY_STD]),
                labels=[f"d{int(d)}" for d in group["depth"]],
            )
        )
    return curves


@dataclass
class MemoryFigure:
    """Bars of peak evaluation memory: ``bars`` has columns ``configuration`` and
    ``peak memory (MiB)``, in drawing order."""

    bars: pd.DataFrame
    title: str


def memory_figure(table: pd.DataFrame) -> MemoryFigure | None:
    """Peak evaluation memory per method, mode and depth (test split, default threshold), mean
    over seeds and penalties; None when no row measured memory."""
    if MEMORY not in table or table[MEMORY].isna().all():
        return None
    data = table[(table["split"] == "test") & table[MEMORY].notna()].copy()
    data = data[_at_default_threshold(data)]
    data["peak memory (MiB)"] = data[MEMORY] / 2**20
    data["configuration"] = (
        data["method_label"] + " / " + data["eval_mode"] + " / d" + data["depth"].astype(str)
    )
    bars = data.groupby("configuration", as_index=False)["peak memory (MiB)"].mean()
    batch = table.get(COST_BATCH, table.get("eval_batch_size"))
    batches = sorted({int(b) for b in batch.dropna()}) if batch is not None else []
    title = (
        f"peak memory of one evaluation batch (batch {'/'.join(map(str, batches))}; "
        "mean over seeds and penalties)"
    )
    return MemoryFigure(bars, title)


@dataclass
class HistogramFigure:
    """Units executed per image: one panel (title, values) per adaptive run, shared bins."""

    panels: list[tuple[str, np.ndarray]]
    bins: np.ndarray
    xlabel: str = "units executed per test image (summed over blocks; spatial: mean over positions)"


def histogram_figure(runs: list[tuple[str, dict]]) -> HistogramFigure | None:
    """The adaptive runs' units executed per test image (summed over blocks); None if none."""
    adaptive = [(label, a) for label, a in runs if a["units"].size and a["adaptive"]]
    if not adaptive:
        return None
    most = max(a["units"].sum(1).max() for _, a in adaptive)
    bins = np.arange(0.5, np.ceil(most) + 1.5, 1.0 if most <= 60 else max(1.0, most / 40))
    return HistogramFigure([(_two_lines(label), a["units"].sum(1)) for label, a in adaptive], bins)


@dataclass
class PonderRow:
    """One run's row of ponder maps: its label, the maps shown and their images (or None)."""

    label: str
    maps: list[np.ndarray]
    images: list[np.ndarray | None]


@dataclass
class PonderFigure:
    """Ponder maps of the spatial runs on one colour scale ``[vmin, vmax]``; ``columns`` maps
    per row (each beside its image when ``with_images``)."""

    rows: list[PonderRow]
    vmin: float
    vmax: float
    columns: int
    with_images: bool
    colorbar_label: str = "ponder cost (summed over blocks)"


def ponder_figure(runs: list[tuple[str, dict]], per_run: int = 6) -> PonderFigure | None:
    """Ponder-cost maps of spatial runs, ``per_run`` of each run's stored maps evenly spaced
    over them (the same images in every row: every run of a study stores the same positions);
    one colour scale clipped at the 0.1 and 99.9 percentiles of every stored map (SACT code,
    ``draw_ponder_maps.py``). None without a spatial run."""
    spatial = [(label, a) for label, a in runs if "ponder_map" in a]
    if not spatial:
        return None
    everything = np.concatenate([a["ponder_map"].ravel() for _, a in spatial])
    vmin, vmax = np.percentile(everything, [0.1, 99.9])
    with_images = any("thumbnails" in a for _, a in spatial)
    shown = min(per_run, max(len(a["ponder_map"]) for _, a in spatial))
    rows = []
    for label, arrays in spatial:
        maps, thumbs = arrays["ponder_map"], arrays.get("thumbnails")
        count = min(shown, len(maps))
        picks = np.unique(np.linspace(0, len(maps) - 1, count).round().astype(int))
        images = [
            thumbs[p] if with_images and thumbs is not None and p < len(thumbs) else None
            for p in picks
        ]
        rows.append(PonderRow(label, [maps[p] for p in picks], images))
    return PonderFigure(rows, float(vmin), float(vmax), shown, with_images)
