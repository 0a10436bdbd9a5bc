"""Figures (PNG and PDF): the one matplotlib user of the report. Each function draws the
figure data :mod:`harness.report.aggregate` prepared (rows already grouped, ordered and
labelled) and returns the files it wrote.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from harness.report.aggregate import (
    AccuracyFigure,
    HistogramFigure,
    MemoryFigure,
    PonderFigure,
)


def _save(fig, out: Path, stem: str) -> list[Path]:
    """Both formats, each written to a name of its own and renamed into place (two reports
    writing one folder at once never share a temporary file)."""
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
        try:
            fig.savefig(tmp, bbox_inches="tight", dpi=150)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_flops(figure: AccuracyFigure, out: Path) -> list[Path]:
    """One panel per split: the vanilla depth series in black (points labelled by depth), each
    method family in its colour with seed error bars (points labelled by penalty), threshold
    sweeps dotted; one legend."""
    import seaborn as sns

    plt = _pyplot()
    sns.set_theme(style="whitegrid")
    count = len(figure.panels)
    fig, axes = plt.subplots(1, count, figsize=(6.2 * count, 4.6), squeeze=False)
    palette = sns.color_palette(figure.palette)
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes[0], figure.panels, strict=True):
        for curve in panel.curves:
            color = "black" if curve.color is None else palette[curve.color % len(palette)]
            if curve.style == "sweep":
                (line,) = ax.plot(curve.x, curve.y, color=color, linestyle=":", marker=".")
            elif curve.style == "vanilla":
                line = ax.errorbar(
                    curve.x, curve.y, yerr=curve.yerr, color=color, marker="s", linestyle="--"
                )
            else:
                line = ax.errorbar(
                    curve.x,
                    curve.y,
                    xerr=curve.xerr,
                    yerr=curve.yerr,
                    color=color,
                    marker="o",
                    capsize=2,
                )
            handles.setdefault(curve.name, line)
            offset, label_color = ((3, -9), None) if curve.style == "vanilla" else ((3, 3), color)
            for x, y, text in zip(curve.x, curve.y, curve.labels, strict=False):
                if text is None:
                    continue
                ax.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=offset,
                    fontsize=6,
                    **({} if label_color is None else {"color": label_color}),
                )
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=8)
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


def plot_memory(figure: MemoryFigure, out: Path) -> list[Path]:
    """Horizontal bars, one per configuration, in the order given."""
    import seaborn as sns

    plt = _pyplot()
    data = figure.bars
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(data) + 1.4))
    sns.barplot(data=data, y="configuration", x="peak memory (MiB)", ax=ax, color="tab:blue")
    ax.set_title(figure.title, fontsize=8)
    ax.set_ylabel("")
    paths = _save(fig, out, "memory")
    plt.close(fig)
    return paths


def plot_units_histogram(figure: HistogramFigure, out: Path) -> list[Path]:
    """One histogram panel per run, four to a row, shared bins and x axis."""
    plt = _pyplot()
    cols = min(4, len(figure.panels))
    rows = -(-len(figure.panels) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False, sharex=True
    )
    for ax, (title, values) in zip(axes.ravel(), figure.panels, strict=False):
        ax.hist(values, bins=figure.bins, color="tab:blue")
        ax.set_title(title, fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(figure.panels) :]:
        ax.axis("off")
    fig.supxlabel(figure.xlabel, fontsize=8)
    fig.supylabel("images", fontsize=8)
    fig.tight_layout()
    paths = _save(fig, out, "units_histogram")
    plt.close(fig)
    return paths


def plot_ponder_maps(figure: PonderFigure, out: Path) -> list[Path]:
    """A row of maps per run (each beside its image when stored), viridis on one colour scale,
    one colour bar."""
    plt = _pyplot()
    step = 2 if figure.with_images else 1
    cols = figure.columns * step
    fig, axes = plt.subplots(
        len(figure.rows),
        cols,
        figsize=(1.1 * cols + 1.2, 1.35 * len(figure.rows) + 0.4),
        squeeze=False,
    )
    image = None
    for axes_row, row in zip(axes, figure.rows, strict=True):
        for ax in axes_row:
            ax.axis("off")
        for k, (ponder, thumb) in enumerate(zip(row.maps, row.images, strict=True)):
            if thumb is not None:
                axes_row[step * k].imshow(thumb)
            image = axes_row[step * k + step - 1].imshow(
                ponder, cmap="viridis", vmin=figure.vmin, vmax=figure.vmax
            )
        axes_row[0].set_title(row.label, fontsize=6, loc="left")
    bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01, fraction=0.02)
    bar.set_label(figure.colorbar_label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    paths = _save(fig, out, "ponder_maps")
    plt.close(fig)
    return paths
