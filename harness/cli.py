"""``pact-harness``: the command line. Thin: parse, build a config, call a named step.

Subcommands: ``train`` (one run), ``methods`` (what is registered), ``profile`` (FLOPs, memory,
time per evaluation mode), ``grid`` (a study on Ray Tune). Every error caused by input is printed
as one line starting with ``error:`` and exits with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from harness.config import (
    RunConfig,
    deep_merge,
    from_dict,
    load_yaml,
    parse_overrides,
    set_dotted,
)
from harness.errors import HarnessError

# CLI flag -> dotted config key. Flags a user did not give leave the key alone.
# The method's name travels as ``method.name`` so that it merges with ``method.tau`` & co.
TRAIN_FLAGS = {
    "method": "method.name",
    "dataset": "model.dataset",
    "depth": "model.depth",
    "variant": "model.variant",
    "data_root": "data.root",
    "data_format": "data.format",
    "train_subset": "data.train_subset",
    "test_subset": "data.test_subset",
    "download": "data.download",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "seed": "seed",
    "device": "device",
    "tau": "method.tau",
    "lambda_": "method.lambda",
    "eval_modes": "eval.modes",
    "thresholds": "eval.thresholds",
    "repeats": "eval.repeats",
    "progress": "progress",
}


def _csv(kind):
    def parse(text: str):
        return [kind(item) for item in text.split(",") if item.strip()]

    return parse


def _method_name_as_key(tree: dict[str, Any]) -> dict[str, Any]:
    """``method: act`` -> ``method: {name: act}``: a plain name would otherwise be replaced by
    (or refuse to merge with) a later layer's ``method.tau``."""
    if isinstance(tree.get("method"), str):
        tree = {**tree, "method": {"name": tree["method"]}}
    return tree


def _set_pairs(pairs: list[str]) -> list[str]:
    """``--set method=act`` -> ``--set method.name=act`` (see :func:`_method_name_as_key`)."""
    return [
        "method.name=" + pair.split("=", 1)[1]
        if "=" in pair and pair.split("=", 1)[0].strip() == "method"
        else pair
        for pair in pairs
    ]


def build_run_config(args: argparse.Namespace, flags: dict[str, str] = TRAIN_FLAGS) -> RunConfig:
    """Defaults < ``--config`` file < dedicated flags < ``--set`` overrides."""
    tree: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    tree = _method_name_as_key(tree)
    given: dict[str, Any] = {}
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            set_dotted(given, key, value)
    tree = deep_merge(tree, given)
    tree = deep_merge(tree, parse_overrides(_set_pairs(getattr(args, "set", None) or [])))
    return run_config_from_tree(tree)


def run_config_from_tree(tree: dict[str, Any]) -> RunConfig:
    """Accept ``method: {tau: ...}`` (from dotted keys) as the method's config section."""
    tree = dict(tree)
    method = tree.get("method")
    if isinstance(method, dict):
        method = dict(method)
        name = method.pop("name", None)
        tree["method_config"] = deep_merge(tree.get("method_config", {}), method)
        if name is not None:
            tree["method"] = name
        else:
            tree.pop("method")
    return from_dict(RunConfig, tree)


def default_run_dir(cfg: RunConfig) -> Path:
    """A deterministic directory name, so that rerunning the same command resumes it."""
    parts = [cfg.method, cfg.model.dataset, f"d{cfg.model.depth}"]
    for key in ("tau", "lambda"):
        if key in cfg.method_config:
            parts.append(f"{key}{cfg.method_config[key]:g}")
    parts.append(f"s{cfg.seed}")
    return Path("runs") / "_".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) one run and print its summary."""
    from harness.train import run_trial

    cfg = build_run_config(args)
    run_dir = Path(args.out) if args.out else default_run_dir(cfg)
    summary = run_trial(cfg, run_dir, init_from=args.init_from, argv=args.argv)
    print(f"run directory: {run_dir}")
    for key in sorted(summary):
        print(f"  {key}: {summary[key]}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """List registered methods with their modes and default hyper-parameters."""
    import dataclasses

    from harness.registry import get_method, list_methods

    for name in list_methods(args.pattern):
        spec = get_method(name)
        defaults = {f.name.rstrip("_"): f.default for f in dataclasses.fields(spec.config_cls)}
        print(f"{name}: {spec.description}")
        print(f"  eval modes: {', '.join(spec.model_cls.eval_modes)}")
        print(f"  config: {defaults}")
        if spec.search_space:
            print(f"  default search space: {dict(spec.search_space)}")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train and evaluate one run (resumes an existing --out)")
    p.add_argument("--method", help="registered method name (see `pact-harness methods`)")
    p.add_argument("--dataset", choices=["cifar10", "imagenet"])
    p.add_argument("--depth", type=int, help="6n+2 for CIFAR (8, 14, 20, 32, 110); 50/101/152")
    p.add_argument("--variant", help="backbone variant: cifar10 sact|he; imagenet sact|torchvision")
    p.add_argument("--data-root", help="dataset folder (else $PACT_DATA_ROOT)")
    p.add_argument("--data-format", choices=["auto", "torchvision", "npz", "imagefolder"])
    p.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download CIFAR-10 through torchvision (needs network)",
    )
    p.add_argument("--train-subset", type=int, help="class-balanced subset of N training images")
    p.add_argument("--test-subset", type=int, help="class-balanced subset of M test images")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tau", type=float, help="ACT/SACT ponder-cost weight")
    p.add_argument("--lambda", dest="lambda_", type=float, help="PACT prior time penalty")
    p.add_argument("--eval-modes", type=_csv(str), help="comma list; default: all the method's")
    p.add_argument("--thresholds", type=_csv(float), help="deterministic halting thresholds")
    p.add_argument("--repeats", type=int, help="repeats of random evaluation modes")
    p.add_argument("--progress", choices=["auto", "on", "off"])
    p.add_argument("--init-from", help="run directory whose backbone weights initialise this run")
    p.add_argument("--config", help="YAML file with config keys")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. optim.lr=0.05 or method.eps=0.01",
    )
    p.add_argument("--out", help="run directory (default: runs/<method>_<dataset>_d<depth>_...)")
    p.set_defaults(func=cmd_train)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pact-harness", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    p = sub.add_parser("methods", help="list registered methods")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_methods)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    """Subcommands defined in their own modules (profile, grid, report)."""
    from harness import commands

    return commands.ALL


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    # The command line recorded in provenance: the one given to main(), else the process's.
    args.argv = list(sys.argv) if argv is None else [parser.prog, *argv]
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
