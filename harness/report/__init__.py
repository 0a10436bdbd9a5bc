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
    modes_table.md/.tex                methods with several evaluation modes, side by side
    accuracy_vs_flops.png/.pdf         accuracy vs FLOPs, points labelled by penalty, seed error
                                       bars, the vanilla depth curve; one panel per split
    memory.png/.pdf                    peak evaluation memory per method, mode, depth and
                                       penalty (mean over seeds, min-max range, median)
    units_histogram.png/.pdf           units executed per test image, one panel per run
    ponder_maps.png/.pdf               spatial methods' units executed per position (N)
                                       beside their images, one scale
    comparisons.md                     each declared (or default) comparison: evidence, verdict

One module per job: :mod:`~harness.report.load` (results and per-image files in),
:mod:`~harness.report.aggregate` (seed statistics as the schema declares them, and the rows each
table and figure shows), :mod:`~harness.report.tables` (formatting), :mod:`~harness.report.figures`
(drawing: the one matplotlib user) and :mod:`~harness.report.index` (``report.md``).

Every table carries the FLOP convention of :mod:`harness.costs.flops`. A file that is not a
results table is skipped with a warning naming it; nothing usable at all is an error.
"""

from __future__ import annotations

from pathlib import Path

from harness.report.aggregate import (
    FLOPS,
    MAX_CURVES,
    _default_mode_rows,
    _majority_values,
    accuracy_figure,
    aggregate,
    differing_fields,
    histogram_figure,
    is_vanilla,
    memory_figure,
    ponder_figure,
)
from harness.report.compare import report_comparisons
from harness.report.figures import (
    plot_accuracy_vs_flops,
    plot_memory,
    plot_ponder_maps,
    plot_units_histogram,
)
from harness.report.index import write_index
from harness.report.load import (
    REQUIRED_COLUMNS,
    UnreadableRun,
    Warn,
    _log_warning,
    canonical_identity,
    find_results,
    load_per_image,
    load_results,
)
from harness.report.tables import (
    NOTE,
    modes_table,
    paper_table,
    write_comparisons,
    write_tables,
)

__all__ = [
    "MAX_CURVES",
    "NOTE",
    "REQUIRED_COLUMNS",
    "_default_mode_rows",
    "_majority_values",
    "aggregate",
    "canonical_identity",
    "differing_fields",
    "find_results",
    "is_vanilla",
    "load_per_image",
    "load_results",
    "make_report",
    "modes_table",
    "paper_table",
    "write_tables",
]


def make_report(
    inputs: list[str | Path],
    out: str | Path,
    warn: Warn | None = None,
    allow_mixed_code: bool = False,
) -> list[Path]:
    """Load, aggregate, write tables, figures and ``report.md``; returns the written paths.
    ``warn`` receives one line per input the report skips or cannot pool (default: logged);
    seeds from different code versions are refused unless ``allow_mixed_code``."""
    options = {} if warn is None else {"warn": warn}
    frame = load_results(inputs, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(frame, allow_mixed_code)
    written = write_tables(table, out)
    if FLOPS in table and table[FLOPS].notna().any():
        written += plot_accuracy_vs_flops(accuracy_figure(table), out)
    memory = memory_figure(table, frame)
    if memory is not None:
        written += plot_memory(memory, out)
    runs = load_per_image(inputs, **options)
    histogram = histogram_figure(runs)
    if histogram is not None:
        written += plot_units_histogram(histogram, out)
    while True:  # the maps are read as the figure draws them: a run that fails is dropped
        try:
            maps = ponder_figure(runs)
            break
        except UnreadableRun as err:
            (warn or _log_warning)(str(err))
            runs = [run for run in runs if run[1] is not err.arrays]
    if maps is not None:
        written += plot_ponder_maps(maps, out)
    planned, margin, source = report_comparisons(frame, list(inputs), allow_mixed_code)
    comparisons = write_comparisons(planned, margin, source, out)
    if comparisons is not None:
        written.append(comparisons)
    written.append(write_index(out, written, table, list(inputs)))
    return written
