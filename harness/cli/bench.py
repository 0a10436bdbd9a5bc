"""``pact-harness bench``: speed figures as ratios measured side by side (see harness.bench)."""

from __future__ import annotations

import argparse

from harness.bench import GROUPS, BenchOptions, run_bench
from harness.cli.flags import csv_list

EXAMPLES = """examples:
  # every figure at reduced sizes (under 10 minutes on 2 CPU cores)
  pact-harness bench --quick --out results/bench_cpu_quick.json
  # on a GPU: the CPU figures plus training images/s of ResNet-32 and ResNet-110
  pact-harness bench --device cuda --out bench_cuda.json
"""


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON."""
    options = BenchOptions(
        quick=args.quick,
        device=args.device,
        out=args.out,
        data_root=args.data_root,
        threads=args.threads,
        skip=tuple(args.skip or ()),
    )
    run_bench(options)
    return 0


def add_parser(sub) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="speed ratios measured side by side (harness vs bare loop, early exit, memory, grid)",
        description="Every figure is a ratio of things timed in turn in one process "
        "(interleaved repeats after warm-up, medians); prints figure, value, target, met?",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="reduced sizes: minutes on 2 CPU cores")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--out", help="write the JSON (ratios, targets, details, throughput) here")
    p.add_argument("--data-root", help="CIFAR-10 for grid_vs_loop (default: $PACT_DATA_ROOT)")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's)")
    p.add_argument(
        "--skip", type=csv_list(str), help=f"figure groups to leave out: {', '.join(GROUPS)}"
    )
    p.set_defaults(func=cmd_bench)
