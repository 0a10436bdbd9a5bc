"""Evaluation modes as first-class citizens: one pass per (mode, threshold, repeat).

:func:`evaluate` runs one :class:`~harness.contract.EvalSpec` over a loader and returns the
accuracy, loss and the per-image compute statistics (units executed, ponder cost, FLOPs when a
FLOP accountant is given). :func:`evaluate_modes` expands an :class:`~harness.config.EvalConfig`
into every requested mode, threshold and seeded repeat and returns result rows (schema in
:mod:`harness.store`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from harness import results
from harness.config import EvalConfig
from harness.conformance import check_output
from harness.contract import EXECUTIONS, AdaptiveModel, EvalSpec, ModelOutput
from harness.costs.flops import FlopAccountant
from harness.costs.verify import Uncheckable, verify_execution
from harness.errors import ConfigError, ContractError, check_choice
from harness.progress import progress_bar
from harness.stats import per_image_mean, sample_std
from harness.store import atomic_write_bytes


class FlopCounter(Protocol):
    """What :func:`evaluate` needs from the cost accounting (``harness.costs.flops``)."""

    def per_image(self, output: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image FLOPs ``[B]`` and per-block FLOPs ``[B, num_blocks]`` of one forward."""

    @property
    def vanilla_flops(self) -> float:
        """FLOPs per image of the plain backbone (every unit, no halting branches)."""


@dataclass
class PassStats:
    """Per-image statistics of one evaluation pass (concatenated over batches)."""

    correct: torch.Tensor  # [N] bool
    loss: torch.Tensor  # [N] cross-entropy
    units: torch.Tensor  # [N, blocks] units executed (spatial: mean over positions)
    ponder: torch.Tensor  # [N, blocks]
    flops: torch.Tensor | None  # [N]
    flops_per_block: torch.Tensor | None  # [N, blocks]
    ponder_map: torch.Tensor | None = None  # [M, H_in, W_in], spatial methods, M images
    units_map: torch.Tensor | None = None  # [M, H_in, W_in] int, units run per position (N)
    thumbnails: torch.Tensor | None = None  # [M, h, w, 3] uint8, the images of ponder_map
    map_index: torch.Tensor | None = None  # [M] positions in the pass of the mapped images


