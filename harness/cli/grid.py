"""``pact-harness grid``: run a preset's study on Ray Tune (:mod:`harness.grid`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from harness.cli.flags import Terminated, add_set_flag, options_from, sigterm_as_interrupt
from harness.errors import ConfigError
from harness.grid import dry_run_lines, run_grid
from harness.presets import list_presets
from harness.study import (
    CLUSTER_LOST_STATUS,
    DEFAULT_PRESET,
    DISK_FULL_STATUS,
    GridOptions,
    GridOutcome,
    outcome_lines,
    stop_line,
    write_fault,
)

#: The grid's exit statuses (README, docs/cluster.md). Bad input is 2, as for every command
#: (harness.cli.main): one ``error:`` line, before anything is written.
EXIT_FINISHED = 0  # every trial finished
EXIT_FAILED = 1  # a trial failed for good (out of retries, or bad input inside a trial)
EXIT_CLUSTER_LOST = CLUSTER_LOST_STATUS  # the Ray cluster went away mid-study: --resume
#: A write failed for lack of space (a full disk, a quota, a file-size limit): free space,
#: then --resume.
EXIT_DISK_FULL = DISK_FULL_STATUS
#: Stopped by a signal (128 + its number; Ctrl+C is SIGINT): continue with --resume.
EXIT_INTERRUPTED = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def _say(line: str) -> None:
    print(line, flush=True)  # at once: a study's progress lines come minutes apart


def exit_status(outcome: GridOutcome) -> int:
    """The grid's exit status for what a launch did (see the EXIT_* constants)."""
    if outcome.stopped == "cluster":
        return EXIT_CLUSTER_LOST
    if outcome.stopped == "disk":
        return EXIT_DISK_FULL
    if outcome.stopped in EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED[outcome.stopped]
    if outcome.failed:
        return EXIT_FAILED
    return EXIT_INTERRUPTED["SIGINT"] if outcome.unfinished else EXIT_FINISHED


def cmd_grid(args: argparse.Namespace) -> int:
    """0 when every trial finished, 1 on failed trials, 3 when the Ray cluster went away, 4
    when a write failed for lack of space, 130 / 143 when interrupted by SIGINT / SIGTERM (each
    of the last four ends with one line holding the ``--resume`` command); bad input is 2
    (:func:`harness.cli.main`)."""
    if args.list_presets:
        for name, description in list_presets().items():
            print(f"{name:<16} {description}")
        return 0
    options = options_from(
        GridOptions,
        args,
        overrides=args.set or [],
        argv=list(getattr(args, "argv", None) or sys.argv),
    )
    if not options.dry_run and (options.estimate or options.throughput):
        options.dry_run = True  # --estimate sizes a study; it never runs one
    sizing = options.gpus is not None or options.cpus is not None or options.throughput
    if sizing and not options.dry_run:
        raise ConfigError("--gpus, --cpus and --throughput size a study for --dry-run/--estimate")
    if options.dry_run:
        for line in dry_run_lines(options):  # each at once: the plan before the machine probe
            _say(line)
        return 0
    try:
        with sigterm_as_interrupt():
            outcome = run_grid(options, emit=_say, on_abandon=_end_lost)
    except KeyboardInterrupt as err:  # before any trial started (the study folder is as it was)
        name = "SIGTERM" if isinstance(err, Terminated) else "SIGINT"
        print(f"interrupted ({name}) before any trial started; rerun the command", file=sys.stderr)
        return EXIT_INTERRUPTED[name]
    except OSError as err:  # the study's own files before any trial started (atomic writes)
        fault = write_fault(err)
        if fault is None:
            raise
        print(
            f"error: out of disk space before any trial started ({fault}); nothing is "
            "half-written: free space and rerun the command",
            file=sys.stderr,
        )
        return EXIT_DISK_FULL
    if outcome is None:
        return 0
    _print_outcome(outcome)
    return exit_status(outcome)


def _print_outcome(outcome: GridOutcome) -> None:
    for line in outcome_lines(outcome):
        _say(line)
    last = stop_line(outcome)
    if last is not None:
        print(last, file=sys.stderr, flush=True)


def _end_lost(outcome: GridOutcome) -> None:
    """The cluster went away and Ray blocks the driver: say so and end the process (Ray's
    core would end it with status 1 a few seconds later)."""
    _print_outcome(outcome)
    sys.stdout.flush()
    os._exit(EXIT_CLUSTER_LOST)


def add_parser(sub) -> None:
    """Add the ``grid`` subcommand."""
    p = sub.add_parser(
        "grid",
        help="run a study (methods x time penalty x depth x seed) on Ray Tune",
        description="Run a preset's grid of trials on Ray Tune, locally or on a cluster. "
        "Interrupted studies continue with --resume.",
    )
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"preset name (see --list-presets) or a preset .yaml path (default {DEFAULT_PRESET})",
    )
    p.add_argument("--list-presets", action="store_true", help="list shipped presets and exit")
    p.add_argument("--address", help="join an existing Ray cluster (host:port or auto)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the study in --out (finished trials are kept); starts it if --out is new",
    )
    p.add_argument("--data-root", help="dataset folder (else the preset's, else $PACT_DATA_ROOT)")
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch CIFAR-10 into --data-root first if no dataset is there (needs network)",
    )
    p.add_argument("--out", help="study folder (default runs/grid/<preset>)")
    add_set_flag(
        p,
        help_text="override a config key of every trial (optim.epochs=1) or a preset key "
        "(seeds=[0,1], methods.act.tau=[0.01], methods.pact=null)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trials and how many run at once (on this machine, --address or --gpus), "
        "and exit",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run (implied): GPU-/CPU-hours, wall time, longest trial and disk",
    )
    p.add_argument(
        "--gpus", type=int, help="--dry-run/--estimate: size the study for one machine with N GPUs"
    )
    p.add_argument(
        "--cpus", type=float, help="with --gpus: that machine's CPUs (default: not limiting)"
    )
    p.add_argument(
        "--throughput",
        metavar="FILE.json",
        help="--estimate: measured images/s from `pact-harness bench` (default: documented "
        "defaults in harness/preset_files/throughput.json)",
    )
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (fractions allowed)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions allowed)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--max-failures", type=int, help="retries of a failed trial")
    p.set_defaults(func=cmd_grid)
