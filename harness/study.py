"""Studies without Ray: plan, check, record and summarise a preset's grid of trials.

A study is the explicit list of trials a preset expands to (:mod:`harness.presets`); each trial
is one :func:`harness.train.run_trial` (train, evaluate every mode, count FLOPs) in its own run
directory. The study folder holds::

    study.yaml          the study's identity: preset name and every resolved trial config
    results.csv         every trial x evaluation-mode row (harness.store schema), rewritten
                        atomically after each launch
    trials.csv          one row per trial: status, accuracy, FLOPs, Ray node, GPU ids, device,
                        failures; rewritten at most every 30 s while a launch runs, and at
                        its end
    trials.events.jsonl the trials' state changes since trials.csv was last written (read
                        back by the next write: a killed driver loses none)
    trials/<trial>/     the run directories (config, checkpoint, metrics, results, summary)
    ray/launch-NNN/     the Ray Tune experiment of each launch (Tune checkpoints, error logs)

This module holds everything about a study that needs no Ray: the options and the planned
study, planning and its checks (trials, resources, data), the study's identity and folder
(record, differences, lock), the two tables, run-directory checkpoints (epoch; restoring a
Tune checkpoint's files), the dry-run plan and the outcome summary (as lines, which the command
line prints). It never imports ray; :mod:`harness.grid` runs the trials on Ray Tune.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness import store
from harness.config import config_diff, config_identity, load_yaml, parse_overrides, set_dotted
from harness.data import (
    count_classes,
    data_root_fingerprint,
    detect_format,
    load_torchvision_cifar10,
    resolve_data_root,
)
from harness.errors import ConfigError, DataError, HarnessError
from harness.evaluate import plan_evaluations
from harness.models import build_model
from harness.presets import PRESET_DIR, Preset, Trial, expand, load_preset
from harness.registry import get_method
from harness.runs import (
    check_torchvision_source,
    init_from_source,
    is_torchvision_source,
    trial_columns,
)

STUDY_FILE = store.STUDY_FILE  # the study folder's names live in harness.store
TRIALS_DIR = store.TRIALS_DIR
TRIALS_TABLE = "trials.csv"
#: The state changes of the running launch's trials since ``trials.csv`` was last written.
TRIALS_EVENTS = "trials.events.jsonl"
#: A running launch rewrites ``trials.csv`` at most this often (seconds; and at its end).
TRIALS_WRITE_EVERY_S = 30.0
RAY_DIR = "ray"
LOCK_FILE = store.LOCK_FILE
DEFAULT_PRESET = "cpu-mini"
#: The exit status of a grid whose Ray cluster went away mid-study (``--resume`` continues it).
CLUSTER_LOST_STATUS = 3
#: The exit status of a grid stopped because a write failed for lack of space (a full disk, a
#: quota, a file-size limit): free space, then ``--resume`` continues it.
DISK_FULL_STATUS = 4
#: The errors of a write that failed for lack of space, and how their messages say it (Ray and
#: pyarrow re-raise them as text).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
DISK_FULL_TEXTS = (
    *(os.strerror(code) for code in DISK_FULL_ERRNOS),
    *(f"[errno {code}]" for code in DISK_FULL_ERRNOS),
)
#: A study folder with less free space than this after a failed write counts as full.
LOW_SPACE_BYTES = 1 << 20
#: Run-directory files mirrored into every Tune checkpoint (the checkpoint itself last).
CHECKPOINTED_FILES = (
    store.CONFIG_FILE,
    store.PROVENANCE_FILE,
    store.METRICS_FILE,
    store.CHECKPOINT_FILE,
)

log = logging.getLogger(__name__)


@dataclass
class GridOptions:
    """What ``pact-harness grid`` was asked to do (the CLI flags, as values)."""

    preset: str = DEFAULT_PRESET
    overrides: list[str] = field(default_factory=list)
    out: str | None = None
    data_root: str | None = None
    address: str | None = None
    resume: bool = False
    download: bool = False
    dry_run: bool = False
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int | None = None
    verbose: bool = False
    argv: list[str] = field(default_factory=list)
    # --dry-run only: the machine to size the study for (--gpus N [--cpus M]; else --address,
    # else this machine) and --estimate with its --throughput file (harness.estimate).
    estimate: bool = False
    gpus: int | None = None
    cpus: float | None = None
    throughput: str | None = None


@dataclass
class Study:
    """A planned study: the preset, its trials and where they live."""

    preset: Preset
    trials: list[Trial]
    folder: Path
    download: bool = False  # fetch CIFAR-10 into the data root before the trials start
    #: The data root's fingerprint (``npz:3f2a9c01b2de/10c``, see
    #: :func:`harness.data.data_root_fingerprint`); None until data to be downloaded is there.
    data_fingerprint: str | None = None

    def run_dir(self, trial: Trial | str) -> Path:
        """The run directory of a trial."""
        name = trial if isinstance(trial, str) else trial.name
        return self.folder / TRIALS_DIR / name

    def finished(self) -> list[str]:
        """Names of trials whose run directory holds results and a summary."""
        return [t.name for t in self.trials if is_finished(self.run_dir(t))]


@dataclass
class GridOutcome:
    """What a launch did: trial names by status, Ray node of each trial run now, the tables."""

    study: Study
    finished: list[str]
    failed: dict[str, str]
    unfinished: list[str]
    node_ids: dict[str, str]
    results_path: Path | None
    seconds: float
    #: Why the launch ended before its trials did: ``"cluster"`` (the Ray cluster went away
    #: under the driver), ``"disk"`` (a write failed for lack of space: :func:`write_fault`),
    #: ``"SIGINT"`` or ``"SIGTERM"``; None when it ran to its end.
    stopped: str | None = None
    #: What the driver saw when it stopped (the lost cluster's address and the Ray error).
    stop_detail: str = ""
    #: The command that continues this study (:func:`resume_command`).
    resume: str = ""
    #: The trials this launch left running, marked ``interrupted`` in ``trials.csv``.
    interrupted: list[str] = field(default_factory=list)
    #: Why ``trials.csv`` / ``results.csv`` could not be written at the end ("" if they were):
    #: they may be stale, and ``--resume`` re-checks every run directory.
    tables_stale: str = ""

    @property
    def complete(self) -> bool:
        """Every trial finished."""
        return not self.failed and not self.unfinished


def is_finished(run_dir: Path) -> bool:
    """A run directory of a finished trial (evaluated, a readable summary written); one whose
    summary is unreadable is not, so ``--resume`` runs it again, which re-evaluates its
    checkpoint and rewrites the summary."""
    if not (run_dir / store.RESULTS_FILE).is_file():
        return False
    try:
        return isinstance(store.read_json(run_dir / store.SUMMARY_FILE), dict)
    except HarnessError:
        return False


# ------------------------------------------------------------------------------------ planning


def plan_study(options: GridOptions) -> Study:
    """Load the preset with ``--set`` and flag overrides, expand and validate every trial."""
    overrides = parse_overrides(options.overrides)
    flags = {
        "resources.cpu": options.cpus_per_trial,
        "resources.gpu": options.gpus_per_trial,
        "max_concurrent": options.max_concurrent,
        "max_failures": options.max_failures,
    }
    for key, value in flags.items():
        if value is not None:
            set_dotted(overrides, key, value)
    preset = load_preset(options.preset, overrides)
    if preset.init_from == "required":
        raise ConfigError(
            f"preset {preset.name} fine-tunes from a trained vanilla network: pass "
            "--set init_from=RUN_DIR (a finished run with the same backbone)"
        )
    if preset.init_from and not is_torchvision_source(preset.init_from):
        preset = dataclasses.replace(preset, init_from=str(Path(preset.init_from).resolve()))
    trials = expand(preset)
    download = options.download or bool(preset.base.get("data", {}).get("download"))
    root = _data_root(preset.base, options.data_root, download)
    # Trials never download: the driver fetches once, so concurrent trials cannot race.
    data = {"root": root, "download": False}
    trials = [
        dataclasses.replace(t, config={**t.config, "data": {**t.config["data"], **data}})
        for t in trials
    ]
    if download and {t.config["model"]["dataset"] for t in trials} != {"cifar10"}:
        raise ConfigError("--download fetches CIFAR-10 only; this study uses another dataset")
    _check_trials(trials, download)
    _check_resources_request(preset, trials)
    folder = Path(options.out or Path("runs") / "grid" / preset.name).expanduser().resolve()
    study = Study(preset, trials, folder, download)
    study.data_fingerprint = study_data_fingerprint(study)
    return study


def study_data_fingerprint(study: Study) -> str | None:
    """The fingerprint of the study's data root (every trial reads the same root), or None
    when it is still to be downloaded."""
    cfg = study.trials[0].run_config
    try:
        return data_root_fingerprint(cfg.model.dataset, cfg.data)
    except DataError:
        if study.download:
            return None
        raise


def _data_root(base: Mapping[str, Any], data_root: str | None, download: bool) -> str:
    """The data root (flag, else the preset's, else $PACT_DATA_ROOT) as an absolute path, checked
    now: trials run in Ray workers, whose working directory and environment are not the user's."""
    root = resolve_data_root(data_root or (base.get("data") or {}).get("root"))
    if not download:
        detect_format(root)  # a clear DataError now rather than in every trial
    return str(root)


def fetch_data(study: Study, emit: Callable[[str], None] = log.info) -> None:
    """``--download``: fetch CIFAR-10 into the data root unless a dataset is already there
    (``emit`` says so first: the download takes a while)."""
    root = Path(study.trials[0].config["data"]["root"])
    try:
        detect_format(root)
        return
    except DataError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    emit(f"downloading CIFAR-10 into {root}")
    load_torchvision_cifar10(root, download=True)


def _check_trials(trials: list[Trial], download: bool) -> None:
    """Build each distinct model once and do what its trial will do before training: plan the
    evaluation modes and load the ``init_from`` weights (bad depths, variants, modes and
    initialising runs fail here, not in every trial). A model initialised from other weights
    is built with the class count the trial will find in its data (an ImageNet subset has
    fewer than 1000), read from the data root unless it is still to be downloaded (CIFAR-10)."""
    seen: set[str] = set()
    for trial in trials:
        keys = ("method", "method_config", "model", "eval")
        key = json.dumps([trial.init_from] + [trial.config[k] for k in keys])
        if key in seen:
            continue
        seen.add(key)
        cfg = trial.run_config
        try:
            classes = None
            if trial.init_from and cfg.model.num_classes is None and not download:
                classes = count_classes(cfg.model.dataset, cfg.data)
            model = _model_to_check(cfg, classes, trial.init_from)
            plan_evaluations(model, cfg.eval)
            if is_torchvision_source(trial.init_from):
                # checked here, loaded by each trial (torch's cache keeps one download)
                check_torchvision_source(model, trial.init_from, cfg)
            elif trial.init_from:
                init_from_source(model, trial.init_from, cfg)
        except HarnessError as err:
            raise ConfigError(f"trial {trial.name}: {err}") from None


def _model_to_check(cfg: Any, classes: int | None, init_from: str | None) -> torch.nn.Module:
    """``cfg``'s model as :func:`_check_trials` needs it: on the meta device (structure only,
    no storage and no weight initialisation: a 5,000-trial plan built 1,000 models in ~40 s
    with real weights) unless weights are to be loaded into it. A constructor that needs real
    tensors (a plug-in's ``.item()``) fails on meta for that reason alone, so the model is then
    built for real, where a genuine error raises as before; a ``HarnessError`` (a config the
    method refuses) is the check's answer either way."""
    if not init_from:
        try:
            with torch.device("meta"):
                return build_model(cfg, num_classes=classes)
        except HarnessError:
            raise
        except Exception:  # noqa: BLE001 - meta-only failure: the real build below decides
            pass
    return build_model(cfg, num_classes=classes)


def _check_resources_request(preset: Preset, trials: list[Trial]) -> None:
    """The device the trials ask for must match the GPUs they ask Ray for (Ray hides GPUs
    from a trial that asked for none)."""
    gpu, devices = preset.resources["gpu"], {t.config["device"] for t in trials}
    if gpu > 0 and "cpu" in devices:
        raise ConfigError(
            f"resources.gpu={gpu:g} but the trials run with device=cpu; "
            "set device=auto (or cuda) or ask for gpu: 0"
        )
    if gpu == 0 and "cuda" in devices:
        raise ConfigError(
            "device=cuda but resources.gpu=0, and Ray hides GPUs from trials that ask for "
            "none: pass --gpus-per-trial (fractions allowed) or set device=auto"
        )


# ----------------------------------------------------------------------------- study identity


def study_record(study: Study) -> dict[str, Any]:
    """The content of ``study.yaml``."""
    return {
        "preset": study.preset.name,
        "description": study.preset.description,
        "source": study.preset.source,
        # declared before any result: what the report and compare call equivalent, and compare
        "equivalence_margin": study.preset.equivalence_margin,
        "comparisons": [dict(c) for c in study.preset.comparisons],
        # what the data was (files, class count): a study is never grown on other data
        "data_fingerprint": study.data_fingerprint,
        "trials": [
            {"name": t.name, "init_from": t.init_from, "config": t.config} for t in study.trials
        ],
    }


def study_differences(stored: Mapping[str, Any], study: Study) -> tuple[list[str], list[str]]:
    """Compare the study stored in a folder with ``study``: (differences, added).

    ``differences`` make it another study (another preset, a stored trial missing now or
    configured differently); ``added`` names the trials that ``study`` adds to the stored
    one (the same study grown: more seeds, penalties or variants).
    """
    out = []
    if stored.get("preset") != study.preset.name:
        out.append(f"preset {stored.get('preset')!r} (stored) != {study.preset.name!r} (now)")
    margin = stored.get("equivalence_margin")
    if margin is not None and float(margin) != study.preset.equivalence_margin:
        out.append(
            f"equivalence_margin {margin} (stored) != {study.preset.equivalence_margin} (now): "
            "a margin is declared before the results, not changed after them"
        )
    old = {t["name"]: config_identity(t["config"], True) for t in stored.get("trials", [])}
    new = {t.name: config_identity(t.config, True) for t in study.trials}
    if only := sorted(set(old) - set(new)):
        out.append(f"{len(only)} trial(s) only in the stored study ({', '.join(only[:3])})")
    for name in sorted(set(old) & set(new)):
        differences = config_diff(old[name], new[name])
        if differences:
            out.append(f"trial {name}: {differences[0]}")
    return out, [t.name for t in study.trials if t.name not in old]


def check_study_data(folder: Path, stored: str | None, study: Study) -> None:
    """A study on other data is another study: one line naming both fingerprints. A study made
    before data fingerprints (none stored) continues with a warning and records the current
    one when it is next written (it grows); data still to be downloaded is checked after."""
    now = study.data_fingerprint
    if stored is None:
        log.warning(
            "--out %s: %s records no data fingerprint (made before they were recorded); "
            "continuing without checking that its trials ran on this data (%s)",
            folder,
            STUDY_FILE,
            now,
        )
        return
    if now is not None and stored != now:
        raise ConfigError(
            f"--out {folder} holds a different study: it ran on other data (data fingerprint "
            f"{stored} (stored) != {now} (now)); give the --data-root it ran on, or another --out"
        )


def check_downloaded_data(study: Study, held: str) -> None:
    """After ``--download`` fetched the data: fingerprint it, and check it against the stored
    study's (``held``: what :func:`check_study_folder` found)."""
    if study.data_fingerprint is not None:
        return
    study.data_fingerprint = study_data_fingerprint(study)
    if held != "new":
        stored = load_yaml(study.folder / STUDY_FILE, f"--out {study.folder}: {STUDY_FILE}")
        check_study_data(study.folder, stored.get("data_fingerprint"), study)


def check_study_folder(study: Study, resume: bool) -> str:
    """Check the folder against the study; returns what the folder holds for it.

    ``"new"``: no study yet (a new or empty folder). ``"same"``: this study. ``"grown"``: this
    study with fewer trials (it was started with fewer seeds, penalties or variants; with
    ``--resume`` the stored trials are kept and the added ones run). A folder with another
    study, with files but no study, or holding this study without ``--resume`` is an error.
    ``--resume`` on a new or empty folder starts the study, so that one command (``make run``)
    both starts and continues it.
    """
    folder, record = study.folder, study.folder / STUDY_FILE
    store.check_writable_dir(folder, "--out")  # below a file, read-only: before Ray starts
    if not record.is_file():
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
        leftovers = sorted(n for n in names if not n.startswith("."))
        if leftovers:
            raise ConfigError(
                f"--out {folder} is not empty and holds no study ({', '.join(leftovers[:3])}); "
                "choose an empty or new folder"
            )
        return "new"
    stored = load_yaml(record, f"--out {folder}: {STUDY_FILE}")
    check_study_data(folder, stored.get("data_fingerprint"), study)
    differences, added = study_differences(stored, study)
    if differences:
        raise ConfigError(
            f"--out {folder} holds a different study: "
            + "; ".join(differences[:4])
            + ". Choose another --out, or the preset and --set values it was started with"
        )
    if not resume:
        grown = f" with {len(added)} trial(s) fewer" if added else ""
        raise ConfigError(
            f"--out {folder} already holds this study{grown}; add --resume to continue it "
            "(finished trials are kept)"
        )
    return "grown" if added else "same"


def study_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on the study folder: two drivers must not run one study."""
    return store.folder_lock(
        folder,
        lambda holder: f"--out {folder}: another grid process ({holder}) is running this study",
    )


# ------------------------------------------------------------------------------------- tables


def gather_results(study: Study) -> Path | None:
    """Write ``results.csv``: the rows of every finished trial, each trial once (atomic)."""
    tables = [study.run_dir(name) / store.RESULTS_FILE for name in study.finished()]
    return store.gather_results_csv(study.folder / store.RESULTS_FILE, tables)


#: Keys of a trials.csv row that a launch learns (the rest come from the run directory);
#: ``seconds``: the wall time of the trial's last attempt in the grid, from its start to its
#: end as the driver saw them (Ray's start of the trial's worker included).
LAUNCH_KEYS = ("node_id", "gpu_ids", "device", "failures", "error", "seconds")


def _stored_trials(study: Study) -> dict[str, dict[str, Any]]:
    """What the study folder knows per trial from earlier writes: ``trials.csv`` with the state
    changes logged after it was last written (``trials.events.jsonl``: a driver killed between
    two writes of the table loses nothing of the trials that changed state before)."""
    path, events = study.folder / TRIALS_TABLE, study.folder / TRIALS_EVENTS
    previous: dict[str, dict[str, Any]] = {}
    if path.is_file():
        old = pd.read_csv(path, keep_default_na=False, dtype=str)
        previous = {row["trial_id"]: row for row in old.to_dict("records")}
    for event in store.read_jsonl(events):
        name = event.pop("trial", None)
        if name is not None:
            previous.setdefault(str(name), {}).update(event)
    return previous


def _static_columns(trial: Trial) -> dict[str, Any]:
    columns = trial_columns(trial.run_config, get_method(trial.config["method"]), trial.name)
    keys = ("trial_id", "method", "depth", "time_penalty_name", "time_penalty", "seed")
    return {key: columns[key] for key in keys}


def _trial_row(
    study: Study,
    trial: Trial,
    static: Mapping[str, Any],
    previous: Mapping[str, Any],
    launch: Mapping[str, Any],
) -> dict[str, Any]:
    """One row of ``trials.csv``: the trial's grid values (``static``), its state from its run
    directory if finished, else from what this ``launch`` learnt, else from the run directory
    (diverged, unreadable summary), else from what the folder knew before (``previous``)."""
    row: dict[str, Any] = dict(static)
    run_dir = study.run_dir(trial)
    from_run: dict[str, Any] = {}
    if (run_dir / store.FAILED_FILE).is_file():
        with contextlib.suppress(HarnessError):
            failure = store.read_json(run_dir / store.FAILED_FILE)
            from_run = {"status": "failed", "error": failure.get("error", "failed")}
    summary: dict[str, Any] = {}
    if is_finished(run_dir):
        summary = store.read_json(run_dir / store.SUMMARY_FILE)
    elif (run_dir / store.SUMMARY_FILE).is_file():
        try:
            store.read_json(run_dir / store.SUMMARY_FILE)
        except HarnessError as err:
            from_run = {"status": "unreadable summary", "error": str(err)}
    known = {**previous, **from_run, **launch}
    row["status"] = "finished" if summary else known.get("status") or "pending"
    row["test_accuracy"] = summary.get("test_accuracy", "")
    row["flops_per_image_mean"] = summary.get("flops_per_image_mean", "")
    for key in LAUNCH_KEYS:
        row[key] = known.get(key, "")
    return row


class TrialsTable:
    """``trials.csv`` kept in memory while a launch runs, at O(1) cost per state change.

    Built from the folder (:func:`_stored_trials`, every run directory read once) and written at
    once; then :meth:`changed` re-reads only the changed trial's run directory, appends the
    change to ``trials.events.jsonl`` (one line: a killed driver loses nothing) and rewrites
    ``trials.csv`` at most every ``every_s`` seconds (rewriting n rows at each of a grid's 2n
    state changes made its bookkeeping O(n^2)); :meth:`write` writes it now and empties the
    log, which the table then holds. ``launch`` holds what this launch learnt per trial
    (status, node_id, failures, error), over the stored values; a run directory with
    ``failed.json`` (training diverged) says failed, with its error, unless this launch knows
    better; one with an unreadable summary is reported as such.
    """

    def __init__(
        self,
        study: Study,
        launch: Mapping[str, Mapping[str, Any]] | None = None,
        every_s: float = TRIALS_WRITE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.study, self.every_s, self.clock = study, every_s, clock
        self.path = study.folder / TRIALS_TABLE
        self.events = study.folder / TRIALS_EVENTS
        self.previous = _stored_trials(study)
        self.trials = {t.name: t for t in study.trials}
        self.static = {t.name: _static_columns(t) for t in study.trials}
        launch = launch or {}
        self.rows = {name: self._row(name, launch.get(name, {})) for name in self.trials}
        self.written = -math.inf

    def _row(self, name: str, record: Mapping[str, Any]) -> dict[str, Any]:
        previous = self.previous.get(name, {})
        return _trial_row(self.study, self.trials[name], self.static[name], previous, record)

    def changed(self, name: str, record: Mapping[str, Any]) -> None:
        """Trial ``name`` changed state; ``record``: all this launch learnt about it."""
        if name not in self.trials:
            return
        store.append_jsonl(self.events, {"trial": name, **record})
        self.rows[name] = self._row(name, record)
        if self.clock() - self.written >= self.every_s:
            self.write()

    def write(self) -> Path:
        """Write ``trials.csv`` (atomic), then empty the event log it now holds."""
        frame = pd.DataFrame([self.rows[t.name] for t in self.study.trials])
        store.atomic_write_text(self.path, frame.to_csv(index=False))
        with contextlib.suppress(FileNotFoundError):
            self.events.unlink()
        self.written = self.clock()
        return self.path


def write_trials_table(study: Study, launch: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``trials.csv`` now: per trial its grid values, status, accuracy, FLOPs, node, the
    GPU ids Ray gave it and the device it trained on, failures (:class:`TrialsTable`, which a
    running launch keeps instead). ``launch`` holds what this launch learnt per trial; trials
    not run now keep the values of the previous table and of the state changes logged after
    it."""
    return TrialsTable(study, launch).write()


# ---------------------------------------------------------------------------- run directories


def checkpoint_epoch(folder: Path) -> int:
    """The epoch of ``folder/checkpoint.pt`` (0 if missing or unreadable); reads no weights."""
    path = folder / store.CHECKPOINT_FILE
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint counts as none
        return 0


def restore_run_dir(source: Path, run_dir: Path) -> bool:
    """Copy a Tune checkpoint's files into ``run_dir`` if its epoch is newer; True if copied.

    The files go in one at a time through a temporary name and an atomic rename, the
    checkpoint last, so an interrupted copy leaves a run that resumes from an older epoch.
    """
    if checkpoint_epoch(source) <= checkpoint_epoch(run_dir):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINTED_FILES:
        if (source / name).is_file():
            tmp = run_dir / f".{name}.restore.tmp"
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, run_dir / name)
    return True


