"""Data fingerprints: what a run's data was, so that a run or a study is never continued, nor its
runs pooled, on other data.

A fingerprint has two levels:

- the *files* of a data root (:func:`files_fingerprint`): for an npz layout each file's size and
  CRC-32; for torchvision's CIFAR-10 batches each file's size and MD5; for an image-folder tree
  the list of image files (relative path and size), in the order ImageFolder labels them. With
  the class count this gives the short form ``FORMAT:FILES/NCc`` (e.g. ``npz:3f2a9c01b2de/10c``),
  which a study records in ``study.yaml`` (:func:`root_fingerprint`);
- a *run's* data (:func:`run_fingerprint`): the files plus the hash of the subset indices it
  trains, validates and tests on, short form ``npz:3f2a9c01b2de/10c/5e1a2b3c``. It is the
  resolved ``data.fingerprint`` of a run's ``config.yaml`` (part of its identity and of its
  experiment id); ``provenance.json`` holds the whole record under ``data_fingerprint``.

Checksums of files are cached: an entry is keyed by the file's absolute path, size and
modification time (nanoseconds) and kept as a small JSON file under the data cache
(``$PACT_NPZ_CACHE``, default ``~/.cache/pact-harness/npz``) in ``fingerprints/``. The full
CIFAR-10 npz (180 MB) takes about a second the first time and milliseconds after. With
``PACT_NPZ_CACHE=off`` every run reads the files again. A file rewritten in place with the same
size within the same mtime tick would keep its cached checksum; nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.data.readers import CIFAR10_FOLDER, _cifar10_files, _npz_cache_root

_CHUNK = 1 << 22
_FILES_DIGITS = 12
_SUBSET_DIGITS = 8


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _checksum_uncached(path: Path, kind: str) -> str:
    if kind == "crc32":
        crc = 0
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                crc = zlib.crc32(chunk, crc)
        return f"{crc:08x}"
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksum(path: Path, kind: str = "crc32") -> dict[str, Any]:
    """``{"size": bytes, kind: hex}`` of one file, cached by path, size and mtime."""
    stat = path.stat()
    source = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    root = _npz_cache_root()
    entry = None
    if root is not None:
        entry = root / "fingerprints" / f"{_digest([source, kind])[:20]}.json"
        try:
            cached = json.loads(entry.read_text())
            if cached.get("source") == source and isinstance(cached.get(kind), str):
                return {"size": stat.st_size, kind: cached[kind]}
        except (OSError, ValueError, AttributeError):
            pass
    value = _checksum_uncached(path, kind)
    if entry is not None:
        try:  # a failure only costs the cache
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"source": source, kind: value}))
            os.replace(tmp, entry)
        except OSError:
            pass
    return {"size": stat.st_size, kind: value}


def folder_listing(root: Path, samples: Iterable[tuple[str, int]]) -> list[list[Any]]:
    """``[relative path, size, label]`` of every image of an image-folder split."""
    out = []
    for path, label in samples:
        p = Path(path)
        out.append([os.path.relpath(p, root), p.stat().st_size, int(label)])
    return out


def files_fingerprint(
    root: Path, fmt: str, folder_samples: Mapping[str, Iterable[tuple[str, int]]] | None = None
) -> dict[str, Any]:
    """The record of a data root's files in ``fmt`` (see the module docstring).

    ``folder_samples`` (image folders): ``{"train": samples, "test": samples}`` as ImageFolder
    lists them; read from ``root`` when not given."""
    if fmt == "npz":
        files = {name: file_checksum(root / name) for name in ("train.npz", "test.npz")}
        return {"format": fmt, "files": files}
    if fmt == "torchvision":
        folder = root / CIFAR10_FOLDER
        files = {name: file_checksum(folder / name, "md5") for name in _cifar10_files()}
        return {"format": fmt, "files": files}
    if folder_samples is None:
        from harness.data.readers import _load_folders

        train, test, _ = _load_folders(root)
        folder_samples = {"train": train.samples, "test": test.samples}
    listing = {split: folder_listing(root, s) for split, s in folder_samples.items()}
    summary = {
        split: {"images": len(items), "sha1": _digest(items)} for split, items in listing.items()
    }
    return {"format": fmt, "files": summary}


def _files_short(files: Mapping[str, Any], num_classes: int) -> str:
    return f"{files['format']}:{_digest(files)[:_FILES_DIGITS]}/{num_classes}c"


def root_fingerprint(files: Mapping[str, Any], num_classes: int) -> str:
    """The short form of a data root (files and class count): ``npz:3f2a9c01b2de/10c``."""
    return _files_short(files, num_classes)


def indices_digest(indices: Any) -> str | None:
    """A hash of subset indices (None: the whole split)."""
    if indices is None:
        return None
    values = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    return _digest(values)[:16]


def run_fingerprint(
    files: Mapping[str, Any], num_classes: int, subsets: Mapping[str, str | None]
) -> dict[str, Any]:
    """A run's data record: files, class count, subset hashes and the short form
    ``FORMAT:FILES/NCc/SUBSETS`` (the run's ``data.fingerprint``)."""
    short = f"{_files_short(files, num_classes)}/{_digest(dict(subsets))[:_SUBSET_DIGITS]}"
    return {
        "fingerprint": short,
        "format": files["format"],
        "files": files["files"],
        "num_classes": num_classes,
        "subsets": dict(subsets),
    }


def class_count_of(fingerprint: str | None) -> int | None:
    """The class count a short fingerprint names (None if it names none)."""
    if not fingerprint:
        return None
    for part in fingerprint.split("/")[1:]:
        if part.endswith("c") and part[:-1].isdigit():
            return int(part[:-1])
    return None


def root_part(fingerprint: str | None) -> str | None:
    """``npz:3f2a9c01b2de/10c/5e1a2b3c`` -> ``npz:3f2a9c01b2de/10c`` (the data root's part)."""
    if not fingerprint:
        return None
    return "/".join(fingerprint.split("/")[:2])
