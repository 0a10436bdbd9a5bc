"""``pact-harness bench``: the plan file, the verdicts, the arithmetic, calibrated halting, the
table and a whole run at tiny sizes.

Each test says in a comment which plausible bug it catches.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from harness.bench import (
    PLAN_FILE,
    BenchOptions,
    GridTimes,
    Report,
    Settings,
    Target,
    calibrate_halting,
    flop_reduction,
    format_table,
    load_plan,
    met,
    parse_plan,
    run_bench,
    speedup_vs_flops,
    varied_images,
)
from harness.bench.judge import _OPERATORS
from harness.bench.measure import _branch_heads, _flop_reduction, bench_grid
from harness.bench.plan import COMPARISONS
from harness.cli import main
from harness.contract import EvalSpec
from harness.errors import ConfigError
from harness.models import create_model

#: The figures and targets the bench had before the plan file held them (harness/bench.py
#: TARGETS and GOALS at 0169907), in table order: the shipped plan must keep every key, target,
#: goal and their order (the JSON's ratios and the printed table read them).
TARGETS_BEFORE_THE_PLAN = {
    "harness_vs_bare_train": ("<=", 1.05, None),
    "act_train_vs_vanilla": ("<=", 1.3, None),
    "pact_train_vs_vanilla": ("<=", 1.3, None),
    "sact_train_vs_vanilla": ("<=", 1.5, None),
    "spatial_pact_train_vs_vanilla": ("<=", 1.5, None),
    "act_early_exit_speedup_over_flop_reduction": (">=", 0.8, 0.9),
    "pact_det_early_exit_speedup_over_flop_reduction": (">=", 0.8, 0.9),
    "spatial_gathered_speedup_over_flop_reduction": (">=", 0.5, None),
    "pact_det_memory_vs_vanilla": ("<=", 1.01, None),
    "pact_det_memory_vs_act": ("<", 1.0, None),
    "grid_vs_loop": ("<=", 1.15, None),
    "train_images_per_s_resnet32": (">=", 21000.0, None),
    "train_images_per_s_resnet110": (">=", 0.0, None),
}
#: FLOPs per image of the CIFAR SACT-variant vanilla ResNet-32 and -110 (DESIGN.md section 5,
#: re-derived from the SACT code's counter).
GOLDEN_RESNET32, GOLDEN_RESNET110 = 137_725_184, 505_775_360


# -- the plan ------------------------------------------------------------------------------------


def test_shipped_plan_keeps_every_figure_key_target_and_order():
    # Fails if a key is renamed, a target or goal changes, or the plan reorders the figures
    # (the table and the JSON's ratios would change).
    plan = load_plan()
    got = {k: (t.comparison, t.bound, t.goal) for k, t in plan.targets(cuda=True).items()}
    assert list(got.items()) == list(TARGETS_BEFORE_THE_PLAN.items())
    assert plan.cpu_keys == tuple(TARGETS_BEFORE_THE_PLAN)[:-2]
    assert plan.source == str(PLAN_FILE)


def _plan_tree() -> dict:
    return yaml.safe_load(PLAN_FILE.read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        # A misspelled section would otherwise be dropped silently (its figures never measured).
        (
            lambda t: t.update(early_exits=[]),
            "(top level): unknown key 'early_exits'; allowed keys",
        ),
        (lambda t: t.pop("vanilla"), "vanilla: missing"),
        (lambda t: t.update(vanilla="resnet99"), "vanilla: unknown method 'resnet99'"),
        # A typo in a figure's field (targe:) would otherwise leave the figure without a target.
        (lambda t: t["train"][0].update(targe="<= 1"), "train[0]: unknown key 'targe'"),
        (lambda t: t["train"][1].update(method="pactt"), "train[1].method: unknown method"),
        (lambda t: t["train"][1].update(method="act"), "train[1].method: 'act' is timed twice"),
        (lambda t: t["train"][0].pop("key"), "train[0].key: missing"),
        (lambda t: t["early_exit"][0].update(target="=> 0.8"), "early_exit[0].target: '=> 0.8'"),
        (
            lambda t: t["early_exit"][0].update(target=">= fast"),
            "early_exit[0].target: 'fast' is not a finite number",
        ),
        (lambda t: t["early_exit"][1].update(goal="high"), "early_exit[1].goal: expected a number"),
        (
            lambda t: t["early_exit"][1].update(mode="greedy"),
            "early_exit[1].mode: 'greedy' is not a mode of pact; allowed values: deterministic",
        ),
        (
            lambda t: t["early_exit"][0]["config"].update(halting_bias=0.0),
            "early_exit[0].config: create_model('act'): unknown argument 'halting_bias'",
        ),
        (lambda t: t["early_exit"][0]["config"].update(depth=8), "'depth' is a backbone field"),
        (lambda t: t["gathered"].update(execution="fast"), "gathered.execution: 'fast'; allowed"),
        (lambda t: t["gathered"].update(compare="gathered"), "gathered.compare: must differ"),
        (lambda t: t["memory"]["against"].pop("mode"), "memory.against.mode: missing"),
        (lambda t: t["memory"].update(label="vanilla"), "memory.label: the two sides"),
        (
            lambda t: t["grid"].update(key="harness_vs_bare_train"),
            "'harness_vs_bare_train' names two",
        ),
        (lambda t: t["cuda_throughput"][0].update(depth=0), "cuda_throughput[0].depth: expected"),
    ],
)
def test_bad_plans_are_one_error_naming_the_field(edit, message):
    tree = _plan_tree()
    edit(tree)
    with pytest.raises(ConfigError) as err:
        parse_plan(tree, "my.yaml")
    assert str(err.value).startswith("bench plan my.yaml: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_plan_without_a_section_measures_nothing_there():
    # Fails if an optional section became required, or a dropped one still listed its keys.
    tree = _plan_tree()
    for section in ("train", "gathered", "memory", "grid", "cuda_throughput"):
        tree.pop(section)
    plan = parse_plan(tree)
    assert plan.targets(cuda=True).keys() == {
        "harness_vs_bare_train",
        "act_early_exit_speedup_over_flop_reduction",
        "pact_det_early_exit_speedup_over_flop_reduction",
    }


# -- the verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "comparison, below, at, above",
    [("<=", True, True, False), ("<", True, False, False), (">=", False, True, True)]
    + [(">", False, False, True)],
)
def test_met_at_and_around_the_bound(comparison, below, at, above):
    # Fails if a comparison is swapped for its strict/loose twin (<= read as <: a ratio exactly
    # at its bound would be judged NO) or its direction is reversed.
    target = Target(comparison, 1.05, goal=2.0)
    assert met(target, 1.05 - 1e-9) is below
    assert met(target, 1.05) is at
    assert met(target, 1.05 + 1e-9) is above
    assert met(target, None) is None  # unmeasured: neither met nor missed


def test_the_goal_is_shown_never_judged():
    # Fails if met() judged against the goal: a value past the bound but short of it is met.
    assert met(Target(">=", 0.8, goal=0.9), 0.85) is True
    assert met(Target(">=", 0.8, goal=0.9), 0.75) is False


def test_every_comparison_a_plan_may_write_has_a_meaning():
    # Fails if COMPARISONS gains an entry the judge cannot apply (a KeyError mid-bench).
    assert set(_OPERATORS) == set(COMPARISONS)


# -- the arithmetic ------------------------------------------------------------------------------


def test_speedup_over_flop_reduction_by_hand():
    # Vanilla 2.0 s, early exit 0.5 s: speed-up 4. Vanilla 100 FLOPs, the batch's images 40, 60,
    # 20, 40 (mean 40): reduction 2.5. Figure 4 / 2.5 = 1.6. Fails if a ratio is inverted, the
    # FLOPs are summed over the batch instead of averaged, or the figure is reduction / speed-up.
    figure = speedup_vs_flops(2.0, 0.5, 100.0, [40.0, 60.0, 20.0, 40.0])
    assert figure.speedup == pytest.approx(4.0)
    assert figure.flop_reduction == pytest.approx(2.5)
    assert figure.ratio == pytest.approx(1.6)
    assert flop_reduction(100.0, torch.tensor([100.0, 100.0])) == pytest.approx(1.0)


def _never_halting(model):
    """Every halting branch outputs a logit of -20 (h ~ 2e-9): no unit is ever skipped."""
    with torch.no_grad():
        for block in model.decision_branches():
            for branch in block:
                for head in _branch_heads(branch):
                    head.weight.zero_()
                    if head.bias is not None:
                        head.bias.fill_(-20.0)
    return model.eval()


def test_flop_reduction_of_a_fully_executed_network_is_analytic():
    # The FLOPs of a vanilla CIFAR ResNet are linear in n (depth 6n+2): from the golden
    # ResNet-32 (n=5) and ResNet-110 (n=18), ResNet-20 (n=3) costs 81,102,080. An ACT ResNet-20
    # that runs every unit evaluates 2 halting branches per block, each a Linear(C, 1) on the
    # pooled features: 2*C FLOPs, C = 16, 32, 64; 448 in all. Fails if the reduction is
    # inverted, sums the batch instead of averaging it, or leaves out the halting branches.
    per_n = (GOLDEN_RESNET110 - GOLDEN_RESNET32) // 13
    resnet20 = GOLDEN_RESNET32 - 2 * per_n
    assert resnet20 == 81_102_080
    images = torch.randn(3, 3, 32, 32)
    vanilla = create_model("resnet", depth=20).eval()
    with torch.no_grad():
        assert _flop_reduction(vanilla, vanilla(images)) == 1.0
    halting = _never_halting(create_model("act", depth=20))
    with torch.no_grad():
        output = halting(images, EvalSpec("act", "early_exit"))
    assert [u.tolist() for u in output.units_executed] == [[3, 3, 3]] * 3
    assert _flop_reduction(halting, output) == pytest.approx(resnet20 / (resnet20 + 448), rel=1e-12)


# -- calibrated halting --------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_calibrate_halting_reaches_its_target_in_every_block(target):
    # An untrained ACT ResNet-20 (3 units per block) on 16 varied images: the fraction of units
    # that ran is within 0.05 of the target overall and in each block (16 images x 3 units: a
    # step of 1/48), and images differ. Fails if the bisection moves the wrong way (it would
    # end at every unit or at one), if the bias of one block is set on another (the blocks
    # calibrated first would drift), or if the target is ignored (0.5 and 0.8 both pass).
    model = create_model("act", depth=20, halting_bias_init=0.0)
    images = varied_images(16)
    reached = calibrate_halting(model, images, "act", "early_exit", target=target, steps=8)
    assert reached == pytest.approx(target, abs=0.05)
    with torch.no_grad():
        output = model(images, EvalSpec("act", "early_exit"))
    blocks = model.backbone.blocks
    per_block = [
        u.double().mean().item() / len(b)
        for u, b in zip(output.units_executed, blocks, strict=True)
    ]
    assert per_block == pytest.approx([target] * len(blocks), abs=0.05)
    units = sum(u.sum().item() for u in output.units_executed)
    assert reached == pytest.approx(units / (len(images) * sum(len(b) for b in blocks)))
    assert all(u.double().std() > 0 for u in output.units_executed)  # images halt differently
    assert not model.training  # left ready to evaluate


# -- the table, the grid figure, the whole run ---------------------------------------------------


def test_table_lines_as_the_bench_prints_them():
    # The exact layout the bench printed before the split (value formats, per-depth rows under
    # their figure, sorted by depth as numbers, the goal beside the target, skipped lines).
    # Fails if a column, a format or the depth order changes.
    targets = {
        "a_vs_b": Target("<=", 1.05),
        "exit_figure": Target(">=", 0.8, goal=0.9),
        "images_per_s": Target(">=", 21000.0),
    }
    report = Report(
        ratios={"a_vs_b": 1.0504, "exit_figure": 0.75, "images_per_s": None},
        per_depth={"exit_figure": {"110": 0.75, "56": 0.9}},
        skipped={"cuda": "--skip"},
    )
    assert format_table(report, targets).splitlines() == [
        "figure        value  target             met?",
        "------------  -----  -----------------  -------",
        "a_vs_b        1.050  <= 1.05            NO",  # shown rounded, judged exactly
        "exit_figure   0.750  >= 0.8 (goal 0.9)  NO",
        "  ResNet-56   0.900",
        "  ResNet-110  0.750",
        "images_per_s  -      >= 21000           skipped",
        "skipped cuda: --skip",
    ]
    report.ratios["images_per_s"] = 25000.4
    assert "images_per_s  25,000  >= 21000           yes" in format_table(report, targets)


def test_grid_figure_is_timed_by_the_runner_it_is_given():
    # Fails if grid_vs_loop is loop / grid, if an unfinished grid still gets a ratio, or if the
    # bench ran the grid itself without a runner (it may not import harness.grid).
    plan, settings = load_plan(), Settings(grid_trials=2)
    asked = []

    def runner(grid, trials):
        asked.append((grid.preset, grid.quick_methods, trials))
        return GridTimes(["a", "b"], grid_seconds=3.0, loop_seconds=2.0, complete=True)

    report = bench_grid(plan, settings, runner)
    assert report.ratios == {"grid_vs_loop": 1.5}
    assert report.details["grid_vs_loop"]["trials"] == ["a", "b"]
    assert asked == [("smoke", ("act",), 2)]
    unfinished = bench_grid(plan, settings, lambda g, t: GridTimes([], 1.0, 1.0, complete=False))
    assert unfinished.ratios == {} and "did not finish" in unfinished.skipped["grid_vs_loop"]
    assert "no grid runner" in bench_grid(plan, settings, None).skipped["grid_vs_loop"]


def test_bench_measures_every_figure_at_tiny_sizes(tmp_path, capsys):
    tiny = Settings(
        warmup=0,
        repeats=1,
        bare_depth=8,
        bare_batch=4,
        bare_steps=1,
        method_depth=14,
        method_batch=4,
        method_steps=1,
        exit_depths=(14,),
        exit_batch=8,
        exit_repeats=1,
        calibration_batch=8,
        calibration_steps=2,
        gather_depth=14,
        gather_batch=4,
        memory_depth=14,
    )
    out = tmp_path / "bench.json"
    progress: list[str] = []
    result = run_bench(
        BenchOptions(out=str(out), skip=("grid",), settings=tiny), progress=progress.append
    )
    assert capsys.readouterr().out == ""  # the library prints nothing; the command does
    assert progress[0] == "bench: train ..." and len(progress) == 5
    data = result.data
    assert list(data["ratios"]) == list(load_plan().cpu_keys)
    assert data["ratios"]["grid_vs_loop"] is None and data["skipped"]["grid"] == "--skip"
    assert set(data["skipped"]) == {"grid"}, data["skipped"]
    for key, value in data["ratios"].items():
        assert key == "grid_vs_loop" or value > 0, key
    stored = json.loads(out.read_text())
    assert stored["ratios"] == pytest.approx(data["ratios"])
    assert stored["targets"]["pact_det_memory_vs_act"]["target"] == "< 1"
    methods = {(t["method"], t["depth"]) for t in stored["throughput"]}
    assert {("resnet", 8), ("act", 14), ("spatial_pact", 14)} <= methods
    for entry in stored["throughput"]:
        assert {"method", "depth", "device", "batch_size", "train_images_per_s"} <= set(entry)
    assert set(stored["details"]["memory_halted_per_block"]) == {"act", "pact"}
    memory = stored["details"]["memory"]
    assert {"vanilla_bytes", "act_bytes", "pact_bytes"} <= set(memory)
    assert memory["technique"] == "live tensor storage (exact)"
    table = "\n".join(result.lines)
    assert "harness_vs_bare_train" in table and "met?" in table and "ResNet-14" in table
    assert result.lines[-1] == f"wrote {out}"


def test_command_prints_the_table_and_checks_the_plan(tmp_path, capsys):
    # Fails if the command stopped printing what run_bench returns, or if --plan were ignored
    # (a bad plan must stop the bench before anything is measured).
    out = tmp_path / "b.json"
    skip_all = "train,methods,early_exit,memory,gathered,grid"
    assert main(["bench", "--skip", skip_all, "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["figure", "value", "target", "met?"]
    assert any(line.startswith("grid_vs_loop") for line in printed)
    assert printed[-1] == f"wrote {out}" and printed[-2].startswith("bench took")
    assert json.loads(out.read_text())["skipped"]["memory"] == "--skip"
    bad = tmp_path / "plan.yaml"
    bad.write_text("vanilla: resnet\nearly_exit: [{method: act, mode: act, key: k, target: 1}]\n")
    assert main(["bench", "--plan", str(bad), "--skip", skip_all]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench plan ") and "early_exit[0].target" in err
    assert main(["bench", "--threads", "0", "--skip", skip_all]) == 2
    assert "--threads 0 must be >= 1" in capsys.readouterr().err


def test_the_plan_is_not_a_grid_preset():
    # Fails if preset_files/bench.yaml showed up in `grid --list-presets` or `grid --preset bench`
    # tried to read it as a study.
    from harness.presets import list_presets, preset_path

    assert "bench" not in list_presets()
    with pytest.raises(ConfigError, match="unknown preset 'bench'"):
        preset_path("bench")
