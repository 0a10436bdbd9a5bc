"""Loading stored results: ``results.csv`` files into one frame of rows, each row's experiment
identity brought to the current config (:func:`canonical_identity`), and the per-image files of
the runs (:func:`load_per_image`).

Input a report cannot use (a file that is not a results table, a row without a stored config)
is skipped or reported alone; each such case is handed to ``warn`` as one line, which the CLI
prints (the default logs it).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import results
from harness.config import (
    RunConfig,
    experiment_id,
    experiment_identity,
    from_dict,
    load_yaml,
    to_dict,
)
from harness.errors import ConfigError, HarnessError
from harness.registry import get_method
from harness.store import (
    CONFIG_FILE,
    PER_IMAGE_FILE,
    PROVENANCE_FILE,
    RESULTS_FILE,
    STUDY_FILE,
    SUMMARY_FILE,
    TRIALS_DIR,
    code_version,
    read_json,
)

log = logging.getLogger(__name__)

#: Where the report's one-line warnings go: a callable taking the line.
Warn = Callable[[str], None]

#: Columns a results table must have to be reported.
REQUIRED_COLUMNS = ("method", "depth", "seed", "eval_mode", "accuracy")
#: Row-level keys: one experiment has one row per combination of these (the schema's ``key``
#: columns other than the experiment).
ROW_KEYS = [c.name for c in results.columns_aggregated("key") if c.name != "experiment_id"]


def _log_warning(message: str) -> None:
    log.warning(message)


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


def _read_table(path: Path, warn: Warn) -> pd.DataFrame | None:
    """The rows of one results file, or None (with a warning naming it) if it is not one."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        warn(f"report: skipping {path}: not a results table ({err})")
        return None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        warn(
            f"report: skipping {path}: lacks the column(s) {', '.join(missing)} of a results "
            "table (harness.results)",
        )
        return None
    if frame.empty:
        warn(f"report: skipping {path}: no rows")
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


def _canonical_cached(tree: dict[str, Any], cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """:func:`canonical_identity` of ``tree``, once per distinct tree in ``cache`` (the runs of
    one experiment share it; a study of thousands of runs has far fewer experiments)."""
    key = json.dumps(tree, sort_keys=True, default=str)
    if key not in cache:
        cache[key] = canonical_identity(tree)
    return cache[key]


def _with_experiment(frame: pd.DataFrame, path: Path, warn: Warn) -> pd.DataFrame:
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
    cache: dict[str, dict[str, Any]] = {}  # once per experiment, and its text once
    dumped: dict[int, str] = {}
    for tree, trial in zip(trees, frame.get("trial_id", [None] * len(frame)), strict=True):
        if tree is None:
            identity = {"unpooled_run": f"{path}:{trial}"}
            texts.append(json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str))
            continue
        identity = _canonical_cached(tree, cache)
        if id(identity) not in dumped:  # the cache keeps it alive: its id stays its own
            dumped[id(identity)] = json.dumps(
                identity, sort_keys=True, separators=(",", ":"), default=str
            )
        texts.append(dumped[id(identity)])
    if unknown:
        warn(
            f"report: {unknown} row(s) of {path} carry no configuration and none is stored "
            "beside it: each such run is reported on its own, never pooled as a seed",
        )
    frame = frame.copy()
    frame["experiment_config"] = texts
    ids = {t: experiment_id(json.loads(t)) for t in set(texts)}
    frame["experiment_id"] = [ids[t] for t in texts]
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


def _run_folder(path: Path, trial_id: Any) -> Path:
    """The run directory of a row of ``path`` (a study's table: ``trials/<trial_id>``)."""
    trial = path.parent / TRIALS_DIR / str(trial_id)
    return trial if trial.is_dir() else path.parent


