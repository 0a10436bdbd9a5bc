"""``pact-harness report``: tables and figures from stored results (:mod:`harness.report`)."""

from __future__ import annotations

import argparse
import sys

from harness import store
from harness.report import make_report


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    """``pact-harness report INPUT... --out DIR``: print every written path (warnings about
    skipped input on stderr). An ``--out`` that is a file, below a file or in a read-only
    directory is one error line before anything is read."""
    store.check_writable_dir(args.out, "--out")
    for path in make_report(
        args.inputs, args.out, warn=_warn, allow_mixed_code=args.allow_mixed_code
    ):
        print(path)
    return 0


def add_parser(sub) -> None:
    """Add the ``report`` subcommand."""
    p = sub.add_parser("report", help="tables and figures from results.csv files")
    p.add_argument("inputs", nargs="+", help="results.csv files, run or study directories")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument(
        "--allow-mixed-code",
        action="store_true",
        help="pool seeds of one experiment that come from different code versions (source "
        "fingerprint or git commit, dirty flag, torch and method-package versions); tables then "
        "show a code column",
    )
    p.set_defaults(func=cmd_report)
