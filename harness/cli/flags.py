"""Flags that several subcommands share, defined once: the backbone, ``--set``, the time
penalty, the device, comma lists."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from harness.config import DATASETS, DEVICES, RunConfig, build_run_config
from harness.errors import ConfigError
from harness.registry import get_method, time_penalty_key

#: Backbone flags (argparse dest -> dotted config key).
MODEL_FLAGS = {
    "dataset": "model.dataset",
    "depth": "model.depth",
    "variant": "model.variant",
}
#: Aliases of ``--time-penalty`` and the method-config key each one stands for.
PENALTY_ALIASES = {"tau": "tau", "lambda_": "lambda"}


def csv_list(kind: type) -> Callable[[str], list[Any]]:
    """An argparse type: ``"1,32,128"`` -> ``[1, 32, 128]``."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list, got {text!r}") from None

    return parse


def add_model_flags(
    p: argparse.ArgumentParser, method_help: str, method_type: Callable[[str], Any] = str
) -> None:
    """``--method --dataset --depth --variant``."""
    p.add_argument("--method", type=method_type, help=method_help)
    p.add_argument("--dataset", choices=list(DATASETS))
    p.add_argument(
        "--depth", type=int, help="CIFAR: 6n+2 (8, 14, 20, 32, 56, 110); ImageNet: 50, 101, 152"
    )
    p.add_argument("--variant", help="backbone variant: cifar10 sact|he; imagenet sact|torchvision")


def add_set_flag(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=help_text)


def add_device_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device auto|cpu|cuda``."""
    p.add_argument("--device", choices=list(DEVICES), default=default)


def add_penalty_flags(p: argparse.ArgumentParser) -> None:
    """``--time-penalty VALUE`` and its aliases ``--tau`` and ``--lambda``."""
    p.add_argument(
        "--time-penalty",
        type=float,
        help="the method's time penalty (its time_penalty_field: tau for ACT/SACT, lambda for "
        "PACT, whatever a plug-in declares)",
    )
    p.add_argument("--tau", type=float, help="alias of --time-penalty for methods whose is tau")
    p.add_argument(
        "--lambda", dest="lambda_", type=float, help="alias of --time-penalty (PACT's lambda)"
    )


def penalty_flag(args: argparse.Namespace) -> tuple[str, float] | None:
    """The one time-penalty flag given (its name and value), or None; two is an error."""
    given = [
        (name, getattr(args, dest))
        for dest, name in (("time_penalty", "time-penalty"), ("tau", "tau"), ("lambda_", "lambda"))
        if getattr(args, dest, None) is not None
    ]
    if len(given) > 1:
        raise ConfigError(
            f"--{given[0][0]} and --{given[1][0]} both set the time penalty; give one"
        )
    return given[0] if given else None


def run_config_with_penalty(
    flags: dict[str, Any],
    args: argparse.Namespace,
) -> RunConfig:
    """Build the run config from ``flags``, ``--config`` and ``--set``; then route the
    time-penalty flag to the method's ``time_penalty_field`` (``--tau`` and ``--lambda`` must
    name that field)."""
    config_file, overrides = getattr(args, "config", None), getattr(args, "set", None)
    cfg = build_run_config(flags, config_file, overrides)
    given = penalty_flag(args)
    if given is None:
        return cfg
    name, value = given
    key = time_penalty_key(get_method(cfg.method))
    if key is None:
        raise ConfigError(f"--{name}: method {cfg.method!r} has no time penalty")
    if name != "time-penalty" and name != key:
        raise ConfigError(
            f"--{name}: method {cfg.method!r} names its time penalty {key!r}; "
            f"use --{key} or --time-penalty"
        )
    return build_run_config({**flags, f"method.{key}": value}, config_file, overrides)
