"""The run store: run directories, provenance, atomic writes and the results-row schema.

A run directory holds::

    config.yaml        the resolved configuration (method defaults filled in)
    provenance.json    code version + dirty flag, library versions, device, seed, command line
    metrics.jsonl      one JSON line per finished epoch (append-only)
    checkpoint.pt      model, optimizer, scheduler, RNG states, epoch (written atomically)
    summary.json       final metrics of the run (see :data:`SUMMARY_KEYS`)
    failed.json        only if training failed (diverged): the error, epoch and step
    results.csv        one row per evaluation (mode x threshold x split); harness.results
    per_image.npz      per-image units/ponder cost of the default mode (+ spatial ponder maps)
    per_image_correct.npz  per result row (its per_image_key), each image's correctness

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file behind; the temporary files a killed writer leaves
(``.<name>.<host>-<pid>-<id>.tmp``) are removed by the next write in that folder once their writer
is dead or they are a minute old. ``metrics.jsonl`` is the one append-only file: a torn last
line (a kill mid-append) is dropped with a warning when it is read. JSON never holds NaN or
Infinity: such values are stored as ``null`` and their keys listed under ``non_finite_keys``.
A process working in a folder holds its lock (:func:`folder_lock`: the file ``.lock`` names the
holder's pid), so two processes never write one run directory or one study.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import torch

from harness import results
from harness.errors import CheckpointError, ConfigError, LockedError, StorageError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
PER_IMAGE_FILE = "per_image.npz"
#: Per result row, the correctness of every evaluated image (the comparisons' bootstrap).
CORRECT_FILE = "per_image_correct.npz"
RESULTS_FILE = "results.csv"
FAILED_FILE = "failed.json"
#: A study folder's identity (preset and resolved trial configs) and its run directories' folder.
STUDY_FILE = "study.yaml"
TRIALS_DIR = "trials"
#: The lock file of a folder held by one process (a run directory, a study folder).
LOCK_FILE = ".lock"
#: Key under which a JSON record lists the fields whose non-finite values were stored as null.
NON_FINITE_KEY = "non_finite_keys"
#: Temporary files of atomic writes older than this (seconds) are removed by later writes.
STALE_TEMP_SECONDS = 60.0

#: Keys every ``summary.json`` holds (adaptive methods add ``units_executed_mean`` and
#: ``units_executed_per_block``).
SUMMARY_KEYS = ("test_accuracy", "test_loss", "train_seconds", "method", "depth", "seed")

#: The results-row schema (column -> description), declared in :mod:`harness.results`.
RESULT_COLUMNS = results.RESULT_COLUMNS


_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_TEMP_NAME = re.compile(r"^\..+\.(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-)?[0-9a-z]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clean_stale_temps(folder: Path, min_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove the temporary files of atomic writes in ``folder`` whose writer (on this host) is
    dead or that are older than ``min_age`` seconds; returns the names removed.

    A concurrent writer's file is fresh (its mtime moves while it writes) and its pid alive, so
    it is left alone; writers on other hosts (a shared file system) are judged by age only.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            pid = int(match["pid"]) if match["pid"] else None
            dead = (
                pid is not None
                and match["host"] == _HOST_TAG
                and pid != os.getpid()
                and not _pid_alive(pid)
            )
            if dead or age > min_age:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:  # gone already, or not ours to remove: leave it
            continue
    if removed:
        log.info("removed stale temporary files in %s: %s", folder, ", ".join(removed))
    return removed


def _temp_file(path: Path) -> tuple[int, Path]:
    """A new, exclusive temporary file beside ``path`` (fd, name), named after the writer's host
    and pid; stale ones of earlier writers in the folder are removed first.

    Unlike ``tempfile.mkstemp`` (mode 0600), it gets the mode the umask gives any new file, so
    results renamed into place are as readable as the user's other files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


