"""FLOPs verified on real batches (harness.costs.verify): the built-in methods' claims pass both
checks where their decisions really vary, at depths 26 and 110; the checks' own edge cases."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from halting_helpers import calibrate_bn
from torch.utils.flop_counter import FlopCounterMode

from harness.contract import AdaptiveModel, EvalSpec, ModelOutput
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


# -- partial units: a skipped stage-opening unit still pays its projection shortcut -----------
class ProjectionUnit(torch.nn.Module):
    """Stage-opening unit: stride-2 3x3 residual and a 1x1 stride-2 projection shortcut."""

    SHORTCUT_MODULES = ("shortcut",)

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = torch.nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x):
        return self.shortcut(x) + self.conv2(torch.relu(self.conv1(x)))


class SameUnit(torch.nn.Module):
    SHORTCUT_MODULES = ("shortcut",)

    def __init__(self, channels: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = torch.nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.conv(x)


class ProjectionBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.blocks = torch.nn.ModuleList(
            [torch.nn.ModuleList([ProjectionUnit(8, 16), SameUnit(16), SameUnit(16)])]
        )
        self.head = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)
        )
        self.block_channels = [16]


class GatedStageOpening(AdaptiveModel):
    """A gate before every unit, the stage-opening one included (ConvNet-AIG's CIFAR code):
    a closed gate on the first unit still runs its projection shortcut."""

    eval_modes = ("gated",)
    branch_placement = "before"

    def __init__(self):
        super().__init__()
        self.backbone = ProjectionBackbone()
        self.gates = torch.nn.ModuleList(torch.nn.Linear(c, 1) for c in (8, 16, 16))
        with torch.no_grad():  # decisions that vary between images
            for gate in self.gates:
                gate.weight.mul_(100.0)
                gate.bias.zero_()

    def executions_for(self, mode):
        return ("gathered", "masked")

    def decision_branches(self):
        return [list(self.gates)]

    def forward(self, images, spec: EvalSpec | None = None):
        x = self.backbone.stem(images)
        ran = []
        for gate, unit in zip(self.gates, self.backbone.blocks[0], strict=True):
            opened = gate(x.mean((2, 3)))[:, 0] > 0
            ran.append(opened)
            if spec is None or spec.execution == "masked":
                x = torch.where(opened.view(-1, 1, 1, 1), unit(x), unit.shortcut(x))
                continue
            run, skip = opened.nonzero().squeeze(1), (~opened).nonzero().squeeze(1)
            parts = {}
            if len(run):
                parts["run"] = unit(x.index_select(0, run))
            if len(skip):
                parts["skip"] = unit.shortcut(x.index_select(0, skip))
            like = next(iter(parts.values()))
            new = like.new_empty(x.shape[0], *like.shape[1:])
            for name, idx in (("run", run), ("skip", skip)):
                if name in parts:
                    new = new.index_copy(0, idx, parts[name])
            x = new
        units_ran = torch.stack(ran, 1)
        return ModelOutput(self.backbone.head(x), [units_ran], [torch.ones_like(units_ran)])


def test_a_skipped_stage_opening_unit_is_charged_its_projection_shortcut():
    torch.manual_seed(0)
    model = GatedStageOpening().eval()
    accountant = FlopAccountant(model, (8, 8))
    # golden: a 1x1 conv 8 -> 16 at stride 2 on 8x8: 8 * 16 * 4 * 4 multiply-accumulates
    assert accountant.units[0][0].shortcut == 8 * 16 * 4 * 4
    assert [c.shortcut for c in accountant.units[0][1:]] == [0, 0]  # identity shortcuts
    images = torch.randn(12, 3, 8, 8)
    spec = EvalSpec("gated", "gathered")
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(images, spec)
        masked = model(images, EvalSpec("gated", "masked"))
    first = out.units_ran[0][:, 0]
    assert bool(first.any()) and not bool(first.all())  # some images skip the first unit
    assert torch.allclose(out.logits, masked.logits, atol=1e-5)
    charged = accountant.per_image(out)[0]
    assert charged.sum().item() == float(counter.get_total_flops())
    skipped = (~first).nonzero()[0].item()
    expected = 2 * (
        accountant.stem_macs
        + accountant.head_macs
        + accountant.units[0][0].shortcut
        + sum(
            c.total
            for c, r in zip(accountant.units[0][1:], out.units_ran[0][skipped, 1:], strict=True)
            if r
        )
        + sum(h.total for h in accountant.halting[0])
    )
    assert charged[skipped].item() == expected
    assert verify_execution(model, images, spec, accountant) == COUNTED
    assert verify_execution(model, images, EvalSpec("gated", "masked"), accountant) == PERTURBED


def test_a_plugin_backbone_gives_the_full_network_flops_and_its_identity(monkeypatch):
    """A method that builds its own backbone: the full-network FLOPs come from that backbone
    (golden count), its identity (name, architecture hash) differs from another architecture's,
    and a variant the method does not declare is refused before it builds."""
    from harness import registry
    from harness.errors import ConfigError
    from harness.models import backbone_identity
    from harness.registry import get_method

    model = GatedStageOpening()
    accountant = FlopAccountant(model, (8, 8))
    macs = (
        3 * 8 * 9 * 64  # stem 3x3, 3 -> 8, 8x8
        + 8 * 16 * 9 * 16  # stage-opening conv1, stride 2 -> 4x4
        + 16 * 16 * 9 * 16  # its conv2
        + 8 * 16 * 16  # its 1x1 projection shortcut
        + 2 * 16 * 16 * 9 * 16  # two same-shape units
        + 16 * 10  # classifier
    )
    assert accountant.vanilla_flops == 2 * macs
    first, again = backbone_identity(model), backbone_identity(GatedStageOpening())
    assert first == again and first["name"].endswith("ProjectionBackbone")
    other = GatedStageOpening()
    other.backbone.blocks[0].append(SameUnit(16))
    assert backbone_identity(other)["architecture_hash"] != first["architecture_hash"]
    spec = dataclasses.replace(
        get_method("resnet"),
        name="own_backbone",
        model_cls=GatedStageOpening,
        build=lambda model_spec, config: GatedStageOpening(),
        variants=("projection-toy",),
    )
    monkeypatch.setitem(registry._REGISTRY, "own_backbone", spec)
    assert isinstance(create_model("own_backbone", variant="projection-toy"), GatedStageOpening)
    with pytest.raises(ConfigError, match=r"model.variant \(method own_backbone\).*projection-toy"):
        create_model("own_backbone", variant="convnet-aig")
    with pytest.raises(ConfigError, match=r"model.variant \(method aig\).*convnet-aig"):
        create_model("aig", variant="no-such-backbone")  # the example declares its variants
