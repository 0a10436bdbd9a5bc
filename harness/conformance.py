"""The contract check of a model's output: one line naming the field, the method and what was
expected, raised before any epoch is spent.

:func:`check_output` checks one :class:`~harness.contract.ModelOutput` against the model that
produced it (blocks, units per block, decision branches, per-sample or per-position kind, batch,
device, dtypes, finite values). :func:`preflight` runs the model once on a couple of images in
the training forward and in every planned evaluation, without changing it (eval mode, no
gradients, random state restored), and checks each output: ``train`` and ``profile`` call it
before the first epoch or measurement, ``evaluate`` checks the first batch of every pass.
:func:`verify_flops` builds the FLOP accountant and verifies each evaluation's FLOPs claim
(:mod:`harness.costs.verify`): ``train`` calls it before the first epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.contract import AdaptiveModel, EvalSpec, ModelOutput
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.costs.verify import verify_all
from harness.errors import ContractError


def _block_sizes(model: AdaptiveModel, images: torch.Tensor) -> list[tuple[int, int]]:
    """Spatial size of each block's state for ``images`` (a dense pass of one image)."""
    backbone = model.backbone
    with torch.no_grad(), evaluating(backbone):
        x = backbone.stem(images[:1])
        sizes = []
        for block in backbone.blocks:
            for unit in block:
                x = unit(x)
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
    return sizes


def _fail(method: str, field: str, problem: str) -> None:
    raise ContractError(f"method {method}: ModelOutput.{field} {problem}")


def _check_masks(
    method: str,
    field: str,
    masks: Sequence[torch.Tensor] | None,
    lengths: list[int],
    batch: int,
    device: torch.device,
    spatial: bool,
    sizes: list[tuple[int, int]] | None,
) -> None:
    kind = "per position [B, L, H, W] (spatial = True)" if spatial else "per sample [B, L]"
    if not isinstance(masks, (list, tuple)):
        _fail(method, field, f"is {type(masks).__name__}; expected a list of bool masks, {kind}")
    if len(masks) != len(lengths):
        _fail(
            method,
            field,
            f"has {len(masks)} entries; expected one per block ({len(lengths)} blocks)",
        )
    for b, (mask, length) in enumerate(zip(masks, lengths, strict=True)):
        where = f"{field}[{b}]"
        if not isinstance(mask, torch.Tensor):
            _fail(method, where, f"is {type(mask).__name__}; expected a bool tensor")
        if mask.dtype != torch.bool:
            _fail(method, where, f"has dtype {mask.dtype}; expected torch.bool ({kind})")
        expected = [batch, length] + ([*sizes[b]] if spatial and sizes else [])
        shape = list(mask.shape)
        if spatial and not sizes and len(shape) == 4:
            expected = [batch, length, *shape[2:]]
        if shape != expected:
            letters = "B, L, H, W" if spatial else "B, L"
            _fail(
                method,
                where,
                f"has shape {tuple(shape)}; expected {tuple(expected)} = [{letters}] for block "
                f"{b} ({length} {'units' if field == 'units_ran' else 'decision branches'}, "
                f"{kind})",
            )
        if mask.device.type != device.type:
            _fail(method, where, f"is on {mask.device}; expected the logits' device {device}")


