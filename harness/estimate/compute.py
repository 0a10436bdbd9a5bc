"""What a study will cost before it runs: the numbers (:mod:`harness.estimate.format` says them).

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
  counting ``eval.repeats`` passes, the per-epoch validation pass, and per result row the cost
  columns' forward passes of the first test batch,
  :func:`harness.costs.measure.cost_passes_per_row`, and their one peak-memory pass of each
  further measured test batch, :func:`harness.costs.measure.memory_pass_images`) over the
  evaluation throughput; plus
  :data:`TRIAL_OVERHEAD_S` (worker start, imports, loading the dataset, FLOP counting).
* **Throughput** per (method, depth, device) comes from a ``pact-harness bench`` JSON file
  (``--throughput FILE.json``, a list ``"throughput"`` of ``{method, depth, device, batch_size,
  train_images_per_s}`` entries, optionally ``eval_images_per_s``, ``threads``, ``dataset``,
  ``source``), else from the documented defaults in :data:`DEFAULT_THROUGHPUT_FILE` (the same
  format; its notes say where each number comes from). A missing (method, depth) is scaled from
  the nearest depth of the same method by the backbone's dense cost (``depth - 2``: every CIFAR
  unit costs the same, and a bottleneck ImageNet ResNet is within 10% of that proportion), and a
  missing method from the preset's vanilla method (a preset without one: the registered methods
  without a time penalty, :func:`vanilla_methods`) by the method's declared
  ``MethodSpec.train_cost`` (undeclared: the dearest registered method's, :func:`train_cost`).
  On CPU a trial runs ``max(1, int(cpu))`` threads (``harness.grid``) and throughput scales
  linearly with them (a fractional CPU gets that fraction of one core); on a GPU,
  ``k = floor(1 / g)`` packed trials share one GPU's :data:`GPU_PACKING_AGGREGATE`.
* **A busy machine**: estimating for this machine, a 1 s single-thread probe measures wall time
  / CPU time (:func:`contention`: 1 when idle, 2 when other processes leave half a core), grown
  by fair sharing to the study's trial processes (:func:`study_slowdown`); CPU trial times and
  the study overhead are multiplied by it.
* **Wall time** = :data:`STUDY_OVERHEAD_S` (Ray start and stop, planning, the tables) + the
  makespan of the trials scheduled longest first onto the concurrent slots (LPT list scheduling,
  within 4/3 of the optimum; the grid launches trials in that order, :func:`launch_order`); the
  longest trial is a lower bound no machine can beat.
* **Disk**: per trial :data:`CHECKPOINT_COPIES` copies of ``checkpoint.pt`` (the run
  directory's and Tune's, ``num_to_keep=1``; a third exists while one is written) of the model's
  parameters and buffers plus SGD's momentum buffers (each model built once), ``per_image.npz``
  (uncompressed bound) and the small files.

Nothing here imports Ray, trains anything or writes text for a user.
"""

from __future__ import annotations

import functools
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
from harness.costs.measure import cost_passes_per_row, memory_pass_images
from harness.errors import ConfigError
from harness.evaluate import PER_IMAGE_MAPS, THUMBNAIL_SIZE, plan_evaluations
from harness.models import build_model
from harness.presets import PRESET_DIR, Preset, Trial
from harness.registry import get_method, list_methods

#: (train, test) images of the full datasets (ImageNet: ILSVRC-2012 train and val).
DATASET_IMAGES = {"cifar10": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}
#: Input side of each dataset's images (the ponder maps' size).
IMAGE_SIDE = {"cifar10": 32, "imagenet": 224}
#: The documented default throughputs (a bench-format file; preset files alone name methods).
DEFAULT_THROUGHPUT_FILE = PRESET_DIR / "throughput.json"
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
#: Copies of a trial's checkpoint on disk: the run directory's and Tune's (``num_to_keep=1``).
CHECKPOINT_COPIES = 2
#: Run-directory files other than the checkpoint and per_image.npz (config, provenance,
#: summary, results.csv) and Tune's per-trial files, in bytes; metrics add per epoch.
SMALL_FILES_BYTES = 100_000
SMALL_FILES_BYTES_PER_EPOCH = 2_000
#: A method's training cost relative to the vanilla backbone when no registered method declares
#: one (``MethodSpec.train_cost``).
NO_DECLARED_COST = 1.0


