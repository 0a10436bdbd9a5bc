"""``report.md``: the index of a report, every table and figure with a line on what it shows
and on what data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.aggregate import _describe
from harness.store import atomic_write_text


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
    padding = table.attrs.get("crop_padding", [])
    if padding:
        lines += [
            "Training augmentation: random crops of images padded by "
            f"{'/'.join(map(str, padding))} pixels per side, and horizontal flips (the SACT "
            "code's CIFAR recipe pads 2).",
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
        ("modes_table", "Methods with several evaluation modes, modes side by side."),
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
    if "comparisons.md" in names:
        lines += [
            "## comparisons",
            "",
            "Each comparison with its evidence (n, paired and bootstrap intervals, the test-set "
            "noise floor) and one verdict at the declared margin ([comparisons.md]"
            "(comparisons.md)).",
            "",
            (out / "comparisons.md").read_text(),
            "",
        ]
    figures = (
        (
            "accuracy_vs_flops",
            "Accuracy vs FLOPs per image, each point the mean over seeds and labelled by its "
            "time penalty; error bars ±1 sample SD over seeds, with n stated in each panel "
            "(no bar for one seed); curves join points in FLOPs order; a family whose points "
            "all sit at one FLOPs value (a mode that runs every unit) is drawn as unjoined "
            "points, each with its bars; vanilla depth series in black, threshold sweeps "
            "dotted. An x range spanning under 5% of the mean FLOPs is widened to ±5%, and an "
            "accuracy range narrower than the binomial 95% noise of one test set is noted "
            "in the panel title.",
        ),
        (
            "memory",
            "Peak evaluation memory, one bar per method, mode, depth and penalty (test split, "
            "default threshold), ordered by depth and penalty numerically: the bar is the mean "
            "over seeds, the black line the range (min-max) over seeds, a diamond the median "
            "over measured batches where it was recorded; the figure states the protocol.",
        ),
        (
            "units_histogram",
            "Units executed per test image, one panel per run; each title names the "
            "configuration fields in which that run differs from the others, and the figure "
            "states the values of the fields a title leaves out.",
        ),
        (
            "ponder_maps",
            "Spatial maps beside their images, in one declared quantity for every method: "
            "units executed per position (N, summed over blocks), one colour per count on one "
            "scale. Runs stored before those maps were kept show their ponder cost instead "
            "(SACT: N + R; spatial PACT: its expected N), each method on its own scale, "
            "never on the units' scale; each colour bar names its quantity.",
        ),
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