# ---------------------------------------------------------------------------- plan and outcome


def plan_lines(study: Study, finished: list[str]) -> list[str]:
    """The study as a list: one line per trial, with its status in the folder."""
    preset = study.preset
    lines = [f"study {preset.name}: {len(study.trials)} trials -> {study.folder}"]
    if preset.description:
        lines.append(f"  {preset.description}")
    res = preset.resources
    lines.append(
        f"  per trial: {res['cpu']:g} CPU, {res['gpu']:g} GPU; at most "
        f"{preset.max_concurrent or 'as resources allow'} at once; "
        f"up to {preset.max_failures} retries each"
    )
    for trial in study.trials:
        state = "finished" if trial.name in finished else "to run"
        cfg = trial.config
        lines.append(f"  {trial.name:<40} {state:<9} epochs={cfg['optim']['epochs']}")
    return lines


def resume_command(study: Study, argv: list[str] | None = None) -> str:
    """The command that continues ``study``: the grid command line that ran it (``argv``, as
    recorded in provenance) with ``--out`` made absolute and ``--resume`` added; without one,
    the preset's command (which then needs the same ``--set`` values)."""
    args = list(argv[1:]) if argv else []
    if "grid" not in args:
        preset = study.preset.source if study.preset.source else study.preset.name
        if Path(preset).parent == PRESET_DIR:
            preset = study.preset.name
        command = [
            "pact-harness",
            "grid",
            "--preset",
            preset,
            "--resume",
            "--out",
            str(study.folder),
        ]
        return shlex.join(command) + " (and the same --set values)"
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True  # its value too
        elif arg != "--resume" and not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join(["pact-harness", *kept, "--out", str(study.folder), "--resume"])


