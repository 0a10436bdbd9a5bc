"""What a study will cost before it runs: GPU- (or CPU-) hours, wall time, disk.

``pact-harness grid --dry-run --estimate`` prints this for any preset, on the machine it runs on,
on ``--gpus N [--cpus M]`` (one hypothetical machine) or on the Ray cluster at ``--address``
(:mod:`harness.grid` reads its nodes). Nothing here imports Ray or trains anything.

The model, term by term (every constant below says where its number comes from):

* **Concurrency.** Ray places a trial of ``c`` CPUs and ``g`` GPUs on one node. A node with
  ``C`` CPUs and ``G`` GPUs holds ``min(floor(C / c), G * floor(1 / g))`` trials for a fraction
  ``g <= 1`` (Ray packs fractions onto single GPU instances; a trial never spans two) and
  ``floor(G / g)`` for whole GPUs. The cluster holds the sum over its nodes, capped by the
  preset's ``max_concurrent`` (:func:`concurrency`). Example users get wrong: 0.5 GPU + 2 CPUs per
  trial on a 4-GPU, 8-CPU node runs 4 trials at once (the CPUs bind), not 8.
* **Trial time** = train + evaluation + overhead (:func:`estimate_trials`):
  ``epochs x train images per epoch / train throughput`` (full batches only: the loader drops
  the last partial one); evaluation images (every final test and validation pass, a random mode
  counting ``eval.repeats`` passes, the per-epoch validation pass, and the cost columns' five
  forward passes of one evaluation batch per result row) over the evaluation throughput; plus
  :data:`TRIAL_OVERHEAD_S` (worker start, imports, loading the dataset, FLOP counting).
* **Throughput** per (method, depth, device) comes from a ``pact-harness bench`` JSON file
  (``--throughput FILE.json``, a list ``"throughput"`` of ``{method, depth, device, batch_size,
  train_images_per_s}`` entries, optionally ``eval_images_per_s``, ``threads``, ``dataset``), else
  from :data:`DEFAULT_THROUGHPUT`. A missing (method, depth) is scaled from the nearest depth of
  the same method by the backbone's dense cost (``depth - 2``: every CIFAR unit costs the same,
  and a bottleneck ImageNet ResNet is within 10% of that proportion), and a missing method from
  the vanilla ResNet by :data:`METHOD_TRAIN_COST`. On CPU a trial runs ``max(1, int(cpu))``
  threads (``harness.grid``) and throughput scales linearly with them (a fractional CPU gets that
  fraction of one core); on a GPU, ``k = floor(1 / g)`` packed trials share one GPU's
  :data:`GPU_PACKING_AGGREGATE`.
* **A busy machine**: estimating for this machine, a 1 s single-thread probe measures wall time
  / CPU time (:func:`contention`: 1 when idle, 2 when other processes leave half a core), grown
  by fair sharing to the study's trial processes (:func:`study_slowdown`); CPU trial times and
  the study overhead are multiplied by it.
* **Wall time** = :data:`STUDY_OVERHEAD_S` (Ray start and stop, planning, the tables) + the
  makespan of the trials scheduled longest first onto the concurrent slots (LPT list scheduling,
  within 4/3 of the optimum; the grid launches trials in that order, :func:`launch_order`); the
  longest trial is a lower bound no machine can beat.
* **Disk**: per trial two copies of ``checkpoint.pt`` (the run directory's and Tune's,
  ``num_to_keep=1``; a third exists while one is written) of the model's parameters and buffers
  plus SGD's momentum buffers (each model built once), ``per_image.npz`` (uncompressed bound) and
  the small files.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.config import config_key
from harness.errors import ConfigError
from harness.evaluate import PER_IMAGE_MAPS, THUMBNAIL_SIZE, plan_evaluations
from harness.presets import Preset, Trial
from harness.registry import get_method
from harness.runs import build_model

#: (train, test) images of the full datasets (ImageNet: ILSVRC-2012 train and val).
DATASET_IMAGES = {"cifar10": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}
#: Input side of each dataset's images (the ponder maps' size).
IMAGE_SIDE = {"cifar10": 32, "imagenet": 224}


@dataclass(frozen=True)
class Throughput:
    """Images per second of one trial of ``method`` at ``depth`` on a device kind."""

    method: str
    depth: int
    device: str  # "cpu" or "cuda"
    train_images_per_s: float
    eval_images_per_s: float | None = None  # None: EVAL_TO_TRAIN x train
    dataset: str = "cifar10"
    threads: int = 1  # CPU: torch threads it was measured with (scaled per thread)
    batch_size: int = 128
    source: str = ""


_CPU_SOURCE = "default: measured on this project's 2-core CPU"
_H200_SOURCE = "default: ASSUMED H200 (not measured)"
#: Documented defaults, used when no ``--throughput`` file gives a (method, depth, device).
#: CPU: measured here as CPU time per image (wall time would measure the machine's load, which
#: the estimate measures apart, Machine.slowdown): vanilla ResNet-20/32/110, batch 128, 1 thread,
#: untrained, 3 interleaved rounds of one training step and one forward pass. (The ~320 and
#: ~85 img/s for ResNet-32/110 on 2 idle cores quoted in issue #16 could not be reproduced on
#: the busy machine; 2 x 122 and 2 x 34 are below them.)
#: H200: an assumption, clearly not a measurement: a CIFAR ResNet at batch 128 is bound by
#: kernel launches (a few hundred per step at ~10 us), not by FLOPs, so its time grows with the
#: number of layers: ~12 ms a step for ResNet-32, ~40 ms for ResNet-110. ImageNet ResNet-101 at
#: batch 256: ~1,200 img/s train (fp32, no channels_last; published A100 figures scaled by the
#: H200's ~1.3x bandwidth). These are eager-speed guesses, deliberately conservative: the CUDA
#: fast path (``speed: auto``, issue 13) aims at >= 21,000 img/s for ResNet-32
#: (harness/bench.py TARGETS), unmeasured. Replace them with `pact-harness bench --out FILE`
#: numbers (``--throughput FILE``) when you have a GPU. A bench file from a busy CPU already
#: holds that machine's load in its wall-clock rates; the probe below then counts it twice.
DEFAULT_THROUGHPUT: tuple[Throughput, ...] = (
    Throughput("resnet", 20, "cpu", 192.0, 634.0, threads=1, source=_CPU_SOURCE),
    Throughput("resnet", 32, "cpu", 122.0, 389.0, threads=1, source=_CPU_SOURCE),
    Throughput("resnet", 110, "cpu", 34.0, 116.0, threads=1, source=_CPU_SOURCE),
    Throughput("resnet", 32, "cuda", 10_000.0, source=_H200_SOURCE),
    Throughput("resnet", 110, "cuda", 3_000.0, source=_H200_SOURCE),
    Throughput(
        "resnet", 101, "cuda", 1_200.0, dataset="imagenet", batch_size=256, source=_H200_SOURCE
    ),
    Throughput(
        "resnet",
        101,
        "cpu",
        2.2,
        dataset="imagenet",
        threads=1,
        batch_size=256,
        source="default: ASSUMED (CIFAR ResNet-110's CPU rate x FLOP ratio 5.1e8/7.8e9)",
    ),
)
#: Training cost of each built-in method relative to the vanilla ResNet of the same depth (time
#: per image). Measured here in CPU time (load-independent), 1 thread, batch 128, untrained
#: models, interleaved rounds, ResNet-20/32/110: ACT 0.9-1.0, SACT 1.1-1.3, PACT 1.05-1.1,
#: spatial PACT 1.6-1.7. Training never skips units (masked execution), so the extra cost is
#: the halting branches and their bookkeeping; the same ratios on a GPU are an assumption.
METHOD_TRAIN_COST = {"resnet": 1.0, "act": 1.0, "sact": 1.25, "pact": 1.1, "spatial_pact": 1.7}
#: A method not in the table (a plug-in): assumed as costly as the dearest built-in one.
UNKNOWN_METHOD_COST = 1.7
#: Evaluation throughput / training throughput when no measured evaluation rate exists
#: (forward only: no backward or optimizer step; measured here as above: 2.9-3.4, every method).
EVAL_TO_TRAIN = 3.2
#: Together, k trials packed on one GPU train this many times as fast as one alone
#: (ASSUMPTION: small CIFAR nets leave most of an H200 idle; not measured).
GPU_PACKING_AGGREGATE = {1: 1.0, 2: 1.6, 3: 2.0, 4: 2.3}
#: Seconds per trial beyond training and evaluation at the table's rates: Ray worker start and
#: imports, reading the dataset, building the model, FLOP counting, the first slow steps. CPU:
#: fitted with STUDY_OVERHEAD_S to three measured studies on this project's busy 2-core machine
#: (two smoke runs, a 3-trial cpu-mini cut; results/README.md). CUDA: an assumption (CUDA
#: context and cuDNN start-up added).
TRIAL_OVERHEAD_S = {"cpu": 6.0, "cuda": 30.0}
#: Seconds per study launch: importing, planning (every model built once), starting Ray,
#: writing the tables, stopping Ray; fitted as above (an idle Ray alone starts in ~4 s and
#: stops in ~1 s, ecosystem notes).
STUDY_OVERHEAD_S = 16.0
#: Seconds of the probe that measures how busy this machine's CPUs are (:func:`contention`).
CONTENTION_PROBE_S = 1.0
#: Run-directory files other than the checkpoint and per_image.npz (config, provenance,
#: summary, results.csv) and Tune's per-trial files, in bytes; metrics add per epoch.
SMALL_FILES_BYTES = 100_000
SMALL_FILES_BYTES_PER_EPOCH = 2_000


# ------------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class Node:
    """One machine's resources as Ray sees them (``cpu=None``: CPUs not limiting, assumed)."""

    cpu: float | None
    gpu: float = 0.0


