"""Training runs end to end: the run directory's files, the LR schedule, resume, adaptive summaries.

Every run is ResNet-8 (ResNet-14 where a block needs a halting branch) on 64 tiny images, CPU.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from harness import results, store
from harness.cli import main
from harness.config import DataConfig, RunConfig, from_dict, to_dict
from harness.contract import ModelSpec
from harness.data import CIFAR10_CLASSES, CIFAR10_MEAN, build_data
from harness.registry import get_method
from harness.runs import resolve_method
from harness.train import (
    CRASH_ENV,
    InjectedCrash,
    make_optimizer,
    make_scheduler,
    run_trial,
)

CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "epoch",
    "train_seconds",
    "config_identity",
}


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / store.SUMMARY_FILE).read_text())


def load_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / store.CHECKPOINT_FILE, map_location="cpu", weights_only=True)


# -- the files of a finished run --------------------------------------------------------------


def test_run_directory_holds_every_file(finished_run, tiny_npz_root: Path):
    run = finished_run["dir"]
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [
            store.CONFIG_FILE,
            store.PROVENANCE_FILE,
            store.METRICS_FILE,
            store.CHECKPOINT_FILE,
            store.SUMMARY_FILE,
            store.RESULTS_FILE,
            store.PER_IMAGE_FILE,
            store.CORRECT_FILE,
        ]
    )  # and no temporary files left behind

    cfg = from_dict(RunConfig, yaml.safe_load((run / store.CONFIG_FILE).read_text()))
    assert (cfg.method, cfg.model.depth, cfg.optim.epochs, cfg.seed) == ("resnet", 8, 1, 0)
    assert (cfg.data.train_subset, cfg.data.test_subset, cfg.optim.batch_size) == (64, 20, 32)
    assert cfg.data.root == str(tiny_npz_root.resolve())  # resolved to an absolute path

    provenance = json.loads((run / store.PROVENANCE_FILE).read_text())
    assert provenance["command_line"] == finished_run["argv"]
    assert provenance["seed"] == 0
    assert isinstance(provenance["git_dirty"], bool) or "git_dirty" in provenance["missing"]
    assert provenance["git_commit"] is None or len(provenance["git_commit"]) == 40
    assert provenance["device"].startswith("cpu")
    assert provenance["library_versions"]["torch"] == torch.__version__.split("+")[0]
    assert provenance["init_from"] is None

    metrics = store.read_jsonl(run / store.METRICS_FILE)
    assert [m["epoch"] for m in metrics] == [1]
    assert math.isfinite(metrics[0]["train_loss"]) and 0 <= metrics[0]["train_accuracy"] <= 1

    checkpoint = load_checkpoint(run)
    assert set(checkpoint) == CHECKPOINT_KEYS
    assert checkpoint["epoch"] == 1

    summary = read_summary(run)
    assert set(store.SUMMARY_KEYS) <= set(summary)
    assert (summary["method"], summary["depth"], summary["seed"]) == ("resnet", 8, 0)
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["test_accuracy"] * 20 == pytest.approx(round(summary["test_accuracy"] * 20))
    assert summary["test_loss"] > 0 and summary["train_seconds"] > 0
    assert summary["train_seconds"] == pytest.approx(metrics[-1]["train_seconds"])
    assert (summary["num_train"], summary["num_test"]) == (64, 20)
    assert "units_executed_mean" not in summary  # the plain ResNet reports no units

    rows = pd.read_csv(run / store.RESULTS_FILE)
    # Exactly the declared columns, in schema order: a dropped or an extra column fails.
    assert list(rows.columns) == [c.name for c in results.COLUMNS]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["trial_id"], row["method"], row["variant"], row["dataset"]) == (
        run.name,
        "resnet",
        "sact",
        "cifar10",
    )
    assert (row["depth"], row["time_penalty"], row["seed"]) == (8, 0.0, 0)
    assert (row["eval_mode"], row["split"], row["num_images"]) == ("standard", "test", 20)
    assert row["accuracy"] == summary["test_accuracy"] and row["loss"] == summary["test_loss"]
    assert row["flops_fraction_of_vanilla"] == 1.0


def test_checkpoint_reproduces_the_reported_test_metrics(finished_run, tiny_npz_root: Path):
    """Rebuild the model from config.yaml, load the weights, evaluate by hand."""
    run = finished_run["dir"]
    cfg = from_dict(RunConfig, yaml.safe_load((run / store.CONFIG_FILE).read_text()))
    spec = get_method(cfg.method)
    model = spec.build(cfg.model, from_dict(spec.config_cls, cfg.method_config))
    model.load_state_dict(load_checkpoint(run)["model"])  # strict: every key matches
    model.eval()
    data_config = DataConfig(root=str(tiny_npz_root), train_subset=64, test_subset=20)
    data = build_data("cifar10", data_config, batch_size=32)
    images, labels = (torch.cat(parts) for parts in zip(*data.test_loader, strict=True))
    with torch.no_grad():
        logits = model(images).logits
    summary = read_summary(run)
    correct = (logits.argmax(1) == labels).double().mean().item()
    assert summary["test_accuracy"] == correct
    loss = nn.functional.cross_entropy(logits.double(), labels).item()
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_rerunning_a_finished_run_returns_its_summary_without_training(
    finished_run, tmp_path: Path, snapshot, capsys
):
    run = tmp_path / "copy"
    shutil.copytree(finished_run["dir"], run)
    before = snapshot(run)
    argv = finished_run["argv"]
    argv = argv[argv.index("train") :]
    argv[argv.index("--out") + 1] = str(run)
    assert main(argv) == 0
    assert snapshot(run) == before  # nothing retrained, rewritten or appended
    printed = capsys.readouterr().out
    summary = read_summary(run)
    assert f"test_accuracy: {summary['test_accuracy']}" in printed
    assert f"train_seconds: {summary['train_seconds']}" in printed


# -- the learning-rate schedule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "steps", "expected_drops"),
    [
        (10, 10, (60, 75, 90)),  # the SACT recipe: 60k/75k/90k of 100k steps, scaled
        (3, 7, (12, 15, 18)),  # 21 steps: floor(12.6), floor(15.75), floor(18.9)
        (1, 4, (2, 3, 3)),  # too few steps: two drops land on the same step
    ],
)
def test_scheduler_drops_at_60_75_90_percent_of_all_steps(epochs, steps, expected_drops):
    cfg = from_dict(RunConfig, {"optim": {"epochs": epochs, "lr": 0.4}})
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    seen = []
    for _ in range(epochs * steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, lrs in enumerate(seen):
        drops = sum(step >= boundary for boundary in expected_drops)
        assert lrs == pytest.approx([0.4 * 0.1**drops] * 2), f"step {step}"


def test_weight_decay_applies_to_weights_only():
    cfg = from_dict(RunConfig, {"optim": {"weight_decay": 5e-4}})
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))  # materialize the lazy layer
    decay, no_decay = make_optimizer(model, cfg).param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    by_id = {id(p): name for name, p in model.named_parameters()}
    assert sorted(by_id[id(p)] for p in decay["params"]) == ["0.weight", "3.weight"]
    assert sorted(by_id[id(p)] for p in no_decay["params"]) == [
        "0.bias",
        "1.bias",
        "1.weight",
        "3.bias",
    ]
    assert decay["momentum"] == 0.9 and decay["lr"] == 0.1


@pytest.mark.parametrize(
    ("drops", "expected"),
    [
        # 2 epochs of 10 steps: drops before steps floor(0.6 * 20), floor(0.75 * 20), ...
        ([], [0.2] * 12 + [0.02] * 3 + [0.002] * 3 + [0.0002] * 2),
        # A drop exactly at the epoch boundary: epoch 1 still ran entirely at 0.2.
        (
            ["--set", "optim.lr_drops=[0.5, 0.75, 0.9]"],
            [0.2] * 10 + [0.02] * 5 + [0.002] * 3 + [0.0002] * 2,
        ),
    ],
    ids=["60-75-90", "50-75-90"],
)
def test_training_steps_use_the_analytic_learning_rates(drops, expected, tiny_args, tmp_path):
    used: list[list[float]] = []

    def record(optimizer, args, kwargs):
        used.append([group["lr"] for group in optimizer.param_groups])

    handle = register_optimizer_step_pre_hook(record)
    try:
        argv = tiny_args(tmp_path / "run", "--train-subset", "100", "--batch-size", "10")
        assert main([*argv, "--epochs", "2", "--lr", "0.2", *drops]) == 0
    finally:
        handle.remove()
    assert [lrs[0] for lrs in used] == pytest.approx(expected)
    assert all(lrs[0] == lrs[1] for lrs in used)  # both parameter groups follow it
    # Each epoch logs the rate its last step used.
    metrics = store.read_jsonl(tmp_path / "run" / store.METRICS_FILE)
    assert [m["lr"] for m in metrics] == pytest.approx([expected[9], expected[19]])


# -- resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "depth"),
    [("resnet", "8"), ("pact", "14")],  # PACT-14 draws Concrete noise from the global RNG
)
def test_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(
    method, depth, tiny_args, tmp_path: Path, monkeypatch
):
    extra = ["--depth", depth, "--epochs", "2", "--repeats", "1"]
    straight = tmp_path / "straight"
    assert main(tiny_args(straight, *extra, method=method)) == 0

    crashed = tmp_path / "crashed"
    argv = tiny_args(crashed, *extra, method=method)
    monkeypatch.setenv(CRASH_ENV, "1")
    with pytest.raises(InjectedCrash):
        main(argv)
    monkeypatch.delenv(CRASH_ENV)
    after_crash = load_checkpoint(crashed)
    assert after_crash["epoch"] == 1
    assert not (crashed / store.SUMMARY_FILE).exists()
    assert len(store.read_jsonl(crashed / store.METRICS_FILE)) == 1
    # a crash after the metrics line of epoch 2 but before its checkpoint: the line is dropped
    store.append_jsonl(crashed / store.METRICS_FILE, {"epoch": 2, "train_loss": -1.0})

    assert main(argv) == 0  # the same command resumes at epoch 2
    lines = store.read_jsonl(crashed / store.METRICS_FILE)
    assert [r["epoch"] for r in lines] == [1, 2] and lines[1]["train_loss"] > 0
    final, reference = load_checkpoint(crashed), load_checkpoint(straight)
    assert final["epoch"] == reference["epoch"] == 2
    assert final["model"].keys() == reference["model"].keys()
    for key, tensor in reference["model"].items():
        assert torch.equal(final["model"][key], tensor), key
    # Epoch 2 really trained: the weights moved since the crash.
    assert any(
        not torch.equal(after_crash["model"][key], tensor) for key, tensor in final["model"].items()
    )
    momentum = [s["momentum_buffer"] for s in final["optimizer"]["state"].values()]
    expected = [s["momentum_buffer"] for s in reference["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected, strict=True))

    def without_time(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]

    resumed_metrics = store.read_jsonl(crashed / store.METRICS_FILE)
    assert [m["epoch"] for m in resumed_metrics] == [1, 2]
    assert without_time(resumed_metrics) == without_time(
        store.read_jsonl(straight / store.METRICS_FILE)
    )
    assert without_time([read_summary(crashed)]) == without_time([read_summary(straight)])


# -- adaptive methods -------------------------------------------------------------------------


def test_act_summary_reports_units_executed(tiny_args, tmp_path: Path):
    run = tmp_path / "act"
    assert main(tiny_args(run, "--depth", "14", "--tau", "0.02", method="act")) == 0
    summary = read_summary(run)
    per_block = summary["units_executed_per_block"]
    assert len(per_block) == 3 and all(1.0 <= units <= 2.0 for units in per_block)
    assert summary["units_executed_mean"] == pytest.approx(sum(per_block), abs=1e-5)
    assert (summary["time_penalty_name"], summary["time_penalty"]) == ("tau", 0.02)
    row = pd.read_csv(run / store.RESULTS_FILE).iloc[0]
    assert (row["method"], row["eval_mode"], row["time_penalty"]) == ("act", "act", 0.02)
    assert row["units_executed_mean"] == summary["units_executed_mean"]
    # ACT's ponder cost per block is N + R with R in (0, 1]: between N and N + 1 per block.
    assert summary["units_executed_mean"] < row["ponder_cost_mean"]
    assert row["ponder_cost_mean"] <= summary["units_executed_mean"] + 3
    metrics = store.read_jsonl(run / store.METRICS_FILE)[0]
    assert metrics["train_loss"] == pytest.approx(
        metrics["train_task_loss"] + metrics["train_ponder_loss"]
    )


def test_act_on_one_unit_blocks_halts_at_the_only_unit():
    spec = get_method("act")
    config = resolve_method(from_dict(RunConfig, {"method": "act"}))[1]
    model = spec.build(ModelSpec(depth=8), config)
    output = model(torch.zeros(2, 3, 32, 32))
    # Analytic: N = 1 and R = 1 in every block, so the ponder cost N + R is 2 per block.
    assert [u.tolist() for u in output.units_executed] == [[1, 1]] * 3
    assert output.aux_losses["ponder_loss"].item() == pytest.approx(config.tau * 3 * 2)


def test_config_yaml_round_trips_to_the_resolved_config(tiny_args, tmp_path: Path):
    run = tmp_path / "pact"
    argv = tiny_args(run, "--depth", "14", "--lambda", "0.02", "--repeats", "1", method="pact")
    assert main([*argv, "--set", "method.temperature=0.5"]) == 0
    saved = yaml.safe_load((run / store.CONFIG_FILE).read_text())
    assert saved["method"] == "pact"
    assert saved["method_config"]["lambda"] == 0.02
    assert saved["method_config"]["temperature"] == 0.5
    assert saved["method_config"]["prior"] == "truncated_geometric"  # defaults filled in
    assert to_dict(from_dict(RunConfig, saved)) == saved
    rows = pd.read_csv(run / store.RESULTS_FILE)
    assert rows["eval_mode"].tolist() == ["deterministic", "stochastic", "sampled"]
    assert (rows["time_penalty_name"] == "lambda").all() and (rows["time_penalty"] == 0.02).all()
    summary = read_summary(run)
    assert summary["eval_mode"] == "deterministic"  # the first mode is the headline
    assert 3.0 <= summary["units_executed_mean"] <= 6.0


# -- the real CIFAR-10 copy -------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar10_subset_run(real_cifar10_root: Path, tmp_path: Path):
    """Loading, counts, class balance and row content (one short epoch proves no accuracy)."""
    cfg = from_dict(
        RunConfig,
        {
            "method": "resnet",
            "model": {"depth": 8},
            "data": {"root": str(real_cifar10_root), "train_subset": 1000, "test_subset": 500},
            "optim": {"epochs": 1, "batch_size": 64},
            "device": "cpu",
            "progress": "off",
        },
    )
    seen = {}

    def keep_data(prepared, rows):
        seen["data"] = prepared.data

    summary = run_trial(cfg, tmp_path / "real", evaluation_hook=keep_data)
    data = seen["data"]
    assert data.format == "npz" and data.classes == CIFAR10_CLASSES
    assert (data.num_train, data.num_test, data.image_size) == (1000, 500, (32, 32))
    train, test = data.train_loader.dataset, data.test_loader.dataset
    assert torch.bincount(train.labels, minlength=10).tolist() == [100] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [50] * 10
    assert len(data.train_loader) == 1000 // 64  # the last partial batch is dropped
    # Real CIFAR-10 pixels, RGB order: channel means near the published ones (R > G > B).
    channel_means = train.images.double().mean((0, 1, 2)) / 255
    torch.testing.assert_close(
        channel_means, torch.tensor(CIFAR10_MEAN, dtype=torch.float64), atol=0.02, rtol=0
    )
    assert (summary["num_train"], summary["num_test"]) == (1000, 500)
    rows = pd.read_csv(tmp_path / "real" / store.RESULTS_FILE)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["method"], row["dataset"], row["depth"], row["split"]) == (
        "resnet",
        "cifar10",
        8,
        "test",
    )
    assert (row["num_images"], row["eval_mode"], row["seed"]) == (500, "standard", 0)
    assert 0.0 <= row["accuracy"] <= 1.0
    assert row["accuracy"] * 500 == pytest.approx(round(row["accuracy"] * 500))
    assert math.isfinite(row["loss"]) and row["loss"] > 0
    metrics = store.read_jsonl(tmp_path / "real" / store.METRICS_FILE)
    assert [m["epoch"] for m in metrics] == [1]


def test_label_smoothing_reaches_the_task_loss(tiny_args, tmp_path: Path):
    """optim.label_smoothing: (1 - e) * CE + e * mean over classes of -log p (Szegedy et al.)."""
    from harness.contract import ModelOutput

    spec = get_method("resnet")
    model = spec.build(ModelSpec(depth=8), spec.config_cls())
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 9, 1, 1])
    log_p = logits.log_softmax(1)
    nll = -log_p[torch.arange(5), targets].mean()
    uniform = -log_p.mean(1).mean()
    terms = model.loss(ModelOutput(logits=logits), targets, label_smoothing=0.1)
    assert terms["task_loss"].item() == pytest.approx((0.9 * nll + 0.1 * uniform).item(), rel=1e-6)
    # and a run trained with it logs a different loss from one without
    plain, smooth = tmp_path / "plain", tmp_path / "smooth"
    assert main(tiny_args(plain, "--epochs", "1", "--repeats", "1")) == 0
    argv = tiny_args(
        smooth, "--epochs", "1", "--repeats", "1", "--set", "optim.label_smoothing=0.2"
    )
    assert main(argv) == 0
    first = store.read_jsonl(plain / store.METRICS_FILE)[0]["train_task_loss"]
    second = store.read_jsonl(smooth / store.METRICS_FILE)[0]["train_task_loss"]
    assert first != second


def test_a_validation_split_is_evaluated_every_epoch_and_reported_beside_test(
    tiny_args, tmp_path: Path
):
    run = tmp_path / "val"
    argv = tiny_args(run, "--epochs", "2", "--repeats", "1", "--set", "data.val_subset=40")
    assert main(argv) == 0
    metrics = store.read_jsonl(run / store.METRICS_FILE)
    assert all(0.0 <= m["val_accuracy"] <= 1.0 and m["val_loss"] > 0 for m in metrics)
    rows = pd.read_csv(run / store.RESULTS_FILE)
    assert sorted(rows["split"]) == ["test", "val"]
    val = rows[rows["split"] == "val"].iloc[0]
    assert val["num_images"] == 40 and val["num_val"] == 40 and val["num_train"] == 64
    summary = read_summary(run)
    assert summary["val_accuracy"] == val["accuracy"] and summary["num_val"] == 40
    # the final epoch's validation is the final evaluation of the default mode on val
    assert metrics[-1]["val_accuracy"] == val["accuracy"]
