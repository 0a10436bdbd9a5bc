"""Comparisons that state their evidence (``pact-harness compare`` and the report's section).

A *selector* picks one experiment's rows (``method=NAME,PENALTY=VALUE,mode=MODE``; keys:
any result column, ``mode`` for ``eval_mode``, a method's time-penalty name such as ``tau`` or
``lambda``, or a config key such as ``method_config.prior``, a method-config key also
bare: ``prior``), or ``vanilla``: the vanilla depth
series under the same data and budget. Three comparisons, all ``A - B`` in accuracy points:

- :func:`compare_pair`: two experiments paired by seed: the paired t-interval, a bootstrap
  over seeds and test images (from the per-image correctness every run stores), the test set's
  noise floor and n;
- :func:`compare_vanilla`: an experiment against the vanilla depth series at matched FLOPs (the
  vanilla accuracy interpolated at the experiment's FLOPs, with its uncertainty);
- :func:`compare_curves`: the mean gap between two accuracy/FLOPs curves over their common FLOPs
  range, and the gap at three matched FLOPs values inside it, each with a t-interval over each
  point's seeds (the gaps are linear in the point means).

Each ends in one verdict under the rule of :mod:`harness.inference`, at a margin declared before
the data (the preset's ``equivalence_margin`` or ``--margin``). Rows from different code
versions are never paired or pooled unless ``allow_mixed_code``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import inference
from harness.config import flatten, load_yaml
from harness.errors import ConfigError
from harness.report.aggregate import _at_default_threshold, _default_mode_rows, is_vanilla
from harness.report.load import _run_folder, load_results
from harness.store import CORRECT_FILE, STUDY_FILE

#: The selector that means the vanilla depth series.
VANILLA = "vanilla"
#: The margin when neither the study nor the command line declares one (accuracy points).
DEFAULT_MARGIN = 1.0
#: Columns an experiment's vanilla reference must share with it (same data, same budget).
_SAME_DATA = ("dataset", "variant", "num_train", "num_val", "epochs", "num_images", "split")


@dataclass(frozen=True)
class Selector:
    """``key=value`` conditions, or the vanilla series."""

    text: str
    conditions: tuple[tuple[str, str], ...] = ()

    @property
    def vanilla(self) -> bool:
        return self.text == VANILLA


def parse_selector(text: str, flag: str) -> Selector:
    """``key=value[,key=value...]`` or ``vanilla``; anything else is one ConfigError line."""
    text = text.strip()
    if text == VANILLA:
        return Selector(text)
    conditions = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"{flag} {text!r}: {part!r} is not key=value; give key=value pairs (a result "
                "column, a time-penalty name, a config key) or 'vanilla'"
            )
        conditions.append((key.strip(), value.strip()))
    if not conditions:
        raise ConfigError(f"{flag}: empty selector; give key=value pairs or 'vanilla'")
    return Selector(text, tuple(conditions))


def _equal(value: Any, wanted: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return wanted.lower() in ("", "none", "-")
    try:
        return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(value).lower() == wanted.lower() or json.dumps(value) == wanted


def _matching(values: pd.Series, wanted: str) -> pd.Series:
    """``values`` equal to ``wanted`` (:func:`_equal`), decided once per distinct value: a study
    of thousands of trials has tens of thousands of rows but few distinct values per column."""
    distinct = pd.unique(values)
    equal = [v for v in distinct if _equal(v.item() if isinstance(v, np.generic) else v, wanted)]
    return values.isin(equal)


@functools.lru_cache(maxsize=4096)
def _flat_config(text: str) -> dict[str, Any]:
    """An experiment's flattened config from its ``experiment_config`` text (read-only: the
    result is shared by every call with the same text)."""
    return flatten(json.loads(text))


def _match(frame: pd.DataFrame, selector: Selector, flag: str) -> pd.Series:
    """Rows of ``frame`` meeting every condition of ``selector``; an unknown key is an error
    naming the keys allowed."""
    configs = {
        eid: _flat_config(text)
        for eid, text in frame.groupby("experiment_id")["experiment_config"].first().items()
    }
    penalties = set(map(str, frame["time_penalty_name"].dropna().unique())) - {""}
    config_keys = sorted({k for c in configs.values() for k in c})
    keep = pd.Series(True, index=frame.index)
    for key, wanted in selector.conditions:
        column = "eval_mode" if key == "mode" else key
        if column in frame.columns:
            keep &= _matching(frame[column], wanted)
        elif key in penalties:
            keep &= (frame["time_penalty_name"].astype(str) == key) & _matching(
                frame["time_penalty"], wanted
            )
        elif key in config_keys or f"method_config.{key}" in config_keys:
            full = key if key in config_keys else f"method_config.{key}"
            chosen = [e for e, config in configs.items() if _equal(config.get(full), wanted)]
            keep &= frame["experiment_id"].isin(chosen)
        else:
            allowed = ["mode", *sorted(penalties), "method", "depth", "split", "threshold"]
            raise ConfigError(
                f"{flag}: unknown key {key!r}; allowed: {', '.join(allowed)}, any result column "
                f"or config key (e.g. {', '.join(config_keys[:3])})"
            )
    return keep


@dataclass
class Side:
    """One side of a comparison: an experiment's rows on one split, mode and threshold."""

    label: str
    experiment_id: str
    rows: pd.DataFrame  # one row per seed
    note: str = ""

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.rows["seed"]]

    @property
    def accuracy(self) -> np.ndarray:
        return 100.0 * self.rows["accuracy"].to_numpy(dtype=float)

    @property
    def flops(self) -> float:
        return float(self.rows["flops_per_image_mean"].mean())

    @property
    def images(self) -> int:
        return int(self.rows["num_images"].iloc[0])

    @property
    def codes(self) -> list[str]:
        return sorted(set(map(str, self.rows.get("code_version", pd.Series(["unknown"])))))


