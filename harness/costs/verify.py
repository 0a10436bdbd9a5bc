"""Are a forward pass's FLOPs what really ran? Two checks, one per kind of execution.

The accountant (:mod:`harness.costs.flops`) charges what a method *says* ran
(``ModelOutput.units_ran`` / ``branches_ran``). A method that says wrong is charged wrong, so
the harness checks the claim on a real batch before it trusts it:

- **counted** (``flop-counter``), for an execution that computes only what ran
  (``model.computes_only_what_ran(execution)``: early exit, gathered positions), a model that
  reports no masks (it runs everything), or a declared relaxed mode
  (``model.relaxed_modes``: a mixture of every unit's output, whose masks must then be all
  true): the same
  forward runs under ``torch.utils.flop_counter.FlopCounterMode`` and the batch's counted FLOPs
  must equal what the accountant charges. A mismatch names the block and the unit (or branch)
  whose own count differs (a module's count: inside its forward, or its leaf modules' when the
  method calls them directly, as a skipped unit's shortcut).
- **perturbed** (``mask-perturbation``), for a masked or dense execution (it computes every unit
  and then keeps what its masks say): a unit's output is perturbed where its mask says it did
  *not* run, and the logits must not change (unless the output there equals the unit's input:
  the shortcut's value alone: the input carried through by a spatial unit that skipped a
  position, or a skipped stage-opening unit's projection); it is perturbed where its mask says
  it *ran*, and the logits of those images must change (and its output must differ from its
  shortcut's value there: a residual was added). A unit that was
  not called at all must be reported as not run. A unit whose output does not have the whole
  batch's shape, or that runs more than once per forward, cannot be checked this way: the
  check says so.

Each returns the label that results rows carry in ``flops_verified`` (:data:`COUNTED`,
:data:`PERTURBED`), or raises :class:`~harness.errors.ContractError` with one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.contract import AdaptiveModel, EvalSpec, ModelOutput
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.errors import ContractError

#: ``flops_verified`` labels.
COUNTED, PERTURBED = "flop-counter", "mask-perturbation"
#: How many images of a batch the perturbation check uses (two forwards per unit).
PERTURB_IMAGES = 8
#: Logits closer than this (absolute) count as unchanged.
_UNCHANGED = 1e-5


class Uncheckable(Exception):
    """The check cannot run on this model or execution (the reason is the message)."""


def _forward(model: AdaptiveModel, images: torch.Tensor, spec: EvalSpec, seed: int) -> ModelOutput:
    """One evaluation forward with a fresh generator of ``seed`` (random modes replay)."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad(), evaluating(model):
        return model(images, dataclasses.replace(spec, generator=generator))


def _names(model: AdaptiveModel) -> dict[int, str]:
    prefix = type(model).__name__
    names: dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), f"{prefix}.{name}" if name else prefix)
    return names


def verify_counted(
    model: AdaptiveModel,
    images: torch.Tensor,
    spec: EvalSpec,
    accountant: FlopAccountant,
    seed: int = 0,
) -> str:
    """FlopCounterMode against the accountant: the batch's total must be equal; where it is
    not, the first unit or decision branch whose count differs is named."""
    counter = FlopCounterMode(display=False)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad(), evaluating(model), counter:
        output = model(images, dataclasses.replace(spec, generator=generator))
    where = f"mode {spec.mode} ({spec.execution})"
    total = float(counter.get_total_flops())
    batch_charged = float(accountant.per_image(output)[0].sum())
    if abs(total - batch_charged) <= 1e-6 * max(total, batch_charged, 1.0):
        return COUNTED
    counts = counter.get_flop_counts()
    names = _names(model)

    def counted(module: nn.Module) -> float:
        """A module's FLOPs: those counted inside its forward, or (when a method calls its
        submodules directly, e.g. a skipped unit's shortcut) the sum of its leaf modules'."""
        own = float(sum(counts.get(names.get(id(module), ""), {}).values()))
        leaves = sum(
            float(sum(counts.get(names.get(id(sub), ""), {}).values()))
            for sub in module.modules()
            if sub is not module and not any(True for _ in sub.children())
        )
        return max(own, leaves)

    backbone = model.backbone
    branches = model.decision_branches()
    for b, block in enumerate(backbone.blocks):
        ran = output.units_ran[b] if output.units_ran else None
        for u, unit in enumerate(block):
            if ran is None:
                charged = 2.0 * accountant.units[b][u].total * images.shape[0]
            else:
                charged = 2.0 * float(accountant.unit_macs(b, u, ran[:, u]).sum())
            real = counted(unit)
            if abs(real - charged) > 1e-6 * max(real, charged, 1.0):
                raise ContractError(
                    f"{where}: block {b} unit {u} is charged {charged:,.0f} FLOPs for the batch "
                    f"but {real:,.0f} ran; units_ran must say exactly where each unit ran"
                )
        if ran is None or b >= len(branches):
            continue
        where_branches = accountant.branches_ran(output, b)
        for k, branch in enumerate(branches[b]):
            charged = 2.0 * float(accountant.branch_macs(b, k, where_branches[:, k]).sum())
            real = counted(branch)
            if abs(real - charged) > 1e-6 * max(real, charged, 1.0):
                raise ContractError(
                    f"{where}: block {b} decision branch {k} is charged {charged:,.0f} FLOPs "
                    f"for the batch but {real:,.0f} ran; branches_ran must say where each "
                    "branch ran (None, with branch_placement 'after', means: where the unit of "
                    "the same index ran)"
                )
    raise ContractError(
        f"{where}: the accountant charges {batch_charged:,.0f} FLOPs for the batch but "
        f"{total:,.0f} ran, and no single unit or decision branch accounts for it (the stem, "
        "the head, or layers the backbone does not declare); every conv or linear layer must "
        "belong to the stem, a unit, a decision branch or the head"
    )


