"""``pact-harness profile``: rows, JSON output, trained runs, cost columns, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import store
from harness.cli import main
from harness.contract import EvalSpec, ModelSpec
from harness.costs.timing import time_interleaved
from harness.errors import ConfigError
from harness.evaluate import plan_specs
from harness.models import create_model
from harness.profile import PROFILE_FIELDS, format_table
from harness.registry import get_method

FAST = ["--device", "cpu", "--warmup", "0", "--repeats", "1"]
F32 = 4
#: Keys every profile row holds (the --out JSON and the table read them).
ROW_KEYS = (
    "method",
    "depth",
    "eval_mode",
    "execution",
    "batch_size",
    "flops_per_image_mean",
    "flops_per_image_std",
    "peak_memory_bytes",
    "seconds_per_batch",
)


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, element by element (state-dict entries)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_profile_architecture_writes_json_rows(tmp_path, capsys):
    out = tmp_path / "profile.json"
    argv = ["profile", "--method", "resnet,pact", "--depth", "8", "--batch-sizes", "1,3"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    # resnet: standard; pact: deterministic x2 executions, stochastic, sampled x2; two batches.
    assert len(rows) == 2 * (1 + 5)
    # The memory columns against values counted here: every parameter and buffer of the model
    # (element by element), the image batch [B, 3, 32, 32] in float32, and an activation peak of
    # at least two first-block states [B, 16, 32, 32] (a unit's input and its conv's output).
    state = {name: state_bytes(create_model(name, depth=8)) for name in ("resnet", "pact")}
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["peak_memory_device"] == "cpu"
        batch = row["batch_size"]
        assert row["parameter_bytes"] == state[row["method"]]
        assert row["input_bytes"] == batch * 3 * 32 * 32 * F32
        assert row["activation_peak_bytes"] >= 2 * batch * 16 * 32 * 32 * F32
        assert row["peak_memory_bytes"] == (
            state[row["method"]] + batch * 3 * 32 * 32 * F32 + row["activation_peak_bytes"]
        )
        assert row["seconds_per_batch"] > 0 and row["vanilla_seconds_per_batch"] > 0
    assert {(r["method"], r["eval_mode"], r["execution"]) for r in rows} >= {
        ("resnet", "standard", "masked"),
        ("pact", "deterministic", "early_exit"),
        ("pact", "stochastic", "masked"),
    }
    vanilla = [r for r in rows if r["method"] == "resnet"]
    assert all(r["flops_per_image_mean"] == r["vanilla_flops_per_image"] for r in vanilla)
    assert {r["batch_size"] for r in rows} == {1, 3}
    printed = capsys.readouterr().out
    assert "GFLOPs/img" in printed and "2 x multiply-accumulates" in printed


def test_profile_set_changes_halting(tmp_path):
    out = tmp_path / "p.json"
    argv = ["profile", "--method", "pact", "--depth", "14", "--batch-sizes", "4", "--modes"]
    argv += ["deterministic", "--executions", "early_exit", "--set", "method.halting_bias_init=3"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    # Bias +3: every image halts after the first unit of each block.
    assert row["units_executed_mean"] == 3.0
    assert row["flops_fraction_of_vanilla"] < 0.75
    assert row["execution"] == "early_exit" and row["threshold"] == 0.5


def test_plan_specs_modes_and_executions():
    spec = get_method("pact")
    model = spec.build(ModelSpec(depth=8), spec.config_cls())
    assert [(s.mode, s.execution) for s in plan_specs(model, executions="auto")] == [
        ("deterministic", "early_exit"),
        ("stochastic", "masked"),
        ("sampled", "early_exit"),
    ]
    specs = plan_specs(model, ["deterministic"], ["masked"], thresholds=(0.3, 0.7))
    assert specs == [
        EvalSpec("deterministic", "masked", 0.3),
        EvalSpec("deterministic", "masked", 0.7),
    ]
    with pytest.raises(ConfigError, match=r"eval.modes \(PACTResNet\)='act' is not allowed"):
        plan_specs(model, ["act"])
    with pytest.raises(ConfigError, match="none of early_exit is offered"):
        plan_specs(model, ["stochastic"], ["early_exit"])
    with pytest.raises(ConfigError, match="eval.execution='fast' is not allowed"):
        plan_specs(model, executions=["fast"])
    with pytest.raises(ConfigError, match="--thresholds=.*in \\(0, 1\\)"):
        plan_specs(model, thresholds=(1.5,), fields={**PROFILE_FIELDS})


def test_time_interleaved_alternates_and_takes_the_median():
    calls: list[str] = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    reports = time_interleaved(runs, torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three interleaved repeats
    for report in reports.values():
        assert len(report.seconds) == 3 and report.warmup == 1
        assert report.seconds_per_batch == sorted(report.seconds)[1]
    with pytest.raises(ConfigError):
        time_interleaved(runs, torch.device("cpu"), repeats=0)


def test_format_table_handles_missing_values():
    text = format_table([{"method": "resnet", "depth": 8, "threshold": None}])
    assert "resnet" in text.splitlines()[2] and " - " in text.splitlines()[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nope", "--depth", "8"], "unknown method 'nope'"),
        (["--method", "pact", "--depth", "8", "--modes", "act"], "--modes (PACTResNet)='act'"),
        (["--method", "resnet", "--depth", "8", "--batch-sizes", "0"], "batch size 0"),
        (["--method", "resnet", "--depth", "8", "--batch-sizes", "2,-1"], "batch size -1"),
        (["--method", "resnet", "--depth", "9"], "depth=9"),
        (["--method", "resnet", "--depth", "8", "--executions", "fast"], "--executions='fast'"),
        (["--method", "act", "--set", "method.nope=1"], "method.nope"),
        ([], "give --run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["profile", *argv, *FAST, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_run_without_checkpoint_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["profile", "--run", str(tmp_path / "empty"), *FAST]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["profile", "--run", str(tmp_path / "missing"), *FAST]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_run_and_method_together_is_an_error(finished_run, capsys):
    assert main(["profile", "--run", str(finished_run["dir"]), "--method", "act", *FAST]) == 2
    assert "either --run" in capsys.readouterr().err


def test_run_checkpoint_missing_is_an_error(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run["dir"], run)
    (run / store.CHECKPOINT_FILE).unlink()
    assert main(["profile", "--run", str(run), *FAST]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_profile_trained_run_on_its_test_images(finished_run, tmp_path):
    out = tmp_path / "run.json"
    argv = ["profile", "--run", str(finished_run["dir"]), "--batch-sizes", "2,30"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["batch_size"] for r in rows] == [2, 30]  # 30 > the 20 test images: repeated
    assert rows[1]["input_bytes"] == 30 * 3 * 32 * 32 * 4  # a compact batch, not a slice
    assert all(r["images"] == "test" and r["method"] == "resnet" for r in rows)
    assert rows[0]["epoch"] == 1


def test_trained_run_rows_carry_cost_columns(finished_run):
    rows = pd.read_csv(Path(finished_run["dir"]) / store.RESULTS_FILE)
    for column in ("peak_memory_bytes", "peak_memory_device", "seconds_per_batch"):
        assert column in rows.columns and rows[column].notna().all()
    assert (rows["peak_memory_device"] == "cpu").all()
    assert (rows["peak_memory_bytes"] > 0).all()
    # The test split (20 images) is smaller than the evaluation batch: one batch of 20.
    assert (rows["cost_batch_size"] == 20).all()