def _label(row: pd.Series) -> str:
    name = row.get("time_penalty_name")
    penalty = f" {name} {row['time_penalty']:g}" if isinstance(name, str) and name.strip() else ""
    return f"{row['method_label']} d{int(row['depth'])}{penalty} ({row['eval_mode']})"


def _blank_threshold(data: pd.DataFrame) -> pd.DataFrame:
    """``threshold`` with missing values as empty strings (as the aggregated table has them)."""
    threshold = data["threshold"].astype(object)
    return data.assign(threshold=threshold.where(threshold.notna(), ""))


def select_side(frame: pd.DataFrame, selector: Selector, flag: str, split: str) -> Side:
    """The rows of exactly one experiment, mode, execution and threshold on ``split``; the
    experiment's paper-table mode when the selector names none, the default threshold when it
    names none."""
    data = frame[(frame["split"] == split) & _match(frame, selector, flag)]
    return _side_of(data, selector, flag, split)


def _side_of(data: pd.DataFrame, selector: Selector, flag: str, split: str) -> Side:
    """:func:`select_side` of the rows ``data`` that ``selector`` matched on ``split``."""
    keys = {k for k, _ in selector.conditions}
    if "threshold" not in keys:
        data = data[_at_default_threshold(_blank_threshold(data))]
    if data.empty:
        raise ConfigError(f"{flag} {selector.text!r}: no row on the {split} split matches")
    experiments = data["experiment_id"].unique()
    if len(experiments) > 1:
        labels = sorted({_label(r) for _, r in data.drop_duplicates("experiment_id").iterrows()})
        raise ConfigError(
            f"{flag} {selector.text!r} matches {len(experiments)} experiments "
            f"({'; '.join(labels[:6])}); add keys that tell them apart"
        )
    note = ""
    if "mode" not in keys and "eval_mode" not in keys and data["eval_mode"].nunique() > 1:
        data = data.loc[_default_mode_rows(_blank_threshold(data)).index]
        note = f"mode {data['eval_mode'].iloc[0]} (the experiment's paper-table mode)"
    if data["execution"].nunique() > 1:
        data = data[data["execution"] == sorted(data["execution"].unique())[0]]
    data = data.sort_values("seed").drop_duplicates("seed")
    return Side(_label(data.iloc[0]), str(experiments[0]), data.reset_index(drop=True), note)


