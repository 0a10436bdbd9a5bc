"""Sizing a study before it runs (harness.estimate, ``grid --dry-run [--estimate]``): packing
arithmetic, longest-first scheduling, the trial-time formula, measured and default throughput
files, method costs and the vanilla reference, the checkpoint size against a real checkpoint.
No Ray: these are pure and fast.

Tests that pin a rule say in a comment which plausible bug (a mutation of the source, each tried
by hand) makes them fail.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
import yaml
from test_grid import TINY_BASE, write_preset

from harness import registry, store
from harness.cli import main
from harness.costs.measure import add_cost_columns
from harness.estimate import (
    STUDY_OVERHEAD_S,
    TRIAL_OVERHEAD_S,
    Machine,
    Node,
    Throughput,
    compute,
    concurrency,
    concurrency_text,
    contention,
    default_throughput,
    estimate_study,
    estimate_trials,
    format_estimate,
    gpu_machine,
    launch_order,
    load_throughput,
    lookup_throughput,
    makespan,
    throughput_note,
    train_cost,
)
from harness.evaluate import plan_evaluations
from harness.models import create_model
from harness.presets import Trial, expand, list_presets, load_preset
from harness.registry import get_method, list_methods
from harness.study import GridOptions, plan_study, study_record


def resources(cpu: float, gpu: float) -> dict[str, float]:
    return {"cpu": cpu, "gpu": gpu}


# -- packing -----------------------------------------------------------------------------------


def test_half_a_gpu_with_two_cpus_on_a_4_gpu_8_cpu_node_runs_4_trials_not_8():
    node = Machine((Node(8, 4),))
    found = concurrency(resources(2, 0.5), node)
    assert found.slots == 4 and "CPU-bound" in concurrency_text(found)  # the GPUs would hold 8
    assert concurrency(resources(1, 0.5), node).slots == 8  # now the GPUs bind: 4 x 2
    assert "GPU-bound" in concurrency_text(concurrency(resources(1, 0.5), node))


@pytest.mark.parametrize(
    ("node", "cpu", "gpu", "expected"),
    [
        (Node(64, 4), 1, 0.3, 12),  # Ray packs per GPU instance: 3 per GPU, 0.1 of each idle
        (Node(64, 4), 1, 2, 2),  # whole GPUs
        (Node(64, 4), 1, 1, 4),
        (Node(2, 0), 1, 0, 2),  # a CPU study: CPUs bind
        (Node(2, 0), 0.5, 0, 4),  # fractional CPUs pack too
        (Node(2, 0), 1, 0.5, 0),  # GPU asked for, none there
        (Node(1, 4), 2, 0.5, 0),  # too few CPUs for one trial
        (Node(None, 8), 2, 0.5, 16),  # --gpus 8 without --cpus
    ],
)
def test_node_slots_follow_rays_packing(node, cpu, gpu, expected):
    assert concurrency(resources(cpu, gpu), Machine((node,))).slots == expected


def test_cluster_slots_add_up_over_nodes_and_max_concurrent_caps_them():
    cluster = Machine((Node(8, 4), Node(4, 0), Node(16, 2)))
    found = concurrency(resources(2, 0.5), cluster)
    assert found.slots == 4 + 0 + 4 and "per node" in concurrency_text(found)
    found = concurrency(resources(2, 0.5), cluster, max_concurrent=3)
    assert found.slots == 3 and "capped at 3 by max_concurrent" in concurrency_text(found)
    # A cap above what the nodes hold changes nothing (mutation: min() -> the cap alone).
    assert concurrency(resources(2, 0.5), cluster, max_concurrent=100).slots == 8


def test_longest_first_list_scheduling():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2
    assert makespan([10, 1, 1, 1], 3) == 10  # the longest trial is the critical path
    assert makespan([4, 4], 8) == 4
    assert makespan([], 2) == 0 and math.isinf(makespan([1.0], 0))


def test_the_grid_launches_the_longest_trials_first(tmp_path):
    # Vanilla ResNet-8 (cheapest) is planned first, spatial PACT on ResNet-20 (the most
    # expensive per image) last; the launch order is the estimate's, longest first.
    methods = {"pact": {}, "spatial_pact": {}}
    preset = load_preset(
        str(write_preset(tmp_path, methods=methods, depths=[20], vanilla_depths=[8]))
    )
    trials = expand(preset)
    planned = [t.name for t in trials]
    order = launch_order(preset, trials)
    seconds = {t.name: t.seconds for t in estimate_trials(preset, trials)}
    assert sorted(order) == sorted(planned) and order != planned
    assert [seconds[n] for n in order] == sorted(seconds.values(), reverse=True)
    assert order[0] == "spatial_pact_d20_lambda0.01_s0" and order[-1] == "resnet_d8_s0"
    # Scheduling in that order on 2 slots gives the makespan --estimate prints.
    slots, ends = [0.0, 0.0], []
    for name in order:
        slot = slots.index(min(slots))
        slots[slot] += seconds[name]
        ends.append(slots[slot])
    assert max(ends) == pytest.approx(makespan(list(seconds.values()), 2))


# -- the trial-time model ------------------------------------------------------------------------


def counted_cost_images(trial: Trial, test_images: int) -> tuple[int, int]:
    """(result rows, images run forward per row) when a trained run of ``trial`` measures its
    cost columns: the real add_cost_columns, fed as harness.train feeds it (the first test
    batch, then the further ``eval.memory_batches`` batches, 0: all), on the trial's model,
    with every forward counted by a hook."""
    cfg = trial.run_config
    model = create_model(cfg.method, **dataclasses.asdict(cfg.model))
    rows = [
        {"eval_mode": s.mode, "execution": s.execution, "threshold": s.threshold}
        for s in plan_evaluations(model, cfg.eval)
    ]
    batches = list(torch.randn(test_images, 3, 32, 32).split(cfg.eval.batch_size))
    more = batches[1 : cfg.eval.memory_batches or None]
    images = []
    model.register_forward_hook(lambda _, args, __: images.append(args[0].shape[0]))
    add_cost_columns(model, batches[0], rows, random_seed=0, memory_batches=more)
    assert images and sum(images) % len(rows) == 0
    return len(rows), sum(images) // len(rows)


@pytest.mark.parametrize("memory_batches", [0, 2])
def test_trial_time_is_train_plus_eval_plus_overhead_from_a_bench_file(tmp_path, memory_batches):
    bench = tmp_path / "bench.json"
    entry = {"method": "resnet", "depth": 8, "device": "cpu", "batch_size": 50}
    entry.update(train_images_per_s=100.0, eval_images_per_s=400.0)
    bench.write_text(json.dumps({"throughput": [entry]}))
    # 200 training images, 2 epochs; 100 test images read in batches of 30 (30, 30, 30, 10).
    evaluation = {**TINY_BASE["eval"], "batch_size": 30, "memory_batches": memory_batches}
    base = {**TINY_BASE, "eval": evaluation}
    preset = load_preset(str(write_preset(tmp_path, seeds=[0, 1], base=base)))
    trials = expand(preset)
    study = estimate_study(preset, trials, gpu_machine(0, 1), str(bench))
    trial = study.trials[0]
    assert trial.train_s == pytest.approx(2 * 200 / 100)  # 1 CPU = 1 thread, as measured
    # Evaluation: 100 test images x 1 pass (vanilla: one mode), plus per result row the images
    # add_cost_columns really runs forward (passes of the cost batch, then one memory pass of
    # every further measured batch), counted here, not restated. Fails when estimate
    # hard-codes a pass count (the old `rows * 5`, or 12), when costs.measure.cost_passes_per_row
    # forgets the peak-memory pass (warmup + repeats = 4), or when the memory batches are left
    # out; follows add_cost_columns' defaults if they change.
    rows, per_row = counted_cost_images(trials[0], 100)
    assert per_row > 5 * 30  # the memory batches count: this is not the cost batch alone
    assert trial.eval_s == pytest.approx((100 * 1 + rows * per_row) / 400)
    assert trial.seconds == pytest.approx(trial.train_s + trial.eval_s + TRIAL_OVERHEAD_S["cpu"])
    assert "measured (bench.json" in throughput_note(trial.throughput)
    assert study.slots == 1  # --cpus 1: one trial at a time
    assert study.wall_s == pytest.approx(STUDY_OVERHEAD_S + 2 * trial.seconds)
    hours, unit = study.resource_hours
    assert unit == "CPU" and hours == pytest.approx(2 * trial.seconds / 3600)


# A table of one imaginary vanilla method ("plain") at two depths, as a bench file gives it.
PLAIN = (
    Throughput("plain", 20, "cpu", 180.0, 600.0, source="bench A"),
    Throughput("plain", 110, "cpu", 30.0, None, source="bench B"),
)


def test_a_missing_depth_is_scaled_from_the_nearest_one_by_the_dense_cost():
    rate = lookup_throughput(PLAIN, "plain", 14, "cpu", "cifar10", 128)
    # ResNet-14 has 12 dense units' worth, ResNet-20 18: 1.5x as fast. Fails if the ratio is
    # inverted (x 12/18) or the farthest depth (110) is picked instead of the nearest.
    assert rate.train_images_per_s == pytest.approx(180 * 18 / 12)
    assert rate.eval_images_per_s == pytest.approx(600 * 18 / 12)
    assert throughput_note(rate) == "bench A, scaled from depth 20"
    # An entry without an evaluation rate gets EVAL_TO_TRAIN x its training rate, scaled alike.
    deep = lookup_throughput(PLAIN, "plain", 98, "cpu", "cifar10", 128)
    assert deep.eval_images_per_s == pytest.approx(compute.EVAL_TO_TRAIN * 30 * 108 / 96)
    # An exact entry is taken as it is (mutation: scaling an exact match by its train_cost).
    exact = lookup_throughput(PLAIN, "plain", 20, "cpu", "cifar10", 128)
    assert (exact.train_images_per_s, throughput_note(exact)) == (180.0, "bench A")
    assert lookup_throughput(PLAIN, "plain", 20, "cuda", "cifar10", 128) is None  # other device


def test_a_method_without_a_throughput_is_scaled_from_the_vanilla_method_by_its_train_cost():
    cost = get_method("sact").train_cost  # declared by the method (MethodSpec.train_cost)
    assert cost is not None and cost != 1.0
    rate = lookup_throughput(PLAIN, "sact", 20, "cpu", "cifar10", 128, vanilla=["plain"])
    # Fails if the cost multiplies the rate instead of dividing it, or is ignored.
    assert rate.train_images_per_s == pytest.approx(180 / cost)
    assert throughput_note(rate) == f"bench A, sact = {cost:g} x vanilla"
    # Without a vanilla method to scale from there is nothing: the table holds no sact.
    assert lookup_throughput(PLAIN, "sact", 20, "cpu", "cifar10", 128) is None


@pytest.fixture
def extra_methods(monkeypatch):
    """Registers, in-process: ``costless`` (ACT's spec, but no train_cost declared), ``dear``
    (declares 3.5, above every built-in) and ``plain`` (the vanilla ResNet under another name)."""
    act, resnet = get_method("act"), get_method("resnet")
    specs = {
        "costless": dataclasses.replace(act, name="costless", train_cost=None),
        "dear": dataclasses.replace(act, name="dear", train_cost=3.5),
        "plain": dataclasses.replace(resnet, name="plain"),
    }
    for name, spec in specs.items():
        monkeypatch.setitem(registry._REGISTRY, name, spec)
    return specs


def test_a_method_declaring_no_train_cost_costs_the_dearest_registered_one(extra_methods, tmp_path):
    # The dearest registered method declares 3.5 ("dear"); "costless" declares none. Fails if
    # an undeclared cost falls back to a constant (the old table's 1.7), to 1, or to the
    # cheapest method's.
    assert train_cost("costless") == (3.5, False)
    assert train_cost("dear") == (3.5, True)
    assert train_cost("act") == (get_method("act").train_cost, True)
    rate = lookup_throughput(PLAIN, "costless", 20, "cpu", "cifar10", 128, vanilla=["plain"])
    assert rate.train_images_per_s == pytest.approx(180 / 3.5) and not rate.cost_declared
    # ... and the estimate says so beside the number (mutation: the note left out).
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"throughput": [dataclasses.asdict(PLAIN[0])]}))
    preset = load_preset(
        str(write_preset(tmp_path, methods={"costless": {}}, depths=[20], vanilla_method="plain"))
    )
    est = estimate_study(preset, expand(preset), gpu_machine(0, 1), str(bench))
    [line] = [line for line in format_estimate(est) if line.startswith("  costless")]
    assert "costless = 3.5 x vanilla" in line and "declares no train_cost" in line


def test_the_vanilla_reference_is_the_presets_vanilla_method(extra_methods, tmp_path):
    # A bench file measured only "plain"; a preset whose vanilla method is "plain" scales ACT
    # from it. Fails if the estimate scales from a fixed name (the old `t.method == "resnet"`):
    # then ACT would come from the default table's numbers instead.
    bench = tmp_path / "bench.json"
    entry = {"method": "plain", "depth": 20, "device": "cpu", "batch_size": 50}
    bench.write_text(json.dumps({"throughput": [{**entry, "train_images_per_s": 77.0}]}))
    changes = dict(methods={"act": {}}, depths=[20])
    plain = load_preset(str(write_preset(tmp_path, **changes, vanilla_method="plain")))
    measured = load_throughput(bench)
    [act] = estimate_trials(plain, expand(plain), measured)
    cost = get_method("act").train_cost
    assert act.train_images_per_s == pytest.approx(77.0 / cost)
    assert act.throughput.source.startswith("measured (bench.json")
    # The same file under a preset whose vanilla method is the ResNet: "plain" is not its
    # reference, so ACT comes from the documented defaults.
    resnet = load_preset(str(write_preset(tmp_path, **changes, vanilla_method="resnet")))
    [act] = estimate_trials(resnet, expand(resnet), measured)
    assert act.throughput.source.startswith("default")


def test_every_shipped_preset_can_be_estimated_from_the_default_file_alone():
    # The defaults are a bench-format file read by load_throughput (the same validation as a
    # user's --throughput file). Every shipped preset's methods, depths and device find a
    # default: fails when an entry the presets need is lost (a dataset or device mistyped,
    # the vanilla rows renamed) or when the file stops parsing.
    table = default_throughput()
    assert table == tuple(load_throughput(compute.DEFAULT_THROUGHPUT_FILE))
    assert all(t.source.startswith("default") for t in table)
    for name in list_presets():
        preset = load_preset(name, {"init_from": None} if name == "paper-imagenet" else None)
        kind = "cuda" if preset.resources["gpu"] > 0 else "cpu"
        vanilla = compute.vanilla_methods(preset)
        for trial in expand(preset):
            cfg = trial.config
            model, batch = cfg["model"], cfg["optim"]["batch_size"]
            found = lookup_throughput(
                table, cfg["method"], model["depth"], kind, model["dataset"], batch, vanilla
            )
            assert found is not None, (name, trial.name)


def test_a_broken_default_file_is_one_error_naming_it(monkeypatch, tmp_path):
    bad = tmp_path / "throughput.json"
    entry = {"method": "plain", "depth": 20, "device": "cpu", "train_images_per_s": -1}
    bad.write_text(json.dumps({"throughput": [entry]}))
    monkeypatch.setattr(compute, "DEFAULT_THROUGHPUT_FILE", bad)
    compute.default_throughput.cache_clear()
    try:
        with pytest.raises(Exception, match=r"throughput\.json: throughput\[0\]\.train_images"):
            default_throughput()
    finally:
        compute.default_throughput.cache_clear()


def test_packed_gpu_trials_share_the_gpu_and_cpu_trials_scale_with_threads(tmp_path):
    base = {**load_preset("smoke").base, "device": "auto"}
    half = load_preset(str(write_preset(tmp_path, base=base, resources={"cpu": 1, "gpu": 0.5})))
    whole = load_preset(str(write_preset(tmp_path, base=base, resources={"cpu": 1, "gpu": 1})))
    rate_half = estimate_trials(half, expand(half))[0].train_images_per_s
    rate_whole = estimate_trials(whole, expand(whole))[0].train_images_per_s
    assert rate_whole / 2 < rate_half < rate_whole  # two on a GPU: each slower, together faster
    one = load_preset(str(write_preset(tmp_path, resources={"cpu": 1, "gpu": 0})))
    two = load_preset(str(write_preset(tmp_path, resources={"cpu": 2, "gpu": 0})))
    rate_one = estimate_trials(one, expand(one))[0].train_images_per_s
    assert estimate_trials(two, expand(two))[0].train_images_per_s == pytest.approx(2 * rate_one)


class FakeClocks:
    """perf_counter advancing 0.1 s a call; process_time at ``share`` of the wall time: a
    process that gets ``share`` of a core."""

    def __init__(self, share: float) -> None:
        self.wall, self.share = 0.0, share

    def perf_counter(self) -> float:
        self.wall += 0.1
        return self.wall

    def process_time(self) -> float:
        return self.wall * self.share


@pytest.mark.parametrize(("share", "expected"), [(0.5, 2.0), (0.25, 4.0), (1.0, 1.0)])
def test_contention_is_wall_time_over_cpu_time(monkeypatch, share, expected):
    # A probe that got a quarter of a core took 4x as long as on an idle machine. Fails if the
    # ratio is inverted (cpu / wall: clamped to 1), if it returns a constant, or if it reads
    # only one clock.
    clocks = FakeClocks(share)
    monkeypatch.setattr(compute.time, "perf_counter", clocks.perf_counter)
    monkeypatch.setattr(compute.time, "process_time", clocks.process_time)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert contention(0.05) == pytest.approx(expected)
        assert torch.get_num_threads() == 2  # the probe's single thread is undone
    finally:
        torch.set_num_threads(threads)


def test_a_busy_machine_slows_cpu_trials_and_the_start_but_not_gpu_trials(tmp_path):
    preset = load_preset(str(write_preset(tmp_path, seeds=[0, 1])))
    idle = estimate_study(preset, expand(preset), Machine((Node(2, 0),)))
    busy = estimate_study(preset, expand(preset), Machine((Node(2, 0),), slowdown=2.0))
    assert idle.slowdown == 1.0
    assert busy.slowdown == 2.5  # the probe's 2.0, and two trials share the 2 cores: + 1/2
    assert busy.trials[0].seconds == pytest.approx(2.5 * idle.trials[0].seconds)
    assert busy.wall_s == pytest.approx(2.5 * idle.wall_s)
    base = {**load_preset("smoke").base, "device": "auto"}
    gpu = load_preset(str(write_preset(tmp_path, base=base, resources={"cpu": 1, "gpu": 1})))
    assert (
        estimate_trials(gpu, expand(gpu), slowdown=2.0)[0].seconds
        == estimate_trials(gpu, expand(gpu))[0].seconds
    )


def test_checkpoint_size_matches_a_real_checkpoint(finished_run):
    run_dir = finished_run["dir"]  # ResNet-8, SGD with momentum, one epoch
    trial = Trial("resnet_d8", yaml.safe_load((run_dir / store.CONFIG_FILE).read_text()))
    estimate = estimate_trials(load_preset("smoke"), [trial])[0]
    state = torch.load(run_dir / store.CHECKPOINT_FILE, weights_only=True)
    assert state["optimizer"]["state"]  # the momentum buffers are in it
    actual = (run_dir / store.CHECKPOINT_FILE).stat().st_size
    assert 0.95 < actual / estimate.checkpoint_bytes < 1.1  # + RNG state and file overhead


def test_bad_throughput_files_are_one_error_line(capsys, tmp_path, tiny_npz_root):
    argv = ["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--estimate"]
    cases = {
        "missing.json": "cannot read it",
        "bad.json": "not JSON",
        "list.json": 'expected an object with a list "throughput"',
        "entry.json": "throughput[0] needs method, depth, device",
    }
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "entry.json").write_text(json.dumps({"throughput": [{"method": "act"}]}))
    for name, message in cases.items():
        assert main([*argv, "--throughput", str(tmp_path / name)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


# -- the command line ----------------------------------------------------------------------------


def test_dry_run_prints_the_concurrency_for_the_machine_given(capsys, tiny_npz_root):
    argv = ["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--dry-run"]
    gpu = ["--set", "device=auto", "--gpus-per-trial", "0.5", "--cpus-per-trial", "2"]
    assert main([*argv, *gpu, "--gpus", "4", "--cpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "on 4 GPU (8 CPU): 4 trial(s) at a time: 4 (8 CPU / 2 per trial: CPU-bound)" in out
    assert main([*argv, *gpu, "--gpus", "4"]) == 0  # CPUs not given: the GPUs bind
    assert "8 trial(s) at a time" in capsys.readouterr().out
    assert main(argv) == 0  # this machine, as a local Ray would see it
    assert "on this machine (" in capsys.readouterr().out
    assert main([*argv, "--cpus", "8"]) == 2
    captured = capsys.readouterr()
    assert "--cpus goes with --gpus N" in captured.err
    assert "study smoke:" in captured.out  # the plan comes first, as each line is ready
    assert (
        main(["grid", "--preset", "smoke", "--data-root", str(tiny_npz_root), "--gpus", "1"]) == 2
    )
    assert "size a study for --dry-run/--estimate" in capsys.readouterr().err


def test_estimate_prints_hours_wall_time_critical_path_and_disk(capsys, tiny_npz_root, tmp_path):
    argv = ["grid", "--preset", "paper-cifar", "--data-root", str(tiny_npz_root)]
    out_dir = tmp_path / "never"
    assert main([*argv, "--estimate", "--gpus", "8", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "estimate on 8 GPU (CPUs assumed not limiting)" in out
    assert "no --throughput file: documented default throughputs" in out
    assert "GPU-hours" in out and "16 trial(s) at a time" in out
    assert "longest trial (critical path): spatial_pact_d110" in out
    assert "disk: " in out and "2 trials share a GPU" in out
    assert not out_dir.exists()
    preset = load_preset("paper-cifar")
    trials = expand(preset)
    one = estimate_study(preset, trials, gpu_machine(1))
    eight = estimate_study(preset, trials, gpu_machine(8))  # estimated apart, not copied
    assert (one.slots, eight.slots) == (2, 16)
    assert eight.wall_s < one.wall_s / 6  # 135 trials on 16 slots: nearly linear
    assert eight.wall_s >= eight.longest.seconds
    # The same work, wherever it runs: trial-hours x 0.5 GPU per trial. Fails if the hours
    # charge the machine's GPUs for the wall time (they would grow ~8x on eight GPUs) or
    # forget the per-trial share.
    hours = sum(t.seconds for t in one.trials) * preset.resources["gpu"] / 3600
    assert one.resource_hours == (pytest.approx(hours), "GPU")
    assert eight.resource_hours == (pytest.approx(hours), "GPU")
    # The disk line shows the computed totals (format recomputes nothing).
    disk = eight.disk
    assert disk.total == sum(t.disk_bytes for t in eight.trials)
    assert disk.checkpoints == sum(2 * t.checkpoint_bytes for t in eight.trials)


def test_estimate_of_a_started_study_covers_only_the_trials_still_to_run(
    capsys, finished_run, tiny_npz_root, tmp_path
):
    preset = write_preset(tmp_path, seeds=[0, 1, 2])
    out = tmp_path / "study"
    study = plan_study(GridOptions(preset=str(preset), out=str(out), data_root=str(tiny_npz_root)))
    out.mkdir()
    (out / store.STUDY_FILE).write_text(yaml.safe_dump(study_record(study)))
    shutil.copytree(finished_run["dir"], study.run_dir("resnet_d8_s0"))  # seed 0 is done
    argv = ["grid", "--preset", str(preset), "--out", str(out), "--data-root", str(tiny_npz_root)]
    assert main([*argv, "--estimate", "--gpus", "0", "--cpus", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 trials finished before" in printed and "covers the 2 still to run" in printed
    todo = [t for t in study.trials if t.name != "resnet_d8_s0"]
    expected = estimate_study(study.preset, todo, gpu_machine(0, 1))
    assert f"2 trials: {expected.resource_hours[0]:.2f} CPU-hours" in printed
    shutil.copytree(finished_run["dir"], study.run_dir("resnet_d8_s1"))
    shutil.copytree(finished_run["dir"], study.run_dir("resnet_d8_s2"))
    assert main([*argv, "--estimate", "--gpus", "0", "--cpus", "1"]) == 0
    assert "nothing to estimate: every trial of the study is finished" in capsys.readouterr().out


def test_cpu_study_estimate_on_this_machine_counts_cpu_hours(capsys, tiny_npz_root):
    argv = ["grid", "--preset", "cpu-mini", "--data-root", str(tiny_npz_root), "--estimate"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "estimate on this machine (" in out and "CPU-hours" in out and "GPU-hours" not in out


def test_a_gpu_study_cannot_be_placed_on_a_cpu_only_machine(capsys, tiny_npz_root):
    argv = ["grid", "--preset", "paper-cifar", "--data-root", str(tiny_npz_root), "--estimate"]
    argv += ["--set", "depths=[32]", "--set", "vanilla_depths=[]", "--set", "seeds=[0]"]
    assert main([*argv, "--gpus", "0", "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 trial(s) at a time" in out and "cannot run there" in out


def test_every_registered_method_is_estimated(tmp_path):
    # Every method the registry holds gets a throughput from the defaults (its own, or the
    # vanilla method's scaled by its train_cost): no method is known to the estimate by name.
    methods = {name: {} for name in list_methods()}
    preset = load_preset(str(write_preset(tmp_path, methods=methods, depths=[20])))
    names = {t.method for t in estimate_trials(preset, expand(preset))}
    assert names == set(list_methods())
