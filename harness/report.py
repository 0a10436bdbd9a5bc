"""Paper-style tables and figures from stored results (``pact-harness report``).

Input: one or more ``results.csv`` files (a study's table, a run directory's, or folders holding
them). Rows are pooled as seeds only when they come from the same *experiment*: the whole
resolved configuration except the seed and runtime-only fields (``experiment_id``, see
:func:`harness.config.experiment_identity`). Configuration fields that differ between the
experiments of one report become columns of its tables. Output, in ``--out``:

    report.md                          index: every table and figure, what it shows, on what data
    results_table.csv                  the full tidy table: one row per experiment x mode x
                                       threshold x execution x split, seed statistics
    paper_table.md/.tex                the SACT paper's layout: method, penalty, accuracy +- std
                                       over seeds, GFLOPs, % of the vanilla network of the same
                                       depth, peak evaluation memory
    modes_table.md/.tex                methods with several evaluation modes (PACT), side by side
    accuracy_vs_flops.png/.pdf         accuracy vs FLOPs, points labelled by penalty, seed error
                                       bars, the vanilla depth curve; one panel per split
    memory.png/.pdf                    peak evaluation memory per method, mode and depth
    units_histogram.png/.pdf           units executed per test image, one panel per run
    ponder_maps.png/.pdf               spatial methods' ponder-cost maps beside their images

Every table carries the FLOP convention of :mod:`harness.costs.flops`. A file that is not a
results table is skipped with a warning naming it; nothing usable at all is an error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config import (
    RunConfig,
    experiment_id,
    experiment_identity,
    flatten,
    from_dict,
    load_yaml,
    to_dict,
)
from harness.costs.flops import CONVENTION
from harness.errors import ConfigError, HarnessError
from harness.registry import get_method
from harness.store import (
    CONFIG_FILE,
    PER_IMAGE_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    atomic_write_text,
)


def _warn(message: str) -> None:
    """A line on stderr for input the report skips or cannot pool (it goes on regardless)."""
    print(f"warning: {message}", file=sys.stderr)


#: Columns a results table must have to be reported.
REQUIRED_COLUMNS = ("method", "depth", "seed", "eval_mode", "accuracy")
#: Row-level keys: one experiment has one row per combination of these.
ROW_KEYS = ["eval_mode", "threshold", "execution", "split"]
#: Experiment-level columns shown in tables (constant within an experiment).
SHOWN = [
    "method",
    "method_label",
    "variant",
    "dataset",
    "depth",
    "time_penalty_name",
    "time_penalty",
    "num_train",
    "num_val",
    "epochs",
    "eval_batch_size",
    "num_images",
]
#: Config keys already shown by the columns above (never repeated as "differing" columns).
SHOWN_CONFIG = {"method", "model.depth", "model.dataset", "model.variant", "optim.epochs"}
STUDY_FILE = "study.yaml"
TRIALS_DIR = "trials"


# --------------------------------------------------------------------------------- loading
def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """``results.csv`` files named directly or found under the given folders."""
    paths = list(paths)
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            top = path / RESULTS_FILE
            found.extend([top] if top.exists() else sorted(path.rglob(RESULTS_FILE)))
        else:
            raise ConfigError(f"report: {path} does not exist")
    if not found:
        raise ConfigError(
            f"report: no {RESULTS_FILE} under {', '.join(map(str, paths))} (a run directory, "
            "a study folder, or a results.csv file); finished runs write one"
        )
    return list(dict.fromkeys(found))


def _read_table(path: Path) -> pd.DataFrame | None:
    """The rows of one results file, or None (with a warning naming it) if it is not one."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        _warn(f"report: skipping {path}: not a results table ({err})")
        return None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        _warn(
            f"report: skipping {path}: lacks the column(s) {', '.join(missing)} of a results "
            "table (harness.store.RESULT_COLUMNS)",
        )
        return None
    if frame.empty:
        _warn(f"report: skipping {path}: no rows")
        return None
    return frame


def _stored_configs(path: Path) -> dict[str, dict]:
    """trial_id -> config tree, for tables written before rows carried ``experiment_config``:
    the run's own config.yaml, the study's trials/<id>/config.yaml, or the study.yaml list."""
    folder = path.parent
    configs: dict[str, dict] = {}
    study = folder / STUDY_FILE
    if study.is_file():
        try:
            for trial in load_yaml(study, STUDY_FILE).get("trials", []):
                configs[str(trial["name"])] = trial["config"]
        except (HarnessError, KeyError, TypeError):
            pass
    candidates = [folder / CONFIG_FILE] + sorted(folder.glob(f"{TRIALS_DIR}/*/{CONFIG_FILE}"))
    for config_file in candidates:
        if config_file.is_file():
            trial_id = config_file.parent.name
            try:
                configs[trial_id] = load_yaml(config_file, CONFIG_FILE)
            except HarnessError:
                continue
    return configs


