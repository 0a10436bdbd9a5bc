"""What a study will cost before it runs: GPU- (or CPU-) hours, wall time, disk.

``pact-harness grid --dry-run --estimate`` prints this for any preset, on the machine it runs on,
on ``--gpus N [--cpus M]`` (one hypothetical machine) or on the Ray cluster at ``--address``
(:mod:`harness.grid` reads its nodes). Nothing here imports Ray or trains anything.

Two modules, one job each: :mod:`harness.estimate.compute` has the model and its numbers
(machines, concurrency, throughput tables, per-trial and study estimates, the launch order,
the makespan; its docstring states the model term by term); :mod:`harness.estimate.format`
turns them into the lines the command line prints.
"""

from harness.estimate.compute import (
    CHECKPOINT_COPIES,
    CONTENTION_PROBE_S,
    DEFAULT_THROUGHPUT_FILE,
    EVAL_TO_TRAIN,
    GPU_PACKING_AGGREGATE,
    STUDY_OVERHEAD_S,
    TRIAL_OVERHEAD_S,
    Concurrency,
    Disk,
    Machine,
    Node,
    StudyEstimate,
    Throughput,
    TrialEstimate,
    cluster_machine,
    concurrency,
    contention,
    default_throughput,
    estimate_study,
    estimate_trials,
    gpu_machine,
    launch_order,
    load_throughput,
    local_machine,
    lookup_throughput,
    makespan,
    study_slowdown,
    train_cost,
    vanilla_methods,
)
from harness.estimate.format import (
    concurrency_text,
    duration,
    format_estimate,
    machine_text,
    sharing_text,
    throughput_note,
)

__all__ = [
    "CHECKPOINT_COPIES",
    "CONTENTION_PROBE_S",
    "DEFAULT_THROUGHPUT_FILE",
    "EVAL_TO_TRAIN",
    "GPU_PACKING_AGGREGATE",
    "STUDY_OVERHEAD_S",
    "TRIAL_OVERHEAD_S",
    "Concurrency",
    "Disk",
    "Machine",
    "Node",
    "StudyEstimate",
    "Throughput",
    "TrialEstimate",
    "cluster_machine",
    "concurrency",
    "concurrency_text",
    "contention",
    "default_throughput",
    "duration",
    "estimate_study",
    "estimate_trials",
    "format_estimate",
    "gpu_machine",
    "launch_order",
    "load_throughput",
    "local_machine",
    "lookup_throughput",
    "machine_text",
    "makespan",
    "sharing_text",
    "study_slowdown",
    "throughput_note",
    "train_cost",
    "vanilla_methods",
]
