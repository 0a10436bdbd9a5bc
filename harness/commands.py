"""Registration point for subcommands that live in their own modules.

Each entry is a function ``add_parser(subparsers)`` that adds one subcommand; keeping the list
here keeps ``harness.cli`` thin and lets heavy modules (Ray, plotting) load only when used.
"""

from __future__ import annotations

ALL: list = []


def _add_report(sub) -> None:
    from harness.report import add_parser

    add_parser(sub)


ALL.append(_add_report)


def _add_profile(sub) -> None:
    from harness.profile import add_parser

    add_parser(sub)


ALL.append(_add_profile)


def _add_grid(sub) -> None:
    from harness.grid import add_parser

    add_parser(sub)


ALL.append(_add_grid)