def canonical_identity(tree: dict[str, Any]) -> dict[str, Any]:
    """The experiment identity of a stored config tree as the current harness writes it: keys
    added to the config since the run was made get their defaults (so a run from an older
    version pools with an equal newer one), keys since retired are dropped, the method's config
    gets its defaults. A tree the current config cannot read is kept as it is (its runs then
    pool only with identical trees)."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    current = {k: v for k, v in tree.items() if k in known}
    try:
        cfg = from_dict(RunConfig, current)
        spec = get_method(cfg.method)
        method = to_dict(from_dict(spec.config_cls, cfg.method_config, "method"))
        return experiment_identity(dataclasses.replace(cfg, method_config=method))
    except HarnessError:
        return experiment_identity(current)


def _with_experiment(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Every row's experiment from its ``experiment_config`` or, for rows written before that
    column existed, from the stored configs; both brought to the current config's defaults
    (:func:`canonical_identity`). Rows whose config cannot be found become experiments of their
    own (never pooled)."""
    if "experiment_config" in frame and frame["experiment_config"].notna().all():
        trees: list[dict[str, Any] | None] = [json.loads(t) for t in frame["experiment_config"]]
        unknown = 0
    else:
        configs = _stored_configs(path)
        single = next(iter(configs.values())) if len(configs) == 1 else None
        trees = [configs.get(str(t), single) for t in frame.get("trial_id", [None] * len(frame))]
        unknown = sum(t is None for t in trees)
    texts = []
    for tree, trial in zip(trees, frame.get("trial_id", [None] * len(frame)), strict=True):
        identity = {"unpooled_run": f"{path}:{trial}"} if tree is None else canonical_identity(tree)
        texts.append(json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str))
    if unknown:
        _warn(
            f"report: {unknown} row(s) of {path} carry no configuration and none is stored "
            "beside it: each such run is reported on its own, never pooled as a seed",
        )
    frame = frame.copy()
    frame["experiment_config"] = texts
    frame["experiment_id"] = [experiment_id(json.loads(t)) for t in texts]
    return frame


