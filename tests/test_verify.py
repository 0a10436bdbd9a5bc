"""FLOPs verified on real batches (harness.costs.verify): the built-in methods' claims pass both
checks where their decisions really vary, at depths 26 and 110; the checks' own edge cases."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from halting_helpers import calibrate_bn

from harness.contract import EvalSpec
from harness.costs.flops import FlopAccountant
from harness.costs.verify import COUNTED, PERTURBED, verify_all, verify_execution
from harness.errors import ContractError
from harness.evaluate import plan_specs
from harness.models import create_model


def _halting_model(name: str, depth: int):
    torch.manual_seed(0)
    model = create_model(name, depth=depth, halting_bias_init=0.0)
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return calibrate_bn(model, images), images[:8]


def _varies(model, images, spec) -> bool:
    """Some image (or position) runs a unit that another does not: halting really halts."""
    with torch.no_grad():
        out = model(images, dataclasses.replace(spec, generator=torch.Generator().manual_seed(0)))
    return any(not bool(m.all()) and bool(m.any()) for m in out.units_ran)


@pytest.mark.parametrize(
    ("name", "depth"),
    [("act", 26), ("pact", 26), ("sact", 26), ("spatial_pact", 26), ("act", 110), ("sact", 110)],
)
def test_built_in_claims_are_verified_where_halting_varies(name, depth):
    model, images = _halting_model(name, depth)
    specs = plan_specs(model, executions="all")
    accountant = FlopAccountant(model, (32, 32))
    if depth == 110:  # the masked executions only: the perturbation check, 54 units
        specs = [s for s in specs if s.execution == "masked"][:1]
    assert any(_varies(model, images, s) for s in specs if s.mode not in model.relaxed_modes)
    labels = verify_all(model, images, specs, accountant, seed=0)
    for spec in specs:
        expected = (
            COUNTED
            if model.computes_only_what_ran(spec.execution) or spec.mode in model.relaxed_modes
            else PERTURBED
        )
        assert labels[(spec.mode, spec.execution, spec.threshold)] == expected, spec


def test_a_relaxed_mode_that_leaves_units_out_is_refused():
    model, images = _halting_model("pact", 14)
    accountant = FlopAccountant(model, (32, 32))
    spec = EvalSpec("stochastic", "masked", generator=None)
    original = type(model).forward

    def partial(self, x, spec=None):
        out = original(self, x, spec)
        masks = [m.clone() for m in out.units_ran]
        masks[1][:, -1] = False
        return dataclasses.replace(out, units_ran=masks)

    model.forward = partial.__get__(model)
    with pytest.raises(ContractError, match=r"declared relaxed .* units_ran\[1\] leaves units"):
        verify_execution(model, images, spec, accountant)


def test_an_early_exit_that_under_reports_names_the_block_and_unit():
    model, images = _halting_model("act", 14)
    accountant = FlopAccountant(model, (32, 32))
    original = type(model).forward

    def hides_last(self, x, spec=None):
        out = original(self, x, spec)
        masks = [m.clone() for m in out.units_ran]
        masks[2][:, -1] = False  # the last unit of block 2 is never reported
        return dataclasses.replace(out, units_ran=masks)

    model.forward = hides_last.__get__(model)
    spec = EvalSpec("act", "early_exit")
    with pytest.raises(ContractError, match=r"\(early_exit\): block 2 unit 1 is charged 0 FLOPs"):
        verify_execution(model, images, spec, accountant)