def _per_image_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``mask`` (``[B]`` or ``[B, H, W]``) broadcast to a unit output of ``shape``, or None."""
    if mask.dim() == 1:
        return mask.view(-1, *([1] * (len(shape) - 1)))
    if len(shape) == 4 and mask.shape[-2:] == shape[-2:]:
        return mask.unsqueeze(1)
    return None


def verify_perturbed(
    model: AdaptiveModel,
    images: torch.Tensor,
    spec: EvalSpec,
    seed: int = 0,
) -> str:
    """Mask honesty of a masked (or dense) execution by perturbing unit outputs."""
    images = images[:PERTURB_IMAGES]
    batch = images.shape[0]
    modules = {
        (b, u): unit
        for b, block in enumerate(model.backbone.blocks)
        for u, unit in enumerate(block)
    }
    seen: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    shortcuts: dict[tuple[int, int], torch.Tensor] = {}  # each unit's shortcut value
    hooks = []
    for key, unit in modules.items():

        def record(mod, args, out, key=key) -> None:
            seen.setdefault(key, []).append((args[0].detach(), out))

        def record_shortcut(mod, args, out, key=key) -> None:
            shortcuts[key] = out.detach()

        hooks.append(unit.register_forward_hook(record))
        names = getattr(unit, "SHORTCUT_MODULES", ())
        last = getattr(unit, names[-1], None) if names else None
        if isinstance(last, nn.Module):
            hooks.append(last.register_forward_hook(record_shortcut))
    try:
        base = _forward(model, images, spec, seed)
    finally:
        for hook in hooks:
            hook.remove()
    if not base.units_ran:
        raise Uncheckable("the model reports no units_ran (it runs every unit)")
    label = f"mode {spec.mode} ({spec.execution})"
    for (b, u), calls in ((key, seen.get(key, [])) for key in modules):
        if not calls:  # not called at all (every image had halted): nothing may claim it ran
            if bool(base.units_ran[b][:, u].any()):
                raise ContractError(
                    f"{label}: block {b} unit {u} is reported as run, but it was never called; "
                    "units_ran must not include units that did not run"
                )
            continue
        if len(calls) != 1 or not isinstance(calls[0][1], torch.Tensor):
            raise Uncheckable(f"block {b} unit {u} ran {len(calls)} times in one forward")
        if calls[0][1].shape[0] != batch:
            raise Uncheckable(f"block {b} unit {u} ran on part of the batch")
    noise = torch.Generator(device=images.device).manual_seed(seed + 1)

    def moved_by(key: tuple[int, int], where: torch.Tensor) -> torch.Tensor:
        """Per image: do the logits change when unit ``key``'s output moves at ``where``?"""
        out = seen[key][0][1]
        delta = torch.randn(out.shape, generator=noise, device=out.device, dtype=out.dtype)
        delta = delta * (float(out.float().std()) + 1.0) * where.to(out.dtype)
        hook = modules[key].register_forward_hook(lambda mod, args, output: output + delta)
        try:
            logits = _forward(model, images, spec, seed).logits
        finally:
            hook.remove()
        return ((logits - base.logits).abs() > _UNCHANGED).flatten(1).any(1)

    for b, u in modules:
        if (b, u) not in seen:
            continue
        x, out = seen[(b, u)][0]
        ran = base.units_ran[b][:, u].to(out.device).bool()
        mask = _per_image_mask(ran, out.shape)
        if mask is None:
            raise Uncheckable(
                f"block {b} unit {u}: its mask {tuple(ran.shape)} does not fit its output "
                f"{tuple(out.shape)}"
            )
        mask = mask.expand_as(out)
        # Where the output is only the shortcut's value (the input carried through, or a
        # stage-opening unit's projection): the residual branch did not contribute there.
        reference = shortcuts.get((b, u))
        if reference is None or reference.shape != out.shape:
            reference = x if x.shape == out.shape else None
        if reference is not None:
            carried = torch.isclose(out, reference, rtol=1e-6, atol=1e-6)
        else:
            carried = torch.zeros_like(out, dtype=torch.bool)
        # Reported as not run: moving the output where it is not the carried input must not
        # reach the logits.
        hidden = ~mask & ~carried
        if hidden.any():
            moved = moved_by((b, u), hidden)
            if moved.any():
                raise ContractError(
                    f"{label}: block {b} unit {u} is reported as not run for image "
                    f"{int(moved.nonzero()[0])}, but its output there reaches the logits; "
                    "units_ran must include every unit whose output is used"
                )
        # Reported as run: a residual was added (the output is not the input everywhere it
        # ran: for a spatial unit, at one position at least), and the output reaches the logits.
        claimed = ran.flatten(1).any(1) if ran.dim() > 1 else ran
        if not claimed.any():
            continue
        if reference is not None:
            position_carried = carried.all(1)  # [B, H, W]: every channel is the shortcut's
            ran_positions = ran if ran.dim() > 1 else ran.view(-1, 1, 1).expand_as(position_carried)
            idle = claimed & (position_carried | ~ran_positions).flatten(1).all(1)
            if idle.any():
                raise ContractError(
                    f"{label}: block {b} unit {u} is reported as run for image "
                    f"{int(idle.nonzero()[0])}, but its output is its shortcut's value wherever "
                    "it is said to have run (no residual was added); units_ran must not include "
                    "units that did not run"
                )
        unused = claimed & ~moved_by((b, u), mask)
        if unused.any():
            raise ContractError(
                f"{label}: block {b} unit {u} is reported as run for image "
                f"{int(unused.nonzero()[0])}, but its output does not reach the logits; "
                "units_ran must not include units whose output is discarded (a mode that "
                "mixes every unit's output by construction belongs in relaxed_modes)"
            )
    return PERTURBED