def _with_budget(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Fill ``num_train``/``epochs`` from the run's summary.json for old tables."""
    summary = path.parent / SUMMARY_FILE
    if summary.exists() and not {"num_train", "epochs"} <= set(frame.columns):
        try:
            record = json.loads(summary.read_text())
        except (OSError, json.JSONDecodeError):
            return frame
        for key in ("num_train", "epochs"):
            if key not in frame.columns and key in record:
                frame[key] = record[key]
    return frame


def load_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every usable result row, each (experiment, seed, mode, threshold, execution, split)
    once: the same run reached through two inputs counts once, while two runs that merely
    share a directory name are told apart by their configurations."""
    frames = []
    for path in find_results(paths):
        frame = _read_table(path)
        if frame is None:
            continue
        frame = _with_experiment(_with_budget(frame, path), path)
        frame["source"] = str(path)
        frames.append(frame)
    if not frames:
        raise ConfigError("report: none of the inputs holds a usable results table")
    frame = pd.concat(frames, ignore_index=True)
    if "method_label" not in frame:
        frame["method_label"] = None
    frame["method_label"] = frame["method_label"].fillna(frame["method"].map(_label))
    if "split" not in frame:
        frame["split"] = "test"
    keys = ["experiment_id", "seed"] + [k for k in ROW_KEYS if k in frame]
    return frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def _label(method: str) -> str:
    """The registered method's label, for rows written before rows carried one."""
    try:
        spec = get_method(str(method))
    except HarnessError:
        return str(method)
    return spec.label or spec.name


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


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (experiment, mode, threshold, execution, split).

    Configuration fields that differ between experiments are added as columns, so that two
    experiments never look alike in a table."""
    keys = ["experiment_id"] + [k for k in ROW_KEYS if k in frame]
    frame = _blank_nan(frame, keys)
    metrics: dict[str, Any] = {
        "accuracy": ["mean", "std"],
        "flops_per_image_mean": ["mean", "std"],
        "seed": ["count"],
    }
    for optional in ("units_executed_mean", "peak_memory_bytes", "cost_batch_size"):
        if optional in frame:
            metrics[optional] = ["mean"]
    metrics = {k: v for k, v in metrics.items() if k in frame}
    table = frame.groupby(keys, dropna=False, sort=True).agg(metrics)
    table.columns = [f"{col}_{stat}" for col, stat in table.columns]
    table = table.rename(
        columns={
            "accuracy_std": "accuracy_std_over_seeds",
            "flops_per_image_mean_mean": "flops_per_image",
            "flops_per_image_mean_std": "flops_per_image_std_over_seeds",
            "units_executed_mean_mean": "units_executed_mean",
            "seed_count": "seeds",
            "peak_memory_bytes_mean": "peak_memory_bytes",
            "cost_batch_size_mean": "cost_batch_size",
        }
    )
    for col in ("accuracy_std_over_seeds", "flops_per_image_std_over_seeds"):
        if col in table:
            table[col] = table[col].fillna(0.0)
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


# ---------------------------------------------------------------------------------- tables
def _penalty_text(row: pd.Series) -> str:
    name = row.get("time_penalty_name")
    if not isinstance(name, str) or not name.strip() or name == "nan":
        return "-"
    return f"{name} {row['time_penalty']:g}"


def _mib(value: Any) -> str:
    return "-" if pd.isna(value) else f"{value / 2**20:.1f}"


def _accuracy_text(row: pd.Series) -> str:
    """Mean ± sample std over seeds; the mean alone for one seed (no spread was measured)."""
    mean = f"{100 * row['accuracy_mean']:.2f}"
    if int(row["seeds"]) < 2:
        return mean
    return f"{mean} ± {100 * row['accuracy_std_over_seeds']:.2f}"


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


def paper_table(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The SACT paper's layout, one row per experiment in its default mode (threshold 0.5 for
    threshold modes), on ``split``."""
    data = _default_mode_rows(table)
    data = data[(data["split"] == split) & _at_default_threshold(data)].copy()
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
            "accuracy %": _accuracy_text(row),
            "seeds": int(row["seeds"]),
            "GFLOPs": "-"
            if pd.isna(row["flops_per_image"])
            else f"{row['flops_per_image'] / 1e9:.4f}",
            "% of vanilla": "-" if pd.isna(row["fraction"]) else f"{row['fraction']:.1f}",
            "peak memory MiB": _mib(row.get("peak_memory_bytes")),
        }
        for key in table.attrs.get("differing", []):
            record[key] = row[key]
        rows.append(record)
    return pd.DataFrame(rows)


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
            record[f"{mode} acc %"] = f"{100 * row['accuracy_mean']:.2f}"
            record[f"{mode} GFLOPs"] = f"{row['flops_per_image'] / 1e9:.4f}"
            record[f"{mode} MiB"] = _mib(row.get("peak_memory_bytes"))
        for key in table.attrs.get("differing", []):
            record[key] = first[key]
        rows.append(record)
    return pd.DataFrame(rows)


NOTE = (
    f"FLOPs: {CONVENTION}. Accuracy: mean ± sample std over seeds (the mean alone for one "
    "seed). "
    "Peak memory: one evaluation batch (see cost_batch_size). PACT rows are our "
    "reconstruction of the method, not the paper's code."
)


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
    for stem, build in (("paper_table", paper_table), ("modes_table", modes_table)):
        parts_md, parts_tex = [], []
        for split in splits:
            compact = build(table, split)
            if compact.empty:
                continue
            parts_md.append(f"### {split} split\n\n{_markdown(compact)}\n")
            parts_tex.append(
                compact.to_latex(index=False, caption=f"{split} split. {NOTE}", escape=True)
            )
        if not parts_md:
            continue
        atomic_write_text(out / f"{stem}.md", "\n".join(parts_md) + f"\n{NOTE}\n")
        atomic_write_text(out / f"{stem}.tex", "\n".join(parts_tex))
        paths += [out / f"{stem}.md", out / f"{stem}.tex"]
    return paths


# --------------------------------------------------------------------------------- figures
def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, bbox_inches="tight", dpi=150)
        tmp.replace(path)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


#: Above this many adaptive curves, accuracy vs FLOPs shows each experiment's paper-table mode.
MAX_CURVES = 12


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


