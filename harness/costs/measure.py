"""One measured evaluation pass: FLOPs, peak memory and time of the same call, as a row.

:func:`measure_pass` warms up, measures the peak memory of one pass (keeping its output for the
FLOP count) and times repeats, optionally interleaved with the plain backbone;
:func:`cost_row` turns that into the row fields that ``profile`` prints and that
:func:`add_cost_columns` adds to a trained run's result rows.
"""

from __future__ import annotations

import dataclasses
import inspect
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch

from harness import results
from harness.contract import AdaptiveModel, EvalSpec, ModelOutput
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.costs.memory import MemoryReport, measure_peak_memory
from harness.costs.timing import TimingReport, time_interleaved
from harness.stats import per_image_mean, sample_std


def seeded_call(
    model: AdaptiveModel, images: torch.Tensor, spec: EvalSpec, seed: int | None
) -> Callable[[], ModelOutput]:
    """One evaluation call on ``images``; with ``seed``, a fresh generator so seeded per call
    that every call makes the same random decisions."""

    def run() -> ModelOutput:
        call_spec = spec
        if seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(seed)
            call_spec = dataclasses.replace(spec, generator=generator)
        return model(images, call_spec)

    return run


def measure_pass(
    model: AdaptiveModel,
    images: torch.Tensor,
    spec: EvalSpec,
    seed: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    vanilla: bool = False,
) -> tuple[MemoryReport, TimingReport, TimingReport | None, ModelOutput]:
    """Warm up, measure peak memory of one pass (keeping its output), then time ``repeats``.

    ``seed`` seeds a fresh generator for every call of a random mode, so every call makes the
    same halting decisions. With ``vanilla``, the plain backbone (every unit, no halting) is
    timed on the same images in turn with the pass: the third item, else None.
    """

    run = seeded_call(model, images, spec, seed)
    runs: dict[str, Callable[[], Any]] = {"pass": run}
    if vanilla:
        runs["vanilla"] = lambda: model.backbone(images)
    with torch.no_grad(), evaluating(model):
        for _ in range(warmup):
            for call in runs.values():
                call()
        memory, output = measure_peak_memory(run, model, images)
        timings = time_interleaved(runs, images.device, warmup=0, repeats=repeats)
    timings = {k: dataclasses.replace(t, warmup=warmup) for k, t in timings.items()}
    return memory, timings["pass"], timings.get("vanilla"), output


def cost_row(
    spec: EvalSpec,
    model: AdaptiveModel,
    flops: FlopAccountant,
    memory: MemoryReport,
    timing: TimingReport,
    output: ModelOutput,
    vanilla: TimingReport | None = None,
) -> dict[str, Any]:
    """Row fields of one measured pass (FLOPs from its executed-unit counts)."""
    per_image, per_block = flops.per_image(output)
    per_image = per_image.double()
    mean = per_image.mean().item()
    units = [per_image_mean(u) for u in output.units_executed]
    row: dict[str, Any] = {
        "eval_mode": spec.mode,
        "execution": spec.execution,
        "threshold": spec.threshold if spec.mode in model.threshold_modes else None,
        "batch_size": int(output.logits.shape[0]),
        "flops_per_image_mean": mean,
        "flops_per_image_std": sample_std(per_image),
        "flops_per_block": [round(v, 1) for v in per_block.double().mean(0).tolist()],
        "vanilla_flops_per_image": flops.vanilla_flops,
        "flops_fraction_of_vanilla": mean / flops.vanilla_flops,
        "flop_speedup_vs_vanilla": flops.vanilla_flops / mean,
        "units_executed_mean": torch.stack(units, 1).sum(1).mean().item() if units else None,
        "peak_memory_bytes": memory.peak_bytes,
        "peak_memory_device": memory.device,
        "peak_memory_technique": memory.technique,
        "parameter_bytes": memory.parameter_bytes,
        "input_bytes": memory.input_bytes,
        "activation_peak_bytes": memory.activation_bytes,
        "peak_op": memory.peak_op,
        "seconds_per_batch": timing.seconds_per_batch,
        "seconds_per_image": timing.seconds_per_batch / output.logits.shape[0],
        "timing_warmup": timing.warmup,
        "timing_repeats": len(timing.seconds),
        "threads": torch.get_num_threads() if timing.device == "cpu" else None,
    }
    if vanilla is not None:
        row["vanilla_seconds_per_batch"] = vanilla.seconds_per_batch
        row["time_speedup_vs_vanilla"] = vanilla.seconds_per_batch / timing.seconds_per_batch
    return row


