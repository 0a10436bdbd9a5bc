"""``pact-harness check-method NAME``: does a method keep the contract? Also a pytest helper.

On a small backbone (CIFAR ResNet-26 by default: four units per block, two of them in the
middle, so skip patterns have room and a gate's pairing with its unit shows) and a few random
images, :func:`check_method` runs:

- ``contract``: the training forward and every mode x execution meet the output contract
  (:mod:`harness.conformance`);
- ``backward``: a training step's loss is finite and gradients reach the parameters;
- ``executions agree``: the executions of one mode give the same logits and the same masks;
- ``seeded``: random modes repeat exactly under the same seed;
- ``flops``: every execution's FLOPs claim is verified (:mod:`harness.costs.verify`): for an
  execution that really skips work (or runs everything), the accounted FLOPs equal an
  independent count of what ran (``torch.utils.flop_counter.FlopCounterMode``, 2 per
  multiply-accumulate of convolutions and matrix products: the harness's convention), unit by
  unit; for a masked execution, perturbing a unit's output where its mask says it did not run
  leaves the logits unchanged, and where it ran moves them;
- ``state dict``: a fresh model loading the state dict computes the same logits;
- ``config``: the method's config refuses an unknown key and a negative time penalty.

Each result says what passed, or what the plug-in must change. :func:`assert_method_conforms`
turns failures into one ``AssertionError`` for a test suite (``tests/test_check_method.py``
runs it over every registered method).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.config import from_dict, parse_value
from harness.conformance import preflight
from harness.contract import AdaptiveModel, EvalSpec
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.costs.verify import verify_all
from harness.errors import ConfigError, HarnessError
from harness.evaluate import plan_specs
from harness.models import create_model
from harness.registry import get_method, plugin_frame


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, whether it passed, and the detail (what to change on failure).
    ``skipped``: the check could not run on this method (it neither passed nor failed)."""

    name: str
    passed: bool
    detail: str
    skipped: bool = False


class SkipCheck(Exception):
    """Raised by a check that cannot run on this method (printed as SKIP, never as PASS)."""


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _run(model: AdaptiveModel, images: torch.Tensor, spec: EvalSpec, seed: int):
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad(), evaluating(model):
        return model(images, dataclasses.replace(spec, generator=generator))


def _check_contract(name, model, images, specs, seed) -> str:
    preflight(model, images, specs, name, seed)
    return f"training forward and {len(specs)} mode x execution outputs meet the contract"


def _check_backward(name, model, images, specs, seed) -> str:
    targets = torch.arange(images.shape[0]) % 10
    model.train()
    with torch.random.fork_rng(devices=[]):
        output = model(images)
        terms = model.loss(output, targets)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise AssertionError(f"the training loss is {loss.item()}; make loss() finite")
        model.zero_grad(set_to_none=True)
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    reached = sum(g is not None and bool(torch.any(g != 0)) for g in grads)
    if any(g is not None and not torch.isfinite(g).all() for g in grads):
        raise AssertionError("some gradients are not finite")
    model.zero_grad(set_to_none=True)
    if reached == 0:
        raise AssertionError("no parameter received a gradient; the loss must depend on them")
    return f"loss {loss.item():.4f}, gradients reach {reached}/{len(grads)} parameter tensors"


def _check_executions(name, model, images, specs, seed) -> str:
    by_mode: dict[tuple[str, float], list[EvalSpec]] = {}
    for spec in specs:
        by_mode.setdefault((spec.mode, spec.threshold), []).append(spec)
    compared = 0
    for (mode, _), group in by_mode.items():
        reference = _run(model, images, group[0], seed)
        for other in group[1:]:
            out = _run(model, images, other, seed)
            if not torch.allclose(out.logits, reference.logits, rtol=1e-4, atol=1e-4):
                gap = (out.logits - reference.logits).abs().max().item()
                raise AssertionError(
                    f"mode {mode}: execution {other.execution} differs from "
                    f"{group[0].execution} by {gap:.3g} in logits; executions of one mode must "
                    "compute the same function"
                )
            for b, (a, r) in enumerate(zip(out.units_ran, reference.units_ran, strict=True)):
                if not torch.equal(a.cpu(), r.cpu()):
                    raise AssertionError(
                        f"mode {mode}: execution {other.execution} reports other units_ran[{b}] "
                        f"than {group[0].execution}; report the units of the same decisions"
                    )
            compared += 1
    return f"{compared} execution pair(s) agree in logits and masks"


def _check_seeded(name, model, images, specs, seed) -> str:
    random = [s for s in specs if s.mode in model.random_modes]
    for spec in random:
        a, b = _run(model, images, spec, seed), _run(model, images, spec, seed)
        if not torch.equal(a.logits, b.logits):
            raise AssertionError(
                f"mode {spec.mode} ({spec.execution}) differs between two runs with the same "
                "seed; draw every random number from spec.generator"
            )
    return (
        f"{len(random)} random mode execution(s) repeat under one seed"
        if random
        else ("no random modes")
    )