def plot_accuracy_vs_flops(table: pd.DataFrame, out: Path) -> list[Path]:
    """One panel per split; per experiment family (method, mode, depth, differing fields) a
    line over the time penalties, each point labelled by its penalty, error bars = std over
    seeds; threshold sweeps of one model dashed; the vanilla depth series in black."""
    import seaborn as sns

    plt = _pyplot()
    sns.set_theme(style="whitegrid")
    splits = [s for s in ("test", "val") if s in set(table["split"])]
    fig, axes = plt.subplots(1, len(splits), figsize=(6.2 * len(splits), 4.6), squeeze=False)
    differing = table.attrs.get("differing", [])
    family_keys = ["method_label", "eval_mode", "depth", *differing]
    families = table[~is_vanilla(table)].groupby(family_keys).ngroups
    # Many curves (an ablation): each experiment in its paper-table mode only, so that the
    # figure stays readable; the other modes are in the modes table.
    default_only = families > MAX_CURVES
    if default_only:
        table = _default_mode_rows(table)
        families = table[~is_vanilla(table)].groupby(family_keys).ngroups
    palette = sns.color_palette("tab10" if families <= 10 else "tab20")
    majority = _majority_values(table, differing)
    handles: dict[str, Any] = {}
    for ax, split in zip(axes[0], splits, strict=True):
        data = table[(table["split"] == split) & table["flops_per_image"].notna()]
        vanilla = data[is_vanilla(data)]
        budget = [k for k in ("num_train", "epochs") if k in data and data[k].notna().all()]
        groups = (
            []
            if vanilla.empty
            else [g for _, g in vanilla.groupby(budget)]
            if budget
            else [vanilla]
        )
        for group in groups:
            group = group.sort_values("flops_per_image")
            line = ax.errorbar(
                group["flops_per_image"] / 1e9,
                100 * group["accuracy_mean"],
                yerr=100 * group["accuracy_std_over_seeds"],
                color="black",
                marker="s",
                linestyle="--",
            )
            handles.setdefault("vanilla ResNet depth series", line)
            for _, row in group.iterrows():
                ax.annotate(
                    f"d{int(row['depth'])}",
                    (row["flops_per_image"] / 1e9, 100 * row["accuracy_mean"]),
                    textcoords="offset points",
                    xytext=(3, -9),
                    fontsize=6,
                )
        adaptive = data[~is_vanilla(data)]
        placed: list[tuple[float, float]] = []
        for i, (family, group) in enumerate(adaptive.groupby(family_keys, sort=True)):
            color = palette[i % len(palette)]
            name = f"{family[0]} ({family[1]}), d{family[2]}"
            # only the fields where this curve differs from most of its method's experiments
            shown = [
                f"{k.split('.')[-1]}={v}"
                for k, v in zip(differing, family[3:], strict=True)
                if v not in ("-", "") and v != majority.get((family[0], k))
            ]
            if shown:
                name += ", " + ", ".join(shown)
            default = group[_at_default_threshold(group)]
            default = default.sort_values("flops_per_image")
            line = ax.errorbar(
                default["flops_per_image"] / 1e9,
                100 * default["accuracy_mean"],
                xerr=default["flops_per_image_std_over_seeds"] / 1e9,
                yerr=100 * default["accuracy_std_over_seeds"],
                color=color,
                marker="o",
                capsize=2,
            )
            handles.setdefault(name, line)
            for _, row in default.iterrows():
                point = (row["flops_per_image"] / 1e9, 100 * row["accuracy_mean"])
                if _crowded(placed, point, data):
                    continue  # a label already sits there (coinciding points)
                placed.append(point)
                ax.annotate(
                    _penalty_text(row),
                    point,
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=6,
                    color=color,
                )
            sweep = group[~_at_default_threshold(group)]
            for _, one in pd.concat([sweep, default]).groupby("experiment_id"):
                if len(one) < 2 or one["threshold"].astype(str).eq("").all():
                    continue
                one = one.sort_values("flops_per_image")
                (sweep_line,) = ax.plot(
                    one["flops_per_image"] / 1e9,
                    100 * one["accuracy_mean"],
                    color=color,
                    linestyle=":",
                    marker=".",
                )
                handles.setdefault(f"{name}: threshold sweep of one model", sweep_line)
        ax.set_xlabel("GFLOPs per image (2 x MACs, conv + linear, halting branches included)")
        ax.set_ylabel(f"{split} accuracy (%)")
        mode_note = "; each experiment in its paper-table mode" if default_only else ""
        ax.set_title(f"{split} split: {_describe(data)}{mode_note}", fontsize=8)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout()
    paths = _save(fig, out, "accuracy_vs_flops")
    plt.close(fig)
    return paths