#: Config keys a side's label already names (method, depth) or that differ with the method.
_LABELLED = ("method", "model.depth")


def _differing_keys(trees: list[dict[str, Any]]) -> set[str]:
    """Keys in which some flattened tree differs from the first (so from another): linear."""
    return {k for t in trees for k in {*t, *trees[0]} if t.get(k) != trees[0].get(k)}


def tell_apart(sides: list[Side]) -> None:
    """Append to each side's label the config fields, outside the method's own config, in
    which the sides differ (``optim.epochs=10``): labels that read alike name different
    experiments otherwise (two training budgets of one method)."""
    trees = [_flat_config(str(side.rows["experiment_config"].iloc[0])) for side in sides]
    keys = sorted(
        k
        for k in _differing_keys(trees)
        if k not in _LABELLED and not k.startswith("method_config.")
    )
    if not keys:
        return
    for side, tree in zip(sides, trees, strict=True):
        fields = ", ".join(f"{k}={tree.get(k)}" for k in keys)
        if f"[{fields}]" not in side.label:
            side.label = f"{side.label} [{fields}]"


def check_same_code(sides: list[Side], allow_mixed_code: bool) -> None:
    """All rows of the sides from one code version, unless ``allow_mixed_code``."""
    codes = sorted({c for s in sides for c in s.codes})
    if len(codes) > 1 and not allow_mixed_code:
        raise ConfigError(
            f"compare: the rows come from {len(codes)} code versions ({'; '.join(codes)}); "
            "they are not paired or pooled. Pass --allow-mixed-code to compare them anyway"
        )


# ----------------------------------------------------------------------------------- pairs
@dataclass
class PairComparison:
    """Two experiments paired by seed (see the module docstring)."""

    a: Side
    b: Side
    seeds: list[int]
    differences: list[float]
    t: inference.Interval | None
    bootstrap: inference.Interval | None
    bootstrap_note: str
    noise_se: float
    noise_half_width: float
    margin: float
    verdict: str
    basis: str
    seeds_needed: int | None
    codes: list[str] = field(default_factory=list)


def _correct(side: Side, seeds: list[int]) -> np.ndarray | None:
    """``[seeds, images]`` per-image correctness of the side's rows, or None if a run lacks it."""
    arrays = []
    for seed in seeds:
        row = side.rows[side.rows["seed"] == seed].iloc[0]
        key = row.get("per_image_key")
        if not isinstance(key, str) or not key:
            return None
        path = _run_folder(Path(str(row["source"])), row.get("trial_id")) / CORRECT_FILE
        try:
            with np.load(path) as stored:
                arrays.append(np.asarray(stored[key], dtype=float))
        except (OSError, KeyError, ValueError):
            return None
    if len({a.shape for a in arrays}) != 1:
        return None
    return np.stack(arrays)


