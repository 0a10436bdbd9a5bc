"""The result-row schema: every column of ``results.csv``, declared once.

One row per (trial, evaluation mode, threshold, execution, split). Each :class:`Column` says
what the value means and in which unit, which *producer* writes it, how the report aggregates
it over seeds and how a table formats it. The producers build their part of a row with
:func:`fields` (a column that is not theirs, or not declared, is refused), and
:func:`harness.store.write_results_csv` refuses a row with an undeclared column or without a
required one (:func:`check_rows`). Adding a metric is one :class:`Column` here plus the line of
its producer that computes it; the report picks it up from :attr:`Column.seeds`.

Producers (in the order a trained run fills a row):

- ``trial``: the run's identity (:func:`harness.runs.trial_columns`);
- ``train``: the training budget (:func:`harness.train.finish_run`);
- ``evaluate``: one evaluation's statistics (:func:`harness.evaluate.evaluate_modes`);
- ``costs``: peak memory and time of the pass (:func:`harness.costs.measure.add_cost_columns`).

Accuracy is a fraction in [0, 1]; FLOPs follow the single convention of
:mod:`harness.costs.flops` (2 x multiply-accumulates of convolutions and linear layers, halting
branches included; BN, activations, pooling, additions and biases excluded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import StorageError

#: Who writes a column (see the module docstring).
PRODUCERS = ("trial", "train", "evaluate", "costs")
#: How the report treats a column when it pools seeds of one experiment:
#: ``key``: rows differ in it within an experiment (one aggregated row per value);
#: ``first``: constant within an experiment (shown as is); ``count``: counted (the seeds);
#: ``mean``: averaged; ``mean_std``: averaged, with its sample std over seeds; ``None``: left out.
AGGREGATES = ("key", "first", "count", "mean", "mean_std", None)


@dataclass(frozen=True)
class Seeds:
    """The report's names for a column's statistics over seeds."""

    mean: str | None = None
    std: str | None = None
    count: str | None = None


@dataclass(frozen=True)
class Display:
    """How a compact table shows a value: ``fmt.format(value * scale / per)`` under
    ``header`` (``per`` a unit divided out: 1e9 for GFLOPs); ``-`` for a missing value."""

    header: str
    fmt: str
    scale: float = 1.0
    per: float = 1.0

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        try:
            return self.fmt.format(float(value) * self.scale / self.per)
        except (TypeError, ValueError):
            return "-"


@dataclass(frozen=True)
class Column:
    """One declared column of a result row."""

    name: str
    unit: str
    description: str
    producer: str
    aggregate: str | None = None
    seeds: Seeds | None = None
    display: Display | None = None
    #: Every row a producer writes has it (optional: only when its input exists, e.g. FLOPs
    #: need an accountant, costs need a test batch).
    required: bool = True

    def __post_init__(self) -> None:
        if self.producer not in PRODUCERS:
            raise ValueError(f"column {self.name}: producer {self.producer!r} not in {PRODUCERS}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(
                f"column {self.name}: aggregate {self.aggregate!r} not in {AGGREGATES}"
            )
        if (self.aggregate in ("count", "mean", "mean_std")) != (self.seeds is not None):
            raise ValueError(f"column {self.name}: aggregate {self.aggregate!r} and seeds disagree")


def _c(*args: Any, **kwargs: Any) -> Column:
    return Column(*args, **kwargs)


_GFLOPS = Display("GFLOPs", "{:.4f}", per=1e9)
_MIB = Display("peak memory MiB", "{:.1f}", per=2**20)

#: Every column, in the order ``results.csv`` stores them.
COLUMNS: tuple[Column, ...] = (
    _c("trial_id", "", "run identifier (the run directory name)", "trial"),
    _c(
        "experiment_id",
        "",
        "hash of experiment_config: rows with equal ids may be pooled as seeds",
        "trial",
        "key",
    ),
    _c("method", "", "registered method name", "trial", "first"),
    _c("method_label", "", "the name tables and figures show", "trial", "first"),
    _c("variant", "", "backbone variant (sact, he, torchvision)", "trial", "first"),
    _c("dataset", "", "cifar10 or imagenet", "trial", "first"),
    _c(
        "depth",
        "layers",
        "backbone depth (6n+2 for CIFAR; 50/101/152 for ImageNet)",
        "trial",
        "first",
    ),
    _c(
        "time_penalty_name",
        "",
        "config key of the method's time penalty (its time_penalty_field) or empty",
        "trial",
        "first",
    ),
    _c("time_penalty", "", "its value (0 for non-adaptive methods)", "trial", "first"),
    _c("seed", "", "training seed", "trial", "count", Seeds(count="seeds")),
    _c("epochs", "epochs", "training epochs", "train", "first"),
    _c("num_train", "images", "training images (after any subset)", "train", "first"),
    _c(
        "num_val",
        "images",
        "validation images carved from the training set (0: no validation split)",
        "train",
        "first",
    ),
    _c(
        "code_version",
        "",
        "the code the run trained with: source fingerprint (git commit for older runs, +dirty "
        "for a dirty tree), torch and method-package versions; seeds are pooled only within one",
        "train",
    ),
    _c(
        "eval_code_version",
        "",
        "the code that evaluated the run, as code_version says it: the same for a run evaluated "
        "where it trained, the current code after `pact-harness reevaluate` (empty in runs made "
        "before it was recorded); rows are pooled and paired only within one",
        "train",
        required=False,
    ),
    _c(
        "backbone",
        "",
        "the backbone the run trained on: name@architecture hash (provenance 'backbone'; empty "
        "in runs made before it was recorded); seeds on different architectures are never pooled",
        "train",
        required=False,
    ),
    _c(
        "eval_mode",
        "",
        "evaluation mode (one of the model's eval_modes, e.g. standard, deterministic)",
        "evaluate",
        "key",
    ),
    _c("execution", "", "how the evaluation ran (masked, early_exit, gathered)", "evaluate", "key"),
    _c(
        "threshold", "", "halting threshold of threshold modes (empty otherwise)", "evaluate", "key"
    ),
    _c("repeats", "", "repeats averaged (random modes; 1 otherwise)", "evaluate"),
    _c("split", "", "test or val (data.val_subset; choices are made on val)", "evaluate", "key"),
    _c("num_images", "images", "images evaluated", "evaluate", "first"),
    _c(
        "accuracy",
        "fraction",
        "top-1 accuracy, fraction in [0, 1] (mean over repeats)",
        "evaluate",
        "mean_std",
        Seeds(mean="accuracy_mean", std="accuracy_std_over_seeds"),
        Display("accuracy %", "{:.2f}", 100.0),
    ),
    _c("accuracy_std", "fraction", "std of accuracy over repeats (0 for one repeat)", "evaluate"),
    _c("loss", "nats", "mean cross-entropy (mean over repeats)", "evaluate"),
    _c(
        "units_executed_mean",
        "units",
        "units executed per image summed over blocks (spatial: mean over positions per block, "
        "summed over blocks)",
        "evaluate",
        "mean",
        Seeds(mean="units_executed_mean"),
    ),
    _c("units_executed_std", "units", "std over images of the above", "evaluate"),
    _c("units_per_block", "units", "JSON list: mean units executed per block", "evaluate"),
    _c(
        "ponder_cost_mean",
        "",
        "mean ponder cost summed over blocks (as the method defines it, e.g. N + R or E_q[N])",
        "evaluate",
    ),
    _c(
        "flops_per_image_mean",
        "FLOPs",
        "FLOPs per image, mean over images",
        "evaluate",
        "mean_std",
        Seeds(mean="flops_per_image", std="flops_per_image_std_over_seeds"),
        _GFLOPS,
        required=False,
    ),
    _c(
        "flops_per_image_std",
        "FLOPs",
        "FLOPs per image, std over images",
        "evaluate",
        required=False,
    ),
    _c(
        "flops_fraction_of_vanilla",
        "fraction",
        "flops_per_image_mean / FLOPs of the model's own backbone with every unit executed (same "
        "backbone, same input size, decision branches excluded)",
        "evaluate",
        "mean",
        Seeds(mean="fraction_of_full_network"),
        Display("% of vanilla", "{:.1f}", 100.0),
        required=False,
    ),
    _c(
        "flops_per_block",
        "FLOPs",
        "JSON list: mean FLOPs per image in each block",
        "evaluate",
        required=False,
    ),
    _c(
        "flops_verified",
        "",
        "how this row's FLOPs were checked on the first evaluation batch (harness.costs.verify): "
        "flop-counter (FlopCounterMode equals the accountant, unit by unit), mask-perturbation "
        "(unit outputs perturbed where the masks say they did not run leave the logits, where "
        "they ran move them); empty: not verified (an execution neither check can run on, or a "
        "run made before FLOPs were verified)",
        "evaluate",
        required=False,
    ),
    _c(
        "per_image_key",
        "",
        "the row's per-image correctness in per_image_correct.npz (split|mode|execution|"
        "threshold; empty in runs made before it was stored)",
        "evaluate",
        required=False,
    ),
    _c(
        "peak_memory_bytes",
        "bytes",
        "peak memory of the evaluation pass: the maximum over its measured batches "
        "(memory_batches batches of up to cost_batch_size images; see peak_memory_device)",
        "costs",
        "mean",
        Seeds(mean="peak_memory_bytes"),
        _MIB,
        required=False,
    ),
    _c(
        "peak_memory_median_bytes",
        "bytes",
        "median over the measured batches of each batch's peak memory",
        "costs",
        "mean",
        Seeds(mean="peak_memory_median_bytes"),
        Display("median MiB", "{:.1f}", per=2**20),
        required=False,
    ),
    _c(
        "memory_batches",
        "batches",
        "evaluation batches whose peak memory was measured (the first ones of the test split)",
        "costs",
        required=False,
    ),
    _c(
        "peak_memory_device",
        "",
        "cpu (live tensor storage, exact) or cuda (allocator peak)",
        "costs",
        required=False,
    ),
    _c("eval_batch_size", "images", "batch size of the evaluation pass", "trial", "first"),
    _c(
        "seconds_per_batch",
        "seconds",
        "median wall-clock seconds per evaluation batch after warm-up",
        "costs",
        required=False,
    ),
    _c(
        "experiment_config",
        "",
        "JSON of the resolved config without seed and runtime fields",
        "trial",
    ),
    _c(
        "cost_batch_size",
        "images",
        "images in the batch whose peak memory and time were measured (the first test batch)",
        "costs",
        "mean",
        Seeds(mean="cost_batch_size"),
        required=False,
    ),
    _c(
        "activation_peak_bytes",
        "bytes",
        "peak memory above the parameters and the input batch (the pass's activations)",
        "costs",
        required=False,
    ),
)

#: Column name -> declaration.
SCHEMA: dict[str, Column] = {c.name: c for c in COLUMNS}
#: Column name -> description (the table ``results/README.md`` and the docs point to).
RESULT_COLUMNS: dict[str, str] = {c.name: c.description for c in COLUMNS}
#: Columns every row a trained run writes must hold.
REQUIRED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)


def columns_of(producer: str) -> tuple[str, ...]:
    """The columns ``producer`` writes."""
    return tuple(c.name for c in COLUMNS if c.producer == producer)


def columns_aggregated(how: str) -> tuple[Column, ...]:
    """The declared columns whose seed aggregate is ``how`` (``key``, ``first``, ...)."""
    return tuple(c for c in COLUMNS if c.aggregate == how)


def fields(producer: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as ``producer``'s part of a row, in schema order; a column that is not
    declared, or declared for another producer, is refused in one line naming it."""
    if producer not in PRODUCERS:
        raise StorageError(f"result producer {producer!r}: allowed: {', '.join(PRODUCERS)}")
    for name in values:
        column = SCHEMA.get(name)
        if column is None:
            raise StorageError(
                f"result column {name!r} (from {producer}) is not declared in harness.results"
            )
        if column.producer != producer:
            raise StorageError(
                f"result column {name!r} belongs to producer {column.producer!r}, "
                f"not {producer!r} (harness.results)"
            )
    return {c.name: values[c.name] for c in COLUMNS if c.name in values}


def check_rows(rows: Iterable[Mapping[str, Any]], where: str = "results.csv") -> None:
    """Every column of every row is declared, and every required one present; else one
    ``StorageError`` line naming the column."""
    for index, row in enumerate(rows):
        for name in row:
            if name not in SCHEMA:
                raise StorageError(
                    f"{where}: row {index} has column {name!r}, which is not declared in "
                    "harness.results (declare it with its unit, producer and aggregate)"
                )
        for name in REQUIRED:
            if name not in row:
                raise StorageError(
                    f"{where}: row {index} lacks required column {name!r} "
                    f"(written by producer {SCHEMA[name].producer!r})"
                )


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in schema order (undeclared names, from older files, after them)."""
    names = list(names)
    known = [c.name for c in COLUMNS if c.name in names]
    return known + [n for n in names if n not in SCHEMA]
