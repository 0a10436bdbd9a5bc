"""Nothing lost, nothing silently wrong: locks, divergence, torn and stale files, bad labels,
crafted pickles, and the inputs that used to end in a traceback (issue 14).

Every run is ResNet-8 on the tiny npz dataset of ``conftest.py`` (64 images, one epoch, CPU)
unless a test needs two epochs; the fault-injection test at the end kills real ``train``
processes.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import console_script, make_images, tiny_train_args, write_zero_npz
from PIL import Image

from harness import store
from harness.cli import main
from harness.config import DataConfig
from harness.data import CIFAR10_CLASSES, build_data
from harness.errors import ConfigError, DataError, DivergenceError
from harness.presets import PRESET_DIR, load_preset
from harness.study import (
    RAY_DIR,
    TRIALS_EVENTS,
    TRIALS_TABLE,
    GridOptions,
    TrialsTable,
    plan_study,
    write_trials_table,
)
from harness.train import CRASH_ENV, InjectedCrash


def crash_after_first_epoch(argv: list[str], monkeypatch) -> None:
    """Run ``train`` with the injected crash after epoch 1's checkpoint (harness.train)."""
    monkeypatch.setenv(CRASH_ENV, "1")
    with pytest.raises(InjectedCrash):
        main(argv)
    monkeypatch.delenv(CRASH_ENV)


def one_error_line(capsys) -> str:
    """The single ``error:`` line the CLI printed on stderr (and nothing else)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity (which JSON does not have)."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def copy_run(finished_run, tmp_path: Path, name: str = "run") -> Path:
    run = tmp_path / name
    shutil.copytree(finished_run["dir"], run)
    return run


# -- 1. one process per run directory ---------------------------------------------------------


def test_a_second_train_on_the_same_out_is_refused_naming_the_holder(
    tiny_args, tmp_path: Path, capsys
):
    out = tmp_path / "run"
    # flock locks belong to an open file, so a lock held here blocks main() in this process too.
    with store.folder_lock(out, lambda holder: f"held by {holder}"):
        assert main(tiny_args(out)) == 2
        message = one_error_line(capsys)
        assert f"--out {out} is in use by another run (pid {os.getpid()} on " in message
        assert "choose another --out" in message
        assert [p.name for p in out.iterdir()] == [store.LOCK_FILE]  # nothing else written
    assert not out.exists()  # the lock made the folder and took it away again


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_args, tmp_path: Path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / store.LOCK_FILE).write_text(f"{pid} {socket.gethostname()}\n")
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        assert main(tiny_args(out)) == 0
    assert f"taking over the lock left by pid {pid}" in caplog.text
    assert (out / store.SUMMARY_FILE).is_file()
    assert not (out / store.LOCK_FILE).exists()  # released when the run ended


def test_the_study_lock_names_its_holder(tmp_path: Path):
    from harness.errors import LockedError
    from harness.study import study_lock

    with study_lock(tmp_path), pytest.raises(LockedError, match=f"pid {os.getpid()} on"):
        with study_lock(tmp_path):
            pass


# -- 2. divergence ----------------------------------------------------------------------------


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_is_marked_failed(
    tiny_args, tmp_path: Path, capsys
):
    out = tmp_path / "run"
    assert main(tiny_args(out, "--lr", "1e6", "--train-subset", "128")) == 2
    message = one_error_line(capsys)
    assert "training diverged: the loss is nan at epoch 1, step 4" in message
    assert "lower the learning rate (--lr)" in message
    failure = strict_json((out / store.FAILED_FILE).read_text())
    assert (failure["epoch"], failure["step"]) == (1, 4) and "diverged" in failure["error"]
    assert not (out / store.SUMMARY_FILE).exists()
    assert not (out / store.CHECKPOINT_FILE).exists()  # no epoch finished
    assert store.read_jsonl(out / store.METRICS_FILE) == []
    for path in out.glob("*.json"):  # whatever was written is strict JSON
        strict_json(path.read_text())
    # A sane rate in the same folder is another configuration: refused, the failure kept.
    assert main(tiny_args(out)) == 2
    assert "holds a run of another configuration" in one_error_line(capsys)


def test_a_divergence_error_crosses_process_boundaries_whole():
    # Ray pickles a trial's exception to the driver; the fields must survive.
    err = pickle.loads(pickle.dumps(DivergenceError("training diverged", 3, 7)))
    assert (str(err), err.epoch, err.step) == ("training diverged", 3, 7)


def test_json_files_never_hold_nan_or_infinity(tmp_path: Path):
    path = tmp_path / "s.json"
    store.atomic_write_json(path, {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf}})
    assert strict_json(path.read_text()) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": None},
        store.NON_FINITE_KEY: ["a", "b[1]", "c.d"],
    }
    lines = tmp_path / "m.jsonl"
    store.append_jsonl(lines, {"epoch": 1, "train_loss": math.nan})
    store.append_jsonl(lines, {"epoch": 2, "train_loss": 0.5})
    assert [strict_json(x) for x in lines.read_text().splitlines()] == [
        {"epoch": 1, "train_loss": None, store.NON_FINITE_KEY: ["train_loss"]},
        {"epoch": 2, "train_loss": 0.5},
    ]


# -- 4. labels checked against the dataset ----------------------------------------------------


def write_npz_split(path: Path, labels: np.ndarray, seed: int, **extra) -> None:
    images, _ = make_images(len(labels), seed)
    np.savez(path, images=images, labels=labels.astype(np.int64), **extra)


def test_a_cifar10_label_outside_0_to_9_is_named_before_any_subset(
    tiny_args, tmp_path: Path, capsys
):
    root = tmp_path / "data"
    root.mkdir()
    train_labels = np.arange(200) % 10
    train_labels[17] = 12
    write_npz_split(root / "train.npz", train_labels, 1)
    write_npz_split(root / "test.npz", np.arange(100) % 10, 2)
    out = tmp_path / "run"
    argv = tiny_args(out)
    argv[argv.index("--data-root") + 1] = str(root)
    assert main(argv) == 2  # with --train-subset 64
    message = one_error_line(capsys)
    assert f"{root / 'train.npz'}: label 12 is outside CIFAR-10's classes 0..9" in message
    assert "subset" not in message
    assert not out.exists()


def test_a_training_split_of_one_class_is_refused(tmp_path: Path):
    write_npz_split(tmp_path / "train.npz", np.full(40, 3), 1)
    write_npz_split(tmp_path / "test.npz", np.full(10, 3), 2)
    data = DataConfig(root=str(tmp_path), train_subset=20)
    with pytest.raises(DataError, match=r"train.npz: every training label is 3; .* two classes"):
        build_data("cifar10", data, batch_size=10)


def test_test_labels_beyond_the_training_classes_are_refused(tmp_path: Path):
    names = np.array(["a", "b", "c", "d", "e"])
    write_npz_split(tmp_path / "train.npz", np.arange(40) % 5, 1, classes=names)
    write_npz_split(tmp_path / "test.npz", np.arange(10) % 8, 2)
    with pytest.raises(DataError, match=r"test.npz: label 7 is out of range for the 5 classes"):
        build_data("imagenet", DataConfig(root=str(tmp_path)), batch_size=10)


# -- 5./6. metrics.jsonl: fresh starts and torn lines ----------------------------------------


def test_a_fresh_start_truncates_the_metrics_of_a_start_killed_before_its_first_checkpoint(
    finished_run, tiny_args, tmp_path: Path
):
    run = copy_run(finished_run, tmp_path)
    for name in (store.CHECKPOINT_FILE, store.SUMMARY_FILE, store.RESULTS_FILE):
        (run / name).unlink()
    (run / store.PER_IMAGE_FILE).unlink()
    assert [r["epoch"] for r in store.read_jsonl(run / store.METRICS_FILE)] == [1]
    assert main(tiny_args(run)) == 0
    assert [r["epoch"] for r in store.read_jsonl(run / store.METRICS_FILE)] == [1]


def test_a_torn_last_metrics_line_is_dropped_and_the_run_resumes(
    tiny_args, tmp_path: Path, monkeypatch, caplog
):
    out = tmp_path / "run"
    argv = tiny_args(out, "--epochs", "2")
    crash_after_first_epoch(argv, monkeypatch)
    with open(out / store.METRICS_FILE, "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # killed mid-append
    with caplog.at_level(logging.WARNING, logger="harness.store"):
        assert main(argv) == 0
    assert "dropped its torn last line 2" in caplog.text
    text = (out / store.METRICS_FILE).read_text()
    assert [strict_json(line)["epoch"] for line in text.splitlines()] == [1, 2]


def test_a_bad_metrics_line_before_the_last_is_named(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(Exception, match="metrics.jsonl: line 2 is not a JSON record"):
        store.read_jsonl(path)


# -- 7. CIFAR-10 python batches cannot run code -----------------------------------------------


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted CIFAR batch could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_cifar_batches(root: Path, evil: Path | None = None) -> Path:
    """torchvision's CIFAR-10 layout with 10 images per batch; ``evil`` puts a code-running
    object into data_batch_2 (it would create the file ``evil`` when unpickled)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        images, labels = make_images(10, i)
        batch = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(10, 3072),
            "filenames": [""] * 10,
        }
        if evil is not None and name == "data_batch_2":
            batch["filenames"] = _RunsCode(evil)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return root


