"""Plug-ins for any execution pattern: the check-method suite over every registered method (and
the template), and FLOPs charged exactly for patterns that are not a prefix, per sample and
per position, against an independent count of what really ran (FlopCounterMode)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness import registry
from harness.checkmethod import assert_method_conforms, check_method
from harness.cli import main
from harness.contract import AdaptiveModel, EvalSpec, ModelOutput
from harness.costs.flops import FlopAccountant
from harness.errors import ConfigError, ContractError
from harness.models import create_model
from harness.registry import get_method, list_methods


def _overrides(name: str) -> dict:
    """Decisions that really vary for untrained methods: halting and gate biases at 0 (halting
    branches start at -3 and never halt; the example's gates start open)."""
    fields = {f.name for f in dataclasses.fields(get_method(name).config_cls)}
    return {f: 0.0 for f in ("halting_bias_init", "gate_bias_init") if f in fields}


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_passes_check_method(name):
    results = assert_method_conforms(name, **_overrides(name))
    assert [r.name for r in results] == [
        "contract",
        "backward",
        "executions agree",
        "seeded",
        "flops",
        "state dict",
        "config",
    ]


def test_the_example_plugin_is_installed_from_its_own_package():
    """`make install` installs examples/aig_gates; the harness finds it by its entry point."""
    assert "aig" in list_methods(), "the example plug-in is not installed: run `make install`"
    assert registry.method_origin("aig")["name"] == "pact-harness-aig-gates"
    results = {r.name: r for r in check_method("aig", gate_bias_init=0.0)}
    assert all(r.passed for r in results.values())
    assert "deterministic/gathered" in results["flops"].detail


def test_the_template_passes_check_method(monkeypatch):
    from methods.template import SPEC

    registry.check_spec(SPEC)
    monkeypatch.setitem(registry._REGISTRY, SPEC.name, SPEC)
    assert_method_conforms(SPEC.name)


def test_check_method_cli_prints_each_check(capsys):
    assert main(["check-method", "pact", "--depth", "14", "--set", "halting_bias_init=0"]) == 0
    out = capsys.readouterr().out
    flops = next(line for line in out.splitlines() if "flops:" in line)
    assert flops.startswith("  PASS  flops: FLOPs verified for ")
    assert "deterministic/early_exit: flop-counter" in flops
    assert "deterministic/masked: mask-perturbation" in flops
    assert "stochastic/masked: flop-counter" in flops  # the relaxed mode runs every unit
    assert "7 passed, 0 failed, 0 skipped" in out


# -- a toy backbone whose units differ in cost, and gates that skip any unit ------------------
class ToyUnit(nn.Module):
    """x + conv2(relu(conv1(x))), 3x3 convs, ``hidden`` channels: units of different cost.

    ``conv1`` feeds a 3x3 conv (``DILATED_CONVS``); ``residual_mask`` freezes positions."""

    DILATED_CONVS = ("conv1",)
    identity_shortcut = True

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)

    def forward(self, x, residual_mask=None):
        residual = self.conv2(F.relu(self.conv1(x)))
        return x + (residual if residual_mask is None else residual * residual_mask.unsqueeze(1))

    def gathered(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The unit on active positions only: conv1 as a matmul on the 3x3-dilated active set
        (the positions conv2 reads), conv2 as a matmul on the active set; exact."""
        batch, channels, height, width = x.shape
        dilated = F.max_pool2d(mask.float().unsqueeze(1), 3, 1, 1).squeeze(1).bool()
        hidden = x.new_zeros(batch, self.conv1.out_channels, height * width)
        patches = F.unfold(x, 3, padding=1)  # [B, C*9, HW]
        for i in range(batch):
            cols = dilated[i].flatten().nonzero().squeeze(1)
            weight = self.conv1.weight.flatten(1)
            hidden[i][:, cols] = F.relu(weight @ patches[i][:, cols])
        hidden = hidden.view(batch, -1, height, width)
        out = x.clone()
        patches = F.unfold(hidden, 3, padding=1)
        for i in range(batch):
            cols = mask[i].flatten().nonzero().squeeze(1)
            update = self.conv2.weight.flatten(1) @ patches[i][:, cols]
            out[i].view(channels, -1)[:, cols] += update
        return out


class ToyBackbone(nn.Module):
    """Stem, one block of four units with hidden widths 4, 16, 8, 12, head; 8x8 images."""

    def __init__(self, channels: int = 8, widths=(4, 16, 8, 12)):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList([nn.ModuleList(ToyUnit(channels, w) for w in widths)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
        self.block_channels = [channels]

    def forward(self, images):
        x = self.stem(images)
        for unit in self.blocks[0]:
            x = unit(x)
        return self.head(x)


class GatedToy(AdaptiveModel):
    """A gate before every unit (SkipNet/ConvNet-AIG style): any subset of units may run.

    ``spatial`` gates decide per position (a 1x1 conv), image-level gates per sample (a linear
    layer on pooled features). ``gathered`` really skips: units run only where their gate
    opened (per sample: on the gathered samples; spatial: on active positions)."""

    eval_modes = ("gated",)

    def __init__(self, spatial: bool):
        super().__init__()
        self.spatial = spatial
        self.backbone = ToyBackbone()
        make = (lambda: nn.Conv2d(8, 1, 1)) if spatial else (lambda: nn.Linear(8, 1))
        self.gates = nn.ModuleList(make() for _ in self.backbone.blocks[0])

    def executions_for(self, mode):
        return ("gathered", "masked")

    def decision_branches(self):
        return [list(self.gates)]

    def _open(self, gate, x):
        if self.spatial:
            return gate(x)[:, 0] > 0  # [B, H, W]
        return gate(x.mean((2, 3)))[:, 0] > 0  # [B]

    def forward(self, images, spec: EvalSpec | None = None):
        x = self.backbone.stem(images)
        ran = []
        for gate, unit in zip(self.gates, self.backbone.blocks[0], strict=True):
            opened = self._open(gate, x)
            ran.append(opened)
            if spec is None or spec.execution == "masked":
                mask = opened.float() if self.spatial else opened.float().view(-1, 1, 1)
                x = x + mask.unsqueeze(1) * (unit(x) - x)
            elif self.spatial:
                x = unit.gathered(x, opened)
            else:
                idx = opened.nonzero().squeeze(1)
                x = x.index_copy(0, idx, unit(x.index_select(0, idx)))
        units_ran = torch.stack(ran, 1)
        return ModelOutput(
            logits=self.backbone.head(x),
            units_ran=[units_ran],
            branches_ran=[torch.ones_like(units_ran)],  # every gate is evaluated everywhere
        )


def _skips_middle_units(units_ran: torch.Tensor) -> bool:
    """Some sample (or position) skips a unit and runs a later one: not a prefix."""
    ran = units_ran.flatten(2) if units_ran.dim() == 4 else units_ran.unsqueeze(2)
    later = ran.flip(1).cummax(1).values.flip(1)  # "some unit at or after l ran"
    return bool((~ran[:, :-1] & later[:, 1:]).any())


@pytest.mark.parametrize("spatial", [False, True], ids=["per-sample", "per-position"])
def test_a_pattern_that_skips_middle_units_is_charged_what_really_ran(spatial):
    torch.manual_seed(3)
    model = GatedToy(spatial).eval()
    accountant = FlopAccountant(model, (8, 8))
    costs = [c.total for c in accountant.units[0]]
    assert len(set(costs)) == 4  # every unit has its own cost
    images = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        masked = model(images, EvalSpec("gated", "masked"))
        counter = FlopCounterMode(display=False)
        with counter:
            gathered = model(images, EvalSpec("gated", "gathered"))
    assert torch.allclose(masked.logits, gathered.logits, atol=1e-5)
    assert torch.equal(masked.units_ran[0], gathered.units_ran[0])
    assert _skips_middle_units(gathered.units_ran[0])
    accounted = accountant.per_image(gathered)[0].sum().item()
    assert accounted == float(counter.get_total_flops())
    # and the masked execution, which computes densely, is charged the same by the accountant
    assert accountant.per_image(masked)[0].sum().item() == accounted


def test_a_wrong_mask_shape_is_one_line_naming_the_field():
    from harness.conformance import check_output

    model = GatedToy(False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 8), EvalSpec("gated", "masked"))
    bad = dataclasses.replace(out, units_ran=[out.units_ran[0][:, :3]])
    with pytest.raises(
        ContractError, match=r"units_ran\[0\] has shape \(2, 3\); expected \(2, 4\)"
    ):
        check_output(model, bad, 2, "gated_toy")
    with pytest.raises(ContractError, match=r"units_ran has 2 entries; expected one per block"):
        check_output(model, dataclasses.replace(out, units_ran=out.units_ran * 2), 2, "gated_toy")
    counts = dataclasses.replace(out, units_ran=[out.units_ran[0].long()])
    with pytest.raises(ContractError, match="dtype torch.int64; expected torch.bool"):
        check_output(model, counts, 2, "gated_toy")


def test_check_method_names_what_a_plugin_must_change(monkeypatch, tiny_args, tmp_path, capsys):
    """A plug-in whose accounting lies (reports every unit while skipping) fails `flops`, and
    `train` stops it before its first epoch (nothing written but the refusal)."""

    class Liar(GatedToy):
        def forward(self, images, spec=None):
            out = super().forward(images, spec)
            return dataclasses.replace(out, units_ran=[torch.ones_like(out.units_ran[0])])

    spec = dataclasses.replace(
        get_method("resnet"),
        name="liar",
        model_cls=Liar,
        build=lambda model_spec, config: Liar(False),
    )
    monkeypatch.setitem(registry._REGISTRY, "liar", spec)
    results = {r.name: r for r in check_method("liar", depth=8)}
    assert not results["flops"].passed
    assert "units_ran must say exactly where each unit ran" in results["flops"].detail
    assert "(gathered): block 0 unit " in results["flops"].detail  # named
    out = tmp_path / "run"
    assert main(tiny_args(out, "--epochs", "1", method="liar")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode gated (gathered): block 0 unit " in err[0], err
    assert not (out / "checkpoint.pt").exists()


class MaskedOnly(GatedToy):
    """The gated toy with its masked execution only (nothing it offers really skips)."""

    def executions_for(self, mode):
        return ("masked",)


class ClaimsAll(MaskedOnly):
    """Claims every unit ran, while its masked execution keeps only the opened gates' units."""

    def forward(self, images, spec=None):
        out = super().forward(images, spec)
        return dataclasses.replace(out, units_ran=[torch.ones_like(out.units_ran[0])])


class HidesOne(MaskedOnly):
    """Uses unit 2 everywhere but reports it where its gate opened only."""

    def forward(self, images, spec=None):
        x = self.backbone.stem(images)
        ran = []
        for u, (gate, unit) in enumerate(zip(self.gates, self.backbone.blocks[0], strict=True)):
            opened = self._open(gate, x)
            ran.append(opened)
            mask = torch.ones_like(opened) if u == 2 else opened
            x = x + mask.float().view(-1, 1, 1, 1) * (unit(x) - x)
        units_ran = torch.stack(ran, 1)
        return ModelOutput(self.backbone.head(x), [units_ran], [torch.ones_like(units_ran)])


@pytest.mark.parametrize(
    ("liar", "message"),
    [
        (ClaimsAll, "is reported as run for image .*, but its output does not reach the logits"),
        (HidesOne, "block 0 unit 2 is reported as not run for image .*, but its output there"),
    ],
)
def test_lying_masks_of_a_masked_execution_fail_check_method_and_stop_train(
    liar, message, monkeypatch, tiny_args, tmp_path, capsys
):
    """Masks that claim a unit ran where its output was discarded, or hide a unit whose output
    was used, in an execution that computes everything: caught by perturbing unit outputs, in
    check-method and before train's first epoch (nothing is written)."""
    torch.manual_seed(3)
    honest = MaskedOnly(False).eval()
    with torch.no_grad():
        ran = honest(torch.randn(8, 3, 8, 8), EvalSpec("gated", "masked")).units_ran[0]
    assert _skips_middle_units(ran) and not bool(ran.all())  # the gates really vary
    _register(monkeypatch, "liar", liar, False)
    torch.manual_seed(3)
    results = {r.name: r for r in check_method("liar", depth=8)}
    assert not results["flops"].passed
    assert re.search(message, results["flops"].detail), results["flops"].detail
    _register(monkeypatch, "honest", MaskedOnly, False)
    honest_results = {r.name: r for r in check_method("honest", depth=8)}
    assert "gated/masked: mask-perturbation" in honest_results["flops"].detail
    out = tmp_path / "run"
    assert main(tiny_args(out, "--epochs", "1", method="liar")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: method 'liar': mode gated (masked)")
    assert not (out / "checkpoint.pt").exists()


def test_a_plugin_ships_presets_callable_by_name(monkeypatch):
    """The example package publishes `aig-mini` through `pact_harness.presets`; a plug-in
    preset never replaces a shipped one and a broken one does not hide the others."""
    from importlib.metadata import EntryPoint

    from harness import presets

    assert "aig-mini" in presets.list_presets()
    preset = presets.load_preset("aig-mini")
    assert preset.name == "aig-mini" and "aig" in preset.methods
    group = presets.PRESET_ENTRY_POINT_GROUP
    fake = [
        EntryPoint("aig-mini", "aig_gates:AIG_MINI_PRESET", group),
        EntryPoint("smoke", "aig_gates:AIG_MINI_PRESET", group),  # clashes with a shipped one
        EntryPoint("gone", "no_such_package:PRESET", group),
    ]
    monkeypatch.setattr(presets, "entry_points", lambda group: fake)
    usable, broken = presets.plugin_presets()
    assert list(usable) == ["aig-mini"]
    assert "the name is taken by another preset" in broken["smoke"]
    assert "ModuleNotFoundError" in broken["gone"]
    assert presets.load_preset("smoke").name == "smoke"  # the shipped preset, not the plug-in's
    with pytest.raises(ConfigError, match="preset 'gone' of a plug-in is unusable"):
        presets.load_preset("gone")


def test_an_exception_inside_a_plugin_is_a_fail_line_not_a_traceback(monkeypatch):
    """A plug-in whose forward raises AttributeError (e.g. a block returning a tuple where a
    tensor is expected) fails each check that runs it, with the error named, and check-method
    itself finishes (it used to end in an AttributeError traceback)."""

    class Broken(GatedToy):
        def forward(self, images, spec=None):
            state = (images,)  # a block that returned a tuple
            return state.shape  # AttributeError

    spec = dataclasses.replace(
        get_method("resnet"),
        name="broken",
        model_cls=Broken,
        build=lambda model_spec, config: Broken(False),
    )
    monkeypatch.setitem(registry._REGISTRY, "broken", spec)
    results = {r.name: r for r in check_method("broken", depth=8)}
    assert not results["contract"].passed
    assert re.match(
        r"AttributeError at .*test_plugins\.py:\d+ \(module ", results["contract"].detail
    )
    assert results["config"].passed  # checks that do not call forward still run


class TwicePerForward(GatedToy):
    """A masked-only plug-in that calls each unit twice per forward: no FLOP check can run
    on it (nothing skips, and a perturbation cannot be placed in one call)."""

    def executions_for(self, mode):
        return ("masked",)

    def forward(self, images, spec: EvalSpec | None = None):
        x = self.backbone.stem(images)
        ran = []
        for gate, unit in zip(self.gates, self.backbone.blocks[0], strict=True):
            opened = self._open(gate, x)
            ran.append(opened)
            mask = opened.float().view(-1, 1, 1, 1)
            x = x + mask * (0.5 * unit(x) + 0.5 * unit(x) - x)
        units_ran = torch.stack(ran, 1)
        return ModelOutput(
            logits=self.backbone.head(x),
            units_ran=[units_ran],
            branches_ran=[torch.ones_like(units_ran)],
        )


def _register(monkeypatch, name: str, model_cls, *args) -> None:
    spec = dataclasses.replace(
        get_method("resnet"),
        name=name,
        model_cls=model_cls,
        build=lambda model_spec, config: model_cls(*args),
    )
    monkeypatch.setitem(registry._REGISTRY, name, spec)


def test_a_check_that_cannot_run_is_skip_never_pass(monkeypatch, capsys):
    """A plug-in no FLOP check can run on says SKIP with the reason (it used to print PASS ...
    nothing to count); the vanilla ResNet, which runs everything, is counted."""
    _register(monkeypatch, "twice", TwicePerForward, False)
    assert main(["check-method", "twice", "--depth", "8"]) == 0  # a skip is not a failure
    out = capsys.readouterr().out
    assert "SKIP  flops: neither FLOP check could run on any execution: gated/masked" in out
    assert "ran 2 times in one forward" in out
    assert "PASS  flops" not in out and "1 skipped" in out
    results = {r.name: r for r in check_method("resnet", depth=8)}
    assert results["flops"].passed and not results["flops"].skipped
    assert "standard/masked: flop-counter" in results["flops"].detail


def test_branches_ran_none_needs_a_declared_placement():
    """No default pairing: ``branches_ran=None`` is accepted only from a model that declares
    its branches sit after their units."""
    from harness.conformance import check_output

    class Undeclared(GatedToy):
        def forward(self, images, spec=None):
            return dataclasses.replace(super().forward(images, spec), branches_ran=None)

    model = Undeclared(False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 8), EvalSpec("gated", "masked"))
    with pytest.raises(ContractError, match="branches_ran is None.*declares no branch_placement"):
        check_output(model, out, 2, "undeclared")
    model.branch_placement = "before"
    with pytest.raises(ContractError, match="branch_placement is 'before'"):
        check_output(model, out, 2, "undeclared")
    model.branch_placement = "after"
    check_output(model, out, 2, "undeclared")  # declared: the pairing is the model's word


def test_gates_before_their_units_declared_after_fail_check_method(monkeypatch):
    """The example's gates run before their units on every image; a copy that reports
    branches_ran=None and declares them "after" is charged its gates only where units ran.
    check-method (depth 26: two middle units per block, gates varying) counts the difference
    and names the branch."""
    aig = get_method("aig")

    class AfterLiar(aig.model_cls):
        branch_placement = "after"

        def forward(self, images, spec=None):
            return dataclasses.replace(super().forward(images, spec), branches_ran=None)

    spec = dataclasses.replace(
        aig, name="aig_after", model_cls=AfterLiar, build=lambda ms, config: _rebuild(ms, config)
    )

    def _rebuild(model_spec, config):
        model = aig.build(model_spec, config)
        model.__class__ = AfterLiar
        return model

    monkeypatch.setitem(registry._REGISTRY, "aig_after", spec)
    results = {r.name: r for r in check_method("aig_after", **_overrides("aig"))}
    assert not results["flops"].passed
    assert (
        "decision branch" in results["flops"].detail and "branches_ran" in results["flops"].detail
    )
    honest = {r.name: r for r in check_method("aig", **_overrides("aig"))}
    assert honest["flops"].passed and "gathered: flop-counter" in honest["flops"].detail


class GlobalNoise(MaskedOnly):
    """Draws its gate noise from the global random state instead of spec.generator."""

    def _open(self, gate, x):
        return gate(x.mean((2, 3)))[:, 0] + torch.randn(x.shape[0]) > 0


def test_noise_from_the_global_rng_is_named_as_the_cause(monkeypatch):
    _register(monkeypatch, "global_noise", GlobalNoise, False)
    results = {r.name: r for r in check_method("global_noise", depth=8)}
    assert not results["state dict"].passed
    assert "draw every random number from spec.generator" in results["state dict"].detail
    assert "parameters or registered buffers" not in results["state dict"].detail


def test_an_exception_in_a_plugin_is_one_line_naming_its_file_and_line(
    monkeypatch, tiny_args, tmp_path, capsys
):
    class Broken(MaskedOnly):
        def forward(self, images, spec=None):
            raise ValueError("expected 2D or 3D input (got 4D input)\nsecond line")

    _register(monkeypatch, "broken_module", Broken, False)
    detail = {r.name: r for r in check_method("broken_module", depth=8)}["contract"].detail
    assert re.match(r"ValueError at .*test_plugins\.py:\d+ \(module .*test_plugins\): ", detail)
    out = tmp_path / "run"
    assert main(tiny_args(out, "--epochs", "1", method="broken_module")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.match(
        r"error: method 'broken_module' raised ValueError at .*test_plugins\.py:\d+ "
        r"\(module .*test_plugins\): expected 2D or 3D input \(got 4D input\)$",
        err[0],
    )
    assert not (out / "checkpoint.pt").exists()


def test_a_decision_branch_that_never_trains_stops_train_before_its_first_epoch(
    monkeypatch, tiny_args, tmp_path, capsys
):
    class Idle(MaskedOnly):
        def decision_branches(self):
            return [[*self.gates, nn.Linear(8, 1)]]  # the last one is never called

        def forward(self, images, spec=None):
            out = super().forward(images, spec)
            ones = torch.ones(images.shape[0], 5, dtype=torch.bool)
            return dataclasses.replace(out, branches_ran=[ones])

    _register(monkeypatch, "idle_branch", Idle, False)
    out = tmp_path / "run"
    assert main(tiny_args(out, "--epochs", "1", method="idle_branch")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decision branch 4 of block 0 did not run" in err[0], err
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("depth", [20, 110])
def test_the_example_gates_stage_opening_units_and_is_charged_what_ran(depth):
    """ConvNet-AIG gates every unit, stage-opening ones included (a closed one still runs its
    shortcut). The stochastic mode (Gumbel samples at test time, as the peer's code) skips on
    untrained gates; the accountant equals FlopCounterMode on the gathered execution."""
    torch.manual_seed(0)
    model = create_model("aig", depth=depth).eval()
    images = torch.randn(8, 3, 32, 32)
    spec = EvalSpec("stochastic", "gathered", generator=torch.Generator().manual_seed(1))
    accountant = FlopAccountant(model, (32, 32))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(images, spec)
    openers = torch.stack([ran[:, 0] for ran in out.units_ran])  # first unit of each block
    assert not bool(openers.all())  # some stage-opening unit was skipped
    assert _skips_middle_units(torch.cat(out.units_ran, 1))
    assert accountant.per_image(out)[0].sum().item() == float(counter.get_total_flops())
    assert len(model.decision_branches()[0]) == len(model.backbone.blocks[0])  # all gated


@pytest.mark.parametrize("depth", [20, 110])
def test_the_peer_backbone_charges_a_closed_stage_opening_gate_its_projection(depth):
    """``--variant convnet-aig``: ConvNet-AIG's own CIFAR ResNet, whose stage-opening units
    have 1x1 conv + BN projection shortcuts. A closed gate there still runs the projection:
    golden count of each projection, and the accountant equals FlopCounterMode on the gathered
    execution with stage-opening units skipped."""
    from harness.models import backbone_identity

    torch.manual_seed(0)
    model = create_model("aig", depth=depth, variant="convnet-aig").eval()
    accountant = FlopAccountant(model, (32, 32))
    # 1x1 convs 16 -> 32 on a 16x16 output and 32 -> 64 on 8x8; stage 1 keeps its shape
    shortcuts = [block[0].shortcut for block in accountant.units]
    assert shortcuts == [0, 16 * 32 * 16 * 16, 32 * 64 * 8 * 8]
    assert "convnet-aig" in backbone_identity(model)["name"]
    images = torch.randn(16, 3, 32, 32)
    spec = EvalSpec("stochastic", "gathered", generator=torch.Generator().manual_seed(2))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(images, spec)
    closed_openers = sum(int((~ran[:, 0]).sum()) for ran in out.units_ran[1:])
    assert closed_openers > 0  # some projection ran without its residual
    assert accountant.per_image(out)[0].sum().item() == float(counter.get_total_flops())