#: Longest side of the image thumbnails stored beside the ponder maps.
THUMBNAIL_SIZE = 64


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """Displayable uint8 ``[M, h, w, 3]`` copies of (normalized) input images: each image
    min-max scaled to 0..255, shrunk (area) so that its longer side is at most 64 pixels."""
    images = images.detach().float().cpu()
    scale = THUMBNAIL_SIZE / max(images.shape[-2:])
    if scale < 1:
        size = (round(images.shape[-2] * scale), round(images.shape[-1] * scale))
        images = nn.functional.interpolate(images, size=size, mode="area")
    low = images.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = images.flatten(1).max(1).values.view(-1, 1, 1, 1)
    scaled = (images - low) / (high - low).clamp_min(1e-12)
    return (255 * scaled).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _stack_blocks(values: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
    if not values:
        return torch.zeros(batch, 0, dtype=torch.float64)
    return torch.stack([per_image_mean(v).cpu() for v in values], dim=1)


def _summed_map(blocks: Sequence[torch.Tensor], rows: torch.Tensor, size) -> torch.Tensor:
    """Per-position block maps ``[B, h, w]`` of the images ``rows``, each resized (nearest) to
    the input ``size`` and summed over blocks: ``[len(rows), H, W]`` on the CPU."""
    summed = sum(
        nn.functional.interpolate(b[rows, None].float(), size=size, mode="nearest") for b in blocks
    )
    return summed[:, 0].cpu()


@torch.no_grad()
def evaluate(
    model: AdaptiveModel,
    loader: Iterable,
    spec: EvalSpec,
    device: torch.device,
    flop_counter: FlopCounter | None = None,
    progress: bool = False,
    desc: str = "eval",
    max_maps: int = 0,
) -> PassStats:
    """Run ``model`` over ``loader`` once with ``spec``; per-image statistics, in loader order.

    With ``max_maps`` > 0, spatial methods also keep two maps of ``max_maps`` images spread
    evenly over the pass (every ``len(loader.dataset) // max_maps``-th image, so that a split
    stored class by class still shows every class; the first ones for a loader without a
    dataset): ``ponder_map``, the method's per-position ponder cost (SACT: N + R; PACT: its
    expected N), and ``units_map``, the units executed per position N (the count of
    ``units_ran``), one quantity for every method. Each is built as the SACT code's
    ``sact_map`` does: each block's map resized (nearest) to the input, summed over blocks.
    """
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in PassStats.__dataclass_fields__}
    maps_kept, seen = 0, 0
    total = len(getattr(loader, "dataset", None) or ())
    stride = max(1, total // max_maps) if max_maps and total else 1
    for images, labels in progress_bar(loader, progress, desc):
        images, labels = images.to(device), labels.to(device)
        out = model(images, spec)
        if not parts["correct"]:  # the first batch of every pass meets the contract
            check_output(model, out, labels.shape[0])
        batch = labels.shape[0]
        parts["correct"].append((out.logits.argmax(1) == labels).cpu())
        parts["loss"].append(
            nn.functional.cross_entropy(out.logits.float(), labels, reduction="none").cpu()
        )
        parts["units"].append(_stack_blocks(out.units_executed, batch))
        parts["ponder"].append(_stack_blocks(out.ponder_cost, batch))
        if flop_counter is not None:
            total, per_block = flop_counter.per_image(out)
            parts["flops"].append(total.cpu())
            parts["flops_per_block"].append(per_block.cpu())
        spatial = [p for p in out.ponder_cost if p.dim() == 3]
        counts = [u for u in out.units_executed if u.dim() == 3]  # spatial: [B, H, W] each
        if (spatial or counts) and maps_kept < max_maps:
            first = -seen % stride  # the first position in this batch on the stride
            local = torch.arange(first, batch, stride)[: max_maps - maps_kept]
            if len(local):
                rows = local.to(images.device)
                if spatial:
                    parts["ponder_map"].append(_summed_map(spatial, rows, images.shape[-2:]))
                if counts:
                    units = _summed_map(counts, rows, images.shape[-2:])
                    parts["units_map"].append(units.round().to(torch.int32))  # counts
                parts["thumbnails"].append(thumbnails(images[rows]))
                parts["map_index"].append(local + seen)
                maps_kept += len(local)
        seen += batch
    return PassStats(**{k: torch.cat(v) if v else None for k, v in parts.items()})


def summarize(passes: list[PassStats], vanilla_flops: float | None) -> dict[str, Any]:
    """Result-row fields from one or more repeats of the same evaluation."""
    accuracies = [p.correct.double().mean().item() for p in passes]
    units = torch.cat([p.units for p in passes])
    ponder = torch.cat([p.ponder for p in passes])
    if ponder.numel() and not torch.isfinite(ponder).all():
        bad = int((~torch.isfinite(ponder)).any(1).sum())
        raise ContractError(
            f"ponder_cost holds NaN or infinite values for {bad} image(s) of this evaluation; "
            "a ponder cost must be finite (it is stored, averaged and drawn)"
        )
    row: dict[str, Any] = {
        "num_images": int(passes[0].correct.numel()),
        "repeats": len(passes),
        "accuracy": sum(accuracies) / len(accuracies),
        "accuracy_std": sample_std(accuracies),
        "loss": sum(p.loss.double().mean().item() for p in passes) / len(passes),
        "units_executed_mean": units.sum(1).mean().item() if units.numel() else math.nan,
        "units_executed_std": units.sum(1).std().item() if units.shape[0] > 1 else 0.0,
        "units_per_block": json.dumps([round(v, 6) for v in units.mean(0).tolist()]),
        "ponder_cost_mean": ponder.sum(1).mean().item() if ponder.numel() else math.nan,
    }
    if passes[0].flops is not None:
        flops = torch.cat([p.flops for p in passes]).double()
        per_block = torch.cat([p.flops_per_block for p in passes]).double()
        row["flops_per_image_mean"] = flops.mean().item()
        row["flops_per_image_std"] = flops.std().item() if flops.numel() > 1 else 0.0
        row["flops_per_block"] = json.dumps([round(v, 1) for v in per_block.mean(0).tolist()])
        if vanilla_flops:
            row["flops_fraction_of_vanilla"] = row["flops_per_image_mean"] / vanilla_flops
    return row


#: The names of the planning inputs in messages: config keys (train) or flags (profile).
EVAL_FIELDS = {
    "modes": "eval.modes",
    "execution": "eval.execution",
    "thresholds": "eval.thresholds",
}


def plan_specs(
    model: AdaptiveModel,
    modes: Sequence[str] = (),
    executions: str | Sequence[str] = "auto",
    thresholds: Sequence[float] = (0.5,),
    fields: Mapping[str, str] = EVAL_FIELDS,
) -> list[EvalSpec]:
    """One spec per (mode, execution, threshold), checking every name up front.

    ``modes`` empty means every mode of the model. ``executions`` is ``auto`` (each mode's
    fastest exact execution), ``all`` (every execution the mode offers) or names (per mode, the
    listed ones it offers). Thresholds apply to the model's threshold modes. ``fields`` names the
    inputs in error messages.
    """
    name = type(model).__name__
    modes = tuple(modes) or model.eval_modes
    for mode in modes:
        check_choice(f"{fields['modes']} ({name})", mode, model.eval_modes)
    executions = (executions,) if isinstance(executions, str) else tuple(executions)
    for execution in executions:
        check_choice(fields["execution"], execution, ("auto", "all", *EXECUTIONS))
    if not thresholds or any(not 0.0 < t < 1.0 for t in thresholds):
        raise ConfigError(f"{fields['thresholds']}={list(thresholds)} must be values in (0, 1)")
    specs = []
    for mode in modes:
        offered = model.executions_for(mode)
        if "all" in executions:
            chosen = offered
        elif "auto" in executions:
            chosen = offered[:1]
        else:
            chosen = tuple(e for e in offered if e in executions)
            if not chosen:
                raise ConfigError(
                    f"{fields['execution']}: none of {', '.join(executions)} is offered for "
                    f"mode {mode!r} of {name}; allowed values: auto, {', '.join(offered)}"
                )
        mode_thresholds = thresholds if mode in model.threshold_modes else (0.5,)
        specs.extend(EvalSpec(mode, e, t) for e in chosen for t in mode_thresholds)
    return specs


def plan_evaluations(model: AdaptiveModel, cfg: EvalConfig) -> list[EvalSpec]:
    """The specs of a run's evaluation config (one execution per mode x threshold)."""
    return plan_specs(model, cfg.modes, cfg.execution, cfg.thresholds)


def evaluate_modes(
    model: AdaptiveModel,
    loader: Iterable,
    cfg: EvalConfig,
    device: torch.device,
    flop_counter: FlopCounter | None = None,
    progress: bool = False,
    split: str = "test",
    per_image_path=None,
    correct: dict[str, np.ndarray] | None = None,
    verified: dict[tuple[str, str, float], str] | None = None,
) -> list[dict[str, Any]]:
    """Every requested mode, threshold and seeded repeat; one summary row per (mode, threshold).

    With a FLOP accountant (:class:`~harness.costs.flops.FlopAccountant`), each spec's FLOPs are
    verified first on the loader's first batch (:func:`harness.costs.verify.verify_execution`:
    counted, or mask honesty by perturbation): a wrong claim raises ContractError before the
    pass, and the row's ``flops_verified`` names the check (empty when neither could run).
    ``verified`` caches the labels across calls (the test and validation splits).

    With ``per_image_path``, the first pass (default mode, first threshold, first repeat) is
    also saved per image there (:func:`write_per_image`). With ``correct``, each row's
    per-image correctness (mean over repeats: 0/1 for a deterministic mode) is put there under
    the row's ``per_image_key`` (:func:`per_image_key`), for the comparisons' bootstrap.
    """
    rows = []
    verified = {} if verified is None else verified
    for index, spec in enumerate(plan_evaluations(model, cfg)):
        random = spec.mode in model.random_modes
        key = (spec.mode, spec.execution, spec.threshold)
        if isinstance(flop_counter, FlopAccountant) and key not in verified:
            verified[key] = _verify_first_batch(model, loader, spec, flop_counter, device, cfg)
        passes = []
        for repeat in range(cfg.repeats if random else 1):
            generator = None
            if random:
                generator = torch.Generator(device=device).manual_seed(cfg.seed + repeat)
            run_spec = EvalSpec(spec.mode, spec.execution, spec.threshold, generator)
            desc = f"eval {spec.mode}" + (f" #{repeat}" if random else "")
            first = per_image_path is not None and index == 0 and repeat == 0
            stats = evaluate(
                model,
                loader,
                run_spec,
                device,
                flop_counter,
                progress,
                desc,
                max_maps=PER_IMAGE_MAPS if first else 0,
            )
            if first:
                write_per_image(stats, spec.mode, per_image_path)
            passes.append(stats)
        row = {
            "eval_mode": spec.mode,
            "execution": spec.execution,
            "threshold": spec.threshold if spec.mode in model.threshold_modes else None,
            "split": split,
        }
        row.update(summarize(passes, flop_counter.vanilla_flops if flop_counter else None))
        if key in verified:
            row["flops_verified"] = verified[key]
        if correct is not None:
            row["per_image_key"] = per_image_key(row)
            stacked = torch.stack([p.correct.double() for p in passes]).mean(0)
            correct[row["per_image_key"]] = stacked.numpy().astype(np.float32)
        rows.append(results.fields("evaluate", row))
    return rows


def _verify_first_batch(
    model: AdaptiveModel,
    loader: Iterable,
    spec: EvalSpec,
    accountant: FlopAccountant,
    device: torch.device,
    cfg: EvalConfig,
) -> str:
    """The ``flops_verified`` label of ``spec`` on the loader's first batch ("" if neither check
    can run on it); a wrong claim raises ContractError naming the block and unit."""
    first = next(iter(loader), None)
    if first is None:
        return ""
    images = first[0].to(device)
    try:
        return verify_execution(model, images, spec, accountant, cfg.seed)
    except Uncheckable:
        return ""


def per_image_key(row: Mapping[str, Any]) -> str:
    """The name of a result row's per-image correctness in ``per_image_correct.npz``:
    ``split|mode|execution|threshold`` (threshold empty for modes without one)."""
    threshold = row.get("threshold")
    threshold = "" if threshold is None or threshold != threshold else f"{float(threshold):g}"
    return f"{row['split']}|{row['eval_mode']}|{row['execution']}|{threshold}"


def write_correct(correct: Mapping[str, np.ndarray], path) -> None:
    """Save every row's per-image correctness (:func:`evaluate_modes`' ``correct``) as npz."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **dict(correct))
    atomic_write_bytes(path, buffer.getvalue())


#: Ponder maps kept per run in ``per_image.npz`` (test images spread evenly over the split).
PER_IMAGE_MAPS = 64


def write_per_image(stats: PassStats, mode: str, path) -> None:
    """Save one pass per image as ``npz`` (the report's histograms and maps read it).

    Arrays: ``units`` and ``ponder`` ``[N, blocks]`` (spatial: mean over positions), ``correct``
    ``[N]``, ``eval_mode``, and for spatial methods ``units_map`` (units executed per position,
    summed over blocks) and ``ponder_map`` (ponder cost, as the method defines it) ``[M, H, W]``
    with the images they belong to as ``thumbnails`` ``[M, h, w, 3]`` uint8 and their positions
    in the split as ``map_index`` ``[M]``.
    """
    names = ("units", "ponder", "correct", "ponder_map", "units_map", "thumbnails", "map_index")
    arrays = {
        name: getattr(stats, name).numpy() for name in names if getattr(stats, name) is not None
    }
    arrays["eval_mode"] = np.array(mode)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