def test_a_crafted_cifar_batch_cannot_run_code_even_without_checksums(tmp_path: Path):
    marker = tmp_path / "pwned"
    root = write_cifar_batches(tmp_path / "data", evil=marker)
    data = DataConfig(root=str(root), verify_checksums=False)
    with pytest.raises(DataError, match=r"data_batch_2 was refused: its pickle calls posix.system"):
        build_data("cifar10", data, batch_size=10)
    assert not marker.exists()
    # The batches themselves still load (the restricted reader reads what CIFAR-10 holds).
    root = write_cifar_batches(tmp_path / "good")
    bundle = build_data(
        "cifar10", DataConfig(root=str(root), verify_checksums=False), batch_size=10
    )
    assert (bundle.num_train, bundle.num_test, bundle.classes) == (50, 10, CIFAR10_CLASSES)


def test_a_download_fetches_the_checked_archive_and_unpickles_nothing_itself(
    tmp_path: Path, monkeypatch
):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        write_cifar_batches(Path(root))  # what extracting the official archive leaves

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    data = DataConfig(root=str(tmp_path), download=True, verify_checksums=False)
    bundle = build_data("cifar10", data, batch_size=10)
    assert bundle.num_train == 50
    ((url, filename, md5),) = calls
    assert filename == "cifar-10-python.tar.gz" and md5 and url.endswith(filename)


def test_the_checksum_error_no_longer_suggests_disabling_the_check(tmp_path: Path):
    root = write_cifar_batches(tmp_path)
    with pytest.raises(DataError) as caught:
        build_data("cifar10", DataConfig(root=str(root)), batch_size=10)
    assert "differs from the official CIFAR-10 file" in str(caught.value)
    assert "verify_checksums" not in str(caught.value)


def test_a_cifar_batch_label_out_of_range_names_the_batch(tmp_path: Path):
    root = write_cifar_batches(tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][3] = 11
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"test_batch: label 11 is outside the 10 classes 0..9"):
        build_data("cifar10", DataConfig(root=str(root), verify_checksums=False), batch_size=10)


# -- tracebacks that became one error line -----------------------------------------------------


def write_image_folders(root: Path) -> list[str]:
    """train/ and val/ with two classes of six 32x32 PNGs; returns ``train`` arguments."""
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            images, _ = make_images(6, c)
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    argv = ["train", "--method", "resnet", "--depth", "8", "--data-root", str(root)]
    return [*argv, "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--progress", "off"]


def test_an_undecodable_image_is_named_before_anything_is_written(tmp_path: Path, capsys):
    argv = write_image_folders(tmp_path / "folders")
    bad = tmp_path / "folders" / "train" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG but not really")
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    assert f"{bad}: cannot be decoded as an image" in one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_truncated_after_its_header_is_one_error_line(workers, tmp_path: Path, capsys):
    # The header reads, but the up-front check verifies the whole file (issue 25): refused
    # before anything is written, naming the file on one line.
    argv = write_image_folders(tmp_path / "folders")
    bad = tmp_path / "folders" / "train" / "cat" / "2.png"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "run"
    assert main([*argv, "--set", f"data.num_workers={workers}", "--out", str(out)]) == 2
    message = one_error_line(capsys)
    assert f"error: {bad}: cannot be decoded as an image (OSError: " in message
    assert not out.exists()


