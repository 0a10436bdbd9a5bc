"""``pact-harness reevaluate``: a trained run evaluated again by the current code, its weights
and training provenance untouched, the evaluation recorded; studies regathered; bad paths
refused before anything is written; the report keeps training and evaluation code apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import store
from harness.cli import main
from harness.errors import ConfigError
from harness.reevaluate import EVALUATIONS_KEY, plan_targets
from harness.report import load_results
from harness.report.aggregate import check_code_versions


def _copy(finished_run, tmp_path: Path, name: str = "run") -> Path:
    run = tmp_path / name
    shutil.copytree(finished_run["dir"], run)
    return run


@pytest.fixture(scope="module")
def act_run(tmp_path_factory, tiny_npz_root: Path) -> Path:
    """A finished 1-epoch ACT ResNet-20 (three units per block: halting has choices) trained
    in this process on the tiny data, its halting bias at 0 so that units halt."""
    out = tmp_path_factory.mktemp("act") / "act_d20"
    argv = [
        "train",
        "--method",
        "act",
        "--depth",
        "20",
        "--data-root",
        str(tiny_npz_root),
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--set",
        "method.halting_bias_init=0.0",
        "--progress",
        "off",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


def _drop_eval_outputs_of_older_code(run: Path) -> None:
    """What an older evaluation left: no eval_code_version, no FLOP verification."""
    table = pd.read_csv(run / store.RESULTS_FILE)
    table = table.drop(columns=["eval_code_version", "flops_verified"], errors="ignore")
    table["accuracy"] = 0.0  # a wrong number the new evaluation must replace
    table.to_csv(run / store.RESULTS_FILE, index=False)


def test_a_run_is_evaluated_again_and_only_its_evaluation_changes(act_run, tmp_path, capsys):
    run = tmp_path / "act"
    shutil.copytree(act_run, run)
    before = pd.read_csv(run / store.RESULTS_FILE)
    checkpoint = (run / store.CHECKPOINT_FILE).read_bytes()
    metrics = (run / store.METRICS_FILE).read_text()
    provenance = json.loads((run / store.PROVENANCE_FILE).read_text())
    _drop_eval_outputs_of_older_code(run)
    assert main(["reevaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"[1/1] {run.resolve()}: test acc " in out
    after = pd.read_csv(run / store.RESULTS_FILE)
    # the same numbers as the first evaluation (same weights, deterministic modes), the
    # columns of the current code back, the wrong accuracy gone
    keys = ["eval_mode", "execution", "split", "threshold"]
    merged = before.merge(after, on=keys, suffixes=("_before", "_after"))
    assert len(merged) == len(before) == len(after)
    for column in ("accuracy", "flops_per_image_mean", "units_executed_mean"):
        assert (merged[f"{column}_before"] == merged[f"{column}_after"]).all(), column
    assert after["flops_verified"].astype(str).str.len().gt(0).all()
    assert (after["eval_code_version"] == after["code_version"]).all()  # same code here
    # weights, training log and training provenance untouched; the evaluation recorded
    assert (run / store.CHECKPOINT_FILE).read_bytes() == checkpoint
    assert (run / store.METRICS_FILE).read_text() == metrics
    now = json.loads((run / store.PROVENANCE_FILE).read_text())
    assert now["code_fingerprint"] == provenance["code_fingerprint"]
    assert now["created_utc"] == provenance["created_utc"]
    (record,) = now[EVALUATIONS_KEY]
    assert record["code_version"] == after["eval_code_version"].iloc[0]
    assert record["command_line"][-1] == str(run)
    assert main(["reevaluate", str(run)]) == 0  # a second time: two records
    assert len(json.loads((run / store.PROVENANCE_FILE).read_text())[EVALUATIONS_KEY]) == 2


def test_a_study_folder_is_evaluated_again_and_gathered(finished_run, tmp_path, capsys):
    study = tmp_path / "study"
    names = ["resnet_d8_s0", "resnet_d8_s1"]
    for name in names:
        run = _copy(finished_run, study / store.TRIALS_DIR, name)
        _drop_eval_outputs_of_older_code(run)
    record = {"preset": "x", "trials": [{"name": n, "config": {}} for n in reversed(names)]}
    (study / store.STUDY_FILE).write_text(yaml.safe_dump(record))
    assert main(["reevaluate", str(study)]) == 0
    assert "gathered " in capsys.readouterr().out
    table = pd.read_csv(study / store.RESULTS_FILE)
    assert list(dict.fromkeys(table["trial_id"])) == list(reversed(names))  # study.yaml order
    assert (table["accuracy"] > 0).all() and "eval_code_version" in table


def test_bad_paths_are_refused_before_any_run_is_touched(finished_run, tmp_path, capsys):
    good = _copy(finished_run, tmp_path, "good")
    results = (good / store.RESULTS_FILE).read_bytes()
    unfinished = _copy(finished_run, tmp_path, "unfinished")
    config = yaml.safe_load((unfinished / store.CONFIG_FILE).read_text())
    config["optim"]["epochs"] = 5  # its checkpoint holds epoch 1 of 5
    (unfinished / store.CONFIG_FILE).write_text(yaml.safe_dump(config))
    bare = tmp_path / "study"
    (bare / store.TRIALS_DIR / "t").mkdir(parents=True)
    (bare / store.STUDY_FILE).write_text(yaml.safe_dump({"trials": [{"name": "t"}]}))
    cases = {
        tmp_path / "nothing": "neither a run directory",
        unfinished: "not trained to the last epoch",
        bare: "no trial of this study has a finished checkpoint",
    }
    for path, message in cases.items():
        assert main(["reevaluate", str(good), str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert (good / store.RESULTS_FILE).read_bytes() == results  # checked before any work
    with pytest.raises(ConfigError, match="neither"):
        plan_targets([tmp_path / "nothing"])


def test_rows_evaluated_by_other_code_are_not_pooled_with_the_rest(finished_run, tmp_path):
    """Two seeds of one experiment, one evaluated again by other code: the report sees two
    code versions (training code, evaluated by ...) and refuses to pool them."""
    rows = []
    for seed, evaluated in ((0, None), (1, "src 0123456789 / torch 2.14.1")):
        table = pd.read_csv(finished_run["dir"] / store.RESULTS_FILE)
        table["seed"] = seed
        table["trial_id"] = f"r{seed}"
        table["eval_code_version"] = evaluated or table["code_version"]
        rows.append(table)
    pd.concat(rows).to_csv(tmp_path / "results.csv", index=False)
    frame = load_results([tmp_path / "results.csv"])
    codes = sorted(set(frame["code_version"]))
    assert len(codes) == 2 and codes[1].endswith(", evaluated by src 0123456789 / torch 2.14.1")
    with pytest.raises(ConfigError, match="come from 2 code versions"):
        check_code_versions(frame)
