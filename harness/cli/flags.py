"""Flags that several subcommands share, defined once: the backbone, ``--set``, the time
penalty, the device, comma lists.

The time penalty is ``--time-penalty VALUE`` for any method. Each registered method's penalty
also has a flag of its own, derived from its ``MethodSpec.time_penalty_field``: the field's
config key with ``_`` written ``-`` (``--tau``, ``--lambda``, a plug-in's ``--target-rate``), the
dash spelling of every other flag. The registry is the one source of these flags: a new method
brings its own. A flag that would clash with another flag of the command is not added (that
method's penalty is then given with ``--time-penalty`` or ``--set method.KEY=VALUE``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from harness.config import DATASETS, DEVICES, RunConfig, build_run_config
from harness.errors import ConfigError
from harness.registry import get_method, list_methods, time_penalty_key

#: Backbone flags (argparse dest -> dotted config key).
MODEL_FLAGS = {
    "dataset": "model.dataset",
    "depth": "model.depth",
    "variant": "model.variant",
}
#: The generic time-penalty flag (any method); see :func:`penalty_aliases` for the others.
TIME_PENALTY_FLAG = "time-penalty"


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


def penalty_flag_name(key: str) -> str:
    """The flag (no ``--``) of a time-penalty config key: ``target_rate`` -> ``target-rate``."""
    return key.replace("_", "-")


def penalty_aliases() -> dict[str, list[str]]:
    """``{flag: [methods]}``: the time-penalty flag of every registered method (sorted), each
    with the methods whose ``time_penalty_field`` it sets (``{"lambda": ["pact", ...]}``)."""
    aliases: dict[str, list[str]] = {}
    for name in list_methods():
        key = time_penalty_key(get_method(name))
        if key is not None:
            aliases.setdefault(penalty_flag_name(key), []).append(name)
    return dict(sorted(aliases.items()))


class _PenaltyAlias(argparse.Action):
    """``--KEY VALUE``: records ``{flag: value}`` in ``args.penalty_aliases`` (flag order)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = dict(getattr(namespace, self.dest, None) or {})
        given.pop(self.const, None)  # the last of a repeated flag wins, at its place
        given[self.const] = values
        setattr(namespace, self.dest, given)


def add_penalty_flags(p: argparse.ArgumentParser) -> None:
    """``--time-penalty VALUE`` and one flag per registered method's penalty key (``--tau``,
    ``--lambda``, ...: :func:`penalty_aliases`), except one that another flag already takes."""
    p.add_argument(
        f"--{TIME_PENALTY_FLAG}",
        type=float,
        help="the method's time penalty: the field its MethodSpec.time_penalty_field names "
        "(see `pact-harness methods`)",
    )
    added = []
    for flag, methods in penalty_aliases().items():
        if flag == TIME_PENALTY_FLAG:
            continue
        try:
            p.add_argument(
                f"--{flag}",
                dest="penalty_aliases",
                action=_PenaltyAlias,
                const=flag,
                type=float,
                metavar=flag.upper().replace("-", "_"),
                help=f"alias of --{TIME_PENALTY_FLAG} for {', '.join(methods)}",
            )
        except argparse.ArgumentError:
            continue  # taken by another flag: --time-penalty still sets this penalty
        added.append(flag)
    p.set_defaults(penalty_aliases=None, penalty_alias_flags=tuple(added))


def penalty_flag(args: argparse.Namespace) -> tuple[str, float] | None:
    """The one time-penalty flag given (its name and value), or None; two is an error."""
    given = []
    if getattr(args, "time_penalty", None) is not None:
        given.append((TIME_PENALTY_FLAG, args.time_penalty))
    given += list((getattr(args, "penalty_aliases", None) or {}).items())
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
    time-penalty flag to the method's ``time_penalty_field`` (a method's own penalty flag, such
    as ``--tau``, must be the flag of that field)."""
    config_file, overrides = getattr(args, "config", None), getattr(args, "set", None)
    cfg = build_run_config(flags, config_file, overrides)
    given = penalty_flag(args)
    if given is None:
        return cfg
    name, value = given
    key = time_penalty_key(get_method(cfg.method))
    if key is None:
        raise ConfigError(f"--{name}: method {cfg.method!r} has no time penalty")
    if name != TIME_PENALTY_FLAG and name != penalty_flag_name(key):
        own = penalty_flag_name(key)
        use = f"--{own} or " if own in getattr(args, "penalty_alias_flags", ()) else ""
        raise ConfigError(
            f"--{name}: method {cfg.method!r} names its time penalty {key!r}; "
            f"use {use}--{TIME_PENALTY_FLAG}"
        )
    return build_run_config({**flags, f"method.{key}": value}, config_file, overrides)


_Options = TypeVar("_Options")


def options_from(cls: type[_Options], args: argparse.Namespace, **given: Any) -> _Options:
    """The dataclass ``cls`` (a subcommand's options) from parsed flags: every field named like
    a flag's ``dest`` takes that flag's value; ``given`` sets the others (values the command
    converts or computes). Fields with neither keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    flags = {name: getattr(args, name) for name in names - set(given) if hasattr(args, name)}
    return cls(**flags, **given)


def add_command(sub, name: str, help_text: str, description: str, epilog: str):
    """Add subcommand ``name``: its one-line help, its description and ``epilog`` (examples shown
    after the flags, kept as written). Returns its parser."""
    return sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (atomic writes, the lock)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main
    thread, so that train and grid stop on it as on Ctrl-C and print one line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