def compare_pair(
    frame: pd.DataFrame,
    a: Selector,
    b: Selector,
    margin: float,
    split: str = "test",
    allow_mixed_code: bool = False,
) -> PairComparison:
    """A against B, paired by seed."""
    side_a, side_b = select_side(frame, a, "--a", split), select_side(frame, b, "--b", split)
    if side_a.experiment_id == side_b.experiment_id and side_a.rows.equals(side_b.rows):
        raise ConfigError("compare: --a and --b select the same rows")
    tell_apart([side_a, side_b])
    check_same_code([side_a, side_b], allow_mixed_code)
    seeds = sorted(set(side_a.seeds) & set(side_b.seeds))
    if not seeds:
        raise ConfigError(
            f"compare: no seed is in both {side_a.label} (seeds {side_a.seeds}) and "
            f"{side_b.label} (seeds {side_b.seeds}); pairing needs common seeds"
        )
    acc_a = {s: v for s, v in zip(side_a.seeds, side_a.accuracy, strict=True)}
    acc_b = {s: v for s, v in zip(side_b.seeds, side_b.accuracy, strict=True)}
    differences = [float(acc_a[s] - acc_b[s]) for s in seeds]
    t = inference.t_interval(differences)
    correct_a, correct_b = _correct(side_a, seeds), _correct(side_b, seeds)
    bootstrap, note = None, ""
    if correct_a is None or correct_b is None:
        note = "no bootstrap: a run lacks per-image correctness (made before it was stored)"
    elif correct_a.shape != correct_b.shape:
        note = "no bootstrap: the two sides were evaluated on different images"
    else:
        bootstrap = inference.bootstrap_seeds_and_images(correct_a, correct_b)
    mean_accuracy = float(np.mean([*side_a.accuracy, *side_b.accuracy])) / 100
    noise_se, noise_half = inference.binomial_noise(mean_accuracy, side_a.images)
    basis_interval = inference.envelope(t, bootstrap)
    if len(seeds) < 2:
        # One seed: the bootstrap resamples test images only; the training noise is unmeasured,
        # so no verdict (an image-only interval would call seed noise a difference).
        basis_interval = None
        basis = "one seed: training noise unmeasured (an image-only interval decides nothing)"
    else:
        basis = basis_interval.method if basis_interval is not None else "no interval"
    return PairComparison(
        side_a,
        side_b,
        seeds,
        differences,
        t,
        bootstrap,
        note,
        noise_se,
        noise_half,
        margin,
        inference.verdict(basis_interval, margin),
        basis,
        inference.seeds_needed(differences, margin),
        sorted({*side_a.codes, *side_b.codes}),
    )


# ---------------------------------------------------------------- difference of differences
@dataclass
class DiffComparison:
    """``(A - B) - (C - D)``: how a paired gap changes between two conditions (e.g. two
    training budgets), each gap paired by seed within its condition, the two conditions'
    per-seed gaps independent (different trainings)."""

    first: PairComparison
    second: PairComparison
    interval: inference.Interval | None
    margin: float
    verdict: str
    seeds_needed: int | None
    codes: list[str] = field(default_factory=list)


def compare_difference(
    frame: pd.DataFrame,
    selectors: tuple[Selector, Selector, Selector, Selector],
    margin: float,
    split: str = "test",
    allow_mixed_code: bool = False,
) -> DiffComparison:
    """``(A - B) - (C - D)`` with the Welch t-interval of the difference of the two conditions'
    mean per-seed gaps (:func:`harness.inference.linear_interval` with weights 1, -1)."""
    a, b, c, d = selectors
    first = compare_pair(frame, a, b, margin, split, allow_mixed_code)
    second = compare_pair(frame, c, d, margin, split, allow_mixed_code)
    check_same_code([first.a, first.b, second.a, second.b], allow_mixed_code)
    tell_apart([first.a, first.b, second.a, second.b])
    gaps = [np.asarray(first.differences), np.asarray(second.differences)]
    interval = inference.linear_interval(
        [1.0, -1.0], gaps, "Welch t over the two conditions' per-seed gaps"
    )
    return DiffComparison(
        first,
        second,
        interval,
        margin,
        inference.verdict(interval, margin),
        inference.linear_seeds_needed([1.0, -1.0], gaps, margin),
        sorted({*first.codes, *second.codes}),
    )


# --------------------------------------------------------------------------------- vanilla
@dataclass
class Point:
    """One experiment of a curve: mean FLOPs and per-seed accuracies (points)."""

    label: str
    flops: float
    accuracy: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.accuracy.mean())


