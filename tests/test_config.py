"""Run configuration: strict building from dicts, dotted overrides, precedence, range checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from harness.cli import make_parser
from harness.cli.train import config_from_args
from harness.config import (
    DataConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    from_dict,
    load_yaml,
    parse_overrides,
    set_dotted,
    to_dict,
    validate_run_config,
)
from harness.errors import ConfigError
from harness.runs import resolve_method
from methods.pact import PACTConfig


def cli_config(*argv: str) -> RunConfig:
    """The RunConfig the ``train`` subcommand builds from ``argv`` (nothing is run)."""
    return config_from_args(make_parser().parse_args(["train", *argv]))


# -- from_dict / to_dict -----------------------------------------------------------------------


def test_defaults_round_trip_through_plain_dicts():
    cfg = RunConfig()
    tree = to_dict(cfg)
    assert tree["optim"]["lr_drops"] == [0.6, 0.75, 0.9]  # tuples become YAML-ready lists
    assert from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(tree))) == cfg


def test_unknown_top_level_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"epochs": 3})
    message = str(err.value)
    assert "'epochs'" in message
    allowed = message.split("allowed keys:")[1]
    for f in dataclasses.fields(RunConfig):
        assert f.name in allowed


def test_unknown_nested_key_names_the_dotted_key_and_section_fields():
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"optim": {"lr": 0.1, "learning_rate": 0.2}})
    message = str(err.value)
    assert "'optim.learning_rate'" in message
    assert "allowed keys in optim:" in message
    for f in dataclasses.fields(OptimConfig):
        assert f.name in message


def test_unknown_key_of_a_method_without_fields_says_none_allowed():
    cfg = from_dict(RunConfig, {"method": "resnet", "method_config": {"tau": 0.01}})
    with pytest.raises(ConfigError, match=r"'method\.tau'.*allowed keys in method: \(none\)"):
        resolve_method(cfg)


@pytest.mark.parametrize(
    ("tree", "field", "expected"),
    [
        ({"optim": {"epochs": "many"}}, "optim.epochs", "an integer"),
        ({"optim": {"epochs": 2.5}}, "optim.epochs", "an integer"),
        ({"seed": True}, "seed", "an integer"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "a number"),
        ({"optim": {"lr": float("inf")}}, "optim.lr", "a finite number"),
        ({"data": {"augment": "maybe"}}, "data.augment", "true or false"),
        ({"model": {"depth": [8]}}, "model.depth", "an integer"),
        ({"eval": {"thresholds": ["half"]}}, "eval.thresholds", "a number"),
        ({"optim": 3}, "optim", "a mapping"),
        ({"method_config": [1]}, "method_config", "a mapping"),
    ],
)
def test_type_errors_name_the_field(tree, field, expected):
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, tree)
    assert str(err.value).startswith(f"{field}: expected {expected}")


def test_values_are_coerced_to_the_annotated_types():
    cfg = from_dict(
        RunConfig,
        {
            "optim": {"epochs": "3", "lr": "0.05", "lr_drops": [0.5, 0.8]},
            "data": {"augment": "false", "train_subset": None},
            "eval": {"thresholds": 0.4, "modes": "act"},
            "model": {"depth": 14.0},
        },
    )
    assert cfg.optim.epochs == 3 and isinstance(cfg.optim.epochs, int)
    assert cfg.optim.lr == 0.05
    assert cfg.optim.lr_drops == (0.5, 0.8)
    assert cfg.data.augment is False
    assert cfg.eval.thresholds == (0.4,)  # a scalar for a tuple field is a one-element tuple
    assert cfg.eval.modes == ("act",)
    assert cfg.model.depth == 14 and isinstance(cfg.model.depth, int)


def test_lambda_key_maps_to_lambda_underscore_field():
    config = from_dict(PACTConfig, {"lambda": 0.02})
    assert config.lambda_ == 0.02
    assert to_dict(config)["lambda"] == 0.02 and "lambda_" not in to_dict(config)
    with pytest.raises(ConfigError, match=r"'lambda_'.*allowed keys: .*\blambda\b"):
        from_dict(PACTConfig, {"lambda_": 0.02})


# -- --set overrides and precedence ------------------------------------------------------------


def test_parse_overrides_builds_a_nested_tree_with_yaml_values():
    tree = parse_overrides(
        [
            "optim.lr=0.05",
            "eval.thresholds=[0.3, 0.7]",
            "data.augment=false",
            "method.tau=0.02",
            "data.root=/some/where",
            "optim.momentum=0.8",
        ]
    )
    assert tree == {
        "optim": {"lr": 0.05, "momentum": 0.8},
        "eval": {"thresholds": [0.3, 0.7]},
        "data": {"augment": False, "root": "/some/where"},
        "method": {"tau": 0.02},
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [("optim.lr", "expects key=value"), ("optim..lr=1", "malformed key"), ("=1", "malformed")],
)
def test_parse_overrides_rejects_malformed_pairs(pair, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([pair])


def test_set_method_tau_lands_in_method_config():
    cfg = cli_config("--method", "act", "--set", "method.tau=0.02")
    assert cfg.method == "act"
    assert cfg.method_config == {"tau": 0.02}
    _, act_config, resolved = resolve_method(cfg)
    assert act_config.tau == 0.02
    assert resolved.method_config["eps"] == 0.01  # the method's defaults are filled in


def test_method_flag_and_time_penalty_flags_combine():
    assert cli_config("--method", "act", "--tau", "0.03").method_config == {"tau": 0.03}
    cfg = cli_config("--method", "pact", "--lambda", "0.05")
    assert (cfg.method, cfg.method_config) == ("pact", {"lambda": 0.05})
    assert resolve_method(cfg)[1].lambda_ == 0.05


@pytest.mark.parametrize(
    ("method", "flag", "key"),
    [
        ("act", "--time-penalty", "tau"),
        ("pact", "--time-penalty", "lambda"),
        ("sact", "--tau", "tau"),
    ],
)
def test_time_penalty_flag_lands_in_the_methods_declared_field(method, flag, key):
    cfg = cli_config("--method", method, flag, "0.25")
    assert cfg.method_config == {key: 0.25}
    # --set still wins over the flag (defaults < file < flags < --set)
    cfg = cli_config("--method", method, flag, "0.25", "--set", f"method.{key}=0.5")
    assert cfg.method_config == {key: 0.5}


def test_default_run_dir_is_named_by_the_methods_time_penalty():
    from harness.cli.train import default_run_dir

    assert str(default_run_dir(cli_config("--method", "pact", "--time-penalty", "0.03"))) == (
        "runs/pact_cifar10_d32_lambda0.03_s0"
    )
    assert str(default_run_dir(cli_config("--method", "resnet", "--seed", "2"))) == (
        "runs/resnet_cifar10_d32_s2"
    )


def test_set_method_name_then_method_fields():
    cfg = cli_config("--set", "method=pact", "--set", "method.lambda=0.02")
    assert (cfg.method, cfg.method_config) == ("pact", {"lambda": 0.02})


def test_set_lists_are_parsed_as_yaml():
    cfg = cli_config("--set", "eval.thresholds=[0.3,0.7]", "--set", "optim.lr_drops=[0.5, 0.8]")
    assert cfg.eval.thresholds == (0.3, 0.7)
    assert cfg.optim.lr_drops == (0.5, 0.8)


def test_precedence_defaults_file_flags_set(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "act",
                "method_config": {"tau": 0.05, "eps": 0.02},
                "seed": 5,
                "optim": {"epochs": 3, "lr": 0.2, "batch_size": 16},
            }
        )
    )
    from_file = cli_config("--config", str(path))
    assert (from_file.seed, from_file.optim.epochs, from_file.optim.lr) == (5, 3, 0.2)
    assert from_file.method == "act" and from_file.method_config == {"tau": 0.05, "eps": 0.02}
    assert from_file.optim.momentum == OptimConfig().momentum  # untouched keys keep defaults

    cfg = cli_config(
        *("--config", str(path), "--epochs", "2", "--lr", "0.3", "--tau", "0.01"),
        *("--set", "optim.lr=0.4", "--set", "method.eps=0.03"),
    )
    assert cfg.seed == 5  # file beats default
    assert cfg.optim.batch_size == 16  # file beats default
    assert cfg.optim.epochs == 2  # flag beats file
    assert cfg.optim.lr == 0.4  # --set beats flag and file
    assert cfg.method == "act"
    assert cfg.method_config == {"tau": 0.01, "eps": 0.03}  # flag and --set beat the file


def test_a_runs_config_yaml_reproduces_its_config(tmp_path: Path):
    cfg = resolve_method(cli_config("--method", "act", "--tau", "0.02", "--depth", "14"))[2]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert cli_config("--config", str(path)) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "cannot read"), ("[1, 2]", "must hold a mapping"), ("a: [1,", "not valid YAML")],
)
def test_load_yaml_errors(tmp_path: Path, text, message):
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(path)


# -- range checks ------------------------------------------------------------------------------


def _with(**sections) -> RunConfig:
    cfg = RunConfig()
    for name, changes in sections.items():
        if isinstance(changes, dict):
            changes = dataclasses.replace(getattr(cfg, name), **changes)
        cfg = dataclasses.replace(cfg, **{name: changes})
    return cfg


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (_with(optim={"epochs": 0}), "optim.epochs=0 must be a positive integer (>= 1)"),
        (_with(optim={"epochs": -1}), "optim.epochs=-1 must be a positive integer (>= 1)"),
        (_with(optim={"batch_size": 0}), "optim.batch_size=0 must be a positive integer"),
        (_with(eval={"batch_size": 0}), "eval.batch_size=0 must be a positive integer"),
        (_with(eval={"repeats": 0}), "eval.repeats=0 must be a positive integer"),
        (_with(optim={"lr": 0.0}), "optim.lr=0.0 must be > 0"),
        (_with(optim={"momentum": 1.0}), "optim.momentum=1.0 must be in [0, 1)"),
        (_with(optim={"weight_decay": -1e-4}), "optim.weight_decay=-0.0001 must be >= 0"),
        (_with(optim={"lr_drops": (0.9, 0.6)}), "optim.lr_drops=[0.9, 0.6] must be increasing"),
        (_with(optim={"lr_drops": (0.0, 0.5)}), "fractions in (0, 1)"),
        (_with(data={"train_subset": 0}), "data.train_subset=0 must be a positive integer"),
        (_with(eval={"thresholds": (1.0,)}), "eval.thresholds=[1.0] must be values in (0, 1)"),
        (_with(eval={"thresholds": ()}), "eval.thresholds=[] must be values in (0, 1)"),
        (_with(device="tpu"), "device='tpu' is not allowed; allowed values: auto, cpu, cuda"),
        (_with(progress="loud"), "progress='loud' is not allowed; allowed values: auto, on, off"),
        (_with(data={"format": "hdf5"}), "data.format='hdf5' is not allowed; allowed values:"),
        (_with(eval={"execution": "fast"}), "eval.execution='fast' is not allowed"),
    ],
)
def test_validate_run_config_rejects_out_of_range_values(cfg, message):
    with pytest.raises(ConfigError) as err:
        validate_run_config(cfg)
    assert message in str(err.value)


def test_validate_run_config_accepts_defaults_and_edge_values():
    validate_run_config(RunConfig())
    validate_run_config(
        _with(
            optim={"epochs": 1, "batch_size": 1, "momentum": 0.0, "weight_decay": 0.0},
            data=DataConfig(train_subset=1),
            eval=EvalConfig(repeats=1, thresholds=(0.01, 0.99)),
        )
    )


#: Every numeric field of RunConfig and its sections -> values out of its range (boundaries
#: first). test_every_numeric_config_field_is_range_checked fails when a numeric field is added
#: without an entry here, so a new knob cannot go unvalidated.
OUT_OF_RANGE: dict[str, list] = {
    "model.depth": [0, -8],
    "model.num_classes": [1, 0, -3],
    "data.train_subset": [0, -1],
    "data.test_subset": [0, -1],
    "data.subset_seed": [-1, 2**63],
    "data.val_subset": [0, -1],
    "data.val_seed": [-1, 2**63],
    "data.crop_padding": [17, -1, 1000],
    "data.num_workers": [-1],
    "optim.epochs": [0, -1],
    "optim.batch_size": [0, -1],
    "optim.lr": [0.0, -0.1, 1e39],
    "optim.momentum": [1.0, -0.1],
    "optim.weight_decay": [-1e-4, 1e300],
    "optim.lr_drops": [[0.0], [1.0], [0.9, 0.6], [-0.5]],
    "optim.lr_decay": [0.0, -1.0, 1.5, 100.0],
    "optim.label_smoothing": [1.0, -0.1],
    "eval.repeats": [0, -1],
    "eval.seed": [-1, 2**63],
    "eval.thresholds": [[0.0], [1.0], [], [0.5, 1.5]],
    "eval.batch_size": [0, -1],
    "eval.memory_batches": [-1],
    "seed": [-1, 2**63],
}


def _numeric_fields(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Dotted names of the int/float fields (optional, or tuples of them) of ``cls`` and of its
    dataclass fields; bools and the method's own section (validated by the method) excluded."""
    import typing

    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            names += _numeric_fields(tp, f"{prefix}{f.name}.")
            continue
        args = [a for a in (typing.get_args(tp) or (tp,)) if a not in (type(None), Ellipsis)]
        if args and all(a in (int, float) for a in args):
            names.append(prefix + f.name)
    return names