@dataclass(frozen=True)
class Throughput:
    """Images per second of one trial of ``method`` at ``depth`` on a device kind.

    An entry scaled from another one (:func:`lookup_throughput`) says how: ``scaled_from_depth``
    (the depth it was measured at) and ``train_cost`` (the method's cost relative to the vanilla
    method it was scaled from; ``cost_declared`` False when the method declares none and the
    dearest registered method's stands in).
    """

    method: str
    depth: int
    device: str  # "cpu" or "cuda"
    train_images_per_s: float
    eval_images_per_s: float | None = None  # None: EVAL_TO_TRAIN x train
    dataset: str = "cifar10"
    threads: int = 1  # CPU: torch threads it was measured with (scaled per thread)
    batch_size: int = 128
    source: str = ""
    scaled_from_depth: int | None = None
    train_cost: float | None = None
    cost_declared: bool = True


# ------------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class Node:
    """One machine's resources as Ray sees them (``cpu=None``: CPUs not limiting, assumed)."""

    cpu: float | None
    gpu: float = 0.0


#: Machine kinds: this machine, the Ray cluster at an address, a machine given by --gpus/--cpus.
LOCAL, CLUSTER, GIVEN = "local", "cluster", "given"


@dataclass(frozen=True)
class Machine:
    """Where a study would run: its nodes, what kind of place it is (:data:`LOCAL`,
    :data:`CLUSTER` at ``address``, :data:`GIVEN`) and how busy."""

    nodes: tuple[Node, ...]
    kind: str = GIVEN
    address: str = ""
    #: CPU work takes this many times longer here now than on an idle machine (other processes
    #: hold the cores); measured by :func:`contention` for this machine, else 1.
    slowdown: float = 1.0

    @property
    def cpu(self) -> float:
        """CPUs of all nodes (a node whose CPUs are not given counts none)."""
        return sum(n.cpu or 0 for n in self.nodes)

    @property
    def gpu(self) -> float:
        """GPUs of all nodes."""
        return sum(n.gpu for n in self.nodes)


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
    slowdown = contention() if probe else 1.0
    return Machine((Node(float(cpus), float(gpus)),), LOCAL, slowdown=slowdown)


def gpu_machine(gpus: int, cpus: float | None = None) -> Machine:
    """``--gpus N [--cpus M]``: one machine with N GPUs (CPUs not limiting unless given)."""
    if gpus < 0 or (cpus is not None and cpus <= 0):
        raise ConfigError("--gpus must be >= 0 and --cpus > 0")
    return Machine((Node(cpus, float(gpus)),), GIVEN)


def cluster_machine(nodes: Sequence[Mapping[str, float]], address: str) -> Machine:
    """A Ray cluster from its live nodes' resource dicts (``ray.nodes()[i]["Resources"]``)."""
    found = tuple(Node(float(n.get("CPU", 0)), float(n.get("GPU", 0))) for n in nodes)
    return Machine(found, CLUSTER, address)


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


@dataclass(frozen=True)
class NodeSlots:
    """One node's share of the concurrency: trials at once and the resource that binds."""

    node: Node
    slots: int
    binding: str  # "CPU" or "GPU"