def vanilla_series(frame: pd.DataFrame, like: Side) -> list[Point]:
    """The vanilla experiments under the same data and budget as ``like``, by FLOPs."""
    data = frame[is_vanilla(frame)]
    first = like.rows.iloc[0]
    for column in _SAME_DATA:
        if column in data and column in like.rows and not data.empty:
            data = data[data[column].map(lambda v, w=first[column]: _same(v, w)).astype(bool)]
    points = []
    for _, group in data.groupby("experiment_id"):
        group = group.sort_values("seed").drop_duplicates("seed")
        points.append(
            Point(
                _label(group.iloc[0]),
                float(group["flops_per_image_mean"].mean()),
                100.0 * group["accuracy"].to_numpy(dtype=float),
            )
        )
    return sorted(points, key=lambda p: p.flops)


def _same(value: Any, other: Any) -> bool:
    if pd.isna(value) and pd.isna(other):
        return True
    return str(value) == str(other)


@dataclass
class VanillaComparison:
    """An experiment against the vanilla series interpolated at its FLOPs."""

    a: Side
    neighbours: list[Point]
    vanilla_accuracy: float
    difference: float
    interval: inference.Interval | None
    margin: float
    verdict: str
    note: str = ""


def compare_vanilla(
    frame: pd.DataFrame,
    a: Selector,
    margin: float,
    split: str = "test",
    allow_mixed_code: bool = False,
) -> VanillaComparison:
    """A against the vanilla depth series at A's mean FLOPs (linear interpolation between the
    two vanilla depths around it; outside the series' FLOPs range it is refused)."""
    side = select_side(frame, a, "--a", split)
    series = vanilla_series(frame, side)
    if len(series) < 2:
        raise ConfigError(
            f"compare: {side.label} has {len(series)} vanilla depth(s) under the same data and "
            "budget; interpolating at its FLOPs needs two"
        )
    vanilla_rows = frame[is_vanilla(frame) & (frame["split"] == split)]
    check_same_code([side, Side("vanilla", "", vanilla_rows)], allow_mixed_code)
    flops = side.flops
    if not series[0].flops <= flops <= series[-1].flops:
        raise ConfigError(
            f"compare: {side.label} runs {flops / 1e9:.4f} GFLOPs, outside the vanilla series' "
            f"{series[0].flops / 1e9:.4f}-{series[-1].flops / 1e9:.4f}; no extrapolation"
        )
    upper = next(i for i, p in enumerate(series) if p.flops >= flops)
    lo, hi = series[max(upper - 1, 0)], series[upper]
    w = 0.0 if hi.flops == lo.flops else (flops - lo.flops) / (hi.flops - lo.flops)
    vanilla = (1 - w) * lo.mean + w * hi.mean
    difference = float(side.accuracy.mean() - vanilla)
    n_a, n_lo, n_hi = len(side.accuracy), len(lo.accuracy), len(hi.accuracy)
    interval, note = None, ""
    if min(n_a, n_lo, n_hi) >= 2:
        se_a = float(side.accuracy.std(ddof=1) / math.sqrt(n_a))
        se_v = math.sqrt(
            ((1 - w) * lo.accuracy.std(ddof=1)) ** 2 / n_lo
            + (w * hi.accuracy.std(ddof=1)) ** 2 / n_hi
        )
        interval = inference.welch_interval(
            difference,
            se_a,
            n_a - 1,
            se_v,
            min(n_lo, n_hi) - 1,
            n_a,
            "Welch t, vanilla interpolated",
        )
    else:
        note = "no interval: a side has one seed"
    return VanillaComparison(
        side,
        [lo, hi],
        vanilla,
        difference,
        interval,
        margin,
        inference.verdict(interval, margin),
        note,
    )


