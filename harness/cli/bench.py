"""``pact-harness bench``: speed figures as ratios measured side by side (see harness.bench).

The grid figure runs a preset through :func:`harness.grid.run_grid`; the grid sits above the
bench in the layers, so this command times it (:func:`grid_runner`) and hands the bench the
runner.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from harness import store
from harness.bench import GROUPS, PLAN_FILE, BenchOptions, GridRunner, GridTimes, run_bench
from harness.bench.plan import GridPlan
from harness.bench.run import machine_info
from harness.bench.scaling import SIZES, parse_sizes, run_scaling
from harness.bench.synthetic import write_synthetic_data
from harness.cli.flags import add_command, csv_list, options_from
from harness.cluster import ray_session
from harness.config import set_dotted
from harness.data import resolve_data_root
from harness.grid import dry_run_lines, run_grid
from harness.presets import load_preset_tree
from harness.study import (
    TRIALS_TABLE,
    GridOptions,
    Study,
    TrialsTable,
    gather_results,
    plan_study,
    study_record,
    write_trials_table,
)
from harness.train import run_trial

EXAMPLES = """examples:
  # every figure at reduced sizes (under 10 minutes on 2 CPU cores)
  pact-harness bench --quick --out results/bench_cpu_quick.json
  # more rounds: a narrower interval, so fewer "too noisy" verdicts
  pact-harness bench --quick --threads 1 --rounds 9
  # on a GPU: the CPU figures plus training images/s of ResNet-32 and ResNet-110
  pact-harness bench --device cuda --out bench_cuda.json
  # another plan: other methods, keys or targets (same keys as the shipped plan)
  pact-harness bench --quick --plan my_bench.yaml
  # the harness's own cost as a study grows (synthetic studies, no training)
  pact-harness bench --scaling --sizes 10,100,1000,5000 --out results/bench_scaling.json
"""


def _grid_preset(folder: Path, grid: GridPlan, trials: int | None) -> str:
    """The plan's preset with its ``set`` overrides, one trial at a time (as the plain loop
    runs them), or (``trials``) a copy cut to its quick methods plus one vanilla depth per
    extra trial."""
    tree, _ = load_preset_tree(grid.preset)
    tree = dict(tree)
    if trials is not None:
        tree["name"] = f"{grid.preset}-{trials}"
        tree["methods"] = {method: {} for method in grid.quick_methods}
        tree["vanilla_depths"] = list(tree.get("vanilla_depths", [8]))[: max(trials - 1, 0)]
    base = copy.deepcopy(tree.get("base") or {})
    for key, value in grid.overrides:
        set_dotted(base, key, value)
    tree["base"] = base
    tree["max_concurrent"] = 1
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _ray_fixed_seconds() -> float:
    """A local Ray's start and stop with nothing to run (the grid's fixed cost)."""
    tic = time.perf_counter()
    with ray_session(None):
        pass
    return time.perf_counter() - tic


def _grid_trial_seconds(folder: Path) -> dict[str, float]:
    """``trials.csv``'s ``seconds`` of the grid's finished trials."""
    table = pd.read_csv(folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    if "seconds" not in table:
        return {}
    return {
        row["trial_id"]: float(row["seconds"])
        for row in table.to_dict("records")
        if row["status"] == "finished" and row["seconds"]
    }


def grid_runner(data_root: str | None) -> GridRunner:
    """Times the plan's preset through the grid (Ray Tune) and the same trials in a plain loop
    of :func:`harness.train.run_trial`, one trial at a time in both, the loop first (it also
    fills the decompressed-data cache both then read); then a local Ray's start and stop."""

    def run(grid: GridPlan, trials: int | None) -> GridTimes:
        root = str(resolve_data_root(data_root))
        with tempfile.TemporaryDirectory(prefix="pact-harness-bench-grid-") as tmp:
            folder = Path(tmp)
            preset = _grid_preset(folder, grid, trials)
            loop_options = GridOptions(preset=preset, out=str(folder / "loop"), data_root=root)
            grid_options = GridOptions(preset=preset, out=str(folder / "grid"), data_root=root)
            study = plan_study(loop_options)
            threads = torch.get_num_threads()
            each: dict[str, float] = {}
            for trial in study.trials:
                torch.set_num_threads(max(1, int(study.preset.resources.get("cpu", 1))))
                tic = time.perf_counter()
                run_trial(trial.run_config, study.run_dir(trial), init_from=trial.init_from)
                each[trial.name] = time.perf_counter() - tic
            torch.set_num_threads(threads)
            tic = time.perf_counter()
            outcome = run_grid(grid_options)
            seconds = time.perf_counter() - tic
            complete = outcome is not None and outcome.complete
            in_grid = _grid_trial_seconds(folder / "grid") if complete else {}
        return GridTimes(
            [t.name for t in study.trials],
            seconds,
            sum(each.values()),
            complete,
            each,
            in_grid,
            _ray_fixed_seconds(),
        )

    return run