@dataclass(frozen=True)
class Concurrency:
    """How many trials of ``resources`` run at once on a machine, node by node."""

    resources: Mapping[str, float]
    nodes: tuple[NodeSlots, ...]
    max_concurrent: int | None = None

    @property
    def available(self) -> int:
        """Trials the nodes hold together (before ``max_concurrent``)."""
        return sum(n.slots for n in self.nodes)

    @property
    def unlimited(self) -> bool:
        """No resource limits (CPUs not given and no GPU asked for)."""
        return self.available >= UNLIMITED

    @property
    def capped(self) -> bool:
        """``max_concurrent`` binds."""
        return self.max_concurrent is not None and self.max_concurrent < self.available

    @property
    def slots(self) -> int:
        """Trials at once."""
        return self.max_concurrent if self.capped else self.available  # type: ignore[return-value]


def concurrency(
    resources: Mapping[str, float], machine: Machine, max_concurrent: int | None = None
) -> Concurrency:
    """How many trials run at once on ``machine`` (``.slots``), and why, node by node."""
    per_node = tuple(NodeSlots(node, *node_slots(node, resources)) for node in machine.nodes)
    return Concurrency(dict(resources), per_node, max_concurrent)


# ----------------------------------------------------------------------------- throughput


def _device_kind(device: str) -> str:
    return "cpu" if str(device).lower().startswith("cpu") else "cuda"


