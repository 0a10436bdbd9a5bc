"""``pact-harness bench``: speed you can see, as ratios measured side by side in one process.

Every figure is a ratio of two (or more) things timed in turn (interleaved rounds after warm-up:
:func:`harness.costs.timing.time_interleaved`), so that a machine whose load drifts (other jobs
on the same cores) cancels out of it. The figure is computed in each round; its value is the
median of the rounds and its spread a distribution-free confidence interval of that median. A
target is judged against the interval: met when all of it meets the target, missed when none of
it does, else too noisy to judge; fewer than 5 rounds are too few (:mod:`harness.bench.judge`).
Which methods each figure measures, its key and its target come from a plan file
(:mod:`harness.bench.plan`; the shipped one is ``harness/preset_files/bench.yaml``), never from
this package. The figures:

- ``harness_vs_bare``: a slice of a training epoch through the harness's loop
  (:func:`harness.train.train_one_epoch`) over a bare PyTorch loop (forward, cross-entropy,
  backward, SGD step), same vanilla model, batches and batch size.
- ``train``: one training step of each listed method over the vanilla network of the same depth.
- ``early_exit``: the realized speed-up of a method's early exit over the vanilla backbone
  (batch 128) divided by its FLOP reduction, per depth (the key holds the worse; ``per_depth``
  each). The halting pattern is set through the halting branches (:func:`calibrate_halting`) on
  images that differ as whole images do (:func:`varied_images`): BN statistics of the batch,
  random directions in each branch's last layer and, block by block, a bias found by bisection
  so that about half of each block's units run, differently for different images.
- ``gathered``: the same for a spatial method's gathered execution at about 50% active
  positions, timed beside its masked execution.
- ``memory``: peak memory (exact on CPU) of one method's early exit over the vanilla network's
  and over another method's early exit, with halting that halts (the calibrated models).
- ``grid``: a preset through Ray Tune over the same trials in a plain loop of
  :func:`harness.train.run_trial`; the command line passes the runner that times it
  (:data:`~harness.bench.measure.GridRunner`), since the grid sits above the bench.
- CUDA only, ``cuda_throughput``: training images/s of the vanilla network through the fast
  path (device-resident data, bf16 autocast, channels-last, one host sync per epoch).

The JSON (``--out``) holds ``ratios`` (exactly the plan's keys; a figure that could not be
measured is null with its reason under ``skipped``), ``spread`` (per figure: its ``rounds``,
``median``, ``low``/``high``, ``n``, ``confidence``), ``targets`` (each with its ``verdict``:
met, missed, too noisy, too few rounds or skipped), ``judgement`` (the rule), ``per_depth`` and
``per_depth_spread``, ``details`` (times, FLOP reductions, executed fractions), ``throughput``
(one entry per method and depth trained: ``method, depth, device, batch_size,
train_images_per_s``, read by ``grid --estimate``) and the machine.

Modules, one job each: :mod:`~harness.bench.plan` (read and validate the plan),
:mod:`~harness.bench.measure` (the measurements), :mod:`~harness.bench.judge` (spread, verdicts),
:mod:`~harness.bench.render` (table and JSON) and :mod:`~harness.bench.run` (all of it in turn).
"""

from __future__ import annotations

from harness.bench.judge import MIN_ROUNDS, RULE, Spread, met, spread_of, verdicts
from harness.bench.measure import (
    GridRunner,
    GridTimes,
    Report,
    Settings,
    SpeedupVsFlops,
    calibrate_halting,
    flop_reduction,
    speedup_vs_flops,
    varied_images,
)
from harness.bench.plan import PLAN_FILE, BenchPlan, Target, load_plan, parse_plan
from harness.bench.render import bench_json, format_table
from harness.bench.run import GROUPS, BenchOptions, BenchResult, run_bench

__all__ = [
    "GROUPS",
    "MIN_ROUNDS",
    "RULE",
    "PLAN_FILE",
    "BenchOptions",
    "BenchPlan",
    "BenchResult",
    "GridRunner",
    "GridTimes",
    "Report",
    "Settings",
    "Spread",
    "SpeedupVsFlops",
    "Target",
    "bench_json",
    "calibrate_halting",
    "flop_reduction",
    "format_table",
    "load_plan",
    "met",
    "parse_plan",
    "run_bench",
    "speedup_vs_flops",
    "spread_of",
    "varied_images",
    "verdicts",
]
