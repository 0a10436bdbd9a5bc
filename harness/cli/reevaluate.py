"""``pact-harness reevaluate``: trained runs evaluated again by the current code
(:mod:`harness.reevaluate`)."""

from __future__ import annotations

import argparse

from harness.reevaluate import reevaluate

EXAMPLES = """examples:
  # every trial of a study that kept its checkpoints, then its results.csv gathered again
  pact-harness reevaluate runs/grid/pact-budget --data-root ../shared/data/cifar10
  # one run directory
  pact-harness reevaluate runs/act_d20 --data-root ../shared/data/cifar10
"""


def cmd_reevaluate(args: argparse.Namespace) -> int:
    """Evaluate every finished run of the inputs again; one line per run."""
    done = reevaluate(args.inputs, args.data_root, argv=getattr(args, "argv", None), emit=print)
    print(f"{len(done)} run(s) evaluated again; provenance.json lists it under 'evaluations'")
    return 0


def add_parser(sub) -> None:
    """Add the ``reevaluate`` subcommand."""
    p = sub.add_parser(
        "reevaluate",
        help="evaluate trained runs again with the current code (no training)",
        description=(
            "Evaluate finished runs again with the current code, from their checkpoints: "
            "results.csv, summary.json and the per-image files are rewritten (atomically), the "
            "training code stays recorded, and provenance.json lists each re-evaluation's code "
            "under 'evaluations'. The rows carry eval_code_version beside code_version."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="run directories or study folders")
    p.add_argument(
        "--data-root", help="the data root, when it moved since training (default: as trained)"
    )
    p.set_defaults(func=cmd_reevaluate)