def plot_memory(table: pd.DataFrame, out: Path) -> list[Path]:
    """Bars of peak evaluation memory per method, mode and depth (test split rows)."""
    if "peak_memory_bytes" not in table or table["peak_memory_bytes"].isna().all():
        return []
    import seaborn as sns

    plt = _pyplot()
    data = table[(table["split"] == "test") & table["peak_memory_bytes"].notna()].copy()
    data = data[_at_default_threshold(data)]
    data["peak memory (MiB)"] = data["peak_memory_bytes"] / 2**20
    data["configuration"] = (
        data["method_label"] + " / " + data["eval_mode"] + " / d" + data["depth"].astype(str)
    )
    data = data.groupby("configuration", as_index=False)["peak memory (MiB)"].mean()
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(data) + 1.4))
    sns.barplot(data=data, y="configuration", x="peak memory (MiB)", ax=ax, color="tab:blue")
    batch = table.get("cost_batch_size", table.get("eval_batch_size"))
    batches = sorted({int(b) for b in batch.dropna()}) if batch is not None else []
    ax.set_title(
        f"peak memory of one evaluation batch (batch {'/'.join(map(str, batches))}; "
        "mean over seeds and penalties)",
        fontsize=8,
    )
    ax.set_ylabel("")
    paths = _save(fig, out, "memory")
    plt.close(fig)
    return paths