# ---------------------------------------------------------------------------------- curves
@dataclass
class CurveComparison:
    """The mean gap between two accuracy/FLOPs curves over their common FLOPs range."""

    a_label: str
    b_label: str
    a: list[Point]
    b: list[Point]
    gap: float
    low_flops: float
    high_flops: float
    interval: inference.Interval | None
    margin: float
    verdict: str
    note: str = ""
    #: A - B at matched FLOPs inside the common range (both curves interpolated there).
    matched: list[MatchedPoint] = field(default_factory=list)
    #: Seeds per point the mean gap's interval would need for a clear verdict (None: none
    #: up to 1,000, or unknown).
    seeds_needed: int | None = None


@dataclass
class MatchedPoint:
    """``A - B`` at one FLOPs value, both curves linearly interpolated there."""

    flops: float
    difference: float
    interval: inference.Interval | None
    verdict: str


#: Where inside the common FLOPs range the matched-FLOPs differences are read (fractions).
MATCHED_FRACTIONS = (0.25, 0.5, 0.75)


def curve_sides(frame: pd.DataFrame, selector: Selector, flag: str, split: str) -> list[Side]:
    """The experiments a curve selector matches, each resolved like a single-experiment
    selector (paper-table mode, default threshold), by FLOPs."""
    data = frame[(frame["split"] == split) & _match(frame, selector, flag)]
    if data.empty:
        raise ConfigError(f"{flag} {selector.text!r}: no row on the {split} split matches")
    # each experiment's rows resolved alone (one pass over the frame, not one per point)
    sides = [
        _side_of(
            rows,
            Selector(selector.text, (*selector.conditions, ("experiment_id", eid))),
            flag,
            split,
        )
        for eid, rows in data.groupby("experiment_id", sort=False)
    ]
    # A curve's points differ in the time penalty only.
    trees = []
    for side in sides:
        tree = flatten(json.loads(side.rows["experiment_config"].iloc[0]))
        name = side.rows["time_penalty_name"].iloc[0]
        tree.pop(f"method_config.{name}", None)
        trees.append(tree)
    differing = sorted(_differing_keys(trees))
    if differing:
        raise ConfigError(
            f"{flag} {selector.text!r}: its experiments differ in {', '.join(differing[:4])}, "
            "not only in the time penalty; add keys that fix them"
        )
    return sorted(sides, key=lambda side: side.flops)