class GridScaling:
    """The grid's side of ``bench --scaling`` (:class:`harness.bench.scaling.ScalingOps`): its
    planning, ``trials.csv`` bookkeeping and gather, on a synthetic study folder."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.studies: dict[Path, Study] = {}

    def data_root(self, folder: Path) -> Path:
        self.root = write_synthetic_data(folder / "data")
        return self.root

    def _options(self, preset: Path, folder: Path, **extra) -> GridOptions:
        return GridOptions(preset=str(preset), out=str(folder), data_root=str(self.root), **extra)

    def plan(self, preset: Path, folder: Path) -> None:
        options = self._options(preset, folder, dry_run=True, estimate=True, gpus=8)
        for _ in dry_run_lines(options):
            pass

    def study(self, preset: Path, folder: Path) -> Study:
        if folder not in self.studies:
            self.studies = {folder: plan_study(self._options(preset, folder))}
        return self.studies[folder]

    def record(self, preset: Path, folder: Path) -> dict:
        return study_record(self.study(preset, folder))

    def trials_rewrite(self, preset: Path, folder: Path) -> None:
        write_trials_table(self.study(preset, folder), {})

    def bookkeeping(self, preset: Path, folder: Path) -> None:
        study = self.study(preset, folder)
        table = TrialsTable(study)
        table.write()
        records: dict[str, dict] = {}
        for trial in study.trials:
            record = records.setdefault(trial.name, {"status": "running"})
            table.changed(trial.name, record)
            record.update(status="finished", node_id="synthetic", failures=0)
            table.changed(trial.name, record)
        write_trials_table(study, records)  # as the launch's end does

    def gather(self, preset: Path, folder: Path) -> None:
        gather_results(self.study(preset, folder))


def cmd_scaling(args: argparse.Namespace) -> int:
    """``bench --scaling``: the table, and the JSON when ``--out`` is given."""
    if args.out:
        store.check_writable_file(args.out, "--out")
    sizes = parse_sizes(args.sizes)
    result = run_scaling(GridScaling(), sizes, progress=lambda line: print(line, flush=True))
    for line in result.lines:
        print(line)
    if args.out:
        data = {
            "scaling": result.data,
            "command": shlex.join(["pact-harness", *sys.argv[1:]]),
            "machine": machine_info(torch.device("cpu")),
        }
        strict = json.loads(store.json_text(data))
        store.atomic_write_text(args.out, store.json_text(strict, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON."""
    if args.scaling:
        return cmd_scaling(args)
    options = options_from(
        BenchOptions, args, skip=tuple(args.skip or ()), grid_runner=grid_runner(args.data_root)
    )
    result = run_bench(options, progress=lambda line: print(line, flush=True))
    for line in result.lines:
        print(line)
    return 0


def add_parser(sub) -> None:
    """Add the ``bench`` subcommand."""
    p = add_command(
        sub,
        "bench",
        help_text="speed ratios measured side by side (harness vs bare loop, early exit, memory, "
        "grid)",
        description="Every figure is a ratio of things timed in turn in one process "
        "(interleaved rounds after warm-up; the value is the median of its per-round values); "
        "prints figure, value, spread (a distribution-free 90% confidence interval of the "
        "median), target, met?: yes when the whole interval meets the target, NO when none of "
        "it does, else too noisy (too few rounds below 5)",
        epilog=EXAMPLES,
    )
    p.add_argument("--quick", action="store_true", help="reduced sizes: minutes on 2 CPU cores")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--out", help="write the JSON (ratios, targets, details, throughput) here")
    p.add_argument("--data-root", help="CIFAR-10 for grid_vs_loop (default: $PACT_DATA_ROOT)")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's)")
    p.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of every timed figure, one value each (default 5; a target is "
        "judged from 5 rounds on)",
    )
    p.add_argument(
        "--skip", type=csv_list(str), help=f"figure groups to leave out: {', '.join(GROUPS)}"
    )
    p.add_argument(
        "--plan",
        help="the bench plan: which methods each figure measures, its key and target "
        f"(default: {PLAN_FILE.parent.name}/{PLAN_FILE.name})",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="instead of the speed figures: the harness's own cost (plan, trials.csv "
        "bookkeeping, gather, report) on synthetic studies of --sizes trials, with growth "
        "exponents",
    )
    p.add_argument(
        "--sizes",
        help=f"--scaling: study sizes in trials (default {','.join(map(str, SIZES))})",
    )
    p.set_defaults(func=cmd_bench)
