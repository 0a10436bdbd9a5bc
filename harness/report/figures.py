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


def _title(ax, title: str, notes: list[str], fontsize: float = 8) -> None:
    """The title with its notes on the lines below it, smaller."""
    ax.set_title(title, fontsize=fontsize)
    if notes:
        ax.set_title(title + "\n" + "\n".join(notes), fontsize=fontsize - 1.5)


def _shifted(ax, dx: float):
    """Data coordinates moved ``dx`` display points sideways (unjoined points at one x)."""
    from matplotlib.transforms import ScaledTranslation

    return ax.transData + ScaledTranslation(dx / 72, 0, ax.figure.dpi_scale_trans)


def plot_accuracy_vs_flops(figure: AccuracyFigure, out: Path) -> list[Path]:
    """One panel per split: the vanilla depth series in black (points labelled by depth), each
    method family in its colour with seed error bars (points labelled by penalty), a family at
    one FLOPs value as unjoined points (each with its bars, dodged sideways), threshold sweeps
    dotted; the panel's notes under its title, its x range when given; one legend."""
    import seaborn as sns

    plt = _pyplot()
    sns.set_theme(style="whitegrid")
    count = len(figure.panels)
    fig, axes = plt.subplots(1, count, figsize=(6.2 * count, 4.8), squeeze=False)
    palette = sns.color_palette(figure.palette)
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes[0], figure.panels, strict=True):
        for curve in panel.curves:
            color = "black" if curve.color is None else palette[curve.color % len(palette)]
            dodge = curve.dodge or [0.0] * len(curve.x)
            if curve.style == "sweep":
                (line,) = ax.plot(curve.x, curve.y, color=color, linestyle=":", marker=".")
            elif curve.style == "vanilla":
                line = ax.errorbar(
                    curve.x, curve.y, yerr=curve.yerr, color=color, marker="s", linestyle="--"
                )
            elif curve.style == "points":
                for k, dx in enumerate(dodge):
                    line = ax.errorbar(
                        curve.x[k],
                        curve.y[k],
                        xerr=None if curve.xerr is None else curve.xerr[k],
                        yerr=None if curve.yerr is None else curve.yerr[k],
                        color=color,
                        marker="D",
                        markersize=5,
                        linestyle="none",
                        capsize=2,
                        transform=_shifted(ax, dx),
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
            for x, y, text, dx in zip(curve.x, curve.y, curve.labels, dodge, strict=False):
                if text is None:
                    continue
                ax.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=(offset[0] + dx, offset[1]),
                    fontsize=6,
                    **({} if label_color is None else {"color": label_color}),
                )
        if panel.xlim is not None:
            ax.set_xlim(*panel.xlim)
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(panel.ylabel)
        _title(ax, panel.title, panel.notes)
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
    """Horizontal bars in the order given, coloured by method: the bar its mean, a black line
    its range, a diamond its median when given; the notes under the title."""
    import seaborn as sns

    plt = _pyplot()
    sns.set_theme(style="whitegrid")
    data = figure.bars
    palette = sns.color_palette("tab10")
    fig, ax = plt.subplots(figsize=(7.0, 0.28 * len(data) + 1.8))
    y = list(range(len(data)))
    ax.barh(y, data["mean MiB"], color=[palette[c % len(palette)] for c in data["color"]])
    ax.hlines(y, data["min MiB"], data["max MiB"], color="black", linewidth=1.5)
    spread = data["max MiB"] > data["min MiB"]
    for edge in ("min MiB", "max MiB"):
        ax.plot(data[edge][spread], [v for v, s in zip(y, spread, strict=True) if s], "k|", ms=6)
    if "median MiB" in data:
        ax.plot(data["median MiB"], y, "D", color="white", markeredgecolor="black", ms=4)
    ax.set_yticks(y, data["configuration"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(figure.xlabel)
    _title(ax, figure.title, figure.notes)
    paths = _save(fig, out, "memory")
    plt.close(fig)
    return paths


def plot_units_histogram(figure: HistogramFigure, out: Path) -> list[Path]:
    """One histogram panel per run, four to a row, shared bins and x axis."""
    plt = _pyplot()
    cols = min(4, len(figure.panels))
    rows = -(-len(figure.panels) // cols)
    lines = max(title.count("\n") + 1 for title, _ in figure.panels)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, (2.0 + 0.12 * lines) * rows), squeeze=False, sharex=True
    )
    for ax, (title, values) in zip(axes.ravel(), figure.panels, strict=False):
        ax.hist(values, bins=figure.bins, color="tab:blue")
        ax.set_title(title, fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(figure.panels) :]:
        ax.axis("off")
    fig.supxlabel(figure.xlabel, fontsize=8)
    fig.supylabel("images", fontsize=8)
    if figure.notes:
        fig.suptitle("\n".join(figure.notes), fontsize=7)
    fig.tight_layout()
    paths = _save(fig, out, "units_histogram")
    plt.close(fig)
    return paths


def plot_ponder_maps(figure: PonderFigure, out: Path) -> list[Path]:
    """A row of maps per run (each beside its image when stored), viridis; one colour bar per
    scale beside the rows drawn on it (a count's scale: one colour per integer)."""
    plt = _pyplot()
    step = 2 if figure.with_images else 1
    cols = figure.columns * step
    fig, axes = plt.subplots(
        len(figure.rows),
        cols,
        figsize=(1.1 * cols + 1.6, 1.35 * len(figure.rows) + 0.4),
        squeeze=False,
    )
    fig.subplots_adjust(left=0.01, right=0.86, top=0.95 if figure.notes else 0.97, bottom=0.02)
    if figure.notes:
        fig.suptitle("\n".join(figure.notes), fontsize=7, x=0.01, ha="left")
    styles = []
    for scale in figure.scales:
        if scale.discrete:
            levels = int(round(scale.vmax - scale.vmin)) + 1
            styles.append((plt.get_cmap("viridis", levels), scale.vmin - 0.5, scale.vmax + 0.5))
        else:
            styles.append(("viridis", scale.vmin, scale.vmax))
    images: dict[int, Any] = {}
    for axes_row, row in zip(axes, figure.rows, strict=True):
        for ax in axes_row:
            ax.axis("off")
        cmap, vmin, vmax = styles[row.scale]
        for k, (ponder, thumb) in enumerate(zip(row.maps, row.images, strict=True)):
            if thumb is not None:
                axes_row[step * k].imshow(thumb)
            images[row.scale] = axes_row[step * k + step - 1].imshow(
                ponder, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
            )
        axes_row[0].set_title(row.label, fontsize=6, loc="left")
    for index, scale in enumerate(figure.scales):
        members = [i for i, row in enumerate(figure.rows) if row.scale == index]
        top = axes[members[0], 0].get_position().y1
        bottom = axes[members[-1], 0].get_position().y0
        cax = fig.add_axes((0.88, bottom, 0.012, top - bottom))
        bar = fig.colorbar(images[index], cax=cax)
        if scale.discrete:
            span = int(round(scale.vmax - scale.vmin))
            step_ticks = max(1, -(-span // 10))
            bar.set_ticks(list(range(int(scale.vmin), int(scale.vmax) + 1, step_ticks)))
        bar.set_label(scale.label, fontsize=6)
        bar.ax.tick_params(labelsize=6)
    paths = _save(fig, out, "ponder_maps")
    plt.close(fig)
    return paths