def _check_flops(name, model, images, specs, seed) -> str:
    accountant = FlopAccountant(model, tuple(images.shape[-2:]))
    uncheckable: list[str] = []
    labels = verify_all(
        model,
        images,
        list(specs),
        accountant,
        seed,
        on_uncheckable=lambda spec, why: uncheckable.append(
            f"{spec.mode}/{spec.execution} ({why})"
        ),
    )
    skipped = {}
    for spec in specs:  # how much each checked execution really skipped on these images
        masks = _run(model, images, spec, seed).units_ran
        total = sum(m.numel() for m in masks)
        skipped[(spec.mode, spec.execution)] = (
            sum(int((~m.bool()).sum()) for m in masks) / total if total else 0.0
        )
    checked = [
        f"{mode}/{execution}: {how} ({skipped[(mode, execution)]:.0%} of units skipped)"
        for (mode, execution, _), how in labels.items()
        if how
    ]
    if not checked:
        raise SkipCheck("neither FLOP check could run on any execution: " + "; ".join(uncheckable))
    text = "FLOPs verified for " + ", ".join(checked)
    if uncheckable:
        text += "; not verifiable: " + "; ".join(uncheckable)
    return text


def _check_state_dict(name, model, images, specs, seed, rebuild: Callable[[], AdaptiveModel]):
    fresh = rebuild()
    fresh.load_state_dict(model.state_dict())
    spec = specs[0]
    a, b = _run(model, images, spec, seed), _run(fresh, images, spec, seed)
    if not torch.equal(a.logits, b.logits):
        if not torch.equal(a.logits, _run(model, images, spec, seed).logits):
            raise AssertionError(
                f"mode {spec.mode} ({spec.execution}) computes other logits on two identical "
                "calls of the same model: draw every random number from spec.generator, not "
                "from the global random state (torch.rand/randn/bernoulli without generator=)"
            )
        raise AssertionError(
            "a fresh model that loaded the state dict computes other logits; keep every state "
            "(buffers included) in parameters or registered buffers"
        )
    return f"{len(model.state_dict())} tensors round-trip"


def _check_config(name: str) -> str:
    spec = get_method(name)
    try:
        from_dict(spec.config_cls, {"no_such_field": 1}, "method")
    except ConfigError:
        pass
    else:
        raise AssertionError("an unknown config key was accepted")
    field = spec.time_penalty_field
    if field is None:
        return "unknown keys refused (no time penalty to check)"
    bad = dataclasses.replace(spec.config_cls(), **{field: -1.0})
    try:
        bad.validate()
    except ConfigError:
        return f"unknown keys and {field}=-1 refused"
    raise AssertionError(f"validate() accepts {field}=-1; refuse negative time penalties")


def check_method(
    name: str, depth: int = 26, batch: int = 8, seed: int = 0, **overrides: Any
) -> list[CheckResult]:
    """Run every check on method ``name`` (``overrides``: backbone and method-config fields, as
    :func:`harness.models.create_model` takes them); one result per check."""

    def rebuild() -> AdaptiveModel:
        torch.manual_seed(seed)
        return create_model(name, depth=depth, **overrides)

    results: list[CheckResult] = []
    try:
        model = rebuild()
    except HarnessError as err:
        return [CheckResult("build", False, str(err))]
    images = _images(batch, seed)
    try:
        specs = plan_specs(model, executions="all")
    except HarnessError as err:
        return [CheckResult("modes", False, str(err))]
    checks: list[tuple[str, Callable[[], str]]] = [
        ("contract", lambda: _check_contract(name, model, images, specs, seed)),
        ("backward", lambda: _check_backward(name, model, images, specs, seed)),
        ("executions agree", lambda: _check_executions(name, model, images, specs, seed)),
        ("seeded", lambda: _check_seeded(name, model, images, specs, seed)),
        ("flops", lambda: _check_flops(name, model, images, specs, seed)),
        ("state dict", lambda: _check_state_dict(name, model, images, specs, seed, rebuild)),
        ("config", lambda: _check_config(name)),
    ]
    for check, run in checks:
        try:
            results.append(CheckResult(check, True, run()))
        except SkipCheck as skip:
            results.append(CheckResult(check, True, str(skip), skipped=True))
        except Exception as err:  # noqa: BLE001 - any failure inside a plug-in is its FAIL line
            where = (
                plugin_frame(err) if not isinstance(err, (AssertionError, HarnessError)) else None
            )
            at = f" at {where[1]}:{where[2]} (module {where[3]})" if where else ""
            results.append(CheckResult(check, False, f"{type(err).__name__}{at}: {err}"))
    return results


def format_results(name: str, results: list[CheckResult]) -> str:
    """One line per check: ``PASS``, ``FAIL`` or ``SKIP`` (could not run), the check and its
    detail."""
    lines = [f"check-method {name}:"]
    for result in results:
        word = "SKIP" if result.skipped else ("PASS" if result.passed else "FAIL")
        lines.append(f"  {word}  {result.name}: {result.detail}")
    failed = sum(not r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    lines.append(f"  {len(results) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return "\n".join(lines)


def assert_method_conforms(name: str, **kwargs: Any) -> list[CheckResult]:
    """For test suites: :func:`check_method`, raising ``AssertionError`` listing failures."""
    results = check_method(name, **kwargs)
    failures = [r for r in results if not r.passed]
    if failures:
        raise AssertionError(format_results(name, results))
    return results


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lambda=0.1", "depth=32"]`` (``--set``) -> create_model keyword arguments."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set expects key=value (a method-config key or depth), got {pair!r}"
            )
        key = key.strip().removeprefix("method.").removeprefix("model.")
        out[key] = parse_value(text)
    return out