def load_throughput(path: str | Path, where: str | None = None) -> list[Throughput]:
    """Read a ``pact-harness bench`` JSON file's ``"throughput"`` list (``where``: how errors
    name the file; default ``--throughput PATH``)."""
    where = where or f"--throughput {path}"
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
            source = (
                entry.get("source") or f"measured ({Path(path).name}, device {entry['device']})"
            )
            item = Throughput(
                method=str(entry["method"]),
                depth=int(entry["depth"]),
                device=_device_kind(entry["device"]),
                train_images_per_s=rate,
                eval_images_per_s=float(evaluation) if evaluation else None,
                dataset=str(entry.get("dataset", "cifar10")),
                threads=int(entry.get("threads") or 1),
                batch_size=int(entry.get("batch_size") or 0),
                source=str(source),
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


@functools.cache
def default_throughput() -> tuple[Throughput, ...]:
    """The documented defaults (:data:`DEFAULT_THROUGHPUT_FILE`), read as a ``--throughput``
    file is."""
    return tuple(load_throughput(DEFAULT_THROUGHPUT_FILE, str(DEFAULT_THROUGHPUT_FILE)))


def train_cost(method: str) -> tuple[float, bool]:
    """(training cost per image relative to the vanilla backbone, whether ``method`` declares
    it): its ``MethodSpec.train_cost``, else the dearest registered method's (False)."""
    try:
        declared = get_method(method).train_cost
    except ConfigError:
        declared = None
    if declared is not None:
        return float(declared), True
    costs = [c for c in (get_method(m).train_cost for m in list_methods()) if c is not None]
    return float(max(costs, default=NO_DECLARED_COST)), False


def vanilla_methods(preset: Preset) -> list[str]:
    """The methods a method without a throughput of its own is scaled from: the preset's
    ``vanilla_method``, else every registered method without a time penalty (sorted)."""
    if preset.vanilla_method:
        return [preset.vanilla_method]
    return [m for m in list_methods() if get_method(m).time_penalty_field is None]


def _depth_cost(depth: int) -> float:
    return max(depth - 2, 1)


def lookup_throughput(
    table: Sequence[Throughput],
    method: str,
    depth: int,
    device: str,
    dataset: str,
    batch: int,
    vanilla: Sequence[str] = (),
) -> Throughput | None:
    """The entry for (method, depth, device, dataset), scaled from the nearest depth of the same
    method, else of the first ``vanilla`` method the table has (by ``method``'s
    :func:`train_cost`); ``None`` when the table has none of them for that device and dataset."""
    kind = _device_kind(device)
    rows = [t for t in table if t.device == kind and t.dataset == dataset]

    def pick(candidates: list[Throughput]) -> Throughput:
        near = min(abs(_depth_cost(t.depth) - _depth_cost(depth)) for t in candidates)
        nearest = [t for t in candidates if abs(_depth_cost(t.depth) - _depth_cost(depth)) == near]
        same_batch = [t for t in nearest if t.batch_size == batch]
        return (same_batch or nearest)[0]

    sources = [[t for t in rows if t.method == name] for name in (method, *vanilla)]
    for method_rows in sources:
        if not method_rows:
            continue
        best = pick(method_rows)
        cost, declared = (1.0, True) if best.method == method else train_cost(method)
        scale = _depth_cost(best.depth) / _depth_cost(depth) / cost
        evaluation = best.eval_images_per_s or EVAL_TO_TRAIN * best.train_images_per_s
        return Throughput(
            method,
            depth,
            kind,
            best.train_images_per_s * scale,
            evaluation * scale,
            dataset,
            best.threads,
            best.batch_size,
            best.source,
            scaled_from_depth=best.depth if best.depth != depth else None,
            train_cost=cost if best.method != method else None,
            cost_declared=declared,
        )
    return None


# --------------------------------------------------------------------------------- trials


@dataclass
class TrialEstimate:
    """One trial's predicted seconds and bytes (``throughput``: the table entry it ran at)."""

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
    throughput: Throughput

    @property
    def seconds(self) -> float:
        """Train + evaluation + overhead."""
        return self.train_s + self.eval_s + self.overhead_s

    @property
    def disk_bytes(self) -> int:
        """The checkpoint copies (run directory and Tune) + per-image file + small files."""
        return CHECKPOINT_COPIES * self.checkpoint_bytes + self.other_bytes


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
    model = build_model(cfg)
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
    trials take ``slowdown`` times longer (a busy machine, :attr:`Machine.slowdown`). A method
    without a throughput of its own is scaled from the preset's vanilla method
    (:func:`vanilla_methods`)."""
    resources = preset.resources
    kind = "cuda" if resources["gpu"] > 0 else "cpu"
    slowdown = slowdown if kind == "cpu" else 1.0
    vanilla = vanilla_methods(preset)
    cost_passes = cost_passes_per_row()
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
        rate = lookup_throughput(measured, method, depth, kind, dataset, batch, vanilla)
        if rate is None:
            rate = lookup_throughput(
                default_throughput(), method, depth, kind, dataset, batch, vanilla
            )
        if rate is None:
            raise ConfigError(
                f"no throughput for {method} on {kind} ({dataset}): give --throughput FILE.json "
                "from `pact-harness bench`"
            )
        train_rate, eval_rate = (r / slowdown for r in _per_trial_rates(rate, resources))
        n_train, n_val, n_test = _split_sizes(cfg)
        per_epoch = (n_train // batch) * batch
        eval_batch = int(cfg["eval"]["batch_size"])
        # Per result row: the cost batch (the first test batch) cost_passes times, then one
        # peak-memory pass of each further measured batch (eval.memory_batches, 0: all).
        memory = memory_pass_images(n_test, eval_batch, int(cfg["eval"].get("memory_batches", 0)))
        cost_images = cost_passes * min(eval_batch, n_test) + memory
        eval_images = (n_test + n_val) * fact.passes + epochs * n_val + fact.rows * cost_images
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
                throughput=rate,
            )
        )
    return out


def gpu_packing(resources: Mapping[str, float]) -> tuple[int, float]:
    """(k trials packed on one GPU, their aggregate speed relative to one alone)."""
    gpu = resources["gpu"]
    k = math.floor(1 / gpu + _EPS) if 0 < gpu < 1 else 1
    return k, GPU_PACKING_AGGREGATE.get(k, GPU_PACKING_AGGREGATE[max(GPU_PACKING_AGGREGATE)])


def cpu_threads(resources: Mapping[str, float]) -> float:
    """Cores a CPU trial computes on: ``max(1, int(cpu))`` threads (as the grid sets them), or
    the fraction of one core it asked for."""
    cpu = resources["cpu"]
    return cpu if cpu < 1 else max(1, int(cpu))


def _per_trial_rates(rate: Throughput, resources: Mapping[str, float]) -> tuple[float, float]:
    """(train, eval) images/s of one trial given what it asks for and what it shares."""
    evaluation = rate.eval_images_per_s or EVAL_TO_TRAIN * rate.train_images_per_s
    if rate.device == "cpu":
        factor = cpu_threads(resources) / max(rate.threads, 1)
    else:
        k, aggregate = gpu_packing(resources)
        factor = aggregate / k
    return rate.train_images_per_s * factor, evaluation * factor


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


@dataclass(frozen=True)
class Disk:
    """A study's bytes on disk: the checkpoint copies, everything else, and the largest
    checkpoint (a third copy of it exists per running trial while one is written)."""

    checkpoints: int
    others: int
    largest_checkpoint: int

    @property
    def total(self) -> int:
        """Checkpoints + everything else."""
        return self.checkpoints + self.others


@dataclass
class StudyEstimate:
    """A study's predicted cost on one machine or cluster."""

    preset: Preset
    machine: Machine
    trials: list[TrialEstimate]
    concurrency: Concurrency
    measured_file: str | None
    slowdown: float = 1.0  # CPU trials and the study overhead on a busy machine (study_slowdown)
    wall_s: float = field(init=False)

    def __post_init__(self) -> None:
        span = makespan([t.seconds for t in self.trials], self.slots)
        self.wall_s = self.overhead_s + span

    @property
    def slots(self) -> int:
        """Trials at once."""
        return self.concurrency.slots

    @property
    def overhead_s(self) -> float:
        """The study's own seconds (Ray start and stop, planning, tables) on this machine."""
        return STUDY_OVERHEAD_S * self.slowdown

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

    @property
    def per_method(self) -> list[TrialEstimate]:
        """The first trial of each (method, depth), sorted by method and depth (the trials of
        one method and depth run at the same rates)."""
        seen: dict[tuple[str, int], TrialEstimate] = {}
        for t in self.trials:
            seen.setdefault((t.method, t.depth), t)
        return [seen[key] for key in sorted(seen)]

    @property
    def disk(self) -> Disk:
        """The trials' bytes on disk."""
        checkpoints = sum(CHECKPOINT_COPIES * t.checkpoint_bytes for t in self.trials)
        total = sum(t.disk_bytes for t in self.trials)
        largest = max((t.checkpoint_bytes for t in self.trials), default=0)
        return Disk(checkpoints, total - checkpoints, largest)


def estimate_study(
    preset: Preset,
    trials: Sequence[Trial],
    machine: Machine,
    throughput_file: str | None = None,
) -> StudyEstimate:
    """Estimate ``trials`` of ``preset`` on ``machine`` (``throughput_file``: bench JSON)."""
    measured = load_throughput(throughput_file) if throughput_file else []
    slots = concurrency(preset.resources, machine, preset.max_concurrent)
    slowdown = study_slowdown(machine, slots.slots)
    estimates = estimate_trials(preset, trials, measured, slowdown)
    return StudyEstimate(preset, machine, estimates, slots, throughput_file, slowdown)


def study_slowdown(machine: Machine, slots: int) -> float:
    """How much slower CPU trials run on a busy machine: the probe (one process added) grown by
    fair sharing to the study's trial processes. With B runnable processes on C cores, one more
    gets C / (B + 1) of a core (the probe: ``s1 = (B + 1) / C``) and k more get C / (B + k):
    ``s1 + (k - 1) / C``. An idle machine (``s1`` ~ 1) stays at 1."""
    s1 = machine.slowdown
    cpus = machine.cpu
    if s1 <= 1.05 or cpus <= 0:
        return s1
    return s1 + (min(slots, cpus) - 1) / cpus
