"""``pact-harness profile``: FLOPs, peak memory and time per evaluation mode and batch size."""

from __future__ import annotations

import argparse

from harness.cli.flags import (
    MODEL_FLAGS,
    add_command,
    add_device_flag,
    add_model_flags,
    add_set_flag,
    csv_list,
    options_from,
)
from harness.profile import ProfileOptions, format_table, run_profile

EXAMPLES = """examples:
  # the memory table (CIFAR ResNet-110, batch 128, CPU: exact bytes)
  pact-harness profile --method resnet,act,pact --depth 110 --batch-sizes 128 --device cpu
  # a trained run on its own test images, writing JSON rows
  pact-harness profile --run runs/pact_cifar10_d32_lambda0.01_s0 --out costs.json
  # untrained halting branches that do halt (bias 0.5 instead of -3)
  pact-harness profile --method pact --depth 32 --set method.halting_bias_init=0.5
"""


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile a run or architectures; print the table and optionally write JSON rows."""
    model_flags = {
        key: getattr(args, dest) for dest, key in MODEL_FLAGS.items() if getattr(args, dest)
    }
    options = options_from(
        ProfileOptions,
        args,
        methods=list(args.method or []),
        model_flags=model_flags,
        overrides=list(args.set or []),
        modes=tuple(args.modes or ()),
        executions=tuple(args.executions),
        thresholds=tuple(args.thresholds),
        seed=args.seed or 0,
    )
    rows = run_profile(options)
    print(format_table(rows))
    if options.out:
        print(f"wrote {len(rows)} rows to {options.out}")
    return 0


def add_parser(sub) -> None:
    """Add the ``profile`` subcommand."""
    p = add_command(
        sub,
        "profile",
        help_text="FLOPs, peak memory and time per evaluation mode and batch size",
        description="FLOPs, peak memory and time per evaluation mode, execution and batch size, "
        "for a trained run (--run) or an untrained architecture (--method/--depth/--dataset).",
        epilog=EXAMPLES,
    )
    p.add_argument("--run", help="a trained run directory (profiles its checkpoint)")
    add_model_flags(p, "method(s) of an untrained architecture, comma separated", csv_list(str))
    p.add_argument("--batch-sizes", type=csv_list(int), default=[1, 32, 128], help="e.g. 1,32,128")
    p.add_argument("--modes", type=csv_list(str), help="comma list; default: all the method's")
    p.add_argument(
        "--executions",
        type=csv_list(str),
        default=["all"],
        help="all (default), auto (fastest exact one) or a list of masked,early_exit,gathered",
    )
    p.add_argument("--thresholds", type=csv_list(float), default=[0.5], help="deterministic modes")
    add_device_flag(p, default="auto")
    p.add_argument("--seed", type=int, help="seeds weights, random images and random modes")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (the median is reported)")
    p.add_argument("--image-size", type=int, help="square input size (default 32 / 224)")
    p.add_argument(
        "--images",
        choices=["test", "random"],
        help="--run: the run's test images (default) or random ones; architectures: random",
    )
    p.add_argument("--data-root", help="--run: dataset folder if it moved since training")
    add_set_flag(p, "architecture config keys, e.g. method.halting_bias_init=0")
    p.add_argument("--out", help="write the rows as a JSON list to this file")
    p.set_defaults(func=cmd_profile)
