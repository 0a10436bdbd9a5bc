"""The command line: a real subprocess run, ``methods``, --init-from, and bad input.

Every bad input must give one line ``error: ...`` naming the problem and the allowed values,
exit status 2, and leave no run directory behind (or an existing one byte for byte untouched).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import store
from harness.cli import flags, main, make_parser
from harness.cli.train import config_from_args
from harness.errors import ConfigError
from harness.registry import get_method, list_methods, time_penalty_key


def one_error_line(capsys) -> str:
    """The single ``error:`` line the CLI printed on stderr (and nothing else)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


# -- good runs --------------------------------------------------------------------------------


def test_console_script_trains_and_prints_the_summary(finished_run):
    proc, run = finished_run["proc"], finished_run["dir"]
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run directory: {run}"
    summary = json.loads((run / store.SUMMARY_FILE).read_text())
    pairs = (line.partition(":") for line in lines[1:])
    printed = {key.strip(): value.strip() for key, _, value in pairs}
    assert printed["method"] == "resnet" and printed["depth"] == "8"
    assert float(printed["test_accuracy"]) == summary["test_accuracy"]


def test_methods_lists_every_method_with_modes_and_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet", "act", "sact", "pact", "spatial_pact"):
        assert f"\n{name}: " in f"\n{out}"
        modes = ", ".join(get_method(name).model_cls.eval_modes)
        assert f"eval modes: {modes}" in out
    assert "'lambda': 0.01" in out and "'tau': 0.01" in out  # defaults, without trailing _
    assert main(["methods", "*act"]) == 0
    listed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert [name for name in listed if not name.startswith(" ")] == list_methods("*act")


def test_init_from_copies_the_backbone_and_leaves_halting_branches_fresh(tiny_args, tmp_path: Path):
    source = tmp_path / "vanilla"
    assert main(tiny_args(source, "--depth", "14")) == 0
    target = tmp_path / "pact"
    argv = tiny_args(target, "--depth", "14", "--repeats", "1", method="pact")
    argv += ["--init-from", str(source), "--lr", "1e-12"]  # a negligible step after the copy
    assert main(argv) == 0
    provenance = json.loads((target / store.PROVENANCE_FILE).read_text())
    assert provenance["command_line"] == ["pact-harness", *argv]  # what main() was given
    assert provenance["init_from"] == str(source)
    copied = torch.load(source / store.CHECKPOINT_FILE, weights_only=True)["model"]
    trained = torch.load(target / store.CHECKPOINT_FILE, weights_only=True)["model"]
    # The method's own entries (halting.*, temperature) are fresh; load_state_dict never calls
    # a BN's num_batches_tracked missing.
    own = sorted(
        k for k in trained if not k.startswith("backbone.") and "num_batches_tracked" not in k
    )
    assert any(k.startswith("halting.") for k in own)
    assert provenance["fresh_parameters"] == own
    shared = [k for k in copied if k.endswith("weight") and copied[k].dim() > 1]
    assert shared and all(k in trained for k in shared)
    for key in shared:
        torch.testing.assert_close(trained[key], copied[key], rtol=0, atol=1e-9)


# -- bad input: nothing written ---------------------------------------------------------------