def compare_curves(
    frame: pd.DataFrame,
    a: Selector,
    b: Selector,
    margin: float,
    split: str = "test",
    allow_mixed_code: bool = False,
) -> CurveComparison:
    """Curve A against curve B (or the vanilla series): the mean of ``A - B`` over the common
    FLOPs range and ``A - B`` at matched FLOPs (:data:`MATCHED_FRACTIONS` of that range), each
    with the t-interval of a linear combination of the points' seed means
    (:func:`harness.inference.linear_interval`; the FLOPs of each point are its seed mean)."""
    sides_a = curve_sides(frame, a, "--a", split)
    points_a = [Point(side.label, side.flops, side.accuracy) for side in sides_a]
    if b.vanilla:
        points_b = vanilla_series(frame, sides_a[0])
        b_label = "vanilla depth series"
        vanilla_rows = frame[is_vanilla(frame) & (frame["split"] == split)]
        sides_b = [Side(b_label, "", vanilla_rows)]
    else:
        sides_b = curve_sides(frame, b, "--b", split)
        points_b = [Point(side.label, side.flops, side.accuracy) for side in sides_b]
        b_label = b.text
    check_same_code([*sides_a, *sides_b], allow_mixed_code)
    if len(points_a) < 2 or len(points_b) < 2:
        raise ConfigError(
            f"compare --curve: {a.text!r} has {len(points_a)} point(s) and {b_label!r} "
            f"{len(points_b)}; a curve needs two"
        )
    flops_a = [p.flops for p in points_a]
    flops_b = [p.flops for p in points_b]
    gap, low, high = inference.curve_gap(
        flops_a, [p.mean for p in points_a], flops_b, [p.mean for p in points_b]
    )
    if not math.isfinite(gap):
        raise ConfigError(
            f"compare --curve: the curves share no FLOPs range ({a.text!r}: "
            f"{min(flops_a) / 1e9:.4f}-{max(flops_a) / 1e9:.4f} GFLOPs, {b_label}: "
            f"{min(flops_b) / 1e9:.4f}-{max(flops_b) / 1e9:.4f})"
        )
    count = len(points_a)
    groups = [p.accuracy for p in [*points_a, *points_b]]
    method = (
        f"t over each point's seeds, Welch-Satterthwaite df ({len(groups)} points; the gap is "
        "linear in the point means, FLOPs taken at their seed means)"
    )

    def at(flops: float) -> Callable[[Sequence[float]], float]:
        def difference(means: Sequence[float]) -> float:
            return float(
                np.interp(flops, flops_a, means[:count]) - np.interp(flops, flops_b, means[count:])
            )

        return difference

    def mean_gap(means: Sequence[float]) -> float:
        return inference.curve_gap(flops_a, means[:count], flops_b, means[count:])[0]

    weights = inference.linear_weights(mean_gap, len(groups))
    interval = inference.linear_interval(weights, groups, method)
    note = "" if interval is not None else "no interval: a point has one seed"
    matched = []
    for fraction in MATCHED_FRACTIONS:
        flops = low + fraction * (high - low)
        point_weights = inference.linear_weights(at(flops), len(groups))
        point = inference.linear_interval(point_weights, groups, method)
        matched.append(
            MatchedPoint(
                flops,
                at(flops)([float(g.mean()) for g in groups]),
                point,
                inference.verdict(point, margin),
            )
        )
    return CurveComparison(
        a.text,
        b_label,
        points_a,
        points_b,
        gap,
        low,
        high,
        interval,
        margin,
        inference.verdict(interval, margin),
        note,
        matched,
        inference.linear_seeds_needed(weights, groups, margin),
    )