def _free_bytes(folder: Path) -> int | None:
    """The space left to an unprivileged writer on ``folder``'s file system (None: unknown)."""
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def write_fault(err: BaseException, folder: Path | None = None) -> str | None:
    """Why ``err`` is a write that failed for lack of space, or None if it is not.

    Any exception in its chain that is an ``OSError`` of :data:`DISK_FULL_ERRNOS` (its message
    and file), or whose message says so (Ray and pyarrow pass them on as text), counts; so does
    any error at all while ``folder`` (the study folder) has less than
    :data:`LOW_SPACE_BYTES` left (Ray's driver dies with an ``EOFError`` when the disk fills
    under its experiment state)."""
    chain = _chain(err)
    for exc in chain:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            where = f": {exc.filename}" if exc.filename else ""
            return f"{os.strerror(exc.errno)}{where}"
    for exc in chain:
        text = str(exc)
        if any(marker.lower() in text.lower() for marker in DISK_FULL_TEXTS):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return f"{type(exc).__name__}: {lines[-1][:300]}"
    free = _free_bytes(folder) if folder is not None else None
    if free is not None and free < LOW_SPACE_BYTES:
        said = _chain(err)[0]
        lines = [line.strip() for line in str(said).splitlines() if line.strip()]
        return (
            f"{os.strerror(errno.ENOSPC)} in {folder} ({free} bytes free); "
            f"{type(said).__name__}: {lines[-1][:200] if lines else ''}"
        ).rstrip(": ")
    return None


