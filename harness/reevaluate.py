"""``pact-harness reevaluate``: evaluate trained runs again with the current code, no training.

When evaluation code changes after a study trained (a new check, a new column, memory over the
whole pass), its checkpoints are evaluated again instead of trained again: the weights stay those
of the training commit, every evaluation output (``results.csv``, ``summary.json``, the per-image
files) is rewritten by the current code, atomically, and ``provenance.json`` keeps both: the
training code (``code_fingerprint``, unchanged) and, under ``evaluations``, each re-evaluation's
code, time and command line. The rows then carry ``eval_code_version`` beside ``code_version``,
and the report and ``compare`` pool or pair rows only when both agree (:mod:`harness.report`).

A path is a run directory (``config.yaml`` and a finished ``checkpoint.pt``) or a study folder
(``study.yaml``; each of its trials with a finished checkpoint is evaluated again, then the
study's ``results.csv`` is gathered again from them). Everything is checked before any run is
touched: a path that is neither, or a run whose checkpoint is unfinished, is one error line.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import store
from harness.config import load_yaml
from harness.errors import CheckpointError, ConfigError
from harness.rundir import check_checkpoint_fits
from harness.runs import load_run, read_run_config
from harness.train import evaluation_code_version, finish_run, prepare_run

#: Where each re-evaluation is recorded in ``provenance.json``.
EVALUATIONS_KEY = "evaluations"


@dataclasses.dataclass(frozen=True)
class Target:
    """What ``reevaluate`` was given: the run directories to evaluate again and, for a study
    folder, the folder whose ``results.csv`` is gathered again afterwards (with its trials in
    ``study.yaml``'s order)."""

    runs: list[Path]
    study: Path | None = None
    order: list[str] = dataclasses.field(default_factory=list)


def _finished(run_dir: Path) -> bool:
    """``run_dir`` holds a config and a checkpoint trained to its last epoch."""
    if not (run_dir / store.CONFIG_FILE).is_file():
        return False
    if not (run_dir / store.CHECKPOINT_FILE).is_file():
        return False
    cfg, checkpoint = load_run(run_dir)
    return int(checkpoint.get("epoch", -1)) >= cfg.optim.epochs


def plan_targets(paths: list[str | Path]) -> list[Target]:
    """Resolve the paths (nothing is written): a run directory with a finished checkpoint, or a
    study folder (its trials with one); anything else is a ``ConfigError`` naming the path."""
    targets = []
    for raw in paths:
        path = Path(raw)
        if (path / store.STUDY_FILE).is_file():
            record = load_yaml(path / store.STUDY_FILE, store.STUDY_FILE)
            order = [str(t["name"]) for t in record.get("trials") or []]
            runs = [
                path / store.TRIALS_DIR / name
                for name in order
                if (path / store.TRIALS_DIR / name).is_dir()
                and _finished(path / store.TRIALS_DIR / name)
            ]
            if not runs:
                raise ConfigError(
                    f"reevaluate {path}: no trial of this study has a finished checkpoint "
                    f"({store.TRIALS_DIR}/<trial>/{store.CHECKPOINT_FILE}); copies without "
                    "checkpoints cannot be evaluated again"
                )
            targets.append(Target(runs, path, order))
        elif (path / store.CONFIG_FILE).is_file():
            try:
                finished = _finished(path)
            except CheckpointError as err:
                raise ConfigError(f"reevaluate {path}: {err}") from None
            if not finished:
                raise ConfigError(
                    f"reevaluate {path}: its checkpoint is not trained to the last epoch; "
                    "finish it with `pact-harness train --out` first"
                )
            targets.append(Target([path]))
        else:
            raise ConfigError(
                f"reevaluate {path}: neither a run directory ({store.CONFIG_FILE} and "
                f"{store.CHECKPOINT_FILE}) nor a study folder ({store.STUDY_FILE})"
            )
    return targets


def reevaluate_run(
    run_dir: Path, data_root: str | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """Evaluate one finished run again with the current code; returns its new summary."""
    run_dir = Path(run_dir).resolve()
    cfg = read_run_config(run_dir)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data_root)))
    prepared = prepare_run(cfg)
    with store.folder_lock(run_dir, lambda holder: f"{run_dir} is in use by {holder}"):
        _, checkpoint = load_run(run_dir)
        path = run_dir / store.CHECKPOINT_FILE
        check_checkpoint_fits(checkpoint, prepared.model, None, path)
        prepared.model.load_state_dict(checkpoint["model"])
        provenance = store.read_json(run_dir / store.PROVENANCE_FILE)
        record = {
            "code_version": evaluation_code_version(prepared.model, provenance),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command_line": list(argv) if argv is not None else None,
        }
        provenance[EVALUATIONS_KEY] = [*(provenance.get(EVALUATIONS_KEY) or []), record]
        summary = finish_run(prepared, run_dir, checkpoint["train_seconds"])
        store.atomic_write_json(run_dir / store.PROVENANCE_FILE, provenance)
    return summary


def regather(target: Target) -> Path | None:
    """The study's ``results.csv`` again, from its trials' tables in ``study.yaml``'s order."""
    if target.study is None:
        return None
    trials = target.study / store.TRIALS_DIR
    tables = [trials / name / store.RESULTS_FILE for name in target.order]
    return store.gather_results_csv(
        target.study / store.RESULTS_FILE, [t for t in tables if t.is_file()]
    )


def reevaluate(
    paths: list[str | Path],
    data_root: str | None = None,
    argv: list[str] | None = None,
    emit: Callable[[str], None] = lambda line: None,
) -> list[Path]:
    """Every run of ``paths`` evaluated again (checked first: :func:`plan_targets`); returns
    the run directories."""
    targets = plan_targets(paths)
    done = []
    total = sum(len(t.runs) for t in targets)
    for target in targets:
        for run_dir in target.runs:
            tic = time.monotonic()
            summary = reevaluate_run(run_dir, data_root, argv)
            done.append(run_dir)
            emit(
                f"[{len(done)}/{total}] {run_dir}: test acc {summary.get('test_accuracy', 0):.4f} "
                f"({time.monotonic() - tic:.0f} s)"
            )
        gathered = regather(target)
        if gathered is not None:
            emit(f"gathered {gathered}")
    return done