@dataclass(frozen=True)
class Machine:
    """Where a study would run: its nodes and how to say so."""

    nodes: tuple[Node, ...]
    description: str
    #: CPU work takes this many times longer here now than on an idle machine (other processes
    #: hold the cores); measured by :func:`contention` for this machine, else 1.
    slowdown: float = 1.0


def contention(seconds: float = CONTENTION_PROBE_S) -> float:
    """Wall time / CPU time of a short single-thread torch workload, now: 1 on an idle machine,
    more while other processes hold the cores (the share of a core a new trial would get)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(128, 128)
        wall, cpu = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall < seconds:
            for _ in range(20):
                x = torch.tanh(x @ x)
        return max(1.0, (time.perf_counter() - wall) / max(time.process_time() - cpu, 1e-3))
    finally:
        torch.set_num_threads(threads)


def local_machine(probe: bool = True) -> Machine:
    """This machine as a local Ray would see it (usable CPUs, visible CUDA devices) and, with
    ``probe``, how busy its CPUs are now (:func:`contention`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = f"this machine ({cpus} CPU, {gpus} GPU)"
    return Machine((Node(float(cpus), float(gpus)),), text, contention() if probe else 1.0)


def gpu_machine(gpus: int, cpus: float | None = None) -> Machine:
    """``--gpus N [--cpus M]``: one machine with N GPUs (CPUs not limiting unless given)."""
    if gpus < 0 or (cpus is not None and cpus <= 0):
        raise ConfigError("--gpus must be >= 0 and --cpus > 0")
    shown = f"{cpus:g} CPU" if cpus is not None else "CPUs assumed not limiting"
    return Machine((Node(cpus, float(gpus)),), f"{gpus} GPU ({shown})")


def cluster_machine(nodes: Sequence[Mapping[str, float]], address: str) -> Machine:
    """A Ray cluster from its live nodes' resource dicts (``ray.nodes()[i]["Resources"]``)."""
    found = tuple(Node(float(n.get("CPU", 0)), float(n.get("GPU", 0))) for n in nodes)
    cpu = sum(n.cpu or 0 for n in found)
    gpu = sum(n.gpu for n in found)
    text = f"the Ray cluster at {address} ({len(found)} node(s), {cpu:g} CPU, {gpu:g} GPU)"
    return Machine(found, text)


_EPS = 1e-6  # Ray keeps resources in fixed point (1e-4); keep 2 x 0.5 == 1 exact


#: Slots of a resource that does not limit (no GPU asked for, or CPUs not given).
UNLIMITED = 10**9


def _gpu_slots(gpus: float, per_trial: float) -> int:
    if per_trial <= 0:
        return UNLIMITED
    if per_trial <= 1:
        whole = math.floor(gpus + _EPS)
        rest = gpus - whole  # a node declaring a fraction of a GPU: one partial instance
        return whole * math.floor(1 / per_trial + _EPS) + math.floor(rest / per_trial + _EPS)
    return math.floor(gpus / per_trial + _EPS)


def node_slots(node: Node, resources: Mapping[str, float]) -> tuple[int, str]:
    """Trials one node holds at once, and which resource binds (``"CPU"``/``"GPU"``)."""
    gpu_slots = _gpu_slots(node.gpu, resources["gpu"])
    if node.cpu is None:
        return min(gpu_slots, UNLIMITED), "GPU"
    cpu_slots = math.floor(node.cpu / resources["cpu"] + _EPS)
    return (cpu_slots, "CPU") if cpu_slots < gpu_slots else (gpu_slots, "GPU")


def concurrency(
    resources: Mapping[str, float], machine: Machine, max_concurrent: int | None = None
) -> tuple[int, str]:
    """How many trials run at once on ``machine``, with a one-line explanation."""
    per_node = [node_slots(node, resources) for node in machine.nodes]
    total = sum(slots for slots, _ in per_node)
    parts = []
    for node, (slots, binding) in zip(machine.nodes, per_node, strict=True):
        cpu = "any CPU" if node.cpu is None else f"{node.cpu:g} CPU"
        if not slots:
            parts.append(f"0 ({cpu}, {node.gpu:g} GPU: cannot hold one trial)")
        elif binding == "CPU":
            parts.append(f"{slots} ({cpu} / {resources['cpu']:g} per trial: CPU-bound)")
        elif resources["gpu"] == 0:
            parts.append(f"{slots} (CPUs not limiting)")
        else:
            gpus = f"{node.gpu:g} GPU / {resources['gpu']:g} per trial"
            parts.append(f"{slots} ({gpus}: GPU-bound, {cpu})")
    text = f"{total} trial(s) at a time: " + (
        parts[0] if len(parts) == 1 else " + ".join(parts) + " per node"
    )
    if total >= UNLIMITED:
        text = "no limit (CPUs assumed not limiting and no GPU asked for: give --cpus)"
    if max_concurrent is not None and max_concurrent < total:
        total = max_concurrent
        text += f", capped at {max_concurrent} by max_concurrent"
    return total, text


# ----------------------------------------------------------------------------- throughput


def _device_kind(device: str) -> str:
    return "cpu" if str(device).lower().startswith("cpu") else "cuda"


def load_throughput(path: str | Path) -> list[Throughput]:
    """Read a ``pact-harness bench`` JSON file's ``"throughput"`` list."""
    where = f"--throughput {path}"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not JSON ({err})") from None
    entries = data.get("throughput") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f'{where}: expected an object with a list "throughput"')
    out = []
    for i, entry in enumerate(entries):
        try:
            rate = float(entry["train_images_per_s"])
            evaluation = entry.get("eval_images_per_s")
            item = Throughput(
                method=str(entry["method"]),
                depth=int(entry["depth"]),
                device=_device_kind(entry["device"]),
                train_images_per_s=rate,
                eval_images_per_s=float(evaluation) if evaluation else None,
                dataset=str(entry.get("dataset", "cifar10")),
                threads=int(entry.get("threads") or 1),
                batch_size=int(entry.get("batch_size") or 0),
                source=f"measured ({Path(path).name}, device {entry['device']})",
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"{where}: throughput[{i}] needs method, depth, device and a number "
                f"train_images_per_s ({type(err).__name__}: {err})"
            ) from None
        if not rate > 0:
            raise ConfigError(f"{where}: throughput[{i}].train_images_per_s must be > 0")
        out.append(item)
    return out


