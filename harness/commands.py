"""Registration point for subcommands that live in their own modules.

Each entry is a function ``add_parser(subparsers)`` that adds one subcommand; keeping the list
here keeps ``harness.cli`` thin and lets heavy modules (Ray, plotting) load only when used.
"""

from __future__ import annotations

ALL: list = []