def trial_write_fault(error: str, folder: Path | None = None) -> str | None:
    """The cause if a trial's one-line ``error`` is a write that failed for lack of space: its
    message says so (no space left, a quota, a file-size limit), or it is a harness
    ``StorageError`` for a failed write while ``folder`` (the study folder) has less than
    :data:`LOW_SPACE_BYTES` left (torch reports a full disk as "unexpected pos"). The cause is
    the error without the advice after its first ``;`` (plus the space left); else None."""
    lowered = error.lower()
    cause = error.split("; ", 1)[0]
    if any(marker.lower() in lowered for marker in DISK_FULL_TEXTS):
        return cause
    if "storageerror: cannot write" not in lowered or folder is None:
        return None
    free = _free_bytes(folder)
    if free is None or free >= LOW_SPACE_BYTES:
        return None
    return f"{cause}; {os.strerror(errno.ENOSPC)}: {free} bytes free in {folder}"


def conclude_study(
    study: Study,
    records: dict[str, dict[str, Any]],
    seconds: float,
    *,
    stopped: str | None = None,
    stop_detail: str = "",
    argv: list[str] | None = None,
) -> GridOutcome:
    """Gather the tables and sort the trials into finished, failed and unfinished
    (:func:`outcome_lines` says what happened). A trial still running when the launch ended
    (``stopped``: the cluster went away, a write failed for lack of space, or a signal) is
    marked ``interrupted``. Tables that cannot be written for lack of space (every write is
    atomic: the old ones stay whole) make it a launch stopped by ``"disk"``, their outcome
    saying they may be stale (``tables_stale``); any other write error is raised."""
    finished = study.finished()
    failed = {
        name: rec.get("error", "failed")
        for name, rec in records.items()
        if rec.get("status") == "failed" and name not in finished
    }
    interrupted = []
    for name, rec in records.items():
        if rec.get("status") == "running" and name not in finished:
            rec["status"] = "interrupted"
            interrupted.append(name)
    unfinished = [t.name for t in study.trials if t.name not in finished and t.name not in failed]
    results_path, stale = None, ""
    for table in (TRIALS_TABLE, store.RESULTS_FILE):  # trials.csv first: it says what to do
        try:
            if table == TRIALS_TABLE:
                write_trials_table(study, records)
            else:
                results_path = gather_results(study)
        except (OSError, HarnessError) as err:
            fault = write_fault(err, study.folder)
            if fault is None:
                raise
            stale = stale or f"{table}: {fault}"
    if stale and stopped != "disk":
        stopped, stop_detail = "disk", stale
    outcome = GridOutcome(
        study=study,
        finished=finished,
        failed=failed,
        unfinished=unfinished,
        node_ids={k: v["node_id"] for k, v in records.items() if v.get("node_id")},
        results_path=results_path,
        seconds=seconds,
        # nothing to continue: it ran to its end (unless its tables are to be rewritten)
        stopped=stopped if unfinished or stale else None,
        stop_detail=stop_detail,
        resume=resume_command(study, argv),
        interrupted=sorted(interrupted),
        tables_stale=stale,
    )
    return outcome