def load_per_image(paths: Iterable[str | Path]) -> list[tuple[str, dict]]:
    """``(label, arrays)`` of every run's ``per_image.npz`` under the inputs, label from its
    summary or results table (method, penalty, depth, mode, images evaluated)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        folder = path.parent if path.is_file() else path
        found.extend(sorted(folder.rglob(PER_IMAGE_FILE)))
    runs = []
    for file in dict.fromkeys(found):
        record: dict[str, Any] = {}
        summary_file = file.parent / SUMMARY_FILE
        try:
            if summary_file.exists():
                record = json.loads(summary_file.read_text())
            results_file = file.parent / RESULTS_FILE
            if results_file.exists():
                first = pd.read_csv(results_file, nrows=1, keep_default_na=False)
                record.update({k: v for k, v in first.iloc[0].items() if k not in record})
            arrays = dict(np.load(file))
        except (OSError, ValueError, json.JSONDecodeError) as err:
            _warn(f"report: skipping {file}: {err}")
            continue
        penalty = record.get("time_penalty_name")
        label = f"{record.get('method_label') or record.get('method', file.parent.name)}"
        label += f" d{record.get('depth', '?')}"
        if penalty:
            label += f" {penalty}={float(record.get('time_penalty')):g}"
        label += f" s{record.get('seed', '?')} ({arrays['eval_mode']}, {len(arrays['units'])} "
        label += "test imgs)"
        arrays["adaptive"] = bool(penalty)
        runs.append((label, arrays))
    return runs


def _two_lines(label: str) -> str:
    """A run label split before its depth (``NAME dNN ...``), so panel titles fit a panel."""
    head, sep, tail = label.partition(" d")
    return f"{head}\n d{tail}" if sep else label


def plot_units_histogram(runs: list[tuple[str, dict]], out: Path) -> list[Path]:
    """Units executed per test image (summed over blocks), one panel per run."""
    adaptive = [(label, a) for label, a in runs if a["units"].size and a["adaptive"]]
    if not adaptive:
        return []
    plt = _pyplot()
    cols = min(4, len(adaptive))
    rows = -(-len(adaptive) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False, sharex=True
    )
    most = max(a["units"].sum(1).max() for _, a in adaptive)
    bins = np.arange(0.5, np.ceil(most) + 1.5, 1.0 if most <= 60 else max(1.0, most / 40))
    for ax, (label, arrays) in zip(axes.ravel(), adaptive, strict=False):
        ax.hist(arrays["units"].sum(1), bins=bins, color="tab:blue")
        ax.set_title(_two_lines(label), fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(adaptive) :]:
        ax.axis("off")
    fig.supxlabel(
        "units executed per test image (summed over blocks; spatial: mean over positions)",
        fontsize=8,
    )
    fig.supylabel("images", fontsize=8)
    fig.tight_layout()
    paths = _save(fig, out, "units_histogram")
    plt.close(fig)
    return paths


def plot_ponder_maps(runs: list[tuple[str, dict]], out: Path, per_run: int = 6) -> list[Path]:
    """Ponder-cost maps of spatial runs beside their test images (when the run stored
    thumbnails), ``per_run`` of each run's stored maps evenly spaced over them; one colour
    scale for all maps, clipped at the 0.1 and 99.9 percentiles of
    every stored map (SACT code, ``draw_ponder_maps.py``), viridis, one colour bar."""
    spatial = [(label, a) for label, a in runs if "ponder_map" in a]
    if not spatial:
        return []
    plt = _pyplot()
    everything = np.concatenate([a["ponder_map"].ravel() for _, a in spatial])
    vmin, vmax = np.percentile(everything, [0.1, 99.9])
    with_images = any("thumbnails" in a for _, a in spatial)
    cols = min(per_run, max(len(a["ponder_map"]) for _, a in spatial)) * (2 if with_images else 1)
    fig, axes = plt.subplots(
        len(spatial), cols, figsize=(1.1 * cols + 1.2, 1.35 * len(spatial) + 0.4), squeeze=False
    )
    image = None
    for row, (label, arrays) in enumerate(spatial):
        maps, thumbs = arrays["ponder_map"], arrays.get("thumbnails")
        for ax in axes[row]:
            ax.axis("off")
        step = 2 if with_images else 1
        # maps spread over the stored ones (which spread over the split): the same images in
        # every row, since every run of a study stores the same positions
        shown = min(cols // step, len(maps))
        picks = np.unique(np.linspace(0, len(maps) - 1, shown).round().astype(int))
        for k, pick in enumerate(picks):
            if with_images and thumbs is not None and pick < len(thumbs):
                axes[row][step * k].imshow(thumbs[pick])
            image = axes[row][step * k + step - 1].imshow(
                maps[pick], cmap="viridis", vmin=vmin, vmax=vmax
            )
        axes[row][0].set_title(label, fontsize=6, loc="left")
    bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01, fraction=0.02)
    bar.set_label("ponder cost (summed over blocks)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    paths = _save(fig, out, "ponder_maps")
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------- index
def write_index(out: Path, written: list[Path], table: pd.DataFrame, inputs: list) -> Path:
    """``report.md``: every table and figure with one line on what it shows and on what."""
    names = {p.name for p in written}
    splits = ", ".join(sorted(set(table["split"])))
    experiments = table["experiment_id"].nunique()
    lines = [
        "# pact-harness report",
        "",
        f"Inputs: {', '.join(str(i) for i in inputs)}. {experiments} experiments "
        f"({_describe(table)}); splits: {splits}. Seeds are pooled only within one "
        "experiment (the full configuration except the seed).",
        "",
    ]
    differing = table.attrs.get("differing", [])
    if differing:
        lines += [
            f"Configuration fields that differ between experiments: {', '.join(differing)}.",
            "",
        ]
    for stem, text in (
        (
            "paper_table",
            "SACT-paper layout: accuracy ± std over seeds, GFLOPs, % of vanilla, "
            "peak evaluation memory, default mode of each experiment.",
        ),
        ("modes_table", "Methods with several evaluation modes (PACT), modes side by side."),
    ):
        if f"{stem}.md" in names:
            body = (out / f"{stem}.md").read_text()
            lines += [
                f"## {stem.replace('_', ' ')}",
                "",
                text,
                f"([LaTeX]({stem}.tex))",
                "",
                body,
                "",
            ]
    figures = (
        (
            "accuracy_vs_flops",
            "Accuracy vs FLOPs per image; points labelled by time penalty, "
            "seed error bars, vanilla depth series in black, threshold sweeps dotted.",
        ),
        ("memory", "Peak memory of one evaluation batch per method, mode and depth."),
        ("units_histogram", "Units executed per test image, one panel per run."),
        ("ponder_maps", "Spatial ponder-cost maps (one clipped colour scale) beside the images."),
    )
    for stem, text in figures:
        if f"{stem}.png" in names:
            lines += [f"## {stem.replace('_', ' ')}", "", text, "", f"![{stem}]({stem}.png)", ""]
    lines += [
        "Full table (every mode, threshold, execution, split): [results_table.csv]"
        "(results_table.csv).",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def make_report(inputs: list[str | Path], out: str | Path) -> list[Path]:
    """Load, aggregate, write tables, figures and ``report.md``; returns the written paths."""
    frame = load_results(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(frame)
    written = write_tables(table, out)
    if table["flops_per_image"].notna().any():
        written += plot_accuracy_vs_flops(table, out)
    written += plot_memory(table, out)
    runs = load_per_image(inputs)
    written += plot_units_histogram(runs, out)
    written += plot_ponder_maps(runs, out)
    written.append(write_index(out, written, table, list(inputs)))
    return written
