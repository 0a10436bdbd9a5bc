"""The run store: run directories, provenance, atomic writes and the results-row schema.

A run directory holds::

    config.yaml        the resolved configuration (method defaults filled in)
    provenance.json    code version + dirty flag, library versions, device, seed, command line
    metrics.jsonl      one JSON line per finished epoch (append-only)
    checkpoint.pt      model, optimizer, scheduler, RNG states, epoch (written atomically)
    summary.json       final metrics of the run (see :data:`SUMMARY_KEYS`)
    results.csv        one row per evaluation (mode x threshold x split), columns below
    per_image.npz      per-image units/ponder cost of the default mode (+ spatial ponder maps)

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import torch

from harness.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
PER_IMAGE_FILE = "per_image.npz"
RESULTS_FILE = "results.csv"

#: Keys every ``summary.json`` holds (adaptive methods add ``units_executed_mean`` and
#: ``units_executed_per_block``).
SUMMARY_KEYS = ("test_accuracy", "test_loss", "train_seconds", "method", "depth", "seed")

#: The results-row schema: one row per (trial, evaluation mode, threshold, split).
#: Column name -> meaning and unit. Accuracy is a fraction in [0, 1]; FLOPs follow the single
#: convention of ``harness.costs.flops`` (2 x multiply-accumulates of convolutions and linear
#: layers, halting branches included, BN/activations/pooling/additions/biases excluded).
RESULT_COLUMNS: dict[str, str] = {
    "trial_id": "run identifier (the run directory name)",
    "method": "registered method name",
    "variant": "backbone variant (sact, he, torchvision)",
    "dataset": "cifar10 or imagenet",
    "depth": "backbone depth (6n+2 for CIFAR; 50/101/152 for ImageNet)",
    "time_penalty_name": "name of the method's time-penalty field (tau, lambda) or empty",
    "time_penalty": "its value (0 for non-adaptive methods)",
    "seed": "training seed",
    "epochs": "training epochs",
    "num_train": "training images (after any subset)",
    "eval_mode": "evaluation mode (standard, act, deterministic, stochastic, sampled)",
    "execution": "how the evaluation ran (masked, early_exit, gathered)",
    "threshold": "halting threshold of threshold modes (empty otherwise)",
    "repeats": "repeats averaged (random modes; 1 otherwise)",
    "split": "test or val (data.val_subset; choices are made on val)",
    "num_images": "images evaluated",
    "accuracy": "top-1 accuracy, fraction in [0, 1] (mean over repeats)",
    "accuracy_std": "std of accuracy over repeats (0 for a single repeat)",
    "loss": "mean cross-entropy, nats (mean over repeats)",
    "units_executed_mean": "units executed per image summed over blocks (spatial: mean over "
    "experiment_id": "hash of experiment_config: rows with equal ids may be pooled as seeds",
    "positions per block, summed over blocks)",
    "units_executed_std": "std over images of the above",
    "units_per_block": "JSON list: mean units executed per block",
    "ponder_cost_mean": "mean ponder cost summed over blocks (ACT: N+R; PACT: E_q[N])",
    "flops_per_image_mean": "FLOPs per image, mean over images",
    "flops_per_image_std": "FLOPs per image, std over images",
    "flops_fraction_of_vanilla": "flops_per_image_mean / FLOPs of the fully executed network",
    "flops_per_block": "JSON list: mean FLOPs per image in each block",
    "peak_memory_bytes": "peak memory of one evaluation batch (see peak_memory_device)",
    "peak_memory_device": "cpu (live tensor storage, exact) or cuda (allocator peak)",
    "num_val": "validation images carved from the training set (0: no validation split)",
    "eval_batch_size": "batch size of the evaluation pass",
    "seconds_per_batch": "median wall-clock seconds per evaluation batch after warm-up",
}


def _temp_file(path: Path) -> tuple[int, Path]:
    """A new, exclusive temporary file beside ``path`` (fd, name).

    Unlike ``tempfile.mkstemp`` (mode 0600), it gets the mode the umask gives any new file, so
    results renamed into place are as readable as the user's other files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


@contextlib.contextmanager
def _atomic_binary(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``, flushed, synced and renamed into
    place when the block ends; on any error the temporary file is removed and ``path`` kept."""
    path = Path(path)
    fd, tmp = _temp_file(path)
    "experiment_config": "JSON of the resolved config without seed and runtime fields",
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_file(path: str | Path, flag: str) -> None:
    """Before any work: ``path`` must be a file (or not yet exist) in a writable directory."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the directory {existing} is not writable")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with _atomic_binary(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """JSON version of :func:`atomic_write_text` (sorted keys, indented)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    with _atomic_binary(path) as handle:
        torch.save(obj, handle)


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (the metrics file is append-only)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (empty list if missing)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write result rows with the schema's columns first (extra columns after), atomically."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    ordered = [c for c in RESULT_COLUMNS if c in frame.columns]
    frame = frame[ordered + [c for c in frame.columns if c not in RESULT_COLUMNS]]
    atomic_write_text(path, frame.to_csv(index=False))


def _git(args: list[str], cwd: Path) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    )
    return out.stdout.strip()


def _collect(name: str, fn, record: dict[str, Any]) -> None:
    """Store ``fn()`` under ``name``; a failure is recorded as missing, with a warning."""
    try:
        record[name] = fn()
    except Exception as err:  # noqa: BLE001 - provenance must record, not hide, failures
        record[name] = None
        record.setdefault("missing", {})[name] = f"{type(err).__name__}: {err}"
        log.warning("provenance: could not collect %s (%s: %s)", name, type(err).__name__, err)


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def collect_provenance(seed: int, device: torch.device, argv: list[str] | None = None) -> dict:
    """Everything needed to trace a result back to code, libraries, machine and command."""
    repo = Path(__file__).resolve().parent.parent
    record: dict[str, Any] = {
        "seed": seed,
        "command_line": list(sys.argv if argv is None else argv),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    _collect("git_commit", lambda: _git(["rev-parse", "HEAD"], repo), record)
    _collect("git_dirty", lambda: bool(_git(["status", "--porcelain"], repo)), record)
    _collect("hostname", socket.gethostname, record)
    _collect("device", lambda: _device_description(device), record)
    versions: dict[str, str | None] = {}
    for dist in ("pact-harness", "torch", "torchvision", "fvcore", "ray", "numpy", "pandas"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
            record.setdefault("missing", {})[f"version:{dist}"] = "not installed"
    record["library_versions"] = versions
    return record