@pytest.fixture
def broken_roots(tmp_path: Path, tiny_npz_root: Path) -> dict[str, Path]:
    """Data roots with a corrupt train.npz and with wrongly shaped images."""
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(tiny_npz_root / "test.npz", corrupt / "test.npz")
    (corrupt / "train.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    shaped = tmp_path / "shaped"
    shaped.mkdir()
    shutil.copy(tiny_npz_root / "test.npz", shaped / "test.npz")
    np.savez(
        shaped / "train.npz",
        images=np.zeros((200, 32, 32), dtype=np.uint8),
        labels=np.arange(200) % 10,
    )
    return {"corrupt": corrupt, "shaped": shaped}


BAD_FLAGS = {
    "unknown method": (
        ["--method", "adaptive_magic"],
        ["unknown method 'adaptive_magic'", "registered methods: ", "pact", "resnet"],
    ),
    "cifar depth 9": (["--depth", "9"], ["depth=9", "6n+2", "8, 14, 20, 32"]),
    "imagenet depth 34": (
        ["--dataset", "imagenet", "--depth", "34"],
        ["depth=34 is not supported for imagenet", "allowed: 50, 101, 152"],
    ),
    "epochs 0": (["--epochs", "0"], ["optim.epochs=0 must be a positive integer (>= 1)"]),
    "epochs -1": (["--epochs", "-1"], ["optim.epochs=-1 must be a positive integer (>= 1)"]),
    "batch size 0": (["--batch-size", "0"], ["optim.batch_size=0 must be a positive integer"]),
    "unknown --set key": (
        ["--set", "optim.learning_rate=0.1"],
        ["unknown config key 'optim.learning_rate'", "allowed keys in optim:", "lr, lr_decay"],
    ),
    "unknown top-level --set key": (
        ["--set", "epochs=3"],
        ["unknown config key 'epochs'", "allowed keys: ", "optim"],
    ),
    "malformed --set": (["--set", "optim.lr"], ["--set expects key=value"]),
    "method key for resnet": (
        ["--set", "method.tau=0.1"],
        ["unknown config key 'method.tau'", "allowed keys in method: (none)"],
    ),
    "bad tau for act": (["--method", "act", "--tau", "-1"], ["method.tau=-1.0 must be >= 0"]),
    "tau for a lambda method": (
        ["--method", "pact", "--tau", "0.1"],
        ["--tau: method 'pact' names its time penalty 'lambda'", "use --lambda or --time-penalty"],
    ),
    "time penalty for a vanilla method": (
        ["--method", "resnet", "--time-penalty", "0.1"],
        ["--time-penalty: method 'resnet' has no time penalty"],
    ),
    "two time-penalty flags": (
        ["--method", "act", "--tau", "0.1", "--time-penalty", "0.2"],
        ["both set the time penalty; give one"],
    ),
    "bad tau via --set": (
        ["--method", "act", "--set", "method.tau=-1"],
        ["method.tau=-1.0 must be >= 0"],
    ),
    "unknown eval mode": (
        ["--eval-modes", "bogus"],
        ["eval.modes (PlainResNet)='bogus' is not allowed", "allowed values: standard"],
    ),
    "eval mode of another method": (
        ["--method", "pact", "--eval-modes", "act"],
        ["eval.modes (PACTResNet)='act'", "allowed values: deterministic, stochastic, sampled"],
    ),
    "unknown execution": (
        ["--method", "pact", "--depth", "14", "--set", "eval.execution=gathered"],
        ["eval.execution: none of gathered is offered", "allowed values: auto, early_exit, masked"],
    ),
    "threshold out of range": (
        ["--thresholds", "1.5"],
        ["eval.thresholds=[1.5] must be values in (0, 1)"],
    ),
    "subset larger than the split": (
        ["--train-subset", "500"],
        ["train_subset=500 is out of range", "allowed 10..200"],
    ),
    "batch larger than the subset": (
        ["--batch-size", "128"],
        ["batch_size=128 exceeds the 64 training images"],
    ),
    "unknown variant": (["--variant", "wide"], ["variant='wide'", "allowed: 'sact', 'he'"]),
}


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_flags_fail_with_one_line_and_write_nothing(
    flags, expected, tiny_args, tmp_path: Path, capsys
):
    out = tmp_path / "run"
    assert main(tiny_args(out, *flags)) == 2
    message = one_error_line(capsys)
    for part in expected:
        assert part in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_a_method_is_refused(tiny_npz_root: Path, tmp_path: Path, capsys):
    """The harness has no default method: a run names its own."""
    out = tmp_path / "run"
    argv = ["train", "--depth", "8", "--data-root", str(tiny_npz_root), "--out", str(out)]
    assert main(argv) == 2
    message = one_error_line(capsys)
    assert "no method given: name one (--method NAME, or method: in a config file)" in message
    assert "registered methods: " in message and "pact" in message
    assert not out.exists()


# -- time-penalty flags: one per registered method's penalty key ------------------------------


def _train_config(*argv: str):
    return config_from_args(make_parser().parse_args(["train", *argv]))


def test_every_registered_penalty_key_is_a_flag(capsys):
    """The flags come from the registry (the example plug-in's target_rate too), not a list."""
    keys = {time_penalty_key(get_method(name)) for name in list_methods()} - {None}
    assert {"tau", "lambda", "target_rate"} <= keys
    expected = {key.replace("_", "-") for key in keys}
    assert set(flags.penalty_aliases()) == expected
    for key in keys:
        method = next(m for m in list_methods() if time_penalty_key(get_method(m)) == key)
        cfg = _train_config("--method", method, f"--{key.replace('_', '-')}", "0.25")
        assert cfg.method_config == {key: 0.25}
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--target-rate TARGET_RATE alias of --time-penalty for aig" in shown
    assert "--lambda LAMBDA alias of --time-penalty for pact, spatial_pact" in shown


def test_a_penalty_flag_of_another_method_names_the_right_one():
    with pytest.raises(ConfigError, match="use --tau or --time-penalty") as err:
        _train_config("--method", "act", "--target-rate", "0.5")
    assert "--target-rate: method 'act' names its time penalty 'tau'" in str(err.value)
    cfg = _train_config("--method", "aig", "--time-penalty", "0.5")
    assert cfg.method_config == {"target_rate": 0.5}


def test_a_penalty_key_taken_by_another_flag_gets_no_alias(monkeypatch):
    """A plug-in whose penalty is called ``lr`` keeps --lr for the learning rate."""
    aliases = {**flags.penalty_aliases(), "lr": ["lr_method"], "time-penalty": ["tp_method"]}
    monkeypatch.setattr(flags, "penalty_aliases", lambda: aliases)
    args = make_parser().parse_args(["train", "--method", "act", "--lr", "0.3", "--tau", "0.2"])
    assert args.lr == 0.3 and args.penalty_aliases == {"tau": 0.2}
    assert "lr" not in args.penalty_alias_flags and "tau" in args.penalty_alias_flags
    assert "time-penalty" not in args.penalty_alias_flags


def test_cuda_without_a_gpu_fails_cleanly(tiny_args, tmp_path: Path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "run"
    assert main([*tiny_args(out), "--device", "cuda"]) == 2
    assert "device='cuda' but no CUDA device is available" in one_error_line(capsys)
    assert not out.exists()


def test_missing_data_root(no_data_root_env, tiny_args, tmp_path: Path, capsys):
    argv = tiny_args(tmp_path / "run")
    at = argv.index("--data-root")
    del argv[at : at + 2]
    assert main(argv) == 2
    message = one_error_line(capsys)
    assert "no data root given" in message
    assert "--data-root PATH" in message and "PACT_DATA_ROOT" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("missing", ["does not exist", "--data-root PATH"]),
        ("corrupt", ["train.npz: cannot be read as .npz", "'images' uint8 [N,H,W,3]"]),
        ("shaped", ["train.npz: 'images' has shape (200, 32, 32)", "'images' uint8 [N,H,W,3]"]),
    ],
)
def test_bad_data_roots(root, expected, broken_roots, tmp_path: Path, capsys):
    data_root = broken_roots.get(root, tmp_path / "no" / "such" / "folder")
    out = tmp_path / "run"
    argv = ["train", "--method", "resnet", "--depth", "8", "--data-root", str(data_root)]
    assert main([*argv, "--out", str(out), "--device", "cpu", "--progress", "off"]) == 2
    message = one_error_line(capsys)
    for part in expected:
        assert part in message
    assert not out.exists()


