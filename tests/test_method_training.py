"""Short trainings of the adaptive methods: the time penalty really buys fewer units; warm starts;
re-evaluating a trained run at new thresholds without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import store
from harness.cli import main
from harness.runs import load_checkpoint


def train(tiny_args, out: Path, method: str, *extra: str) -> dict:
    argv = tiny_args(out, "--depth", "20", *extra, method=method)
    # the whole tiny training set, small batches: ~40 steps
    argv += ["--train-subset", "200", "--batch-size", "16", "--epochs", "3", "--repeats", "1"]
    assert main(argv) == 0
    return json.loads((out / store.SUMMARY_FILE).read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "flag", "small", "large"),
    [("act", "--tau", "0.0", "1.0"), ("pact", "--lambda", "0.0", "1.0")],
)
def test_larger_time_penalty_executes_fewer_units(tiny_args, tmp_path, method, flag, small, large):
    low = train(tiny_args, tmp_path / "low", method, flag, small)
    high = train(tiny_args, tmp_path / "high", method, flag, large)
    # 3 blocks of 3 units: at most 9; the penalty must buy a clear reduction
    assert high["units_executed_mean"] < low["units_executed_mean"] - 0.5
    assert len(high["units_executed_per_block"]) == 3


def test_init_from_vanilla_restores_backbone_and_leaves_halting_fresh(tiny_args, tmp_path):
    vanilla = tmp_path / "vanilla"
    assert main([*tiny_args(vanilla, "--depth", "14", "--epochs", "1")]) == 0
    act = tmp_path / "act"
    argv = tiny_args(act, "--depth", "14", "--epochs", "1", method="act")
    assert main([*argv, "--init-from", str(vanilla), "--set", "optim.lr=1e-12"]) == 0
    source = load_checkpoint(vanilla / store.CHECKPOINT_FILE)["model"]
    tuned = load_checkpoint(act / store.CHECKPOINT_FILE)["model"]
    conv = "backbone.blocks.1.0.conv1.weight"
    # lr ~ 0: the backbone conv weights are the vanilla run's (up to a 1e-12 step)
    torch.testing.assert_close(tuned[conv], source[conv], rtol=0, atol=1e-9)
    provenance = json.loads((act / store.PROVENANCE_FILE).read_text())
    assert provenance["fresh_parameters"]
    assert all(k.startswith("halting.") for k in provenance["fresh_parameters"])


def test_finished_run_is_reevaluated_at_new_thresholds(tiny_args, tmp_path):
    out = tmp_path / "pact"
    argv = tiny_args(out, "--depth", "14", "--epochs", "1", method="pact")
    assert main([*argv, "--eval-modes", "deterministic"]) == 0
    checkpoint_bytes = (out / store.CHECKPOINT_FILE).read_bytes()
    assert main([*argv, "--eval-modes", "deterministic", "--thresholds", "0.2,0.5,0.8"]) == 0
    rows = pd.read_csv(out / store.RESULTS_FILE)
    assert rows["threshold"].tolist() == [0.2, 0.5, 0.8]
    assert (out / store.CHECKPOINT_FILE).read_bytes() == checkpoint_bytes  # no retraining
    assert len(store.read_jsonl(out / store.METRICS_FILE)) == 1
