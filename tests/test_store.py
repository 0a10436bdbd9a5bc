"""The run store: atomic writes, the metrics file, the results schema, provenance."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch

from harness import store

#: Columns the rest of the project (grid, report) relies on.
REQUIRED_COLUMNS = (
    "trial_id",
    "method",
    "variant",
    "dataset",
    "depth",
    "time_penalty",
    "seed",
    "eval_mode",
    "split",
    "accuracy",
    "loss",
)


def _umask() -> int:
    """The process umask, read in a child (setting it to read it would race other threads)."""
    out = subprocess.run(["sh", "-c", "umask"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip(), 8)


def test_atomic_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "sub" / "summary.json"
    store.atomic_write_text(path, "first\n")
    store.atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path: Path):
    text, blob = tmp_path / "a.json", tmp_path / "b.pt"
    store.atomic_write_json(text, {"x": 1})
    store.atomic_torch_save(blob, {"w": torch.zeros(1)})
    expected = 0o666 & ~_umask()
    for path in (text, blob):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected


def test_atomic_write_json_is_sorted_and_round_trips(tmp_path: Path):
    path = tmp_path / "s.json"
    data = {"b": 1, "a": [1.5, None], "path": Path("/x")}
    store.atomic_write_json(path, data)
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') and text.endswith("\n")
    assert json.loads(text) == {"a": [1.5, None], "b": 1, "path": "/x"}


def test_failed_torch_save_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    store.atomic_torch_save(path, {"epoch": 1, "w": torch.arange(3.0)})
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        store.atomic_torch_save(path, {"epoch": 2, "bad": lambda: None})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.arange(3.0))


def test_jsonl_appends_one_record_per_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    assert store.read_jsonl(path) == []
    records = [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 1.25}]
    for record in records:
        store.append_jsonl(path, record)
    assert store.read_jsonl(path) == records
    assert len(path.read_text().splitlines()) == 2


def test_result_columns_cover_the_required_schema():
    assert set(REQUIRED_COLUMNS) <= set(store.RESULT_COLUMNS)
    assert all(description for description in store.RESULT_COLUMNS.values())
    assert set(store.SUMMARY_KEYS) == {
        "test_accuracy",
        "test_loss",
        "train_seconds",
        "method",
        "depth",
        "seed",
    }


def _git(*args: str) -> str | None:
    repo = Path(store.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def test_provenance_records_code_libraries_device_seed_and_command():
    argv = ["pact-harness", "train", "--seed", "7"]
    record = store.collect_provenance(7, torch.device("cpu"), argv)
    assert record["seed"] == 7
    assert record["command_line"] == argv
    commit = _git("rev-parse", "HEAD")
    assert record["git_commit"] == commit
    if commit is not None:
        assert len(commit) == 40
        assert record["git_dirty"] is bool(_git("status", "--porcelain"))
    assert record["device"].startswith("cpu (") and f"{os.cpu_count()} cores" in record["device"]
    versions = record["library_versions"]
    for dist in ("torch", "numpy", "pandas", "pact-harness"):
        assert versions[dist] == metadata.version(dist)
    assert torch.__version__.startswith(versions["torch"])
    json.dumps(record)  # JSON-ready as it stands


def test_provenance_records_a_field_it_cannot_collect_as_missing(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "")  # no git to run
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        record = store.collect_provenance(0, torch.device("cpu"), [])
    assert record["git_commit"] is None and record["git_dirty"] is None
    assert "git_commit" in record["missing"] and "git_dirty" in record["missing"]
    assert record["device"].startswith("cpu")  # the other fields are still there
    warned = [r.getMessage() for r in caplog.records]
    assert any("could not collect git_commit" in message for message in warned)