def _with_code(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Every row's ``code_version``: as written, or for rows written before that column
    existed, from the run's ``provenance.json`` (:func:`harness.store.code_version`: the git
    commit and dirty flag of older runs); ``unknown`` when neither exists. A row evaluated by
    other code than it trained with (``eval_code_version``) reads ``<training code>, evaluated
    by <evaluation code>``."""
    frame = frame.copy()
    if "code_version" not in frame:
        frame["code_version"] = None
    missing = frame["code_version"].isna()
    if missing.any():
        cache: dict[Path, str] = {}
        trials = frame.get("trial_id", pd.Series([None] * len(frame), index=frame.index))
        for index in frame.index[missing]:
            folder = _run_folder(path, trials[index])
            if folder not in cache:
                try:
                    cache[folder] = code_version(read_json(folder / PROVENANCE_FILE))
                except HarnessError:
                    cache[folder] = "unknown"
            frame.loc[index, "code_version"] = cache[folder]
    if "eval_code_version" in frame:
        # re-evaluated rows (`pact-harness reevaluate`): the code is the pair, so that rows are
        # pooled and paired only when both their training and their evaluation code agree
        evaluated = frame["eval_code_version"]
        other = (
            evaluated.notna()
            & (evaluated.astype(str) != "")
            & (evaluated.astype(str) != frame["code_version"].astype(str))
        )
        frame.loc[other, "code_version"] = (
            frame.loc[other, "code_version"].astype(str)
            + ", evaluated by "
            + evaluated[other].astype(str)
        )
    return frame


def load_results(paths: Iterable[str | Path], warn: Warn = _log_warning) -> pd.DataFrame:
    """Every usable result row, each (experiment, seed, mode, threshold, execution, split)
    once: the same run reached through two inputs counts once, while two runs that merely
    share a directory name are told apart by their configurations."""
    frames = []
    for path in find_results(paths):
        frame = _read_table(path, warn)
        if frame is None:
            continue
        frame = _with_code(_with_experiment(_with_budget(frame, path), path, warn), path)
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


def _scalar(text: str) -> Any:
    """A CSV cell as ``pd.read_csv`` types a one-row column: bool, int, float, else the text."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _first_row(path: Path) -> dict[str, Any]:
    """The first row of a results table, typed as ``pd.read_csv(nrows=1,
    keep_default_na=False)`` would (empty cells stay ``""``), read with the csv module: the
    report reads one per run, and pandas costs ~3 ms a file."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        row = next(reader, None)
    if header is None or row is None:
        raise ValueError(f"{path} has no rows")
    return {k: _scalar(v) for k, v in zip(header, row, strict=False)}


#: The members of ``per_image.npz`` read only when a figure draws them: the spatial runs'
#: maps and thumbnails (~0.5 MB a run decompressed; a figure shows at most a dozen runs, a
#: 5,000-trial study has thousands).
LAZY_MEMBERS = ("units_map", "ponder_map", "thumbnails", "map_index")


def _read_npz(file: Path, skip: Sequence[str] = (), only: Sequence[str] | None = None) -> dict:
    """The arrays of an ``.npz`` archive, those named in ``skip`` left out (their names kept,
    valued :data:`_LAZY`), or ``only`` those named."""
    with open(file, "rb") as handle:  # np.load leaks its own on a corrupt zip
        loaded = np.load(handle, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it is not an .npz archive")
        with loaded as archive:
            return {
                name: _LAZY if name in skip else archive[name]
                for name in archive.files
                if only is None or name in only
            }


#: A member of a run's arrays not read yet (:class:`RunArrays`).
_LAZY = object()


class UnreadableRun(HarnessError):
    """A member of a run's ``per_image.npz`` failed to read when a figure asked for it."""

    def __init__(self, arrays: RunArrays, message: str) -> None:
        super().__init__(message)
        self.arrays = arrays


class RunArrays(dict):
    """One run's per-image arrays: the small ones read, the :data:`LAZY_MEMBERS` read from
    the file the first time one is asked for (all of them then). ``name in arrays`` never
    reads; a failed read raises :class:`UnreadableRun` (the report then drops the run)."""

    def __init__(self, file: Path, arrays: dict[str, Any]) -> None:
        super().__init__(arrays)
        self.file = file

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if value is _LAZY:
            names = [k for k, v in self.items() if v is _LAZY]
            try:
                self.update(_read_npz(self.file, only=names))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise UnreadableRun(
                    self, f"report: skipping {self.file}: {type(err).__name__}: {err}"
                ) from None
            value = super().__getitem__(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


def load_per_image(
    paths: Iterable[str | Path], warn: Warn = _log_warning
) -> list[tuple[str, dict]]:
    """``(label, arrays)`` of every run's ``per_image.npz`` under the inputs, label from its
    summary or results table (method, penalty, depth, mode, images evaluated); ``arrays`` also
    holds ``record`` (those summary and row fields) and ``experiment_config`` (the run's
    experiment identity, :func:`canonical_identity`; None when its row carries none)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        folder = path.parent if path.is_file() else path
        found.extend(sorted(folder.rglob(PER_IMAGE_FILE)))
    runs = []
    identities: dict[str, dict[str, Any]] = {}  # config text -> identity: once per experiment
    for file in dict.fromkeys(found):
        record: dict[str, Any] = {}
        summary_file = file.parent / SUMMARY_FILE
        try:
            if summary_file.exists():
                record = json.loads(summary_file.read_text())
            results_file = file.parent / RESULTS_FILE
            if results_file.exists():
                first = _first_row(results_file)
                record.update({k: v for k, v in first.items() if k not in record})
            arrays = RunArrays(file, _read_npz(file, skip=LAZY_MEMBERS))
            missing = sorted({"eval_mode", "units"} - set(arrays))
            if missing:
                raise ValueError(f"it lacks {', '.join(missing)}")
        # a corrupt archive (issue 25): skipped with a warning, like an unusable results.csv
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            warn(f"report: skipping {file}: {type(err).__name__}: {err}")
            continue
        penalty = record.get("time_penalty_name")
        label = f"{record.get('method_label') or record.get('method', file.parent.name)}"
        label += f" d{record.get('depth', '?')}"
        if penalty:
            label += f" {penalty}={float(record.get('time_penalty')):g}"
        label += f" s{record.get('seed', '?')} ({arrays['eval_mode']}, {len(arrays['units'])} "
        label += "test imgs)"
        arrays["adaptive"] = bool(penalty)
        # the run's row fields and its experiment (for figure titles that tell runs apart)
        arrays["record"] = record
        try:
            tree = json.loads(record.get("experiment_config") or "null")
        except (TypeError, json.JSONDecodeError):
            tree = None
        arrays["experiment_config"] = (
            _canonical_cached(tree, identities) if isinstance(tree, dict) else None
        )
        runs.append((label, arrays))
    return runs
