"""``pact-harness check-method NAME``: run the contract checks of :mod:`harness.checkmethod`."""

from __future__ import annotations

import argparse

from harness.checkmethod import check_method, format_results, parse_overrides
from harness.cli.flags import add_set_flag


def cmd_check_method(args: argparse.Namespace) -> int:
    """Print one line per check; 0 if all pass, 1 otherwise."""
    overrides = parse_overrides(args.set or [])
    depth = overrides.pop("depth", args.depth)
    results = check_method(args.name, depth=depth, batch=args.batch, seed=args.seed, **overrides)
    print(format_results(args.name, results))
    return 0 if all(r.passed for r in results) else 1


def add_parser(sub) -> None:
    """Add the ``check-method`` subcommand."""
    p = sub.add_parser(
        "check-method",
        help="check that a registered method (your plug-in) keeps the harness contract",
        description="Contract, backward, executions agreeing, seeded random modes, FLOPs equal "
        "to an independent count of what really ran, state-dict round trip, config validation.",
    )
    p.add_argument("name", help="registered method name (see `pact-harness methods`)")
    p.add_argument(
        "--depth",
        type=int,
        default=26,
        help="CIFAR ResNet depth (default 26: four units per block, two in the middle)",
    )
    p.add_argument("--batch", type=int, default=8, help="random images per check (default 8)")
    p.add_argument("--seed", type=int, default=0)
    add_set_flag(p, "method-config keys, e.g. halting_bias_init=0 (halting that really halts)")
    p.set_defaults(func=cmd_check_method)
