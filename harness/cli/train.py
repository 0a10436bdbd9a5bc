"""``pact-harness train`` (one run) and ``pact-harness methods`` (what is registered)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from harness.cli.flags import (
    Terminated,
    add_device_flag,
    add_model_flags,
    add_penalty_flags,
    add_set_flag,
    csv_list,
    run_config_with_penalty,
    sigterm_as_interrupt,
)
from harness.config import RunConfig, config_key
from harness.registry import (
    broken_methods,
    get_method,
    list_methods,
    method_origin,
    time_penalty_key,
)
from harness.study import checkpoint_epoch
from harness.train import run_trial

#: Exit status of a ``train`` stopped by SIGINT / SIGTERM (128 + the signal's number).
INTERRUPTED_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}

#: ``train`` flags (argparse dest -> dotted config key); flags not given leave the key alone.
#: The method's name travels as ``method.name`` so that it merges with ``method.tau`` & co.
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
    "eval_modes": "eval.modes",
    "thresholds": "eval.thresholds",
    "repeats": "eval.repeats",
    "progress": "progress",
}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config of ``train``'s flags (defaults < --config < flags < --set)."""
    flags = {key: getattr(args, dest, None) for dest, key in TRAIN_FLAGS.items()}
    return run_config_with_penalty(flags, args)


def default_run_dir(cfg: RunConfig) -> Path:
    """A deterministic directory name, so that rerunning the same command resumes it."""
    parts = [cfg.method, cfg.model.dataset, f"d{cfg.model.depth}"]
    key = time_penalty_key(get_method(cfg.method))
    if key is not None:
        parts.append(f"{key}{float(cfg.method_config[key]):g}")
    parts.append(f"s{cfg.seed}")
    return Path("runs") / "_".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) one run and print its summary. SIGINT or SIGTERM end it with one line
    that says what is kept and how to resume (status 130 / 143): every file is written
    atomically, so the run resumes from its last checkpoint."""
    cfg = config_from_args(args)
    run_dir = Path(args.out) if args.out else default_run_dir(cfg)
    try:
        with sigterm_as_interrupt():
            summary = run_trial(
                cfg,
                run_dir,
                init_from=args.init_from,
                argv=args.argv,
                restart_from=args.restart_from_epoch,
            )
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, Terminated) else "SIGINT"
        epoch = checkpoint_epoch(run_dir.resolve())
        kept = f"its checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished"
        again = (
            "rerun the command without --restart-from-epoch to resume"
            if args.restart_from_epoch is not None
            else "rerun the same command to resume"
        )
        print(f"interrupted ({name}): {run_dir}: {kept}; {again}", file=sys.stderr)
        return INTERRUPTED_STATUS[name]
    print(f"run directory: {run_dir}")
    for key in sorted(summary):
        print(f"  {key}: {summary[key]}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """List registered methods with their modes and defaults, then the broken plug-ins."""
    for name in list_methods(args.pattern):
        spec = get_method(name)
        defaults = {config_key(f.name): f.default for f in dataclasses.fields(spec.config_cls)}
        origin = method_origin(name)
        package = f"{origin['name']} {origin['version']}" if origin["name"] else "in-process"
        print(f"{name}: {spec.description}")
        print(f"  package: {package}")
        print(f"  eval modes: {', '.join(spec.model_cls.eval_modes)}")
        print(f"  time penalty: {time_penalty_key(spec) or '(none: not adaptive)'}")
        print(f"  config: {defaults}")
        if spec.search_space:
            grid = {config_key(k): list(v) for k, v in spec.search_space.items()}
            print(f"  default search space: {grid}")
    for name, reason in broken_methods(args.pattern).items():
        print(f"{name}: BROKEN: {reason}")
    return 0


def add_parser(sub) -> None:
    """Add the ``train`` and ``methods`` subcommands."""
    p = sub.add_parser("train", help="train and evaluate one run (resumes an existing --out)")
    add_model_flags(p, "registered method name (see `pact-harness methods`)")
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
    add_device_flag(p)
    add_penalty_flags(p)
    p.add_argument("--eval-modes", type=csv_list(str), help="comma list; default: all modes")
    p.add_argument("--thresholds", type=csv_list(float), help="deterministic halting thresholds")
    p.add_argument("--repeats", type=int, help="repeats of random evaluation modes")
    p.add_argument("--progress", choices=["auto", "on", "off"])
    p.add_argument(
        "--init-from",
        help="backbone weights to start from: a run directory, torchvision:resnet101 "
        "(torchvision's ImageNet weights, downloaded once) or torchvision:resnet101=FILE",
    )
    p.add_argument("--config", help="YAML file with config keys")
    add_set_flag(p, "override any config key, e.g. optim.lr=0.05 or method.eps=0.01")
    p.add_argument("--out", help="run directory (default: runs/<method>_<dataset>_d<depth>_...)")
    p.add_argument(
        "--restart-from-epoch",
        type=int,
        metavar="N",
        help="continue the run in --out from epoch N (0: from scratch; else its checkpoint's "
        "epoch) with another learning rate (--lr); recorded in provenance.json's restarts",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("methods", help="list registered methods (and broken plug-ins)")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_methods)