def _depth_cost(depth: int) -> float:
    return max(depth - 2, 1)


def lookup_throughput(
    table: Sequence[Throughput], method: str, depth: int, device: str, dataset: str, batch: int
) -> tuple[Throughput, str] | None:
    """The entry for (method, depth, device, dataset), scaled from a near one if needed;
    ``None`` when the table has nothing for that device and dataset."""
    kind = _device_kind(device)
    rows = [t for t in table if t.device == kind and t.dataset == dataset]

    def pick(candidates: list[Throughput]) -> Throughput:
        near = min(abs(_depth_cost(t.depth) - _depth_cost(depth)) for t in candidates)
        nearest = [t for t in candidates if abs(_depth_cost(t.depth) - _depth_cost(depth)) == near]
        same_batch = [t for t in nearest if t.batch_size == batch]
        return (same_batch or nearest)[0]

    for method_rows, factor_of in (
        ([t for t in rows if t.method == method], lambda t: 1.0),
        ([t for t in rows if t.method == "resnet"], lambda t: _method_cost(method)),
    ):
        if not method_rows:
            continue
        best = pick(method_rows)
        scale = _depth_cost(best.depth) / _depth_cost(depth) / factor_of(best)
        note = best.source
        if best.depth != depth:
            note += f", scaled from depth {best.depth}"
        if best.method != method:
            note += f", {method} = {_method_cost(method):g} x vanilla"
        evaluation = best.eval_images_per_s or EVAL_TO_TRAIN * best.train_images_per_s
        scaled = Throughput(
            method,
            depth,
            kind,
            best.train_images_per_s * scale,
            evaluation * scale,
            dataset,
            best.threads,
            best.batch_size,
            note,
        )
        return scaled, note
    return None


