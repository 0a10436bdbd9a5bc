"""``pact-harness compare``: two experiments (or curves) with their evidence and one verdict
(:mod:`harness.report.compare`)."""

from __future__ import annotations

import argparse
import sys

from harness.errors import ConfigError
from harness.report.compare import CurveComparison, DiffComparison, PairComparison, run_compare
from harness.report.tables import format_curves, format_difference, format_pair, format_vanilla


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison's lines, the verdict last."""
    if (args.minus_a is None) != (args.minus_b is None):
        raise ConfigError("--minus-a and --minus-b go together (the C and D of (A - B) - (C - D))")
    result, source = run_compare(
        args.inputs,
        args.a,
        args.b,
        curve=args.curve,
        margin=args.margin,
        split=args.split,
        allow_mixed_code=args.allow_mixed_code,
        warn=_warn,
        minus=None if args.minus_a is None else (args.minus_a, args.minus_b),
    )
    if isinstance(result, DiffComparison):
        lines = format_difference(result)
    elif isinstance(result, CurveComparison):
        lines = format_curves(result)
    elif isinstance(result, PairComparison):
        lines = format_pair(result)
    else:
        lines = format_vanilla(result)
    print(f"margin ±{result.margin:g} accuracy points, declared by {source}")
    print("\n".join(lines))
    return 0


def add_parser(sub) -> None:
    """Add the ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="A vs B with paired intervals, the noise floor and a verdict at a declared margin",
        description="Compare two experiments paired by seed (or an experiment with the vanilla "
        "depth series at matched FLOPs: --b vanilla; or two accuracy/FLOPs curves: --curve). "
        "Verdict: A better / B better / equivalent within ±margin (TOST on the 90%% interval) / "
        "inconclusive.",
    )
    p.add_argument("inputs", nargs="+", help="results.csv files, run or study directories")
    p.add_argument(
        "--a",
        required=True,
        help="key=value[,key=value...]: e.g. method=pact,lambda=0.01,mode=deterministic",
    )
    p.add_argument("--b", required=True, help="a selector like --a, or 'vanilla'")
    p.add_argument(
        "--curve",
        action="store_true",
        help="compare curves: each selector may match several experiments (its penalties)",
    )
    p.add_argument(
        "--margin",
        type=float,
        help="equivalence margin in accuracy points (default: the study's equivalence_margin, "
        "else 1.0)",
    )
    p.add_argument("--split", default="test", help="test or val (default: test)")
    p.add_argument(
        "--allow-mixed-code",
        action="store_true",
        help="pair or pool rows from different code versions",
    )
    p.add_argument(
        "--minus-a",
        help="with --minus-b: compare (A - B) - (C - D), how a paired gap changes between two "
        "conditions (e.g. two budgets); C and D are selectors like --a",
    )
    p.add_argument("--minus-b", help="the D of --minus-a")
    p.set_defaults(func=cmd_compare)