# -- bad input: an existing directory stays untouched -----------------------------------------


def test_checkpoint_of_another_config_is_refused_and_left_untouched(
    finished_run, tiny_args, tmp_path: Path, snapshot, capsys
):
    run = tmp_path / "existing"
    shutil.copytree(finished_run["dir"], run)
    before = snapshot(run)
    assert main([*tiny_args(run), "--lr", "0.05"]) == 2
    message = one_error_line(capsys)
    assert f"run directory {run} holds a run of another configuration" in message
    assert "optim.lr: 0.1 (checkpoint) != 0.05 (now)" in message
    assert snapshot(run) == before


def test_non_empty_directory_without_a_run_is_refused(tiny_args, tmp_path: Path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(tiny_args(out)) == 2
    assert "is not empty and holds no run (notes.txt" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_init_from_a_run_of_another_depth_is_refused(
    finished_run, tiny_args, tmp_path: Path, snapshot, capsys
):
    source = finished_run["dir"]
    before = snapshot(source)
    out = tmp_path / "run"
    assert main([*tiny_args(out), "--depth", "14", "--init-from", str(source)]) == 2
    message = one_error_line(capsys)
    assert f"--init-from {source}: its model.depth=8 differs from this run's 14" in message
    assert not out.exists()
    assert snapshot(source) == before


def test_init_from_a_folder_without_a_run_is_refused(tiny_args, tmp_path: Path, capsys):
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*tiny_args(out), "--init-from", str(empty)]) == 2
    assert f"--init-from {empty}: no run with a checkpoint there" in one_error_line(capsys)
    assert not out.exists()