def _method_cost(method: str) -> float:
    return METHOD_TRAIN_COST.get(method, UNKNOWN_METHOD_COST)


# --------------------------------------------------------------------------------- trials


@dataclass
class TrialEstimate:
    """One trial's predicted seconds and bytes."""

    name: str
    method: str
    depth: int
    device: str
    train_images_per_s: float
    eval_images_per_s: float
    train_s: float
    eval_s: float
    overhead_s: float
    checkpoint_bytes: int
    other_bytes: int
    source: str

    @property
    def seconds(self) -> float:
        """Train + evaluation + overhead."""
        return self.train_s + self.eval_s + self.overhead_s

    @property
    def disk_bytes(self) -> int:
        """Two checkpoint copies (run directory and Tune) + per-image file + small files."""
        return 2 * self.checkpoint_bytes + self.other_bytes


def _split_sizes(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(train, validation, test) images of a trial's data config."""
    dataset = config["model"]["dataset"]
    data = config["data"]
    full_train, full_test = DATASET_IMAGES.get(dataset, DATASET_IMAGES["cifar10"])
    val = int(data.get("val_subset") or 0)
    train = full_train - val
    if data.get("train_subset"):
        train = min(train, int(data["train_subset"]))
    test = min(full_test, int(data.get("test_subset") or full_test))
    return train, val, test


@dataclass(frozen=True)
class _ModelFacts:
    checkpoint_bytes: int
    passes: int  # evaluation passes over a split (random modes: repeats each)
    rows: int  # result rows (cost columns measured per row)
    blocks: int
    spatial: bool


def _model_facts(trial: Trial) -> _ModelFacts:
    cfg = trial.run_config
    model = build_model(cfg)[2]
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    momentum = cfg.optim.momentum > 0
    optimizer = sum(p.numel() * p.element_size() for p in trainable) if momentum else 0
    specs = plan_evaluations(model, cfg.eval)
    passes = sum(cfg.eval.repeats if s.mode in model.random_modes else 1 for s in specs)
    blocks = len(model.backbone.blocks)
    return _ModelFacts(state + optimizer, passes, len(specs), blocks, bool(model.spatial))


def _facts_key(trial: Trial) -> str:
    """Trials whose models and evaluation plans are the same: the time penalty changes no
    parameter, so one build serves every penalty of a method."""
    spec = get_method(trial.config["method"])
    penalty = config_key(spec.time_penalty_field) if spec.time_penalty_field else None
    method_config = {k: v for k, v in trial.config["method_config"].items() if k != penalty}
    keys = [trial.config["method"], method_config, trial.config["model"], trial.config["eval"]]
    return json.dumps(keys, sort_keys=True, default=str)


def estimate_trials(
    preset: Preset,
    trials: Sequence[Trial],
    measured: Sequence[Throughput] = (),
    slowdown: float = 1.0,
) -> list[TrialEstimate]:
    """Predicted time and disk of every trial (see the module docstring for the model); CPU
    trials take ``slowdown`` times longer (a busy machine, :attr:`Machine.slowdown`)."""
    resources = preset.resources
    kind = "cuda" if resources["gpu"] > 0 else "cpu"
    slowdown = slowdown if kind == "cpu" else 1.0
    facts: dict[str, _ModelFacts] = {}
    out = []
    for trial in trials:
        key = _facts_key(trial)
        if key not in facts:
            facts[key] = _model_facts(trial)
        fact = facts[key]
        cfg = trial.config
        method, depth, dataset = cfg["method"], int(cfg["model"]["depth"]), cfg["model"]["dataset"]
        batch, epochs = int(cfg["optim"]["batch_size"]), int(cfg["optim"]["epochs"])
        found = lookup_throughput(measured, method, depth, kind, dataset, batch)
        if found is None:
            found = lookup_throughput(DEFAULT_THROUGHPUT, method, depth, kind, dataset, batch)
        if found is None:
            raise ConfigError(
                f"no throughput for {method} on {kind} ({dataset}): give --throughput FILE.json "
                "from `pact-harness bench`"
            )
        rate, source = found
        train_rate, eval_rate = (r / slowdown for r in _per_trial_rates(rate, resources))
        n_train, n_val, n_test = _split_sizes(cfg)
        per_epoch = (n_train // batch) * batch
        eval_batch = min(int(cfg["eval"]["batch_size"]), n_test)
        eval_images = (n_test + n_val) * fact.passes + epochs * n_val + fact.rows * 5 * eval_batch
        side = IMAGE_SIDE.get(dataset, 32)
        per_image = n_test * (2 * fact.blocks * 8 + 1)
        if fact.spatial:
            thumb = min(side, THUMBNAIL_SIZE)
            per_image += min(PER_IMAGE_MAPS, n_test) * (side * side * 4 + thumb * thumb * 3)
        out.append(
            TrialEstimate(
                name=trial.name,
                method=method,
                depth=depth,
                device=kind,
                train_images_per_s=train_rate,
                eval_images_per_s=eval_rate,
                train_s=epochs * per_epoch / train_rate,
                eval_s=eval_images / eval_rate,
                overhead_s=TRIAL_OVERHEAD_S[kind] * slowdown,
                checkpoint_bytes=fact.checkpoint_bytes,
                other_bytes=per_image + SMALL_FILES_BYTES + epochs * SMALL_FILES_BYTES_PER_EPOCH,
                source=source,
            )
        )
    return out


def _per_trial_rates(rate: Throughput, resources: Mapping[str, float]) -> tuple[float, float]:
    """(train, eval) images/s of one trial given what it asks for and what it shares."""
    evaluation = rate.eval_images_per_s or EVAL_TO_TRAIN * rate.train_images_per_s
    if rate.device == "cpu":
        cpu = resources["cpu"]
        cores = cpu if cpu < 1 else max(1, int(cpu))  # threads = max(1, int(cpu)) in the grid
        factor = cores / max(rate.threads, 1)
    else:
        gpu = resources["gpu"]
        k = math.floor(1 / gpu + _EPS) if gpu < 1 else 1
        aggregate = GPU_PACKING_AGGREGATE.get(k, GPU_PACKING_AGGREGATE[max(GPU_PACKING_AGGREGATE)])
        factor = aggregate / k
    return rate.train_images_per_s * factor, evaluation * factor


def sharing_text(resources: Mapping[str, float]) -> str:
    """How a trial's speed follows from what it asks for (the rule of :func:`_per_trial_rates`)."""
    cpu, gpu = resources["cpu"], resources["gpu"]
    if gpu > 0:
        k = math.floor(1 / gpu + _EPS) if gpu < 1 else 1
        if k == 1:
            return "one trial per GPU, at the full throughput"
        aggregate = GPU_PACKING_AGGREGATE.get(k, GPU_PACKING_AGGREGATE[max(GPU_PACKING_AGGREGATE)])
        return (
            f"{k} trials share a GPU; together {aggregate:g}x one alone (assumed), so each "
            f"runs at {aggregate / k:.2f}x"
        )
    threads = max(1, int(cpu))
    if cpu < 1:
        return f"1 thread per trial on {cpu:g} of a core: {cpu:g}x one core's throughput"
    return f"{threads} thread(s) per trial: {threads}x one core's throughput (linear, assumed)"


# ---------------------------------------------------------------------------------- study


def makespan(seconds: Sequence[float], slots: int) -> float:
    """Finish time of ``seconds`` scheduled longest first, each on the slot free first."""
    if not seconds:
        return 0.0
    if slots < 1:
        return math.inf
    heap = [0.0] * min(slots, len(seconds))
    for duration in sorted(seconds, reverse=True):
        heapq.heapreplace(heap, heap[0] + duration)
    return max(heap)


def launch_order(preset: Preset, trials: Sequence[Trial]) -> list[str]:
    """The trials' names, longest estimated first (ties keep the plan's order).

    The grid starts trials in this order, so that a study's wall time is the longest-first
    schedule that :func:`makespan` (and ``--estimate``) assumes: a long trial started last would
    run alone at the end. Relative times only matter, so the default throughputs serve; a trial
    without one (a plug-in the defaults do not know) keeps its place after the estimated ones.
    """
    try:
        seconds = {t.name: t.seconds for t in estimate_trials(preset, trials)}
    except ConfigError:
        return [t.name for t in trials]
    return [t.name for t in sorted(trials, key=lambda t: -seconds.get(t.name, 0.0))]


@dataclass
class StudyEstimate:
    """A study's predicted cost on one machine or cluster."""

    preset: Preset
    machine: Machine
    trials: list[TrialEstimate]
    slots: int
    concurrency_text: str
    measured_file: str | None
    slowdown: float = 1.0  # CPU trials and the study overhead on a busy machine (study_slowdown)
    wall_s: float = field(init=False)

    def __post_init__(self) -> None:
        span = makespan([t.seconds for t in self.trials], self.slots)
        self.wall_s = STUDY_OVERHEAD_S * self.slowdown + span

    @property
    def resource_hours(self) -> tuple[float, str]:
        """(GPU-hours, "GPU") reserved by the trials, or CPU-hours for a CPU study."""
        res = self.preset.resources
        unit = "GPU" if res["gpu"] > 0 else "CPU"
        share = res["gpu"] if res["gpu"] > 0 else res["cpu"]
        return sum(t.seconds for t in self.trials) * share / 3600, unit

    @property
    def longest(self) -> TrialEstimate:
        """The critical path: the longest single trial."""
        return max(self.trials, key=lambda t: t.seconds)


def estimate_study(
    preset: Preset,
    trials: Sequence[Trial],
    machine: Machine,
    throughput_file: str | None = None,
) -> StudyEstimate:
    """Estimate ``trials`` of ``preset`` on ``machine`` (``throughput_file``: bench JSON)."""
    measured = load_throughput(throughput_file) if throughput_file else []
    slots, text = concurrency(preset.resources, machine, preset.max_concurrent)
    slowdown = study_slowdown(machine, slots)
    estimates = estimate_trials(preset, trials, measured, slowdown)
    return StudyEstimate(preset, machine, estimates, slots, text, throughput_file, slowdown)


def study_slowdown(machine: Machine, slots: int) -> float:
    """How much slower CPU trials run on a busy machine: the probe (one process added) grown by
    fair sharing to the study's trial processes. With B runnable processes on C cores, one more
    gets C / (B + 1) of a core (the probe: ``s1 = (B + 1) / C``) and k more get C / (B + k):
    ``s1 + (k - 1) / C``. An idle machine (``s1`` ~ 1) stays at 1."""
    s1 = machine.slowdown
    cpus = sum(n.cpu or 0 for n in machine.nodes)
    if s1 <= 1.05 or cpus <= 0:
        return s1
    return s1 + (min(slots, cpus) - 1) / cpus


def duration(seconds: float) -> str:
    """``1d 02:03:04`` / ``2:03:04``."""
    if math.isinf(seconds):
        return "never"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def format_estimate(est: StudyEstimate) -> list[str]:
    """The lines ``--estimate`` prints."""
    res = est.preset.resources
    hours, unit = est.resource_hours
    source = (
        f"measured throughput from {est.measured_file} (documented defaults where it has none)"
        if est.measured_file
        else "no --throughput file: documented default throughputs (harness/estimate.py "
        "DEFAULT_THROUGHPUT; the H200 numbers are assumptions)"
    )
    lines = [f"estimate on {est.machine.description}", f"  {source}"]
    if est.slowdown > 1.05:
        lines.append(
            f"  busy: a {CONTENTION_PROBE_S:g} s probe ran {est.machine.slowdown:.1f}x slower "
            f"(wall / CPU time) than on an idle machine; with {est.slots} trial(s) added, CPU "
            f"work is taken {est.slowdown:.1f}x slower below (trial times and the Ray start)"
        )
    seen: dict[tuple[str, int], TrialEstimate] = {}
    for t in est.trials:
        seen.setdefault((t.method, t.depth), t)
    lines.append("  method         depth  train img/s  eval img/s  trial time  throughput from")
    for (method, depth), t in sorted(seen.items()):
        rates = f"{t.train_images_per_s:>11.0f}  {t.eval_images_per_s:>10.0f}"
        lines.append(f"  {method:<14} {depth:>5}  {rates}  {duration(t.seconds):>10}  {t.source}")
    overhead = est.trials[0].overhead_s
    lines.append(
        f"  trial time = epochs x train images / train img/s + eval images / eval img/s + "
        f"{overhead:.0f} s overhead; per trial {res['cpu']:g} CPU + {res['gpu']:g} GPU"
    )
    lines.append(f"  sharing: {sharing_text(res)}")
    lines.append(f"  {len(est.trials)} trials: {hours:,.2f} {unit}-hours")
    lines.append(f"  concurrency: {est.concurrency_text}")
    if est.slots < 1:
        lines.append("  wall time: cannot run there (no node holds one trial)")
    else:
        lines.append(
            f"  wall time: {duration(est.wall_s)} (trials longest first on {est.slots} slot(s), "
            f"+ {STUDY_OVERHEAD_S * est.slowdown:.0f} s Ray start)"
        )
    longest = est.longest
    lines.append(
        f"  longest trial (critical path): {longest.name} {duration(longest.seconds)} "
        f"(train {duration(longest.train_s)}, eval {duration(longest.eval_s)})"
    )
    checkpoints = sum(2 * t.checkpoint_bytes for t in est.trials)
    others = sum(t.other_bytes for t in est.trials)
    biggest = max(t.checkpoint_bytes for t in est.trials)
    lines.append(
        f"  disk: {_size(checkpoints + others)} = checkpoints {_size(checkpoints)} (2 copies per "
        f"trial, largest {_size(biggest)}) + per-image files and tables {_size(others)}; "
        f"+{_size(biggest)} per running trial while a checkpoint is written"
    )
    return lines