def test_out_below_a_file_is_one_error_line(tiny_args, tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    assert main(tiny_args(out)) == 2
    assert f"--out {out}: {tmp_path / 'notes.txt'} is a file, not a directory" in (
        one_error_line(capsys)
    )


def test_out_in_a_read_only_directory_is_one_error_line(
    tiny_args, tmp_path: Path, capsys, monkeypatch
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores permissions: make access() say what it means
        real = os.access
        monkeypatch.setattr(
            store.os,
            "access",
            lambda p, mode: False if Path(p) == locked and mode & os.W_OK else real(p, mode),
        )
    out = locked / "run"
    try:
        assert main(tiny_args(out)) == 2
        assert f"--out {out}: the directory {locked} is not writable" in one_error_line(capsys)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_grid_out_below_a_file_is_one_error_line_before_ray_starts(
    tmp_path: Path, tiny_npz_root: Path, capsys
):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "study"
    argv = ["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert main(argv) == 2
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in one_error_line(capsys)


def test_init_from_a_run_with_another_class_count_is_one_error_line(
    tiny_args, tmp_path: Path, capsys
):
    five = tmp_path / "five"
    five.mkdir()
    write_npz_split(five / "train.npz", np.arange(100) % 5, 1)
    write_npz_split(five / "test.npz", np.arange(20) % 5, 2)
    source = tmp_path / "source"
    argv = tiny_args(source, "--train-subset", "40", "--test-subset", "10")
    argv[argv.index("--data-root") + 1] = str(five)
    assert main(argv) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(tiny_args(out, "--init-from", str(source))) == 2
    message = one_error_line(capsys)
    assert f"--init-from {source.resolve()}: it was trained on 5 classes" in message
    assert re.search(r"\(data.fingerprint npz:[0-9a-f]{12}/5c/[0-9a-f]{8}\)", message)
    assert re.search(r"has 10 \(data.fingerprint npz:[0-9a-f]{12}/10c/[0-9a-f]{8}\)", message)
    assert not out.exists()
    # A source made before fingerprints: the weights' shapes still tell.
    config = yaml.safe_load((source / store.CONFIG_FILE).read_text())
    del config["data"]["fingerprint"]
    (source / store.CONFIG_FILE).write_text(yaml.safe_dump(config))
    assert main(tiny_args(out, "--init-from", str(source))) == 2
    message = one_error_line(capsys)
    assert f"--init-from {source.resolve()}: its backbone." in message
    assert "has shape (5, " in message and "this run's has (10, " in message
    assert not out.exists()


def test_a_corrupt_summary_of_a_finished_run_is_rewritten_from_its_checkpoint(
    finished_run, tiny_args, tmp_path: Path, caplog
):
    run = copy_run(finished_run, tmp_path)
    expected = strict_json((run / store.SUMMARY_FILE).read_text())
    (run / store.SUMMARY_FILE).write_text('{"test_accuracy": 0.')
    with caplog.at_level(logging.WARNING):
        assert main(tiny_args(run)) == 0
    assert "summary.json: not valid JSON" in caplog.text
    assert strict_json((run / store.SUMMARY_FILE).read_text()) == expected


def test_disk_full_on_a_checkpoint_write_says_the_last_checkpoint_is_intact(
    tiny_args, tmp_path: Path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real, calls = store.atomic_torch_save, []

    def full_disk(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, obj)

    monkeypatch.setattr(store, "atomic_torch_save", full_disk)
    argv = tiny_args(out, "--epochs", "2")
    assert main(argv) == 2
    message = one_error_line(capsys)
    assert "cannot write the checkpoint of epoch 2" in message
    assert "No space left on device; the last checkpoint (epoch 1) is intact" in message
    assert torch.load(out / store.CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(store, "atomic_torch_save", real)
    assert main(argv) == 0  # space freed: the same command resumes
    assert [r["epoch"] for r in store.read_jsonl(out / store.METRICS_FILE)] == [1, 2]


def test_profile_out_pointing_at_a_directory_is_refused_first(tmp_path: Path, capsys):
    argv = ["profile", "--method", "resnet", "--depth", "8", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert f"--out {tmp_path} is a directory; give a file path" in one_error_line(capsys)


def test_a_truncated_checkpoint_says_how_to_restart(finished_run, tiny_args, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    checkpoint = run / store.CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    assert main(tiny_args(run)) == 2
    message = one_error_line(capsys)
    assert f"cannot read checkpoint {checkpoint}" in message
    assert "truncated or corrupt; delete it and rerun the same command" in message
    checkpoint.unlink()  # the advice works: the run starts again
    assert main(tiny_args(run)) == 0
    assert [r["epoch"] for r in store.read_jsonl(run / store.METRICS_FILE)] == [1]


def test_a_malicious_checkpoint_is_one_line_without_weights_only_advice(
    finished_run, tiny_args, tmp_path, capsys
):
    run = copy_run(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"model": _RunsCode(marker)}, run / store.CHECKPOINT_FILE)
    assert main(tiny_args(run)) == 2
    message = one_error_line(capsys)
    assert "was refused: it holds Python objects (posix.system)" in message
    assert "weights_only" not in message
    assert not marker.exists()


# -- minor ------------------------------------------------------------------------------------


def test_stale_temporary_files_are_cleaned_by_the_next_write(tmp_path: Path):
    host = store._HOST_TAG
    names = {
        "dead_writer": f".metrics.jsonl.{host}-{dead_pid()}-abc123.tmp",
        "live_writer": f".checkpoint.pt.{host}-{os.getppid()}-abc123.tmp",
        "old_unknown": ".summary.json.0123abcdef.tmp",
        "fresh_unknown": ".results.csv.0123abcdef.tmp",
        "other_host_fresh": f".config.yaml.{int(host, 16) ^ 1:08x}-{dead_pid()}-abc.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    old = time.time() - 2 * store.STALE_TEMP_SECONDS
    os.utime(tmp_path / names["old_unknown"], (old, old))
    (tmp_path / "notes.tmp").write_text("not ours")  # no leading dot: never touched
    store.atomic_write_text(tmp_path / "a.txt", "x")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {
        "a.txt",
        "notes.tmp",
        names["live_writer"],
        names["fresh_unknown"],
        names["other_host_fresh"],
    }


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", ".."])
def test_a_preset_name_that_is_a_path_is_refused(name, tmp_path: Path):
    path = tmp_path / "p.yaml"
    tree = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    path.write_text(yaml.safe_dump({**tree, "name": name}))
    with pytest.raises(ConfigError, match="is not a plain name"):
        load_preset(str(path))


def test_trials_csv_keeps_what_ended_before_a_driver_kill(tmp_path: Path, tiny_npz_root: Path):
    from harness.grid import make_progress_callback

    preset = tmp_path / "tiny.yaml"
    tree = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    tree.update(name="tiny", methods={"resnet": {}}, depths=[8], seeds=[0, 1], vanilla_depths=[])
    preset.write_text(yaml.safe_dump(tree))
    study = plan_study(
        GridOptions(preset=str(preset), out=str(tmp_path / "s"), data_root=str(tiny_npz_root))
    )
    names = [t.name for t in study.trials]
    study.folder.mkdir(parents=True)
    # trials.csv is written when the launch starts, then (every_s) only at its end: each state
    # change goes to the event log at once.
    live = TrialsTable(study, every_s=3600.0)
    live.write()
    progress = make_progress_callback(len(names), on_change=live.changed)
    done = SimpleNamespace(config={"trial": names[0]}, num_failures=1, error_file=None)
    running = SimpleNamespace(config={"trial": names[1]}, num_failures=0, error_file=None)
    progress.on_trial_start(0, [], done)
    progress.on_trial_start(0, [], running)
    progress.on_trial_result(0, [], done, {"node_id": "node-a", "test_accuracy": 0.5})
    progress.on_trial_complete(0, [], done)
    events = store.read_jsonl(study.folder / TRIALS_EVENTS)
    assert [(e["trial"], e["status"]) for e in events] == [
        (names[0], "running"),
        (names[1], "running"),
        (names[0], "finished"),
    ]
    # The driver is killed here: conclude_study never runs. The folder already knows: the
    # table as the launch started plus the logged changes, which the next write reads back.
    table = pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    assert list(table["status"]) == ["pending", "pending"]
    write_trials_table(study, {})
    assert not (study.folder / TRIALS_EVENTS).exists()  # the table holds them now
    table = pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    first = table.set_index("trial_id").loc[names[0]]
    assert (first["node_id"], first["failures"], first["status"]) == ("node-a", "1", "finished")
    # The next launch runs only the other trial and keeps the first one's values.
    write_trials_table(study, {names[1]: {"status": "finished", "node_id": "node-b"}})
    table = pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    assert list(table["node_id"]) == ["node-a", "node-b"]
    assert list(table["failures"]) == ["1", ""]
    # A run directory that diverged says so when no launch knows better.
    run_dir = study.run_dir(names[1])
    run_dir.mkdir(parents=True)
    store.atomic_write_json(run_dir / store.FAILED_FILE, {"error": "training diverged: ..."})
    write_trials_table(study, {})
    table = pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    assert table.loc[1, "status"] == "failed" and "diverged" in table.loc[1, "error"]
    # A finished run whose summary got corrupted is not finished: --resume would run it again
    # (and the run re-evaluates its checkpoint); the table says why.
    run_dir = study.run_dir(names[0])
    run_dir.mkdir(parents=True)
    (run_dir / store.RESULTS_FILE).write_text("trial_id\nx\n")
    (run_dir / store.SUMMARY_FILE).write_text('{"test_accuracy": 0.5}')
    assert study.finished() == [names[0]]
    (run_dir / store.SUMMARY_FILE).write_text('{"test_accuracy": 0.')
    assert study.finished() == []
    write_trials_table(study, {})
    table = pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    assert (
        table.loc[0, "status"] == "unreadable summary"
        and "not valid JSON" in (table.loc[0, "error"])
    )


# -- fault injection: kill train anywhere, resume, compare bitwise ------------------------------


def _files_parse(run: Path) -> None:
    """Every file of a (possibly interrupted) run directory parses with the harness's readers."""
    from harness.runs import load_checkpoint, read_run_config

    names = {p.name for p in run.iterdir()} if run.exists() else set()
    if store.CONFIG_FILE in names:
        read_run_config(run)
    if store.PROVENANCE_FILE in names:
        strict_json((run / store.PROVENANCE_FILE).read_text())
    if store.SUMMARY_FILE in names:
        strict_json((run / store.SUMMARY_FILE).read_text())
    if store.METRICS_FILE in names:
        store.read_jsonl(run / store.METRICS_FILE)
    if store.CHECKPOINT_FILE in names:
        load_checkpoint(run / store.CHECKPOINT_FILE)
    if store.RESULTS_FILE in names:
        pd.read_csv(run / store.RESULTS_FILE)
    if store.PER_IMAGE_FILE in names:
        with np.load(run / store.PER_IMAGE_FILE) as archive:
            [archive[key] for key in archive.files]


def _without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


@pytest.mark.slow
def test_train_killed_at_random_points_resumes_bitwise_equal(tiny_args, tmp_path: Path):
    straight = tmp_path / "straight"
    assert main(tiny_args(straight, "--epochs", "30")) == 0  # the uninterrupted reference
    killed = tmp_path / "killed"
    argv = [*console_script(), *tiny_args(killed, "--epochs", "30")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(14)
    kills = 0
    for _ in range(3):  # bounded: three SIGKILLs at seeded random moments
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The moment is drawn from when training is under way (the first epoch logged; the
        # start-up before it takes seconds and varies with the machine's load), so that a kill
        # lands in training, a checkpoint write or the evaluation, not only in the imports.
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (killed / store.METRICS_FILE).exists():
                break
            time.sleep(0.01)
        try:
            proc.wait(timeout=rng.uniform(0.0, 1.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        _files_parse(killed)
    final = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert final.returncode == 0, final.stderr
    assert kills >= 1
    _files_parse(killed)
    reference = torch.load(straight / store.CHECKPOINT_FILE, weights_only=True)
    resumed = torch.load(killed / store.CHECKPOINT_FILE, weights_only=True)
    for key, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    assert _without_time(store.read_jsonl(killed / store.METRICS_FILE)) == _without_time(
        store.read_jsonl(straight / store.METRICS_FILE)
    )
    assert _without_time([strict_json((killed / store.SUMMARY_FILE).read_text())]) == (
        _without_time([strict_json((straight / store.SUMMARY_FILE).read_text())])
    )
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")]  # no lock, no temps


# -- issue 25, part 1: the data is part of a run's identity ----------------------------------

FINGERPRINT = re.compile(r"npz:[0-9a-f]{12}/10c/[0-9a-f]{8}")


def test_a_resume_on_other_data_is_refused_naming_both_fingerprints_and_changes_nothing(
    tiny_args, tiny_npz_root: Path, tmp_path: Path, monkeypatch, capsys, snapshot
):
    zeros = write_zero_npz(tmp_path / "zeros")
    out = tmp_path / "run"
    argv = tiny_args(out, "--epochs", "2")
    crash_after_first_epoch(argv, monkeypatch)
    stored = yaml.safe_load((out / store.CONFIG_FILE).read_text())["data"]["fingerprint"]
    assert FINGERPRINT.fullmatch(stored)
    provenance = json.loads((out / store.PROVENANCE_FILE).read_text())["data_fingerprint"]
    assert provenance["fingerprint"] == stored and provenance["num_classes"] == 10
    train = provenance["files"]["train.npz"]
    assert train["size"] == (tiny_npz_root / "train.npz").stat().st_size
    assert int(train["crc32"], 16) == zlib.crc32((tiny_npz_root / "train.npz").read_bytes())
    assert provenance["subsets"]["train"] and provenance["subsets"]["val"] is None
    capsys.readouterr()
    before = snapshot(out)
    swapped = list(argv)
    swapped[swapped.index("--data-root") + 1] = str(zeros)
    assert main(swapped) == 2
    line = one_error_line(capsys)
    found = FINGERPRINT.findall(line)
    assert "trained on other data" in line and len(set(found)) == 2 and found[0] == stored
    assert snapshot(out) == before  # nothing written, the checkpoint of epoch 1 kept
    # The same data in another folder (a copy) is the same data: the run resumes.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_npz_root, copy)
    moved = list(argv)
    moved[moved.index("--data-root") + 1] = str(copy)
    assert main(moved) == 0
    assert [r["epoch"] for r in store.read_jsonl(out / store.METRICS_FILE)] == [1, 2]


def test_a_run_made_before_fingerprints_resumes_with_a_warning(
    tiny_args, tmp_path: Path, monkeypatch, caplog
):
    out = tmp_path / "run"
    argv = tiny_args(out, "--epochs", "2")
    crash_after_first_epoch(argv, monkeypatch)
    config = yaml.safe_load((out / store.CONFIG_FILE).read_text())
    del config["data"]["fingerprint"]
    (out / store.CONFIG_FILE).write_text(yaml.safe_dump(config))
    checkpoint = torch.load(out / store.CHECKPOINT_FILE, weights_only=True)
    del checkpoint["config_identity"]["data"]["fingerprint"]
    torch.save(checkpoint, out / store.CHECKPOINT_FILE)
    with caplog.at_level(logging.WARNING, logger="harness.rundir"):
        assert main(argv) == 0
    assert "records no data fingerprint" in caplog.text


def test_the_report_never_pools_runs_on_other_data_as_seeds(
    finished_run, tiny_args, tmp_path: Path
):
    from harness.report import aggregate, load_results

    zeros = write_zero_npz(tmp_path / "zeros")
    same = tmp_path / "same_s1"
    other = tmp_path / "zeros_s1"
    assert main(tiny_args(same, "--seed", "1")) == 0
    argv = tiny_args(other, "--seed", "1")
    argv[argv.index("--data-root") + 1] = str(zeros)
    assert main(argv) == 0
    table = aggregate(load_results([finished_run["dir"], same, other]))
    table = table[table["eval_mode"] == table["eval_mode"].iloc[0]]
    assert sorted(table["seeds"].tolist()) == [1, 2]  # A's two seeds pooled, B's run alone
    assert table["experiment_id"].nunique() == 2


def test_init_from_a_run_on_other_data_is_allowed_and_recorded(
    finished_run, tmp_path: Path, capsys
):
    zeros = write_zero_npz(tmp_path / "zeros")
    out = tmp_path / "tuned"
    argv = tiny_train_args(out, zeros, "--init-from", str(finished_run["dir"]), method="act")
    assert main(argv) == 0
    provenance = json.loads((out / store.PROVENANCE_FILE).read_text())
    source = yaml.safe_load((finished_run["dir"] / store.CONFIG_FILE).read_text())
    assert provenance["init_from_data_fingerprint"] == source["data"]["fingerprint"]
    assert provenance["data_fingerprint"]["fingerprint"] != source["data"]["fingerprint"]


def test_init_from_a_run_on_another_class_count_names_both_fingerprints(tmp_path: Path):
    from harness.runs import _check_init_data

    with pytest.raises(Exception, match=r"trained on 5 classes \(data.fingerprint npz:a/5c/b\)"):
        _check_init_data(tmp_path, "npz:a/5c/b", "npz:c/10c/d")
    _check_init_data(tmp_path, "npz:a/10c/b", "npz:c/10c/d")  # other data, same classes: fine
    _check_init_data(tmp_path, None, "npz:c/10c/d")  # a source made before fingerprints


def test_fingerprints_are_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch):
    from harness.data import fingerprint

    monkeypatch.setenv("PACT_NPZ_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    first = fingerprint.file_checksum(path)
    assert int(first["crc32"], 16) == zlib.crc32(path.read_bytes())
    assert len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 1
    calls = []
    real = fingerprint._checksum_uncached
    monkeypatch.setattr(fingerprint, "_checksum_uncached", lambda *a: calls.append(a) or real(*a))
    assert fingerprint.file_checksum(path) == first and calls == []  # from the cache
    path.write_bytes(b"abd" * 1000)  # same size, new content (and mtime)
    os.utime(path, ns=(1, 1))
    changed = fingerprint.file_checksum(path)
    assert len(calls) == 1 and changed["crc32"] != first["crc32"]


# -- issue 25, part 2: test labels inside the training classes, every format ----------------


def test_npz_test_labels_outside_the_training_classes_are_one_error_line(
    tiny_args, tmp_path: Path, capsys
):
    """Train on classes 0-2, test on 0-9 (the audit's data/fewcls): refused before anything is
    written, naming the unseen labels and the classes that were trained."""
    root = tmp_path / "fewcls"
    root.mkdir()
    write_npz_split(root / "train.npz", np.arange(90) % 3, 1)
    write_npz_split(root / "test.npz", np.arange(100) % 10, 2)
    out = tmp_path / "run"
    argv = tiny_args(out, "--train-subset", "60")
    argv[argv.index("--data-root") + 1] = str(root)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"{root / 'test.npz'}: test label(s) 3, 4, 5, 6, 7 and 2 more never occur" in line
    assert f"training split {root / 'train.npz'} (its classes: 0, 1, 2)" in line
    assert not out.exists()


def test_torchvision_test_labels_outside_the_training_classes_are_refused(tmp_path: Path):
    root = write_cifar_batches(tmp_path)
    folder = root / "cifar-10-batches-py"
    for name in (f"data_batch_{i}" for i in range(1, 6)):
        batch = pickle.loads((folder / name).read_bytes())
        batch["labels"] = [label % 4 for label in batch["labels"]]  # classes 0-3 only
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = DataConfig(root=str(root), verify_checksums=False)
    with pytest.raises(DataError, match=r"test_batch: test label\(s\) 4, 5, 6, 7, 8 and 1 more"):
        build_data("cifar10", data, batch_size=10)


def test_image_folder_test_classes_must_be_training_classes(tmp_path: Path, capsys):
    """An image folder's test classes are its class folders, which train/ must share; a class
    folder without images in train/ is one error line, not a class never trained."""
    argv = write_image_folders(tmp_path / "folders")
    (tmp_path / "folders" / "val" / "emu").mkdir()
    Image.fromarray(make_images(1, 5)[0][0]).save(tmp_path / "folders" / "val" / "emu" / "0.png")
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    assert "train/ has classes ['cat', 'dog'] but val/ has" in one_error_line(capsys)
    (tmp_path / "folders" / "train" / "emu").mkdir()  # the class folder, but no image in it
    assert main([*argv, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "emu" in line and not out.exists()


# -- issue 25, part 4: divergence you can recover from ---------------------------------------


def test_weights_broken_by_a_step_with_a_finite_loss_are_never_checkpointed(
    tiny_args, tmp_path: Path, capsys
):
    """One step an epoch at a rate of 1e38: the loss of that step is finite, the update breaks
    the model (its outputs overflow). Epoch 1 ends with failed.json and no checkpoint (not a
    method-contract error at evaluation), and the rerun at a sane rate in the same folder is
    documented and recorded."""
    out = tmp_path / "run"
    one_step = ("--train-subset", "32", "--batch-size", "32")
    assert main(tiny_args(out, *one_step, "--lr", "1e38")) == 2
    line = one_error_line(capsys)
    assert "training diverged: after epoch 1 " in line and "loss stayed finite" in line
    assert "--restart-from-epoch 0 --lr LOWER" in line
    failure = strict_json((out / store.FAILED_FILE).read_text())
    assert failure["epoch"] == 1 and "after epoch 1" in failure["error"]
    assert not (out / store.CHECKPOINT_FILE).exists()
    assert store.read_jsonl(out / store.METRICS_FILE) == []
    # The plain rerun at a lower rate is another configuration, and says how to change it here.
    assert main(tiny_args(out, *one_step, "--lr", "0.05")) == 2
    assert "add --restart-from-epoch 0 (or 0: from scratch)" in one_error_line(capsys)
    assert main(tiny_args(out, *one_step, "--lr", "0.05", "--restart-from-epoch", "0")) == 0
    assert not (out / store.FAILED_FILE).exists() and (out / store.SUMMARY_FILE).is_file()
    provenance = strict_json((out / store.PROVENANCE_FILE).read_text())
    (restart,) = provenance["restarts"]
    assert restart["from_epoch"] == 0
    assert restart["changes"] == ["optim.lr: 1e+38 (before) != 0.05 (now)"]
    assert "--restart-from-epoch" in restart["command_line"]
    assert yaml.safe_load((out / store.CONFIG_FILE).read_text())["optim"]["lr"] == 0.05


def test_a_restart_from_the_kept_checkpoint_trains_on_at_the_new_rate(
    tiny_args, tmp_path: Path, monkeypatch, capsys
):
    out = tmp_path / "run"
    argv = tiny_args(out, "--epochs", "3", "--lr", "0.05")
    crash_after_first_epoch(argv, monkeypatch)
    kept = (out / store.CHECKPOINT_FILE).read_bytes()
    first = store.read_jsonl(out / store.METRICS_FILE)
    # Epoch 2 at 1e38 breaks the model: its checkpoint is not written, epoch 1's stays.
    blow_up = tiny_args(out, "--epochs", "3", "--lr", "1e38", "--restart-from-epoch", "1")
    blow_up[blow_up.index("--train-subset") + 1] = "64"
    assert main(blow_up) == 2
    line = one_error_line(capsys)
    assert "training diverged" in line and "epoch 2" in line
    assert "--restart-from-epoch 1 --lr LOWER" in line
    assert (out / store.CHECKPOINT_FILE).read_bytes() == kept
    assert strict_json((out / store.FAILED_FILE).read_text())["epoch"] == 2
    # Only the learning rate may change, and only from the kept epoch (or 0).
    assert main(tiny_args(out, "--epochs", "3", "--lr", "0.02", "--restart-from-epoch", "2")) == 2
    assert "keeps the checkpoint of epoch 1 only" in one_error_line(capsys)
    other = tiny_args(out, "--epochs", "4", "--lr", "0.02", "--restart-from-epoch", "1")
    assert main(other) == 2
    assert "changes only optim.lr" in one_error_line(capsys)
    assert main(tiny_args(out, "--epochs", "3", "--lr", "0.02", "--restart-from-epoch", "1")) == 0
    lines = store.read_jsonl(out / store.METRICS_FILE)
    assert [r["epoch"] for r in lines] == [1, 2, 3] and lines[0] == first[0]
    # 2 steps an epoch, drops at 0.6/0.75/0.9 of 6 steps: epoch 2 ends at step 3 (one drop),
    # epoch 3 at step 5 (three): the new base rate times the schedule's factor.
    assert lines[1]["lr"] == pytest.approx(0.02 * 0.1)
    assert lines[2]["lr"] == pytest.approx(0.02 * 0.1**3)
    restarts = strict_json((out / store.PROVENANCE_FILE).read_text())["restarts"]
    assert [r["from_epoch"] for r in restarts] == [1, 1]
    # each against the kept checkpoint's rate (the failed restart wrote none)
    assert restarts[0]["changes"] == ["optim.lr: 0.05 (before) != 1e+38 (now)"]
    assert restarts[1]["changes"] == ["optim.lr: 0.05 (before) != 0.02 (now)"]
    assert yaml.safe_load((out / store.CONFIG_FILE).read_text())["optim"]["lr"] == 0.02
    assert not (out / store.FAILED_FILE).exists()
    # The restarted run now resumes (and re-evaluates) at its new rate without the flag.
    assert main(tiny_args(out, "--epochs", "3", "--lr", "0.02")) == 0


# -- issue 25, part 5: one line where a traceback was ----------------------------------------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_train_ends_in_one_line_that_says_how_to_resume(
    sig, status, tiny_args, tmp_path: Path
):
    out = tmp_path / "run"
    argv = [*console_script(), *tiny_args(out, "--epochs", "200")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts a job in the background (`cmd &`) ignores SIGINT in it, and the
        # child inherits that: give it Python's default, as an interactive run has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / store.CHECKPOINT_FILE).exists():
            time.sleep(0.2)
        assert (out / store.CHECKPOINT_FILE).exists(), "no epoch finished in time"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    name = signal.Signals(sig).name
    assert re.fullmatch(
        rf"interrupted \({name}\): {re.escape(str(out))}: its checkpoint of epoch \d+ is kept; "
        "rerun the same command to resume",
        lines[0],
    )
    _files_parse(out)
    assert not (out / store.LOCK_FILE).exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _forged_npz(path: Path, header: dict, data: bytes) -> None:
    """An npz whose 'images.npy' has ``header`` and ``data``, beside a sound 'labels.npy'."""
    import io
    import zipfile

    from numpy.lib import format as npy

    images = io.BytesIO()
    write = npy.write_array_header_2_0 if len(repr(header)) > 60000 else npy.write_array_header_1_0
    write(images, header)
    labels = io.BytesIO()
    np.save(labels, np.arange(10) % 10)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", images.getvalue() + data)
        archive.writestr("labels.npy", labels.getvalue())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            {"descr": "|u1", "fortran_order": False, "shape": (10**11, 32, 32, 3)},
            "'images' declares shape (100000000000, 32, 32, 3) of uint8 (307200000000000 bytes)"
            " but holds 1000 bytes",
        ),
        (
            {"descr": "|u1", "fortran_order": False, "shape": (10, 32, 32, 3), "pad": "x" * 70000},
            "'images' has an unreadable .npy header (Header info length",
        ),
    ],
)
def test_an_npz_header_that_does_not_fit_its_size_is_refused_before_allocating(
    header, expected, tiny_args, tmp_path: Path, capsys
):
    root = tmp_path / "forged"
    root.mkdir()
    _forged_npz(root / "train.npz", header, b"\0" * 1000)
    write_npz_split(root / "test.npz", np.arange(20) % 10, 2)
    out = tmp_path / "run"
    argv = tiny_args(out)
    argv[argv.index("--data-root") + 1] = str(root)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"{root / 'train.npz'}: {expected}" in line and "allow_pickle" not in line
    assert not out.exists()


def _forge_shape(c):
    key = next(k for k, v in c["model"].items() if v.dim() == 4)
    c["model"][key] = torch.zeros(3, 3, 1, 1)
    return f"holds {key} as torch.float32 (3, 3, 1, 1) but the model has torch.float32"


def _forge_missing(c):
    key = sorted(c["model"])[-1]
    del c["model"][key]
    return f"lacks {key}"


def _forge_epoch(c):
    c["epoch"] = "1"
    return "holds epoch '1', not a count of epochs"


def _forge_rng(c):
    c["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    return "holds an 'rng' without torch's random state"


def _forge_groups(c):
    c["optimizer"]["param_groups"] = c["optimizer"]["param_groups"][:1]
    return "holds optimizer groups of ["


@pytest.mark.parametrize(
    "forge", [_forge_shape, _forge_missing, _forge_epoch, _forge_rng, _forge_groups]
)
def test_a_hand_forged_checkpoint_is_one_error_line_and_left_as_it_is(
    forge, tiny_args, tmp_path: Path, monkeypatch, capsys
):
    out = tmp_path / "run"
    argv = tiny_args(out, "--epochs", "2")
    crash_after_first_epoch(argv, monkeypatch)
    path = out / store.CHECKPOINT_FILE
    checkpoint = torch.load(path, weights_only=True)
    expected = forge(checkpoint)
    torch.save(checkpoint, path)
    forged = path.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"checkpoint {path} {expected}" in line and "delete it and rerun" in line
    assert path.read_bytes() == forged


def test_report_out_below_a_file_or_read_only_is_one_error_line(
    finished_run, tmp_path: Path, capsys, monkeypatch
):
    run = copy_run(finished_run, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["report", str(run), "--out", str(blocker / "report")]) == 2
    assert f"--out {blocker / 'report'}: {blocker} is a file" in one_error_line(capsys)
    assert main(["report", str(run), "--out", str(blocker)]) == 2
    assert f"--out {blocker} exists and is not a directory" in one_error_line(capsys)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores permissions: make access() say what it means
        real = os.access
        monkeypatch.setattr(
            store.os,
            "access",
            lambda p, mode: False if Path(p) == locked and mode & os.W_OK else real(p, mode),
        )
    try:
        assert main(["report", str(run), "--out", str(locked / "report")]) == 2
        line = one_error_line(capsys)
        assert f"--out {locked / 'report'}: the directory {locked} is not writable" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_a_corrupt_per_image_archive_is_skipped_with_a_warning(
    finished_run, tmp_path: Path, capsys
):
    run = copy_run(finished_run, tmp_path)
    per_image = run / store.PER_IMAGE_FILE
    per_image.write_bytes(per_image.read_bytes()[: per_image.stat().st_size // 2])
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: report: skipping {per_image}: BadZipFile" in err
    assert "Traceback" not in err and (out / "report.md").is_file()


@pytest.mark.parametrize(
    ("limit", "expected"), [(1200, "File too large"), (400 * 1024, "torch.save failed")]
)
def test_a_file_size_limit_is_one_error_line_and_the_run_resumes_after(
    limit, expected, tiny_args, tmp_path: Path
):
    """RLIMIT_FSIZE stands in for a full disk (Python ignores SIGXFSZ, so writes fail with
    EFBIG): 1200 bytes stop the provenance write before training, 400 kB the first checkpoint
    (torch's RuntimeError). Either is one error line; the same command then completes."""
    import resource

    out = tmp_path / "run"
    argv = [*console_script(), *tiny_args(out, "--epochs", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PACT_NPZ_CACHE": "off"}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, preexec_fn=cap, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert "free space and rerun the same command" in lines[0]
    _files_parse(out)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert main(tiny_args(out, "--epochs", "2")) == 0
    assert [r["epoch"] for r in store.read_jsonl(out / store.METRICS_FILE)] == [1, 2]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data follows)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_error_line_with_pils_limit_kept(tmp_path: Path, capsys):
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    argv = write_image_folders(tmp_path / "folders")
    bomb = tmp_path / "folders" / "train" / "dog" / "bomb.png"
    _png_header_only(bomb, 15000, 15000)  # 225 megapixels, over twice PIL's limit
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{bomb}: refused as a decompression bomb" in line and "MAX_IMAGE_PIXELS" in line
    assert not out.exists() and Image.MAX_IMAGE_PIXELS == limit


def test_an_image_of_another_size_in_a_cifar_sized_folder_is_named(tmp_path: Path, capsys):
    argv = write_image_folders(tmp_path / "folders")
    odd = tmp_path / "folders" / "val" / "cat" / "odd.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(odd)
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    assert f"{odd}: is 40x40 but the images of this data root are 32x32" in one_error_line(capsys)
    assert not out.exists()


def test_a_symlink_loop_in_an_image_folder_is_refused(tmp_path: Path, capsys):
    argv = write_image_folders(tmp_path / "folders")
    loop = tmp_path / "folders" / "train" / "cat" / "loop"
    loop.symlink_to("..")
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{loop} leads back to {tmp_path / 'folders' / 'train'}" in line
    assert "symlink loop" in line and not out.exists()


def test_image_folder_and_cifar_batch_fingerprints_follow_their_files(tmp_path: Path):
    """Every format's fingerprint: a copy elsewhere is the same data; one file changed is not."""
    write_image_folders(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    write_image_folders(tmp_path / "b")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "b/val/dog/0.png")
    write_cifar_batches(tmp_path / "c")
    shutil.copytree(tmp_path / "c", tmp_path / "c_copy")
    write_cifar_batches(tmp_path / "d")
    batch = tmp_path / "d" / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(batch.read_bytes())
    entry["data"][0, 0] ^= 1  # one pixel of one image
    batch.write_bytes(pickle.dumps(entry, protocol=2))

    def fingerprint(root: str, dataset: str = "imagenet") -> str:
        data = DataConfig(root=str(tmp_path / root), verify_checksums=False)
        return build_data(dataset, data, batch_size=4).fingerprint["fingerprint"]

    a, b = fingerprint("a"), fingerprint("b")
    assert re.fullmatch(r"imagefolder:[0-9a-f]{12}/2c/[0-9a-f]{8}", a)
    assert fingerprint("copy") == a and b != a
    c, d = fingerprint("c", "cifar10"), fingerprint("d", "cifar10")
    assert re.fullmatch(r"torchvision:[0-9a-f]{12}/10c/[0-9a-f]{8}", c)
    assert fingerprint("c_copy", "cifar10") == c and d != c


# -- a full disk under a running grid ------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """``mount(size)``: a tmpfs of ``size`` at ``tmp_path/fs`` (a real full disk: ENOSPC), and
    ``mount.grow(size)`` remounts it larger (space freed); unmounted at the end. Skipped where
    this process may not mount one (not root, or no CAP_SYS_ADMIN in its container)."""
    folder = tmp_path / "fs"
    folder.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a full disk needs a small tmpfs: mounting one needs root")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()})")
        mounted.append(folder)
        return folder

    def grow(size: str) -> None:
        cmd = ["mount", "-o", f"remount,size={size}", str(folder)]
        subprocess.run(cmd, check=True, capture_output=True)

    mount.grow = grow
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.mark.ray
@pytest.mark.slow
def test_a_disk_filling_under_a_grid_ends_it_in_one_line_with_status_4_and_resume_finishes(
    small_tmpfs, tmp_path: Path, tiny_npz_root: Path
):
    """The study folder on a 1.5 MB tmpfs: a trial's checkpoint of ~0.6 MB (and Tune's copy
    of it) fills it. The driver stops every trial, ends with status 4 and one ``error:`` line
    naming the full disk, the failed write and the ``--resume`` command; trials.csv says which
    trial failed on the disk and which were interrupted; nothing is half-written. With space
    freed (the tmpfs remounted larger), the printed command finishes the study."""
    tree = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    base = {**tree["base"], "optim": {**tree["base"]["optim"], "epochs": 3}}
    tree.update(
        name="tiny", base=base, methods={"resnet": {}}, depths=[8], seeds=[0, 1],
        vanilla_depths=[], resources={"cpu": 1, "gpu": 0}, max_concurrent=2, max_failures=1,
    )  # fmt: skip
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(tree))
    out = small_tmpfs("1500k") / "study"
    argv = [*console_script(), "grid", "--preset", str(preset), "--out", str(out)]
    argv += ["--data-root", str(tiny_npz_root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PACT_NPZ_CACHE": "off"}
    tic = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400)
    first_s = time.monotonic() - tic
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    last = proc.stderr.strip().splitlines()[-1]
    assert errors == [last], proc.stderr
    match = re.fullmatch(
        r"error: out of disk space mid-study \(trial (resnet_d8_s[01]): StorageError: cannot "
        rf"write (.*?) to {re.escape(str(out / 'trials'))}/\1: (.*)\); study "
        rf"{re.escape(str(out))}: (.*); nothing is half-written; free space, then continue "
        r"with: (.*)",
        last,
    )
    assert match, last
    faulty, kept, resume = match[1], match[4], match[5]
    assert "No space left on device" in match[3] or "bytes free in" in match[3], last
    again = ["grid", "--preset", str(preset), "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert shlex.split(resume) == ["pact-harness", *again, "--resume"], resume
    # Every file the harness wrote parses; no temporary file is left.
    assert not [p for p in out.rglob("*.tmp") if RAY_DIR not in p.relative_to(out).parts]
    for name in ("resnet_d8_s0", "resnet_d8_s1"):
        if (out / "trials" / name / store.CONFIG_FILE).exists():
            _files_parse(out / "trials" / name)
    if "may be stale" in kept:  # trials.csv could not be written either: resume re-checks
        assert "could not be written" in kept
    else:
        table = pd.read_csv(out / TRIALS_TABLE, keep_default_na=False).set_index("trial_id")
        status = table["status"].to_dict()
        assert status[faulty] == "failed" and "cannot write" in table.loc[faulty, "error"]
        interrupted = sorted(n for n, s in status.items() if s == "interrupted")
        assert set(status.values()) <= {"failed", "interrupted", "pending"}, status
        if interrupted:
            assert kept.startswith(f"{len(interrupted)} running trial(s) marked interrupted")
        else:
            assert kept == "no trial was running", kept
    small_tmpfs.grow("64m")  # space freed
    tic = time.monotonic()
    second = subprocess.run(
        [*console_script(), *shlex.split(resume)[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    resume_s = time.monotonic() - tic
    assert second.returncode == 0, second.stdout + second.stderr
    table = pd.read_csv(out / TRIALS_TABLE, keep_default_na=False)
    assert list(table["status"]) == ["finished", "finished"], table.to_dict("records")
    for name in ("resnet_d8_s0", "resnet_d8_s1"):
        epochs = [r["epoch"] for r in store.read_jsonl(out / "trials" / name / store.METRICS_FILE)]
        assert epochs == [1, 2, 3], (name, epochs)
    assert sorted(set(pd.read_csv(out / store.RESULTS_FILE)["trial_id"])) == [
        "resnet_d8_s0",
        "resnet_d8_s1",
    ]
    print(f"first launch {first_s:.0f} s, resume {resume_s:.0f} s; it ended with: {last}")


def test_tables_that_cannot_be_written_for_lack_of_space_say_they_may_be_stale(
    tmp_path: Path, tiny_npz_root: Path, monkeypatch
):
    """The driver's own writes at the end of a launch (trials.csv, results.csv) failing with
    ENOSPC: no traceback, the launch counts as stopped by the disk (status 4), the old table
    is left whole, and the line says it may be stale and that --resume re-checks."""
    from harness.cli.grid import EXIT_DISK_FULL, exit_status
    from harness.study import conclude_study, stop_line, trial_write_fault, write_fault

    preset = tmp_path / "tiny.yaml"
    tree = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    tree.update(name="tiny", methods={"resnet": {}}, depths=[8], seeds=[0, 1], vanilla_depths=[])
    preset.write_text(yaml.safe_dump(tree))
    study = plan_study(
        GridOptions(preset=str(preset), out=str(tmp_path / "s"), data_root=str(tiny_npz_root))
    )
    study.folder.mkdir(parents=True)
    write_trials_table(study, {})
    before = (study.folder / TRIALS_TABLE).read_bytes()
    names = [t.name for t in study.trials]

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", full)
    records = {names[0]: {"status": "running"}}
    outcome = conclude_study(study, records, 1.0, argv=["pact-harness", "grid", "--preset", "x"])
    assert outcome.stopped == "disk" and exit_status(outcome) == EXIT_DISK_FULL == 4
    line = stop_line(outcome)
    path = study.folder / TRIALS_TABLE
    assert line.startswith(f"error: out of disk space mid-study ({TRIALS_TABLE}: No space left")
    assert f"1 running trial(s) stopped (finished epochs are kept), but {TRIALS_TABLE} " in line
    assert f"could not be written (No space left on device: {path}) and may be stale" in line
    assert "--resume re-checks every trial's run directory" in line
    assert line.endswith(f"--out {study.folder} --resume")
    assert path.read_bytes() == before
    assert not [p.name for p in study.folder.iterdir() if p.name.endswith(".tmp")]
    # What counts as a write fault, and what does not.
    assert write_fault(EOFError("Ray: connection closed")) is None
    assert write_fault(OSError(errno.EFBIG, os.strerror(errno.EFBIG), "f")) == "File too large: f"
    wrapped = RuntimeError("upload failed: OSError: [Errno 28] Error writing bytes to file")
    assert "[Errno 28]" in write_fault(wrapped)
    assert trial_write_fault("DivergenceError: loss is nan at epoch 2") is None
    torch_said = "StorageError: cannot write the checkpoint of epoch 2 to /r: torch.save failed"
    assert trial_write_fault(torch_said, tmp_path) is None  # space is left: not a full disk
    assert trial_write_fault("StorageError: cannot write to /r: File too large; free space") == (
        "StorageError: cannot write to /r: File too large"
    )
