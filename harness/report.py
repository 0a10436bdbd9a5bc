"""Paper-style tables and figures from stored results (``pact-harness report``).

Input: one or more ``results.csv`` files (a study's table, a run directory's, or folders holding
them). Seeds are aggregated explicitly per configuration (mean and std of accuracy and FLOPs)
before anything is drawn, so error bars mean "over seeds". Output, in ``--out``:

    table.md, table.tex, table.csv    one row per (method, variant, depth, time penalty, mode,
                                      threshold, execution) with seed statistics
    accuracy_vs_flops.png/.pdf        accuracy vs FLOPs per method and mode, seed error bars,
                                      and the vanilla ResNet depth curve
    memory.png/.pdf                   peak evaluation memory per method and mode (when measured)
    units_histogram.png/.pdf          units executed per test image, per run (per_image.npz)
    ponder_maps.png/.pdf              spatial methods' ponder-cost maps on one colour scale

Every table carries the FLOP convention of :mod:`harness.costs.flops`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from harness.costs.flops import CONVENTION
from harness.errors import ConfigError
from harness.store import PER_IMAGE_FILE, RESULTS_FILE, SUMMARY_FILE, atomic_write_text

GROUP_KEYS = [
    "dataset",
    "num_train",
    "epochs",
    "method",
    "variant",
    "depth",
    "time_penalty_name",
    "time_penalty",
    "eval_mode",
    "threshold",
    "execution",
    "split",
]


def is_vanilla(frame: pd.DataFrame) -> pd.Series:
    """Rows of non-adaptive methods: their method declares no time penalty (the harness names
    no method; a plug-in's plain backbone is vanilla by the same rule)."""
    names = (
        frame["time_penalty_name"] if "time_penalty_name" in frame else pd.Series("", frame.index)
    )
    return names.isna() | (names.astype(str).str.strip() == "")


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """``results.csv`` files named directly or found under the given folders."""
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
        raise ConfigError(f"report: no {RESULTS_FILE} under {', '.join(map(str, paths))}")
    return found


def _with_budget(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Fill ``num_train``/``epochs`` from the run's summary.json for tables written before
    those columns existed (so that runs of different budgets are never pooled as seeds)."""
    summary = path.parent / SUMMARY_FILE
    if summary.exists() and not {"num_train", "epochs"} <= set(frame.columns):
        record = json.loads(summary.read_text())
        for key in ("num_train", "epochs"):
            if key not in frame.columns and key in record:
                frame[key] = record[key]
    return frame


def load_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All result rows, de-duplicated on (trial_id, eval_mode, threshold, execution, split)."""
    frames = [_with_budget(pd.read_csv(p), p) for p in find_results(paths)]
    frame = pd.concat(frames, ignore_index=True)
    keys = [k for k in ("trial_id", "eval_mode", "threshold", "execution", "split") if k in frame]
    return frame.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per configuration (std of a single seed is 0)."""
    keys = [k for k in GROUP_KEYS if k in frame.columns]
    frame = frame.copy()
    for key in keys:  # NaN keys (no threshold) would drop the group in groupby
        if frame[key].isna().any():
            frame[key] = frame[key].astype(object).where(frame[key].notna(), "")
    metrics = {
        "accuracy": ["mean", "std"],
        "flops_per_image_mean": ["mean", "std"],
        "units_executed_mean": ["mean"],
        "seed": ["count"],
    }
    if "peak_memory_bytes" in frame:
        metrics["peak_memory_bytes"] = ["mean"]
    metrics = {k: v for k, v in metrics.items() if k in frame}
    table = frame.groupby(keys, dropna=False, sort=True).agg(metrics)
    table.columns = [f"{col}_{stat}" for col, stat in table.columns]
    table = table.rename(
        columns={
            "accuracy_mean": "accuracy_mean",
            "accuracy_std": "accuracy_std_over_seeds",
            "flops_per_image_mean_mean": "flops_per_image",
            "flops_per_image_mean_std": "flops_per_image_std_over_seeds",
            "units_executed_mean_mean": "units_executed_mean",
            "seed_count": "seeds",
            "peak_memory_bytes_mean": "peak_memory_bytes",
        }
    )
    for col in ("accuracy_std_over_seeds", "flops_per_image_std_over_seeds"):
        if col in table:
            table[col] = table[col].fillna(0.0)
    return table.reset_index()


def write_tables(table: pd.DataFrame, out: Path) -> list[Path]:
    """Markdown, LaTeX and CSV versions of the aggregated table, each stating the convention."""
    shown = table.copy()
    if "accuracy_mean" in shown:
        shown["accuracy_%"] = (100 * shown["accuracy_mean"]).round(2)
        shown["accuracy_std_%"] = (100 * shown["accuracy_std_over_seeds"]).round(2)
    if "flops_per_image" in shown:
        shown["GFLOPs_per_image"] = (shown["flops_per_image"] / 1e9).round(5)
    note = f"FLOPs convention: {CONVENTION}. Accuracy: mean and std over seeds."
    paths = [out / "table.md", out / "table.tex", out / "table.csv"]
    atomic_write_text(paths[0], shown.to_markdown(index=False) + f"\n\n{note}\n")
    latex = shown.to_latex(index=False, caption=note, label="tab:pact-harness", escape=True)
    atomic_write_text(paths[1], latex)
    atomic_write_text(paths[2], f"# {note}\n" + table.to_csv(index=False))
    return paths


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, bbox_inches="tight", dpi=150)
        tmp.replace(path)
    return paths


def plot_accuracy_vs_flops(table: pd.DataFrame, out: Path) -> list[Path]:
    """One line per (method, mode), points = time penalties, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    data = table[table["split"] == "test"] if "split" in table else table
    vanilla_all = data[is_vanilla(data)]
    budget = [k for k in ("num_train", "epochs") if k in data]
    if vanilla_all.empty:
        groups = []
    elif budget:
        groups = list(vanilla_all.groupby(budget))
    else:
        groups = [((), vanilla_all)]
    styles = ["--", ":", "-."]
    for j, (key, vanilla) in enumerate(groups):
        vanilla = vanilla.sort_values("flops_per_image")
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k}={v}" for k, v in zip(budget, key, strict=True))
        ax.errorbar(
            vanilla["flops_per_image"] / 1e9,
            100 * vanilla["accuracy_mean"],
            yerr=100 * vanilla["accuracy_std_over_seeds"],
            color="black",
            marker="s",
            linestyle=styles[j % len(styles)],
            label=f"ResNet depth series ({label})",
        )
        for _, row in vanilla.iterrows():
            ax.annotate(
                f"{int(row['depth'])}",
                (row["flops_per_image"] / 1e9, 100 * row["accuracy_mean"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
    adaptive = data[~is_vanilla(data)]
    palette = sns.color_palette("tab10")
    for i, ((method, mode, depth), group) in enumerate(
        adaptive.groupby(["method", "eval_mode", "depth"], sort=True)
    ):
        if mode == "deterministic" and "threshold" in group:
            # one curve per training run's thresholds would clutter; keep the 0.5 rows here
            default = group[group["threshold"].astype(str).isin(["0.5", ""])]
            group = default if not default.empty else group
        group = group.sort_values("flops_per_image")
        ax.errorbar(
            group["flops_per_image"] / 1e9,
            100 * group["accuracy_mean"],
            xerr=group["flops_per_image_std_over_seeds"] / 1e9,
            yerr=100 * group["accuracy_std_over_seeds"],
            color=palette[i % len(palette)],
            marker="o",
            capsize=2,
            label=f"{method} ({mode}), depth {depth}",
        )
    ax.set_xlabel("GFLOPs per image (2 x MACs, conv + linear, halting included)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    paths = _save(fig, out, "accuracy_vs_flops")
    plt.close(fig)
    return paths


def plot_memory(table: pd.DataFrame, out: Path) -> list[Path]:
    """Bars of peak evaluation memory per method and mode (only rows that measured it)."""
    if "peak_memory_bytes" not in table or table["peak_memory_bytes"].isna().all():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = table.dropna(subset=["peak_memory_bytes"]).copy()
    data["peak_memory_MiB"] = data["peak_memory_bytes"] / 2**20
    data["configuration"] = data["method"] + " / " + data["eval_mode"]
    data = data.groupby("configuration", as_index=False)["peak_memory_MiB"].max()
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(data) + 1.2))
    sns.barplot(data=data, y="configuration", x="peak_memory_MiB", ax=ax, color="tab:blue")
    ax.set_xlabel("peak evaluation memory (MiB)")
    ax.set_ylabel("")
    paths = _save(fig, out, "memory")
    plt.close(fig)
    return paths


def load_per_image(paths: Iterable[str | Path]) -> list[tuple[str, dict]]:
    """``(label, arrays)`` of every run's ``per_image.npz`` under the inputs, label from its
    summary (method, time penalty, depth, mode)."""
    import numpy as np

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        folder = path.parent if path.is_file() else path
        found.extend(sorted(folder.rglob(PER_IMAGE_FILE)))
    runs = []
    for file in dict.fromkeys(found):
        summary_file = file.parent / SUMMARY_FILE
        record = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        results_file = file.parent / RESULTS_FILE
        if "time_penalty_name" not in record and results_file.exists():
            first = pd.read_csv(results_file, nrows=1, keep_default_na=False)
            record.update({k: v for k, v in first.iloc[0].items() if k not in record})
        arrays = dict(np.load(file))
        penalty = record.get("time_penalty_name")
        label = f"{record.get('method', file.parent.name)} d{record.get('depth', '?')}"
        if penalty:
            label += f" {penalty}={record.get('time_penalty'):g}"
        label += f" ({arrays['eval_mode']})"
        if record.get("num_train") is not None:
            label += f", {record['num_train']} imgs"
        arrays["adaptive"] = bool(penalty)
        runs.append((label, arrays))
    return runs


def plot_units_histogram(runs: list[tuple[str, dict]], out: Path) -> list[Path]:
    """Histogram over test images of the units executed (summed over blocks) per run."""
    adaptive = [(label, a) for label, a in runs if a["units"].size and a["adaptive"]]
    if not adaptive:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = pd.concat(
        [
            pd.DataFrame({"units executed per image": a["units"].sum(1), "run": label})
            for label, a in adaptive
        ],
        ignore_index=True,
    )
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.histplot(
        data=frame,
        x="units executed per image",
        hue="run",
        element="step",
        stat="density",
        common_norm=False,
        bins=30,
        ax=ax,
    )
    ax.set_title("units executed per test image (summed over blocks)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), fontsize=7, title_fontsize=8)
    paths = _save(fig, out, "units_histogram")
    plt.close(fig)
    return paths


def plot_ponder_maps(runs: list[tuple[str, dict]], out: Path, per_run: int = 8) -> list[Path]:
    """Ponder-cost maps of spatial runs: one colour scale for all maps, clipped at the 0.1 and
    99.9 percentiles of every stored map (SACT code, ``draw_ponder_maps.py``), viridis."""
    spatial = [(label, a["ponder_map"]) for label, a in runs if "ponder_map" in a]
    if not spatial:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    everything = np.concatenate([maps.ravel() for _, maps in spatial])
    vmin, vmax = np.percentile(everything, [0.1, 99.9])
    cols = min(per_run, max(len(maps) for _, maps in spatial))
    fig, axes = plt.subplots(
        len(spatial), cols, figsize=(1.3 * cols + 1.2, 1.5 * len(spatial)), squeeze=False
    )
    image = None
    for row, (label, maps) in enumerate(spatial):
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(maps):
                image = ax.imshow(maps[col], cmap="viridis", vmin=vmin, vmax=vmax)
        axes[row][0].set_title(label, fontsize=7, loc="left")
    fig.colorbar(image, ax=axes, shrink=0.8, label="ponder cost (summed over blocks)")
    paths = _save(fig, out, "ponder_maps")
    plt.close(fig)
    return paths


def make_report(inputs: list[str | Path], out: str | Path) -> list[Path]:
    """Load, aggregate, write tables and figures; returns the written paths."""
    frame = load_results(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(frame)
    written = write_tables(table, out)
    if "flops_per_image" in table and table["flops_per_image"].notna().any():
        written += plot_accuracy_vs_flops(table, out)
    written += plot_memory(table, out)
    runs = load_per_image(inputs)
    written += plot_units_histogram(runs, out)
    written += plot_ponder_maps(runs, out)
    return written