# ----------------------------------------------------------------------------------- entry
def _study_records(inputs: list[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, content)`` of the ``study.yaml`` beside or in each input (once each)."""
    records: dict[Path, dict[str, Any]] = {}
    for raw in inputs:
        folder = Path(raw) if Path(raw).is_dir() else Path(raw).parent
        record = folder / STUDY_FILE
        if record.is_file() and record not in records:
            records[record] = load_yaml(record, STUDY_FILE, before_key="trials")
    return list(records.items())


def declared_margin(
    inputs: list[str | Path], records: list[tuple[Path, dict[str, Any]]] | None = None
) -> tuple[float, str]:
    """The equivalence margin declared for the inputs: a study's ``equivalence_margin`` (from
    its preset, recorded in ``study.yaml``), else :data:`DEFAULT_MARGIN`; and where it came from.
    Two studies declaring different margins are an error."""
    found: dict[float, str] = {}
    for record, content in _study_records(inputs) if records is None else records:
        value = content.get("equivalence_margin")
        if value is not None:
            found[float(value)] = f"{record} (the preset's equivalence_margin)"
    if len(found) > 1:
        raise ConfigError(
            f"compare: the inputs declare different margins ({', '.join(map(str, found))}); "
            "give --margin"
        )
    if found:
        return next(iter(found.items()))
    return DEFAULT_MARGIN, "the harness default (no study declares equivalence_margin)"


def check_margin(margin: float) -> float:
    if not (math.isfinite(margin) and margin > 0):
        raise ConfigError(f"--margin {margin}: must be a positive number of accuracy points")
    return margin


def run_compare(
    inputs: list[str | Path],
    a: str,
    b: str,
    *,
    curve: bool = False,
    margin: float | None = None,
    split: str = "test",
    allow_mixed_code: bool = False,
    warn=None,
    minus: tuple[str, str] | None = None,
) -> tuple[PairComparison | VanillaComparison | CurveComparison | DiffComparison, str]:
    """Parse, load and compare (everything checked before any statistics); returns the
    comparison and where its margin came from. ``minus`` (C, D): the difference of
    differences ``(A - B) - (C - D)``."""
    selector_a, selector_b = parse_selector(a, "--a"), parse_selector(b, "--b")
    extra = None
    if minus is not None:
        extra = (parse_selector(minus[0], "--minus-a"), parse_selector(minus[1], "--minus-b"))
        if curve or any(s.vanilla for s in (selector_b, *extra)):
            raise ConfigError(
                "--minus-a/--minus-b: a difference of two paired gaps; not with --curve or vanilla"
            )
    if selector_a.vanilla:
        raise ConfigError("--a vanilla: put the vanilla series on the B side (--b vanilla)")
    if margin is None:
        margin, source = declared_margin(inputs)
    else:
        source = "--margin"
    check_margin(margin)
    frame = load_results(inputs, **({} if warn is None else {"warn": warn}))
    if split not in set(frame["split"]):
        raise ConfigError(
            f"--split {split}: not in the inputs; allowed: {', '.join(sorted(set(frame['split'])))}"
        )
    if extra is not None:
        result = compare_difference(
            frame, (selector_a, selector_b, *extra), margin, split, allow_mixed_code
        )
    elif curve:
        result = compare_curves(frame, selector_a, selector_b, margin, split, allow_mixed_code)
    elif selector_b.vanilla:
        result = compare_vanilla(frame, selector_a, margin, split, allow_mixed_code)
    else:
        result = compare_pair(frame, selector_a, selector_b, margin, split, allow_mixed_code)
    return result, source


# ---------------------------------------------------------------------------------- report
@dataclass
class Planned:
    """One comparison the report makes: its selectors, and its result or why it has none."""

    a: str
    b: str
    curve: bool
    split: str
    result: PairComparison | VanillaComparison | CurveComparison | None = None
    error: str = ""


def declared_comparisons(records: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The ``comparisons`` the studies declare (their presets', in ``study.yaml``)."""
    entries: list[dict[str, Any]] = []
    for _, content in records:
        for entry in content.get("comparisons") or []:
            if entry not in entries:
                entries.append(dict(entry))
    return entries


def default_comparisons(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Without declared ones: each adaptive method's curve (two or more penalties, one
    configuration otherwise) against the vanilla depth series, where the inputs hold one."""
    if not is_vanilla(frame).any():
        return []
    entries = []
    adaptive = frame[~is_vanilla(frame)]
    for method, group in adaptive.groupby("method", sort=True):
        if group["experiment_id"].nunique() >= 2:
            entries.append({"a": f"method={method}", "b": VANILLA, "curve": True})
    return entries


def report_comparisons(
    frame: pd.DataFrame, inputs: list[str | Path], allow_mixed_code: bool = False
) -> tuple[list[Planned], float, str]:
    """The report's comparisons (declared, else :func:`default_comparisons`), each computed or
    with the one-line reason it could not be; the margin and its source."""
    records = _study_records(inputs)
    margin, source = declared_margin(inputs, records)
    entries = declared_comparisons(records) or default_comparisons(frame)
    planned = []
    for entry in entries:
        item = Planned(
            entry["a"], entry["b"], bool(entry.get("curve", False)), entry.get("split", "test")
        )
        try:
            a, b = parse_selector(item.a, "a"), parse_selector(item.b, "b")
            if item.split not in set(frame["split"]):
                raise ConfigError(f"no {item.split} split in the inputs")
            if item.curve:
                item.result = compare_curves(frame, a, b, margin, item.split, allow_mixed_code)
            elif b.vanilla:
                item.result = compare_vanilla(frame, a, margin, item.split, allow_mixed_code)
            else:
                item.result = compare_pair(frame, a, b, margin, item.split, allow_mixed_code)
        except ConfigError as err:
            item.error = str(err)
        planned.append(item)
    return planned, margin, source