def check_output(
    model: AdaptiveModel,
    output: ModelOutput,
    batch: int,
    method: str | None = None,
    sizes: list[tuple[int, int]] | None = None,
) -> None:
    """Raise :class:`~harness.errors.ContractError` (one line) if ``output`` breaks the contract
    for ``model`` on a batch of ``batch`` images (``sizes``: each block's ``H, W``)."""
    method = method or type(model).__name__
    if not isinstance(output, ModelOutput):
        raise ContractError(
            f"method {method}: forward returned {type(output).__name__}; expected a ModelOutput"
        )
    logits = output.logits
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        _fail(method, "logits", f"is {shape}; expected [B={batch}, num_classes]")
    if not logits.dtype.is_floating_point:
        _fail(method, "logits", f"has dtype {logits.dtype}; expected a floating dtype")
    if not torch.isfinite(logits).all():
        _fail(method, "logits", "holds NaN or infinite values")
    blocks = model.backbone.blocks
    lengths = [len(block) for block in blocks]
    branches = [len(b) for b in model.decision_branches()]
    adaptive = bool(output.units_ran) or any(branches)
    if adaptive:
        _check_masks(
            method,
            "units_ran",
            output.units_ran,
            lengths,
            batch,
            logits.device,
            model.spatial,
            sizes,
        )
        if output.branches_ran is not None:
            if len(branches) != len(lengths):
                raise ContractError(
                    f"method {method}: decision_branches() has {len(branches)} entries; "
                    f"expected one list per block ({len(lengths)} blocks)"
                )
            _check_masks(
                method,
                "branches_ran",
                output.branches_ran,
                branches,
                batch,
                logits.device,
                model.spatial,
                sizes,
            )
        elif any(branches) and model.branch_placement != "after":
            placement = model.branch_placement
            _fail(
                method,
                "branches_ran",
                "is None, which means each decision branch ran where its unit ran, but "
                + (
                    "the model declares no branch_placement"
                    if placement is None
                    else f"branch_placement is {placement!r}"
                )
                + "; declare branch_placement = 'after' (a halting branch reading its unit's "
                "output) or report branches_ran (a gate before its unit runs where it is asked, "
                "also where its unit is then skipped)",
            )
    if output.ponder_cost:
        if len(output.ponder_cost) != len(lengths):
            _fail(
                method,
                "ponder_cost",
                f"has {len(output.ponder_cost)} entries; expected one "
                f"per block ({len(lengths)}) or none",
            )
        for b, cost in enumerate(output.ponder_cost):
            if cost.shape[0] != batch or cost.dim() != (3 if model.spatial else 1):
                expected = "[B, H, W]" if model.spatial else "[B]"
                _fail(
                    method,
                    f"ponder_cost[{b}]",
                    f"has shape {tuple(cost.shape)}; expected {expected} with B={batch}",
                )
            if not torch.isfinite(cost).all():
                _fail(method, f"ponder_cost[{b}]", "holds NaN or infinite values")
    for name, value in output.aux_losses.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            _fail(method, f"aux_losses[{name!r}]", "is not a scalar tensor")
        if not torch.isfinite(value):
            _fail(method, f"aux_losses[{name!r}]", "is not finite")


def preflight(
    model: AdaptiveModel,
    images: torch.Tensor,
    specs: Sequence[EvalSpec],
    method: str | None = None,
    seed: int = 0,
) -> None:
    """Run the training forward and every spec on ``images`` (a couple suffice) and check each
    output; the model's parameters, buffers, training flags and the random state are unchanged."""
    sizes = _block_sizes(model, images)
    batch = images.shape[0]
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.no_grad(), evaluating(model), torch.random.fork_rng(devices=devices):
        check_output(model, model(images), batch, method, sizes)
        for spec in specs:
            generator = torch.Generator(device=images.device).manual_seed(seed)
            run = EvalSpec(spec.mode, spec.execution, spec.threshold, generator)
            check_output(model, model(images, run), batch, method, sizes)


def verify_flops(
    model: AdaptiveModel,
    images: torch.Tensor,
    specs: Sequence[EvalSpec],
    method: str | None = None,
    seed: int = 0,
) -> dict[tuple[str, str, float], str]:
    """Build the FLOP accountant (every decision branch must run in the training forward) and
    verify each spec's FLOPs claim on ``images`` (:func:`harness.costs.verify.verify_all`): a
    wrong claim raises ContractError naming the method, the block and the unit. Returns each
    spec's ``flops_verified`` label; the model and the random state are unchanged."""
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        accountant = FlopAccountant(model, tuple(images.shape[-2:]))
        try:
            return verify_all(model, images, list(specs), accountant, seed)
        except ContractError as err:
            name = f"method {method!r}: " if method else ""
            raise ContractError(f"{name}{err}") from None