def test_every_numeric_config_field_is_range_checked():
    assert _numeric_fields(), "no numeric field found: the walk is broken"
    assert sorted(_numeric_fields()) == sorted(OUT_OF_RANGE), (
        "add each new numeric config field to OUT_OF_RANGE (and a range check to "
        "validate_run_config)"
    )
    for name, values in OUT_OF_RANGE.items():
        for value in values:
            tree = {}
            set_dotted(tree, name, value)
            cfg = from_dict(RunConfig, tree)  # the value has the right type, only its range is bad
            with pytest.raises(ConfigError) as err:
                validate_run_config(cfg)
            assert str(err.value).startswith(f"{name}="), (name, value, str(err.value))


def test_range_checks_accept_their_boundaries():
    validate_run_config(from_dict(RunConfig, {"optim": {"lr_decay": 1.0}}))  # a constant rate
    validate_run_config(from_dict(RunConfig, {"data": {"crop_padding": 16}}))
    validate_run_config(from_dict(RunConfig, {"data": {"crop_padding": 0}}))
    validate_run_config(from_dict(RunConfig, {"seed": 2**63 - 1, "model": {"num_classes": 2}}))
    imagenet = {"model": {"dataset": "imagenet", "depth": 50}, "data": {"crop_padding": 112}}
    validate_run_config(from_dict(RunConfig, imagenet))


def test_crop_padding_is_checked_against_the_datas_own_image_size(tmp_path: Path):
    """16x16 images under model.dataset=cifar10: the config allows 16, the data only 8."""
    import numpy as np

    from harness.data import build_data

    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("test", 10)):
        images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{name}.npz", images=images, labels=np.arange(n) % 10)
    build_data("cifar10", DataConfig(root=str(tmp_path), crop_padding=8), batch_size=10)
    with pytest.raises(ConfigError, match=r"data.crop_padding=9 must be at most half the 16x16"):
        build_data("cifar10", DataConfig(root=str(tmp_path), crop_padding=9), batch_size=10)