def verify_execution(
    model: AdaptiveModel,
    images: torch.Tensor,
    spec: EvalSpec,
    accountant: FlopAccountant,
    seed: int = 0,
) -> str:
    """The check that fits ``spec``'s execution; its ``flops_verified`` label. Raises
    :class:`ContractError` for a wrong claim and :class:`Uncheckable` when neither check can
    run."""
    if spec.mode in model.relaxed_modes:
        output = _forward(model, images[:PERTURB_IMAGES], spec, seed)
        partial = [b for b, mask in enumerate(output.units_ran) if not bool(mask.all())]
        if partial:
            raise ContractError(
                f"mode {spec.mode} ({spec.execution}) is declared relaxed (every unit runs "
                f"everywhere) but units_ran[{partial[0]}] leaves units out; report every unit, "
                "or remove the mode from relaxed_modes"
            )
        return verify_counted(model, images, spec, accountant, seed)
    if (
        model.computes_only_what_ran(spec.execution)
        or not _forward(model, images[:1], spec, seed).units_ran
    ):
        return verify_counted(model, images, spec, accountant, seed)
    return verify_perturbed(model, images, spec, seed)


def verify_all(
    model: AdaptiveModel,
    images: torch.Tensor,
    specs: list[EvalSpec],
    accountant: FlopAccountant,
    seed: int = 0,
    on_uncheckable: Callable[[EvalSpec, str], None] | None = None,
) -> dict[tuple[str, str, float], str]:
    """:func:`verify_execution` for each spec: ``(mode, execution, threshold) -> label`` (""
    for a spec neither check could run on, reported through ``on_uncheckable``)."""
    labels = {}
    for spec in specs:
        try:
            label = verify_execution(model, images, spec, accountant, seed)
        except Uncheckable as why:
            label = ""
            if on_uncheckable is not None:
                on_uncheckable(spec, str(why))
        labels[(spec.mode, spec.execution, spec.threshold)] = label
    return labels
