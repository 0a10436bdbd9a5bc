"""Sizing a study before it runs (harness.estimate, ``grid --dry-run [--estimate]``): packing
arithmetic, longest-first scheduling, the trial-time formula, measured throughput files, the
checkpoint size against a real checkpoint. No Ray: these are pure and fast."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
import yaml
from test_grid import write_preset

from harness import store
from harness.cli import main
from harness.estimate import (
    DEFAULT_THROUGHPUT,
    METHOD_TRAIN_COST,
    STUDY_OVERHEAD_S,
    TRIAL_OVERHEAD_S,
    Machine,
    Node,
    concurrency,
    contention,
    estimate_study,
    estimate_trials,
    gpu_machine,
    launch_order,
    lookup_throughput,
    makespan,
)
from harness.presets import Trial, expand, load_preset
from harness.study import STUDY_FILE, GridOptions, plan_study, study_record


def resources(cpu: float, gpu: float) -> dict[str, float]:
    return {"cpu": cpu, "gpu": gpu}


# -- packing -----------------------------------------------------------------------------------


def test_half_a_gpu_with_two_cpus_on_a_4_gpu_8_cpu_node_runs_4_trials_not_8():
    node = Machine((Node(8, 4),), "a 4-GPU, 8-CPU node")
    slots, text = concurrency(resources(2, 0.5), node)
    assert slots == 4 and "CPU-bound" in text  # 8 CPU / 2; the GPUs alone would hold 8
    assert concurrency(resources(1, 0.5), node)[0] == 8  # now the GPUs bind: 4 x 2
    assert "GPU-bound" in concurrency(resources(1, 0.5), node)[1]


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
    assert concurrency(resources(cpu, gpu), Machine((node,), "m"))[0] == expected


def test_cluster_slots_add_up_over_nodes_and_max_concurrent_caps_them():
    cluster = Machine((Node(8, 4), Node(4, 0), Node(16, 2)), "cluster")
    slots, text = concurrency(resources(2, 0.5), cluster)
    assert slots == 4 + 0 + 4 and "per node" in text
    slots, text = concurrency(resources(2, 0.5), cluster, max_concurrent=3)
    assert slots == 3 and "capped at 3 by max_concurrent" in text


def test_longest_first_list_scheduling():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2
    assert makespan([10, 1, 1, 1], 3) == 10  # the longest trial is the critical path
    assert makespan([4, 4], 8) == 4
    assert makespan([], 2) == 0 and math.isinf(makespan([1.0], 0))


def test_the_grid_launches_the_longest_trials_first(tmp_path):
    # Vanilla ResNet-8 (cheapest) is planned first, spatial PACT on ResNet-20 (the most
    # expensive per image, 1.7x vanilla) last; the launch order is the estimate's, longest first.
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


def test_trial_time_is_train_plus_eval_plus_overhead_from_a_bench_file(tmp_path):
    bench = tmp_path / "bench.json"
    entry = {"method": "resnet", "depth": 8, "device": "cpu", "batch_size": 50}
    entry.update(train_images_per_s=100.0, eval_images_per_s=400.0)
    bench.write_text(json.dumps({"throughput": [entry]}))
    preset = load_preset(str(write_preset(tmp_path, seeds=[0, 1])))  # 200 images, 2 epochs
    study = estimate_study(preset, expand(preset), gpu_machine(0, 1), str(bench))
    trial = study.trials[0]
    assert trial.train_s == pytest.approx(2 * 200 / 100)  # 1 CPU = 1 thread, as measured
    # 100 test images x 1 pass (vanilla: one mode) + 5 cost passes of one 100-image batch
    assert trial.eval_s == pytest.approx((100 + 5 * 100) / 400)
    assert trial.seconds == pytest.approx(4 + 1.5 + TRIAL_OVERHEAD_S["cpu"])
    assert "measured (bench.json" in trial.source
    assert study.slots == 1  # --cpus 1: one trial at a time
    assert study.wall_s == pytest.approx(STUDY_OVERHEAD_S + 2 * trial.seconds)
    hours, unit = study.resource_hours
    assert unit == "CPU" and hours == pytest.approx(2 * trial.seconds / 3600)


def test_defaults_scale_by_depth_and_method_and_say_where_they_come_from():
    resnet32 = lookup_throughput(DEFAULT_THROUGHPUT, "resnet", 32, "cpu", "cifar10", 128)[0]
    assert resnet32.train_images_per_s == 122 and resnet32.eval_images_per_s == 389
    resnet14, note = lookup_throughput(DEFAULT_THROUGHPUT, "resnet", 14, "cpu", "cifar10", 128)
    assert resnet14.train_images_per_s == pytest.approx(192 * 18 / 12)  # from ResNet-20
    assert "scaled from depth 20" in note and "measured" in note
    sact, note = lookup_throughput(DEFAULT_THROUGHPUT, "sact", 110, "cuda", "cifar10", 128)
    assert sact.train_images_per_s == pytest.approx(3000 / METHOD_TRAIN_COST["sact"])
    assert "ASSUMED H200" in note and "sact = 1.25 x vanilla" in note


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


def test_a_busy_machine_slows_cpu_trials_and_the_start_but_not_gpu_trials(tmp_path):
    assert contention(0.05) >= 1.0  # wall / CPU time of a short single-thread probe
    preset = load_preset(str(write_preset(tmp_path, seeds=[0, 1])))
    idle = estimate_study(preset, expand(preset), Machine((Node(2, 0),), "idle"))
    busy = estimate_study(preset, expand(preset), Machine((Node(2, 0),), "busy", 2.0))
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
    assert "--cpus goes with --gpus N" in capsys.readouterr().err
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
    one = estimate_study(preset, expand(preset), gpu_machine(1))
    eight = dataclasses.replace(one, machine=gpu_machine(8), slots=16)
    assert eight.wall_s < one.wall_s / 6  # 135 trials on 16 slots: nearly linear
    assert eight.wall_s >= eight.longest.seconds
    assert one.resource_hours == eight.resource_hours  # the same work, wherever it runs


def test_estimate_of_a_started_study_covers_only_the_trials_still_to_run(
    capsys, finished_run, tiny_npz_root, tmp_path
):
    preset = write_preset(tmp_path, seeds=[0, 1, 2])
    out = tmp_path / "study"
    study = plan_study(GridOptions(preset=str(preset), out=str(out), data_root=str(tiny_npz_root)))
    out.mkdir()
    (out / STUDY_FILE).write_text(yaml.safe_dump(study_record(study)))
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
