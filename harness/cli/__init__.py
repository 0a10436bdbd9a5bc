"""``pact-harness``: the command line, the top layer. Thin: parse flags, call a named job.

Subcommands, one module each: ``train`` and ``methods`` (:mod:`harness.cli.train`), ``profile``
(:mod:`harness.cli.profile`), ``grid`` (:mod:`harness.cli.grid`), ``report``
(:mod:`harness.cli.report`), ``compare`` (:mod:`harness.cli.compare`), ``reevaluate``
(:mod:`harness.cli.reevaluate`), ``check-method``
(:mod:`harness.cli.checkmethod`), ``bench`` (:mod:`harness.cli.bench`). Flags shared by several
commands are defined once in :mod:`harness.cli.flags`. Every error caused by input is printed
as one line starting with ``error:`` and exits with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys

from harness.cli import (
    bench,
    checkmethod,
    compare,
    grid,
    profile,
    reevaluate,
    report,
    train,
)
from harness.errors import HarnessError
from harness.registry import describe_plugin_error

#: Modules whose ``add_parser(subparsers)`` adds their subcommands, in help order.
COMMANDS = (train, profile, grid, report, compare, reevaluate, checkmethod, bench)


def make_parser() -> argparse.ArgumentParser:
    """The whole ``pact-harness`` parser."""
    parser = argparse.ArgumentParser(prog="pact-harness", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 2 with one ``error:`` line for bad input."""
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
    except Exception as err:
        # An exception raised inside a method's own code (a plug-in): one line naming its file,
        # line and module. Anything else is a harness bug and keeps its traceback.
        line = describe_plugin_error(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