@contextlib.contextmanager
def _atomic_binary(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``, flushed, synced and renamed into
    place when the block ends; on any error the temporary file is removed and ``path`` kept."""
    path = Path(path)
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def check_writable_file(path: str | Path, flag: str) -> None:
    """Before any work: ``path`` must be a file (or not yet exist) in a writable directory."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file path")
    existing = _first_existing(path.parent if str(path.parent) else Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the directory {existing} is not writable")


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Before any work: ``path`` must be a writable directory, or creatable as one."""
    path = Path(path)
    existing = _first_existing(path)
    if existing == path and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the directory {existing} is not writable")


@contextlib.contextmanager
def folder_lock(folder: str | Path, refuse: Callable[[str], str]) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs.

    The lock is an ``flock`` on ``folder/.lock``, which names the holder (pid and host). The
    kernel drops it when the holder dies, so a lock left by a killed process is taken over
    (with a warning naming it). Another live holder raises :class:`LockedError` with
    ``refuse(holder)`` as its message. Folders this call created are removed again if the
    block leaves them empty (an error before anything was written).
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                if holder is None:
                    described = "a process that is starting"
                else:
                    described = f"pid {holder[0]} on {holder[1]}"
                    if holder[1] == socket.gethostname() and not _pid_alive(holder[0]):
                        described += " (exited; a child process of it still holds the lock)"
                raise LockedError(refuse(described)) from None
            try:  # the previous holder may have removed the file before we locked it
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as err:
        raise StorageError(f"cannot create the lock {path}: {err.strerror}") from None
    previous = _lock_holder(fd)
    if previous is not None:
        log.warning(
            "%s: taking over the lock left by pid %d on %s, which is no longer running",
            folder,
            *previous,
        )
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        for made in created:  # innermost first
            with contextlib.suppress(OSError):
                made.rmdir()  # only if empty


def _lock_holder(fd: int) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, None if it names nobody."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        return int(text[0]), text[1] if len(text) > 1 else "?"
    except (OSError, ValueError, IndexError):
        return None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with _atomic_binary(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite(value: Any, where: str, bad: list[str]) -> Any:
    """``value`` with every non-finite float replaced by None (their key paths go to ``bad``)."""
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(where or "(value)")
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", bad) for i, v in enumerate(value)]
    return value


def json_text(data: Any, indent: int | None = None) -> str:
    """Strict JSON of ``data`` (sorted keys): NaN and Infinity, which JSON lacks, become null and
    a mapping lists their key paths under ``non_finite_keys`` (with a warning)."""
    try:
        return json.dumps(data, indent=indent, sort_keys=True, default=str, allow_nan=False)
    except ValueError:
        bad: list[str] = []
        clean = _finite(data, "", bad)
        if not bad:
            raise
        if isinstance(clean, dict):
            clean[NON_FINITE_KEY] = bad
        log.info("non-finite values stored as null: %s", ", ".join(bad[:5]))
        return json.dumps(clean, indent=indent, sort_keys=True, default=str, allow_nan=False)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """JSON version of :func:`atomic_write_text` (sorted keys, indented; see :func:`json_text`)."""
    atomic_write_text(path, json_text(data, indent=2) + "\n")


def read_json(path: str | Path, what: str = "") -> Any:
    """A JSON file's content; CheckpointError naming the file if it is unreadable or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not valid JSON ({err})"
        raise CheckpointError(f"{what}{path}: {reason}") from None


def update_json(path: str | Path, fields: Mapping[str, Any]) -> None:
    """Set top-level ``fields`` of a JSON object file, atomically (e.g. a grid trial adds where
    Ray placed it to ``provenance.json``); CheckpointError if the file is unreadable."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    atomic_write_json(path, {**data, **fields})


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and an atomic rename. A failed write is an
    ``OSError`` (torch reports a full disk or a file-size limit as a ``RuntimeError``)."""
    with _atomic_binary(path) as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise OSError(f"torch.save failed ({first})") from None


def jsonl_line(record: Mapping[str, Any]) -> str:
    """One line of a JSON-lines file (see :func:`json_text`), newline included."""
    return json_text(record) + "\n"


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (the metrics file is append-only)."""
    with open(path, "a") as handle:
        handle.write(jsonl_line(record))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (empty list if missing).

    A last line that is not a JSON object (a writer killed mid-append) is dropped with a
    warning; a bad line before it is a CheckpointError naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    numbered = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1)]
    numbered = [(n, line) for n, line in numbered if line.strip()]
    records = []
    for i, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not an object")
        except ValueError as err:
            if i == len(numbered) - 1:
                log.warning("%s: dropped its torn last line %d (%s)", path, number, err)
                break
            raise CheckpointError(f"{path}: line {number} is not a JSON record ({err})") from None
        records.append(record)
    return records


def write_results_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write result rows in schema order, atomically; a column not declared in
    :mod:`harness.results`, or a missing required one, is refused in one line before anything is
    written."""
    import pandas as pd

    rows = list(rows)
    results.check_rows(rows, str(path))
    frame = pd.DataFrame(rows)
    frame = frame[results.ordered(frame.columns)]
    atomic_write_text(path, frame.to_csv(index=False))


def gather_results_csv(path: str | Path, tables: Iterable[str | Path]) -> Path | None:
    """Write ``path``: the rows of every results table in ``tables``, in that order
    (:func:`write_results_csv`); None, and nothing written, when there are none."""
    import pandas as pd

    frames = [pd.read_csv(t, keep_default_na=False, na_values=[""]) for t in tables]
    if not frames:
        return None
    write_results_csv(path, pd.concat(frames, ignore_index=True).to_dict("records"))
    return Path(path)


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


_FINGERPRINTS: dict[tuple[str, ...], str] = {}


def code_fingerprint(packages: Iterable[str | Path]) -> str:
    """A hash of the Python source that trains and evaluates (the harness, the backbones and the
    method's package, given as their folders): equal source, equal fingerprint, whatever the
    commit (a commit that changes only docs changes no result). sha256 over every ``*.py`` file
    (relative path and bytes), first 16 hex digits; computed once per process."""
    folders = tuple(sorted(str(Path(p).resolve()) for p in packages))
    if folders not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for folder in folders:
            root = Path(folder)
            for file in sorted(root.rglob("*.py")):
                digest.update(f"{root.name}/{file.relative_to(root).as_posix()}\0".encode())
                digest.update(file.read_bytes())
        _FINGERPRINTS[folders] = digest.hexdigest()[:16]
    return _FINGERPRINTS[folders]


def code_version(provenance: Mapping[str, Any]) -> str:
    """The code a run's results come from, as one string: the source fingerprint (or, for runs
    made before it was recorded, the git commit) with ``+dirty`` for a dirty tree, torch's
    version and the method package's version. Runs with different strings are never pooled as
    seeds unless the user allows mixed code."""
    fingerprint = provenance.get("code_fingerprint")
    if fingerprint:
        code = f"src {fingerprint[:10]}"
    else:
        commit = provenance.get("git_commit")
        code = f"git {str(commit)[:7]}" if commit else "unknown"
        if provenance.get("git_dirty"):
            code += "+dirty"
    torch_version = (provenance.get("library_versions") or {}).get("torch")
    package = provenance.get("method_package") or {}
    parts = [code, f"torch {torch_version}" if torch_version else "torch ?"]
    if package.get("name"):
        parts.append(f"{package['name']} {package.get('version')}")
    return " / ".join(parts)


def library_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (None when it is not installed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


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
