"""GPU placement without GPUs: Ray's real scheduler on nodes that only *declare* GPUs.

A local ``ray.cluster_utils.Cluster`` of two nodes, each declaring 2 CPUs and 2 GPUs, runs tiny
studies (ResNet-8, one epoch, 200 images). Ray places and packs the trials exactly as on GPU
machines and tells each its GPU (``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``); torch finds no
CUDA device, so ``device=auto`` trains on the CPU (and says so) while ``device=cuda`` fails
with one line per trial.
"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from test_grid import TINY_BASE, write_preset

from harness import store
from harness.cli import main
from harness.estimate import Machine, Node, concurrency
from harness.grid import run_grid
from harness.study import TRIALS_TABLE, GridOptions

pytestmark = pytest.mark.ray

NODE = {"num_cpus": 2, "num_gpus": 2}


@pytest.fixture(scope="module")
def gpu_cluster():
    """Two Ray nodes on this machine, each declaring 2 CPUs and 2 GPUs it does not have."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def gpu_preset(tmp_path, seeds, device="auto", cpu=0.5, gpu=0.5):
    base = {**TINY_BASE, "device": device, "optim": {**TINY_BASE["optim"], "epochs": 1}}
    resources = {"cpu": cpu, "gpu": gpu}
    return str(write_preset(tmp_path, base=base, seeds=seeds, resources=resources))


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    return max(itertools.accumulate(step for _, step in events))


@pytest.mark.slow
def test_half_gpu_trials_pack_two_per_gpu_and_record_their_gpu(
    gpu_cluster, tmp_path, tiny_npz_root
):
    seeds = list(range(5))  # 5 trials at once on 4 GPUs: two must share one
    outcome = run_grid(
        GridOptions(
            preset=gpu_preset(tmp_path, seeds),
            out=str(tmp_path / "study"),
            data_root=str(tiny_npz_root),
            address=gpu_cluster.address,
        )
    )
    assert outcome.complete  # device=auto: no CUDA behind the declared GPUs, so the CPU
    table = pd.read_csv(outcome.study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    assert set(table["device"]) == {"cpu"}
    placements = {}
    for name, gpu_ids in zip(table["trial_id"], table["gpu_ids"], strict=True):
        assert gpu_ids in {"0", "1"}  # one GPU each, an id of its node's two
        provenance = store.read_json(outcome.study.run_dir(name) / store.PROVENANCE_FILE)
        placement = provenance["placements"][-1]
        assert provenance["gpu_ids"] == placement["gpu_ids"] == gpu_ids
        assert placement["cuda_visible_devices"] == gpu_ids  # what Ray told the process
        assert placement["device"] == "cpu" and "trains on the CPU" in placement["note"]
        assert provenance["device"].startswith("cpu")
        placements[name] = placement
    # Per GPU (node, id): never more than two trials at once, and two did share one.
    by_gpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
    by_node: dict[str, list[tuple[float, float]]] = {}
    for p in placements.values():
        span = (p["started_unix"], p["ended_unix"])
        by_gpu.setdefault((p["node_id"], p["gpu_ids"]), []).append(span)
        by_node.setdefault(p["node_id"], []).append(span)
    assert max(max_overlap(spans) for spans in by_gpu.values()) == 2
    node_slots = concurrency({"cpu": 0.5, "gpu": 0.5}, Machine((Node(2, 2),))).slots
    assert node_slots == 4 and all(max_overlap(s) <= node_slots for s in by_node.values())


def test_device_cuda_on_a_gpu_node_without_cuda_fails_each_trial_in_one_line(
    gpu_cluster, tmp_path, tiny_npz_root
):
    said: list[str] = []  # the progress lines the command line prints
    outcome = run_grid(
        GridOptions(
            preset=gpu_preset(tmp_path, [0, 1], device="cuda"),
            out=str(tmp_path / "study"),
            data_root=str(tiny_npz_root),
            address=gpu_cluster.address,
        ),
        emit=said.append,
    )
    assert sorted(outcome.failed) == ["resnet_d8_s0", "resnet_d8_s1"] and not outcome.finished
    for error in outcome.failed.values():
        assert "\n" not in error
        assert error.startswith("ConfigError: device=cuda but Ray gave this trial GPU ")
        assert "torch sees no CUDA device there; use device=auto" in error
    assert said and not any("retrying" in line for line in said)  # bad input: never retried
    table = pd.read_csv(outcome.study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)
    assert set(table["failures"]) == {"0"} and set(table["status"]) == {"failed"}
    assert all(ids in {"0", "1"} for ids in table["gpu_ids"])


def test_dry_run_reads_the_clusters_resources(gpu_cluster, tmp_path, tiny_npz_root, capsys):
    # 0.5 GPU + 2 CPUs per trial on nodes of 2 CPUs and 2 GPUs: the CPUs bind, one per node.
    argv = ["grid", "--preset", gpu_preset(tmp_path, [0], cpu=2), "--dry-run"]
    argv += ["--data-root", str(tiny_npz_root), "--address", gpu_cluster.address]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(2 node(s), 4 CPU, 4 GPU): 2 trial(s) at a time" in out
    assert "1 (2 CPU / 2 per trial: CPU-bound) + 1 (2 CPU / 2 per trial: CPU-bound) per node" in out
