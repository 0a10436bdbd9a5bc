"""What a study will cost, in words: the lines ``pact-harness grid --dry-run [--estimate]``
prints (:mod:`harness.estimate.compute` has the numbers; nothing here computes one)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from harness.estimate.compute import (
    CHECKPOINT_COPIES,
    CLUSTER,
    CONTENTION_PROBE_S,
    DEFAULT_THROUGHPUT_FILE,
    LOCAL,
    Concurrency,
    Machine,
    StudyEstimate,
    Throughput,
    cpu_threads,
    gpu_packing,
)
from harness.presets import PRESET_DIR

#: The defaults' file as the user finds it in the source tree.
DEFAULT_THROUGHPUT_NAME = DEFAULT_THROUGHPUT_FILE.relative_to(PRESET_DIR.parent.parent).as_posix()


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


def machine_text(machine: Machine) -> str:
    """``this machine (2 CPU, 0 GPU)``, ``4 GPU (8 CPU)``, ``the Ray cluster at ADDRESS (...)``."""
    if machine.kind == LOCAL:
        return f"this machine ({machine.cpu:g} CPU, {machine.gpu:g} GPU)"
    if machine.kind == CLUSTER:
        return (
            f"the Ray cluster at {machine.address} ({len(machine.nodes)} node(s), "
            f"{machine.cpu:g} CPU, {machine.gpu:g} GPU)"
        )
    cpus = [n.cpu for n in machine.nodes]
    shown = f"{machine.cpu:g} CPU" if None not in cpus else "CPUs assumed not limiting"
    return f"{machine.gpu:g} GPU ({shown})"


def concurrency_text(found: Concurrency) -> str:
    """``4 trial(s) at a time: 4 (8 CPU / 2 per trial: CPU-bound)``, node by node."""
    res = found.resources
    parts = []
    for share in found.nodes:
        node, slots = share.node, share.slots
        cpu = "any CPU" if node.cpu is None else f"{node.cpu:g} CPU"
        if not slots:
            parts.append(f"0 ({cpu}, {node.gpu:g} GPU: cannot hold one trial)")
        elif share.binding == "CPU":
            parts.append(f"{slots} ({cpu} / {res['cpu']:g} per trial: CPU-bound)")
        elif res["gpu"] == 0:
            parts.append(f"{slots} (CPUs not limiting)")
        else:
            gpus = f"{node.gpu:g} GPU / {res['gpu']:g} per trial"
            parts.append(f"{slots} ({gpus}: GPU-bound, {cpu})")
    text = f"{found.available} trial(s) at a time: " + (
        parts[0] if len(parts) == 1 else " + ".join(parts) + " per node"
    )
    if found.unlimited:
        text = "no limit (CPUs assumed not limiting and no GPU asked for: give --cpus)"
    if found.capped:
        text += f", capped at {found.max_concurrent} by max_concurrent"
    return text


def throughput_note(rate: Throughput) -> str:
    """Where a throughput comes from and how it was scaled."""
    note = rate.source
    if rate.scaled_from_depth is not None:
        note += f", scaled from depth {rate.scaled_from_depth}"
    if rate.train_cost is not None:
        note += f", {rate.method} = {rate.train_cost:g} x vanilla"
        if not rate.cost_declared:
            note += " (it declares no train_cost: the dearest registered method's, assumed)"
    return note


def sharing_text(resources: Mapping[str, float]) -> str:
    """How a trial's speed follows from what it asks for (the rule of
    :func:`~harness.estimate.compute.gpu_packing` and
    :func:`~harness.estimate.compute.cpu_threads`)."""
    cpu, gpu = resources["cpu"], resources["gpu"]
    if gpu > 0:
        k, aggregate = gpu_packing(resources)
        if k == 1:
            return "one trial per GPU, at the full throughput"
        return (
            f"{k} trials share a GPU; together {aggregate:g}x one alone (assumed), so each "
            f"runs at {aggregate / k:.2f}x"
        )
    cores = cpu_threads(resources)
    if cpu < 1:
        return f"1 thread per trial on {cores:g} of a core: {cores:g}x one core's throughput"
    return f"{cores} thread(s) per trial: {cores}x one core's throughput (linear, assumed)"


def format_estimate(est: StudyEstimate) -> list[str]:
    """The lines ``--estimate`` prints."""
    res = est.preset.resources
    hours, unit = est.resource_hours
    source = (
        f"measured throughput from {est.measured_file} (documented defaults where it has none)"
        if est.measured_file
        else f"no --throughput file: documented default throughputs ({DEFAULT_THROUGHPUT_NAME}; "
        "the H200 numbers are assumptions)"
    )
    lines = [f"estimate on {machine_text(est.machine)}", f"  {source}"]
    if est.slowdown > 1.05:
        lines.append(
            f"  busy: a {CONTENTION_PROBE_S:g} s probe ran {est.machine.slowdown:.1f}x slower "
            f"(wall / CPU time) than on an idle machine; with {est.slots} trial(s) added, CPU "
            f"work is taken {est.slowdown:.1f}x slower below (trial times and the Ray start)"
        )
    lines.append("  method         depth  train img/s  eval img/s  trial time  throughput from")
    for t in est.per_method:
        rates = f"{t.train_images_per_s:>11.0f}  {t.eval_images_per_s:>10.0f}"
        note = throughput_note(t.throughput)
        lines.append(f"  {t.method:<14} {t.depth:>5}  {rates}  {duration(t.seconds):>10}  {note}")
    overhead = est.trials[0].overhead_s
    lines.append(
        f"  trial time = epochs x train images / train img/s + eval images / eval img/s + "
        f"{overhead:.0f} s overhead; per trial {res['cpu']:g} CPU + {res['gpu']:g} GPU"
    )
    lines.append(f"  sharing: {sharing_text(res)}")
    lines.append(f"  {len(est.trials)} trials: {hours:,.2f} {unit}-hours")
    lines.append(f"  concurrency: {concurrency_text(est.concurrency)}")
    if est.slots < 1:
        lines.append("  wall time: cannot run there (no node holds one trial)")
    else:
        lines.append(
            f"  wall time: {duration(est.wall_s)} (trials longest first on {est.slots} slot(s), "
            f"+ {est.overhead_s:.0f} s Ray start)"
        )
    longest = est.longest
    lines.append(
        f"  longest trial (critical path): {longest.name} {duration(longest.seconds)} "
        f"(train {duration(longest.train_s)}, eval {duration(longest.eval_s)})"
    )
    disk = est.disk
    biggest = _size(disk.largest_checkpoint)
    lines.append(
        f"  disk: {_size(disk.total)} = checkpoints {_size(disk.checkpoints)} "
        f"({CHECKPOINT_COPIES} copies per trial, largest {biggest}) + per-image files and "
        f"tables {_size(disk.others)}; +{biggest} per running trial while a checkpoint is written"
    )
    return lines
