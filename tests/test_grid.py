"""The study grid: presets, their expansion, bad input, and real studies on Ray Tune.

The Ray tests (marked ``ray``) share one two-node Ray cluster started on this machine with
``ray.cluster_utils.Cluster`` (1 CPU per node); the interrupted-study test starts its own local
Ray through the CLI, as a user would. Every study trains ResNet-8/14 for two epochs on the tiny
200-image npz dataset of ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import console_script, make_images, tiny_train_args, write_zero_npz

from harness import store
from harness.cli import main
from harness.errors import ConfigError
from harness.estimate import launch_order
from harness.grid import run_grid
from harness.presets import expand, list_presets, load_preset, trial_name
from harness.registry import get_method, list_methods
from harness.study import (
    STUDY_FILE,
    TRIALS_TABLE,
    GridOptions,
    check_study_folder,
    checkpoint_epoch,
    fetch_data,
    outcome_lines,
    plan_study,
    restore_run_dir,
    study_record,
)
from harness.train import CRASH_ENV, InjectedCrash, run_trial

#: The smoke preset's base, for the small presets the tests write.
TINY_BASE = load_preset("smoke").base


def write_preset(folder: Path, **changes) -> Path:
    """A one-trial preset file (vanilla ResNet-8, seed 0) with ``changes`` applied."""
    tree = {
        "name": "tiny",
        "description": "test study",
        "base": TINY_BASE,
        "methods": {"resnet": {}},
        "depths": [8],
        "seeds": [0],
        "vanilla_method": "resnet",
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 1,
        **changes,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def rows_of(study_dir: Path) -> pd.DataFrame:
    return pd.read_csv(study_dir / store.RESULTS_FILE, keep_default_na=False)


# -- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["smoke", "cpu-mini", "paper-cifar", "paper-imagenet", "pact-ablation", "pact-budget"]
)
def test_shipped_presets_expand_to_valid_uniquely_named_trials(name):
    assert name in list_presets()
    preset = load_preset(name)
    trials = expand(preset)  # validates every trial config and method config
    names = [t.name for t in trials]
    assert len(names) == len(set(names))
    assert all(t.config["model"]["depth"] in preset.depths + preset.vanilla_depths for t in trials)
    assert {t.config["seed"] for t in trials} == set(preset.seeds)


def test_smoke_preset_runs_every_registered_method_and_the_depth_series():
    trials = expand(load_preset("smoke"))
    assert {t.config["method"] for t in trials} == set(list_methods())
    vanilla = {t.config["model"]["depth"] for t in trials if t.config["method"] == "resnet"}
    assert vanilla == {8, 14}


def test_time_penalty_goes_into_the_method_config_and_the_trial_name():
    preset = load_preset(
        "smoke",
        {"methods": {"*": None, "act": {"tau": [0.02, 0.05]}, "pact": {"lambda": 0.1}}},
    )
    trials = {t.name: t for t in expand(preset)}
    assert list(trials) == [
        "act_d14_tau0.02_s0",
        "act_d14_tau0.05_s0",
        "pact_d14_lambda0.1_s0",
        "resnet_d8_s0",
        "resnet_d14_s0",
    ]
    assert trials["act_d14_tau0.05_s0"].config["method_config"]["tau"] == 0.05
    assert trials["pact_d14_lambda0.1_s0"].config["method_config"]["lambda"] == 0.1
    assert trial_name("sact", 110, {"tau": 0.01}, 2) == "sact_d110_tau0.01_s2"


def test_set_overrides_reach_preset_keys_and_every_trial_base():
    overrides = {
        "seeds": [0, 1],
        "vanilla_depths": [],
        "methods": {"*": None, "act": {"tau": [0.02]}},
        "resources": {"cpu": 0.5},
        "optim": {"epochs": 1},
    }
    preset = load_preset("smoke", overrides)
    trials = expand(preset)
    assert [t.name for t in trials] == ["act_d14_tau0.02_s0", "act_d14_tau0.02_s1"]
    assert all(t.config["optim"]["epochs"] == 1 for t in trials)
    assert preset.resources == {"cpu": 0.5, "gpu": 0.0}


def test_search_space_entry_uses_the_method_default_grid():
    preset = load_preset("smoke", {"methods": {"*": None, "act": "search_space"}})
    taus = [t.config["method_config"]["tau"] for t in expand(preset) if t.config["method"] == "act"]
    assert taus == list(get_method("act").search_space["tau"])


def test_dry_run_lists_the_trials_and_writes_nothing(capsys, tmp_path: Path, tiny_npz_root):
    out = tmp_path / "study"
    argv = ["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert main([*argv, "--set", "optim.epochs=1", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for trial in expand(load_preset("smoke")):
        assert f"  {trial.name} " in printed
    assert "epochs=1" in printed and not out.exists()


# -- bad input: one error line, exit status 2, nothing written --------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preset", "no-such-preset"], "unknown preset 'no-such-preset'; presets:"),
        (["--set", "methods.act.gamma=[1]"], "grid key methods.act.gamma: method 'act' has no"),
        (["--set", "methods.resnet.tau=[0.01]"], "method 'resnet' has no config field 'tau'"),
        (["--set", "method.tau=0.01"], "--set method.*: method settings differ per method"),
        (["--set", "optim.epochz=1"], "unknown config key 'optim.epochz'"),
        (["--set", "depths=[9]"], "depth=9 is not of the form 6n+2"),
        (["--set", "methods.act.tau=[-1]"], "method.tau=-1.0 must be >= 0"),
        (["--set", "methods.nope={}"], "unknown method 'nope'; registered methods:"),
        (["--gpus-per-trial", "1"], "resources.gpu=1 but the trials run with device=cpu"),
        (["--cpus-per-trial", "0"], "resources.cpu=0 must be > 0"),
        (["--set", "device=cuda"], "device=cuda but resources.gpu=0"),
        (["--set", "eval.modes=[sampled]"], "eval.modes (ACTResNet)='sampled' is not allowed"),
        (["--set", "init_from=/no/such/run"], "/no/such/run: no run with a checkpoint there"),
        (
            ["--preset", "paper-imagenet", "--set", "init_from=torchvision:resnet50"],
            "this run's backbone is resnet101 (model.depth=101); use --init-from "
            "torchvision:resnet101",
        ),
    ],
)
def test_bad_grid_input_is_one_error_line(extra, message, capsys, tmp_path, tiny_npz_root):
    out = tmp_path / "study"
    argv = ["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert main([*argv, *extra]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


def test_unreachable_address_is_refused_before_anything_is_written(capsys, tmp_path, tiny_npz_root):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "study"
    argv = ["grid", "--preset", str(write_preset(tmp_path)), "--out", str(out)]
    argv += ["--data-root", str(tiny_npz_root), "--address", f"127.0.0.1:{port}"]
    tic = time.monotonic()
    assert main(argv) == 2
    assert f"--address 127.0.0.1:{port}: cannot reach a Ray cluster" in one_error_line(capsys)
    assert time.monotonic() - tic < 30 and not out.exists()


def test_a_study_grown_on_other_data_is_refused_naming_both_fingerprints(
    capsys, caplog, tmp_path, tiny_npz_root
):
    preset = write_preset(tmp_path)
    out = tmp_path / "study"
    stored = plan_study(GridOptions(preset=str(preset), out=str(out), data_root=str(tiny_npz_root)))
    assert re.fullmatch(r"npz:[0-9a-f]{12}/10c", stored.data_fingerprint)
    out.mkdir()
    (out / STUDY_FILE).write_text(yaml.safe_dump(study_record(stored)))
    before = (out / STUDY_FILE).read_bytes()
    zeros = write_zero_npz(tmp_path / "zeros")
    argv = ["grid", "--preset", str(preset), "--out", str(out), "--data-root", str(zeros)]
    assert main([*argv, "--resume", "--set", "seeds=[0,1]"]) == 2
    line = one_error_line(capsys)
    assert "holds a different study: it ran on other data" in line
    now = plan_study(GridOptions(preset=str(preset), out=str(out), data_root=str(zeros)))
    assert f"{stored.data_fingerprint} (stored) != {now.data_fingerprint} (now)" in line
    assert stored.data_fingerprint != now.data_fingerprint
    assert (out / STUDY_FILE).read_bytes() == before
    # The stored data in another folder is the same study, grown.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_npz_root, copy)
    grown = GridOptions(
        preset=str(preset), out=str(out), data_root=str(copy), overrides=["seeds=[0,1]"]
    )
    assert check_study_folder(plan_study(grown), resume=True) == "grown"
    # A study made before fingerprints: continued, with a warning.
    record = yaml.safe_load(before)
    del record["data_fingerprint"]
    (out / STUDY_FILE).write_text(yaml.safe_dump(record))
    with caplog.at_level("WARNING", logger="harness.study"):
        assert check_study_folder(now, resume=True) == "same"
    assert "records no data fingerprint" in caplog.text


def test_study_folder_must_hold_the_same_study(capsys, tmp_path, tiny_npz_root):
    preset = write_preset(tmp_path)
    out = tmp_path / "study"
    argv = ["grid", "--preset", str(preset), "--out", str(out), "--data-root", str(tiny_npz_root)]
    # Another study in the folder (two epochs more): refused with the difference named.
    other = plan_study(GridOptions(preset=str(preset), out=str(out), data_root=str(tiny_npz_root)))
    other.trials[0].config["optim"]["epochs"] = 4
    out.mkdir()
    (out / STUDY_FILE).write_text(yaml.safe_dump(study_record(other)))
    before = (out / STUDY_FILE).read_bytes()
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "holds a different study" in line and "optim.epochs: 4 (stored) != 2 (now)" in line
    assert main([*argv, "--resume"]) == 2
    assert "holds a different study" in one_error_line(capsys)
    assert (out / STUDY_FILE).read_bytes() == before
    # The same study: continuing it needs --resume (a run data root elsewhere is still the same).
    same = plan_study(GridOptions(preset=str(preset), out=str(out), data_root=str(tiny_npz_root)))
    same.trials[0].config["data"]["root"] = "/elsewhere"
    (out / STUDY_FILE).write_text(yaml.safe_dump(study_record(same)))
    assert main(argv) == 2
    assert "already holds this study; add --resume" in one_error_line(capsys)
    # The stored study had fewer seeds: this study grown, continued only with --resume (which
    # keeps the stored trials). A stored trial the preset no longer plans: another study.
    assert main([*argv, "--set", "seeds=[0,1]"]) == 2
    assert "already holds this study with 1 trial(s) fewer; add --resume" in one_error_line(capsys)
    grown_options = GridOptions(
        preset=str(preset), out=str(out), data_root=str(tiny_npz_root), overrides=["seeds=[0,1]"]
    )
    assert check_study_folder(plan_study(grown_options), resume=True) == "grown"
    assert check_study_folder(same, resume=True) == "same"
    (out / STUDY_FILE).write_text(yaml.safe_dump(study_record(plan_study(grown_options))))
    assert main([*argv, "--resume"]) == 2
    line = one_error_line(capsys)
    assert "holds a different study: 1 trial(s) only in the stored study (resnet_d8_s1)" in line
    # A folder with files but no study.
    (out / STUDY_FILE).unlink()
    (out / "notes.txt").write_text("mine")
    assert main(argv) == 2
    assert "is not empty and holds no study (notes.txt)" in one_error_line(capsys)


def test_init_from_reaches_the_method_trials_and_is_checked(finished_run, tmp_path, tiny_npz_root):
    source = finished_run["dir"]  # a finished vanilla ResNet-8 run
    options = GridOptions(
        preset=str(write_preset(tmp_path, methods={"pact": {}}, vanilla_depths=[8])),
        data_root=str(tiny_npz_root),
        overrides=[f"init_from={source}"],
    )
    study = plan_study(options)
    assert {t.name: t.init_from for t in study.trials} == {
        "pact_d8_lambda0.01_s0": str(source),
        "resnet_d8_s0": None,  # the depth series trains from scratch
    }
    options.overrides.append("depths=[14]")
    with pytest.raises(ConfigError, match="model.depth=8 differs from this run's 14"):
        plan_study(options)


def test_init_from_is_checked_with_the_class_count_of_the_study_data(
    finished_run, tmp_path, tiny_npz_root
):
    # A 4-class dataset (an ImageNet-subset-like case): the trials build a 4-way head, so the
    # pre-check must too, or it refuses a fitting initialiser and accepts an unfitting one.
    four = tmp_path / "four_classes"
    four.mkdir()
    for name, n, seed in (("train", 200, 1), ("test", 100, 2)):
        images, labels = make_images(n, seed)
        np.savez(four / f"{name}.npz", images=images, labels=labels % 4)
    source = tmp_path / "resnet_d8_four"
    assert main(tiny_train_args(source, four)) == 0
    assert yaml.safe_load((source / store.CONFIG_FILE).read_text())["model"]["depth"] == 8
    options = GridOptions(
        preset=str(write_preset(tmp_path, methods={"pact": {}}, vanilla_depths=[])),
        data_root=str(four),
        overrides=[f"init_from={source}"],
    )
    study = plan_study(options)  # the 4-class run fits the 4-class data
    assert [t.init_from for t in study.trials] == [str(source)]
    ten_class_run = str(finished_run["dir"])  # trained on the 10-class tiny dataset
    options.overrides = [f"init_from={ten_class_run}"]
    with pytest.raises(ConfigError, match="trial pact_d8_lambda0.01_s0: --init-from"):
        plan_study(options)
    options.data_root = str(tiny_npz_root)  # ... which fits the 10-class data
    assert plan_study(options).trials[0].init_from == ten_class_run


def test_download_happens_once_in_the_driver_and_only_if_needed(tmp_path, tiny_npz_root):
    preset = str(write_preset(tmp_path))
    empty = tmp_path / "empty"
    study = plan_study(GridOptions(preset=preset, data_root=str(empty), download=True))
    assert study.download and not empty.exists()  # planning (and --dry-run) fetch nothing
    assert {t.config["data"]["download"] for t in study.trials} == {False}  # trials never do
    study = plan_study(GridOptions(preset=preset, data_root=str(tiny_npz_root), download=True))
    fetch_data(study)  # a dataset is there already: no network needed
    with pytest.raises(ConfigError, match="fetches CIFAR-10 only"):
        plan_study(
            GridOptions(
                preset=str(
                    write_preset(tmp_path, base={"model": {"dataset": "imagenet"}}, depths=[50])
                ),
                data_root=str(empty),
                download=True,
            )
        )


# -- Tune checkpoint restore (no cluster) -----------------------------------------------------


def test_a_lost_run_directory_resumes_from_the_tune_checkpoint_copy(
    tmp_path, tiny_npz_root, monkeypatch
):
    monkeypatch.setenv(CRASH_ENV, "1")
    trial = expand(load_preset(str(write_preset(tmp_path))))[0]
    cfg = trial.run_config
    data = dataclasses.replace(cfg.data, root=str(tiny_npz_root))
    cfg = dataclasses.replace(cfg, data=data)
    run_dir, tune_copy = tmp_path / "run", tmp_path / "tune_checkpoint"
    with pytest.raises(InjectedCrash):
        run_trial(cfg, run_dir)
    monkeypatch.delenv(CRASH_ENV)
    run_dir.rename(tune_copy)  # what Tune persisted after epoch 1; the node lost the run dir
    assert restore_run_dir(tune_copy, run_dir) is True
    assert restore_run_dir(tune_copy, run_dir) is False  # already as new
    run_trial(cfg, run_dir)
    epochs = [m["epoch"] for m in store.read_jsonl(run_dir / store.METRICS_FILE)]
    assert epochs == [1, 2]


# -- real studies on Ray ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on this machine, 1 CPU each; the test process is not connected."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.mark.ray
def test_smoke_study_fills_the_table_with_every_trial_and_mode(
    ray_cluster, capsys, tmp_path, tiny_npz_root
):
    out = tmp_path / "smoke"
    argv = ["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert main([*argv, "--address", ray_cluster.address]) == 0
    printed = capsys.readouterr().out
    trials = expand(load_preset("smoke"))
    assert f"study smoke: {len(trials)}/{len(trials)} trials finished, 0 failed" in printed
    assert printed.count("finished ") >= len(trials)  # one progress line per trial
    # Trials start longest first (the order --estimate schedules), two at a time here.
    started = [line.split()[-1] for line in printed.splitlines() if "| started " in line]
    assert sorted(started[:2]) == sorted(launch_order(load_preset("smoke"), trials)[:2])
    rows = rows_of(out)
    keys = list(zip(rows["trial_id"], rows["eval_mode"], rows["threshold"], strict=True))
    assert len(keys) == len(set(keys))  # no duplicates
    expected = {
        (t.name, mode)
        for t in trials
        for mode in get_method(t.config["method"]).model_cls.eval_modes
    }
    assert set(zip(rows["trial_id"], rows["eval_mode"], strict=True)) == expected
    assert list(rows.columns[: len(store.RESULT_COLUMNS)]) == [
        c for c in store.RESULT_COLUMNS if c in rows.columns
    ]
    table = pd.read_csv(out / TRIALS_TABLE, keep_default_na=False)
    assert list(table["trial_id"]) == [t.name for t in trials]
    assert set(table["status"]) == {"finished"}
    # each trial's wall seconds in the grid: positive, and within the whole launch's
    launch = re.search(r"trials finished, 0 failed, 0 unfinished \((\d+) s\)", printed)
    assert launch is not None
    assert (table["seconds"] > 0).all() and (table["seconds"] <= int(launch.group(1)) + 1).all()
    assert yaml.safe_load((out / STUDY_FILE).read_text())["preset"] == "smoke"
    # The example plug-in (examples/aig_gates, installed by `make install`) is a trial like any
    # built-in one, and the study's report shows it in its tables and figures.
    assert "aig_d14_target_rate0.6_s0" in set(rows["trial_id"])
    report = out / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    assert "AIG gates (example plug-in)" in (report / "paper_table.md").read_text()
    assert (report / "units_histogram.png").is_file()
    # Nothing left to do: --resume only gathers, without starting Ray.
    assert main([*argv, "--resume"]) == 0
    assert f"all {len(trials)} trials finished before" in capsys.readouterr().out


@pytest.mark.ray
def test_crashed_trial_retries_from_its_checkpoint_and_finishes(
    ray_cluster, tmp_path, tiny_npz_root, monkeypatch
):
    monkeypatch.setenv(CRASH_ENV, "1")  # forwarded to the trials (PACT_HARNESS_*)
    preset = write_preset(tmp_path)
    outcome = run_grid(
        GridOptions(
            preset=str(preset),
            out=str(tmp_path / "study"),
            data_root=str(tiny_npz_root),
            address=ray_cluster.address,
        )
    )
    assert outcome.complete and outcome.finished == ["resnet_d8_s0"]
    run_dir = outcome.study.run_dir("resnet_d8_s0")
    epochs = [m["epoch"] for m in store.read_jsonl(run_dir / store.METRICS_FILE)]
    assert epochs == [1, 2]  # epoch 1 was not trained again
    table = pd.read_csv(outcome.study.folder / TRIALS_TABLE, keep_default_na=False)
    assert table.loc[0, "failures"] == 1 and "InjectedCrash" in table.loc[0, "error"]
    assert table.loc[0, "status"] == "finished"


@pytest.mark.ray
def test_a_trial_out_of_retries_fails_the_study_and_resume_finishes_it(
    ray_cluster, tmp_path, tiny_npz_root, monkeypatch
):
    monkeypatch.setenv(CRASH_ENV, "1")  # forwarded to the trials (PACT_HARNESS_*)
    preset = write_preset(tmp_path)
    options = GridOptions(
        preset=str(preset),
        out=str(tmp_path / "study"),
        data_root=str(tiny_npz_root),
        address=ray_cluster.address,
        max_failures=0,
    )
    said: list[str] = []  # the progress lines the command line prints
    outcome = run_grid(options, emit=said.append)
    assert list(outcome.failed) == ["resnet_d8_s0"] and not outcome.finished
    assert "InjectedCrash" in outcome.failed["resnet_d8_s0"]
    assert any("FAILED   resnet_d8_s0: harness.train.InjectedCrash" in line for line in said)
    assert "  FAILED resnet_d8_s0: harness.train.InjectedCrash" in "\n".join(outcome_lines(outcome))
    table = pd.read_csv(outcome.study.folder / TRIALS_TABLE, keep_default_na=False)
    assert table.loc[0, "status"] == "failed"
    outcome = run_grid(dataclasses.replace(options, resume=True))
    assert outcome.complete  # the resumed run starts after the crash epoch


@pytest.mark.ray
def test_a_finished_study_grown_by_a_seed_runs_only_the_added_trial(
    ray_cluster, tmp_path, tiny_npz_root
):
    options = GridOptions(
        preset=str(write_preset(tmp_path)),
        out=str(tmp_path / "study"),
        data_root=str(tiny_npz_root),
        address=ray_cluster.address,
    )
    assert run_grid(options).complete
    first = tmp_path / "study" / "trials" / "resnet_d8_s0"
    mtime = (first / store.SUMMARY_FILE).stat().st_mtime_ns
    grown = dataclasses.replace(options, resume=True, overrides=["seeds=[0,1]"])
    said: list[str] = []
    outcome = run_grid(grown, emit=said.append)
    assert outcome.complete and sorted(outcome.finished) == ["resnet_d8_s0", "resnet_d8_s1"]
    printed = "\n".join(said)
    assert "grown to 2 trials" in printed and "1 finished before, 1 to run" in printed
    assert (first / store.SUMMARY_FILE).stat().st_mtime_ns == mtime  # not rerun
    stored = yaml.safe_load((outcome.study.folder / STUDY_FILE).read_text())
    assert [t["name"] for t in stored["trials"]] == ["resnet_d8_s0", "resnet_d8_s1"]
    rows = rows_of(outcome.study.folder)
    assert sorted(set(rows["trial_id"])) == ["resnet_d8_s0", "resnet_d8_s1"]
    assert sorted(set(rows["seed"])) == [0, 1]


@pytest.mark.ray
def test_a_diverging_trial_is_retried_then_reported_failed(ray_cluster, tmp_path, tiny_npz_root):
    optim = {**TINY_BASE["optim"], "lr": 1e6}
    preset = write_preset(tmp_path, base={**TINY_BASE, "optim": optim})  # max_failures: 1
    said: list[str] = []
    outcome = run_grid(
        GridOptions(
            preset=str(preset),
            out=str(tmp_path / "study"),
            data_root=str(tiny_npz_root),
            address=ray_cluster.address,
        ),
        emit=said.append,
    )
    assert list(outcome.failed) == ["resnet_d8_s0"] and not outcome.finished
    error = outcome.failed["resnet_d8_s0"]
    assert "DivergenceError: training diverged: the loss is " in error and "at epoch 1" in error
    assert any("retrying resnet_d8_s0 from its last checkpoint" in line for line in said)
    table = pd.read_csv(outcome.study.folder / TRIALS_TABLE, keep_default_na=False)
    row = table.loc[0].to_dict()
    assert row["status"] == "failed" and row["failures"] == 2, row  # the attempt and its retry
    assert "training diverged" in row["error"], row
    run_dir = outcome.study.run_dir("resnet_d8_s0")
    failure = json.loads((run_dir / store.FAILED_FILE).read_text())
    assert failure["epoch"] == 1 and "diverged" in failure["error"]
    assert not (run_dir / store.SUMMARY_FILE).exists()


@pytest.mark.ray
def test_bad_input_inside_a_trial_fails_it_once_without_retries(
    ray_cluster, tmp_path, tiny_npz_root
):
    # Only loading the data shows that 200 images cannot fill one batch of 256.
    preset = write_preset(tmp_path, base={**TINY_BASE, "optim": {"batch_size": 256}})
    said: list[str] = []
    outcome = run_grid(
        GridOptions(
            preset=str(preset),
            out=str(tmp_path / "study"),
            data_root=str(tiny_npz_root),
            address=ray_cluster.address,
        ),
        emit=said.append,
    )
    assert "batch_size=256 exceeds the 200 training images" in outcome.failed["resnet_d8_s0"]
    assert any("FAILED   resnet_d8_s0" in line for line in said)  # the progress lines came
    assert not any("retrying" in line for line in said)
    table = pd.read_csv(outcome.study.folder / TRIALS_TABLE, keep_default_na=False)
    assert table.loc[0, "failures"] == 0 and table.loc[0, "status"] == "failed"


@pytest.mark.ray
def test_trials_are_placed_on_both_nodes_of_a_cluster(ray_cluster, tmp_path, tiny_npz_root):
    preset = write_preset(tmp_path, seeds=[0, 1])
    outcome = run_grid(
        GridOptions(
            preset=str(preset),
            out=str(tmp_path / "study"),
            data_root=str(tiny_npz_root),
            address=ray_cluster.address,
        )
    )
    assert outcome.complete
    nodes = {node.node_id for node in ray_cluster.list_all_nodes()}
    assert len(nodes) == 2
    # 1 CPU per trial and per node: the two trials overlap, so they must use both nodes.
    assert set(outcome.node_ids.values()) == nodes


@pytest.mark.ray
def test_gpu_request_on_a_cpu_cluster_is_refused_before_any_trial(
    ray_cluster, tmp_path, tiny_npz_root
):
    base = {**TINY_BASE, "device": "auto"}
    options = GridOptions(
        preset=str(write_preset(tmp_path, base=base)),
        out=str(tmp_path / "study"),
        data_root=str(tiny_npz_root),
        address=ray_cluster.address,
        gpus_per_trial=0.5,
    )
    with pytest.raises(ConfigError, match="per trial but the Ray cluster has no GPU"):
        run_grid(options)
    assert not (tmp_path / "study").exists()


@pytest.mark.ray
def test_interrupted_study_resumes_only_the_unfinished_trials(tmp_path, tiny_npz_root):
    preset = write_preset(tmp_path, seeds=[0, 1, 2], max_concurrent=1)
    out = tmp_path / "study"
    # `--resume` both starts and continues a study (as `make run` uses it).
    argv = [*console_script(), "grid", "--preset", str(preset), "--out", str(out), "--resume"]
    argv += ["--data-root", str(tiny_npz_root)]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(  # SIGINT at its default even when the tests run as a background job
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("trials/*/summary.json")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)  # Ctrl+C: Tune stops and the driver returns
        assert first.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        log.close()
    done = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trials/*/summary.json")}
    assert 1 <= len(done) < 3
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(done)} finished before, {3 - len(done)} to run" in second.stdout
    for name, mtime in done.items():  # finished trials were not rerun
        assert (out / "trials" / name / "summary.json").stat().st_mtime_ns == mtime
    trials = [f"resnet_d8_s{seed}" for seed in range(3)]
    assert sorted(rows_of(out)["trial_id"]) == trials  # each trial once
    assert json.loads((out / "trials" / "resnet_d8_s2" / "summary.json").read_text())["seed"] == 2


def test_the_equivalence_margin_is_recorded_and_cannot_change_after_the_fact(
    tmp_path, tiny_npz_root
):
    from harness.study import GridOptions, plan_study, study_differences, study_record

    preset = write_preset(
        tmp_path,
        equivalence_margin=0.5,
        comparisons=[{"a": "method=resnet,depth=8", "b": "vanilla", "split": "test"}],
    )
    root = str(tiny_npz_root)
    study = plan_study(GridOptions(preset=str(preset), out=str(tmp_path / "s"), data_root=root))
    record = study_record(study)
    assert record["equivalence_margin"] == 0.5
    assert record["comparisons"] == [
        {"a": "method=resnet,depth=8", "b": "vanilla", "split": "test"}
    ]
    assert study_differences(record, study) == ([], [])
    changed = write_preset(tmp_path, equivalence_margin=2.0)
    later = plan_study(GridOptions(preset=str(changed), out=str(tmp_path / "s"), data_root=root))
    differences, _ = study_differences(record, later)
    assert len(differences) == 1 and "equivalence_margin 0.5 (stored) != 2.0" in differences[0]
    # A study stored before margins were recorded may declare one now.
    old = {k: v for k, v in record.items() if k != "equivalence_margin"}
    assert study_differences(old, later) == ([], [])


# -- a cluster started with `ray start --head`, as docs/cluster.md documents ------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pids_of(head: subprocess.Popen, temp_dir: Path) -> list[int]:
    """The live processes of a head started by :func:`ray_head`: its session (`ray start
    --block` leads it: GCS, raylet, agents and the trial workers, which have process groups of
    their own) and any process whose command line names its temp dir; never this process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp sid
        if fields and fields[0] == "Z":
            continue  # a zombie is already gone
        if int(fields[3]) == head.pid or str(temp_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _stop_head(head: subprocess.Popen, temp_dir: Path, grace_s: float = 20) -> None:
    """Stop a head started by :func:`ray_head`, by PID (never `ray stop`: it ends every Ray
    process of the machine): SIGTERM to its `ray start --block` process group (what
    `ray stop` sends), then SIGKILL to whatever of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (head.poll() is None or _pids_of(head, temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _pids_of(head, temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=10)


@contextlib.contextmanager
def ray_head(tmp_path: Path):
    """``ray start --head`` on a free port with a temp dir of its own, as a user with a token at
    hand (a file named by ``RAY_AUTH_TOKEN_PATH``, as ``~/.ray/auth_token`` would be) and no
    ``RAY_AUTH_MODE``: Ray 2.59+ then runs the head with token authentication. Yields
    ``(address, env, head process, temp dir)``; the env is the user's for the driver too."""
    temp_dir = Path(tempfile.mkdtemp(prefix="pact-ray-", dir="/tmp"))  # short: unix sockets
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PACT_HARNESS_"))}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), OMP_NUM_THREADS="1")
    port = _free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    argv = [ray, "start", "--head", "--port", str(port), "--temp-dir", str(temp_dir / "ray")]
    argv += ["--num-cpus", "2", "--include-dashboard=false", "--block"]
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "the head did not start in 60 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env, head, temp_dir
    finally:
        _stop_head(head, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_the_documented_recipe_ray_start_head_then_grid_address_runs_a_study(
    tmp_path, tiny_npz_root
):
    preset = write_preset(tmp_path)
    out = tmp_path / "study"
    with ray_head(tmp_path) as (address, env, _, _):
        argv = [*console_script(), "grid", "--preset", str(preset), "--address", address]
        argv += ["--data-root", str(tiny_npz_root), "--out", str(out)]
        tic = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
        seconds = time.monotonic() - tic
    said = proc.stdout + proc.stderr
    # The head really runs token authentication: the driver had to bring the token.
    assert "Token authentication is enabled" in (tmp_path / "head.log").read_text()
    assert proc.returncode == 0, said
    assert "InvalidAuthToken" not in said and seconds < 120, (seconds, said)
    assert f"to run on Ray cluster at {address}" in proc.stdout
    table = pd.read_csv(out / TRIALS_TABLE, keep_default_na=False)
    assert list(table["status"]) == ["finished"], table.to_dict("records")


@pytest.mark.ray
@pytest.mark.slow
def test_a_head_stopped_mid_study_ends_the_grid_with_status_3_and_one_resume_line(
    tmp_path, tiny_npz_root
):
    optim = {**TINY_BASE["optim"], "epochs": 40}  # slow enough to be running at the stop
    preset = write_preset(tmp_path, base={**TINY_BASE, "optim": optim})
    out = tmp_path / "study"
    run_dir = out / "trials" / "resnet_d8_s0"
    with ray_head(tmp_path) as (address, env, head, temp_dir):
        argv = [*console_script(), "grid", "--preset", str(preset), "--address", address]
        argv += ["--data-root", str(tiny_npz_root), "--out", str(out)]
        with (
            (tmp_path / "driver.out").open("w") as stdout,
            (tmp_path / "driver.err").open("w") as stderr,
        ):
            driver = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
            try:
                deadline = time.monotonic() + 120
                while not (run_dir / store.CHECKPOINT_FILE).is_file():  # epoch 1 is kept
                    assert driver.poll() is None, (tmp_path / "driver.err").read_text()
                    assert time.monotonic() < deadline, "no epoch finished in time"
                    time.sleep(0.2)
                _stop_head(head, temp_dir)  # what `ray stop` does to this head
                status = driver.wait(timeout=90)
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
    err = (tmp_path / "driver.err").read_text()
    assert status == 3, (tmp_path / "driver.out").read_text() + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: lost the Ray cluster mid-study"), err
    assert f"study {out}: 1 running trial(s) marked interrupted" in last, last
    command = last.split("continue with: ", 1)[1]
    assert shlex.split(command) == ["pact-harness", *argv[len(console_script()) :], "--resume"], (
        command
    )
    assert sum("--resume" in line for line in err.splitlines()) == 1, err
    table = pd.read_csv(out / TRIALS_TABLE, keep_default_na=False)
    assert list(table["status"]) == ["interrupted"], table.to_dict("records")
    assert checkpoint_epoch(run_dir) >= 1  # kept for --resume


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_to_the_driver_ends_it_with_status_143_and_one_resume_line(tmp_path, tiny_npz_root):
    optim = {**TINY_BASE["optim"], "epochs": 40}  # still running at the signal
    preset = write_preset(tmp_path, base={**TINY_BASE, "optim": optim})
    out = tmp_path / "study"
    argv = [*console_script(), "grid", "--preset", str(preset), "--out", str(out)]
    argv += ["--data-root", str(tiny_npz_root)]
    with (tmp_path / "driver.err").open("w") as stderr:
        driver = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while not (out / "trials" / "resnet_d8_s0" / store.CHECKPOINT_FILE).is_file():
                assert driver.poll() is None, (tmp_path / "driver.err").read_text()
                assert time.monotonic() < deadline, "no epoch finished in time"
                time.sleep(0.2)
            driver.send_signal(signal.SIGTERM)  # a batch system's time limit, `kill`
            status = driver.wait(timeout=90)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    err = (tmp_path / "driver.err").read_text()
    assert status == 143, err
    assert "SIGTERM received" not in err and "Stack trace" not in err, err  # Ray's C++ dump
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted (SIGTERM): study {out}: 1 running trial(s)"), err
    again = ["grid", "--preset", str(preset), "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert last.endswith(f"continue with: {shlex.join(['pact-harness', *again])} --resume"), last
    table = pd.read_csv(out / TRIALS_TABLE, keep_default_na=False)
    assert list(table["status"]) == ["interrupted"], table.to_dict("records")