def outcome_lines(outcome: GridOutcome) -> list[str]:
    """What a launch did: the counts, each failure, the tables and how to continue (a launch
    that stopped early ends with :func:`stop_line` instead)."""
    study = outcome.study
    total = len(study.trials)
    lines = [
        f"study {study.preset.name}: {len(outcome.finished)}/{total} trials finished, "
        f"{len(outcome.failed)} failed, {len(outcome.unfinished)} unfinished "
        f"({outcome.seconds:.0f} s)"
    ]
    lines += [f"  FAILED {name}: {error}" for name, error in outcome.failed.items()]
    if outcome.results_path is not None:
        lines.append(f"  results: {outcome.results_path}")
    lines.append(f"  trials:  {study.folder / TRIALS_TABLE}")
    if (outcome.unfinished or outcome.failed) and outcome.stopped is None:
        lines.append(f"  continue with: {outcome.resume or resume_command(study)}")
    return lines


def stop_line(outcome: GridOutcome) -> str | None:
    """The one line that ends a launch stopped early (None if it ran to its end): why, the
    study folder, the trials marked interrupted and the exact command that continues it."""
    if outcome.stopped is None:
        return None
    folder = outcome.study.folder
    n = len(outcome.interrupted)
    kept = (
        f"{n} running trial(s) marked interrupted in {TRIALS_TABLE} (their finished epochs "
        "are kept)"
        if n
        else "no trial was running"
    )
    resume = outcome.resume or resume_command(outcome.study)
    if outcome.stopped == "disk":
        stale = outcome.tables_stale
        if stale.startswith(TRIALS_TABLE):
            running = f"{n} running trial(s) stopped" if n else "no trial was running"
            kept = (
                f"{running} (finished epochs are kept), but {TRIALS_TABLE} could not be written "
                f"({stale.split(': ', 1)[1]}) and may be stale: --resume re-checks every "
                "trial's run directory"
            )
        elif stale:
            kept += f"; {stale.split(': ', 1)[0]} could not be written: --resume rewrites it"
        detail = f" ({outcome.stop_detail})" if outcome.stop_detail else ""
        return (
            f"error: out of disk space mid-study{detail}; study {folder}: {kept}; nothing is "
            f"half-written; free space, then continue with: {resume}"
        )
    if outcome.stopped == "cluster":
        detail = f" ({outcome.stop_detail})" if outcome.stop_detail else ""
        return (
            f"error: lost the Ray cluster mid-study{detail}; study {folder}: {kept}; "
            f"once a cluster is up again, continue with: {resume}"
        )
    return f"interrupted ({outcome.stopped}): study {folder}: {kept}; continue with: {resume}"