def add_cost_columns(
    model: AdaptiveModel,
    images: torch.Tensor | None,
    rows: list[dict[str, Any]],
    random_seed: int,
    warmup: int = 1,
    repeats: int = 3,
    memory_batches: Iterable[torch.Tensor] = (),
) -> None:
    """Give a trained run's result rows their cost columns: ``seconds_per_batch`` timed on
    ``images`` (the first test batch: ``cost_batch_size``) and the peak memory of the pass
    over ``images`` and every batch of ``memory_batches`` (the rest of the measured test
    batches): ``peak_memory_bytes`` the maximum over the batches, ``peak_memory_median_bytes``
    the median, ``memory_batches`` how many. Random modes are seeded with ``random_seed`` on
    every batch. A method whose memory depends on its halting pattern thus reports the range its
    batches reach, not one batch's draw."""
    if images is None:
        return
    extra = list(memory_batches)
    for row in rows:
        mode = row["eval_mode"]
        threshold = row.get("threshold")
        spec = EvalSpec(mode, row["execution"], 0.5 if threshold is None else float(threshold))
        seed = random_seed if mode in model.random_modes else None
        memory, timing, _, output = measure_pass(model, images, spec, seed, warmup, repeats)
        del output
        reports = [memory]
        for batch in extra:
            reports.append(peak_of_pass(model, batch.to(images.device), spec, seed))
        peaks = [r.peak_bytes for r in reports]
        row.update(
            results.fields(
                "costs",
                {
                    "peak_memory_bytes": max(peaks),
                    "peak_memory_median_bytes": float(statistics.median(peaks)),
                    "memory_batches": len(peaks),
                    "peak_memory_device": memory.device,
                    "seconds_per_batch": timing.seconds_per_batch,
                    "cost_batch_size": int(images.shape[0]),
                    "activation_peak_bytes": max(r.activation_bytes for r in reports),
                },
            )
        )


def peak_of_pass(
    model: AdaptiveModel, images: torch.Tensor, spec: EvalSpec, seed: int | None
) -> MemoryReport:
    """The peak memory of one evaluation call on ``images`` (no warm-up, no timing)."""
    run = seeded_call(model, images, spec, seed)
    with torch.no_grad(), evaluating(model):
        memory, output = measure_peak_memory(run, model, images)
    del output
    return memory


def cost_passes_per_row(warmup: int | None = None, repeats: int | None = None) -> int:
    """Forward passes of the cost batch that :func:`add_cost_columns` makes per result row:
    :func:`measure_pass`'s ``warmup`` passes, its one peak-memory pass and its ``repeats`` timed
    passes (no vanilla pass). ``None``: :func:`add_cost_columns`' defaults, as a trained run
    uses them. ``grid --estimate`` charges a trial this many passes per row, plus one pass of
    every further memory batch (:func:`memory_pass_images`)."""
    defaults = inspect.signature(add_cost_columns).parameters
    warmup = defaults["warmup"].default if warmup is None else warmup
    repeats = defaults["repeats"].default if repeats is None else repeats
    return warmup + 1 + repeats


def memory_pass_images(test_images: int, batch_size: int, memory_batches: int) -> int:
    """Images :func:`add_cost_columns` passes per row beyond the cost batch, to measure peak
    memory over the test split: every batch after the first (``memory_batches`` 0), or the first
    ``memory_batches``."""
    batches = -(-test_images // batch_size) if batch_size > 0 else 0
    if memory_batches:
        batches = min(batches, memory_batches)
    return max(0, min(test_images, batches * batch_size) - batch_size)
