"""``pact-harness profile``: FLOPs, peak memory and time per evaluation mode and batch size.

For a trained run (``--run RUN_DIR``, its checkpoint and, by default, its test images) or an
untrained architecture (``--method M --depth D --dataset cifar10|imagenet``, random images), every
evaluation mode of the method, every execution it offers for that mode (masked, early exit,
gathered) and every batch size of ``--batch-sizes`` gets one row:

- FLOPs per image (mean, std, per block, fraction of the vanilla backbone) from
  :class:`~harness.costs.flops.FlopAccountant` and the executed-unit counts of the pass;
- peak memory of the pass (:mod:`harness.costs.memory`: exact live tensor bytes on CPU, the
  allocator's peak on CUDA), split into parameters, input and activations;
- the median wall-clock time per batch after warm-up (:mod:`harness.costs.timing`), next to the
  time of the vanilla backbone on the same batch, timed in turn with it (so that a drifting
  machine load cancels out of the ratio): the realized speed-up beside the FLOP one.

The memory table of the PACT paper's claim (CIFAR ResNet-110, batch 128, CPU)::

    pact-harness profile --method resnet,act,pact --depth 110 --batch-sizes 128 --device cpu

Untrained halting branches start at bias -3 (PACT then never halts at threshold 0.5); pass
``--set method.halting_bias_init=0.5`` to make them halt early and exercise the early exits.
:func:`add_cost_columns` gives every trained run's result rows the same memory and time columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from harness import store
from harness.config import RunConfig, from_dict
from harness.contract import EXECUTIONS, AdaptiveModel, EvalSpec, ModelOutput
from harness.costs import evaluating
from harness.costs.flops import CONVENTION, FlopAccountant
from harness.costs.memory import MemoryReport, measure_peak_memory
from harness.costs.timing import TimingReport, time_interleaved
from harness.errors import CheckpointError, ConfigError, DataError

#: Image size of an untrained architecture, per dataset (override with ``--image-size``).
DEFAULT_IMAGE_SIZE = {"cifar10": (32, 32), "imagenet": (224, 224)}

#: Keys every profile row holds (the ``--out`` JSON and the table).
ROW_KEYS = (
    "method",
    "depth",
    "eval_mode",
    "execution",
    "batch_size",
    "flops_per_image_mean",
    "flops_per_image_std",
    "peak_memory_bytes",
    "seconds_per_batch",
)


# -- planning ------------------------------------------------------------------------------
def parse_batch_sizes(values: Sequence[int]) -> tuple[int, ...]:
    """Batch sizes must be integers >= 1 (at least one)."""
    if not values:
        raise ConfigError("--batch-sizes: give at least one batch size, e.g. 1,32,128")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--batch-sizes: batch size {value!r} must be an integer >= 1")
    return tuple(values)


def plan_specs(
    model: AdaptiveModel,
    modes: Sequence[str] = (),
    executions: str | Sequence[str] = "all",
    thresholds: Sequence[float] = (0.5,),
) -> list[EvalSpec]:
    """One spec per (mode, execution, threshold); ``executions`` is ``all``, ``auto`` or names.

    ``auto`` takes each mode's fastest exact execution (as the evaluation does); an explicit list
    keeps, per mode, the listed executions it offers. Unknown names raise ``ConfigError``.
    """
    name = type(model).__name__
    modes = tuple(modes) or model.eval_modes
    for mode in modes:
        if mode not in model.eval_modes:
            raise ConfigError(
                f"--modes: unknown mode {mode!r} for {name}; "
                f"allowed values: {', '.join(model.eval_modes)}"
            )
    if isinstance(executions, str):
        executions = (executions,)
    for execution in executions:
        if execution not in ("all", "auto", *EXECUTIONS):
            raise ConfigError(
                f"--executions: unknown execution {execution!r}; "
                f"allowed values: all, auto, {', '.join(EXECUTIONS)}"
            )
    for threshold in thresholds:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"--thresholds: threshold {threshold} must be in (0, 1)")
    specs = []
    for mode in modes:
        offered = model.executions_for(mode)
        if "all" in executions:
            chosen = offered
        elif "auto" in executions:
            chosen = offered[:1]
        else:
            chosen = tuple(e for e in offered if e in executions)
            if not chosen:
                raise ConfigError(
                    f"--executions: none of {', '.join(executions)} is offered for mode "
                    f"{mode!r} of {name}; allowed values: {', '.join(offered)}"
                )
        mode_thresholds = thresholds if mode in model.threshold_modes else (0.5,)
        specs.extend(EvalSpec(mode, e, t) for e in chosen for t in mode_thresholds)
    return specs


# -- one measured pass ---------------------------------------------------------------------
def measure_pass(
    model: AdaptiveModel,
    images: torch.Tensor,
    spec: EvalSpec,
    seed: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    vanilla: bool = False,
) -> tuple[MemoryReport, TimingReport, TimingReport | None, ModelOutput]:
    """Warm up, measure peak memory of one pass (keeping its output), then time ``repeats``.

    ``seed`` seeds a fresh generator for every call of a random mode, so every call makes the
    same halting decisions. With ``vanilla``, the plain backbone (every unit, no halting) is
    timed on the same images in turn with the pass: the third item, else None.
    """

    def run() -> ModelOutput:
        call_spec = spec
        if seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(seed)
            call_spec = dataclasses.replace(spec, generator=generator)
        return model(images, call_spec)

    runs: dict[str, Callable[[], Any]] = {"pass": run}
    if vanilla:
        runs["vanilla"] = lambda: model.backbone(images)
    with torch.no_grad(), evaluating(model):
        for _ in range(warmup):
            for call in runs.values():
                call()
        memory, output = measure_peak_memory(run, model, images)
        timings = time_interleaved(runs, images.device, warmup=0, repeats=repeats)
    timings = {k: dataclasses.replace(t, warmup=warmup) for k, t in timings.items()}
    return memory, timings["pass"], timings.get("vanilla"), output


def _std(values: torch.Tensor) -> float:
    return values.std().item() if values.numel() > 1 else 0.0


def cost_row(
    spec: EvalSpec,
    model: AdaptiveModel,
    flops: FlopAccountant,
    memory: MemoryReport,
    timing: TimingReport,
    output: ModelOutput,
    vanilla: TimingReport | None = None,
) -> dict[str, Any]:
    """Row fields of one measured pass (FLOPs from its executed-unit counts)."""
    per_image, per_block = flops.per_image(output)
    per_image = per_image.double()
    mean = per_image.mean().item()
    units = [
        u.detach().double().flatten(1).mean(1) if u.dim() > 1 else u.double()
        for u in output.units_executed
    ]
    row: dict[str, Any] = {
        "eval_mode": spec.mode,
        "execution": spec.execution,
        "threshold": spec.threshold if spec.mode in model.threshold_modes else None,
        "batch_size": int(output.logits.shape[0]),
        "flops_per_image_mean": mean,
        "flops_per_image_std": _std(per_image),
        "flops_per_block": [round(v, 1) for v in per_block.double().mean(0).tolist()],
        "vanilla_flops_per_image": flops.vanilla_flops,
        "flops_fraction_of_vanilla": mean / flops.vanilla_flops,
        "flop_speedup_vs_vanilla": flops.vanilla_flops / mean,
        "units_executed_mean": torch.stack(units, 1).sum(1).mean().item() if units else None,
        "peak_memory_bytes": memory.peak_bytes,
        "peak_memory_device": memory.device,
        "peak_memory_method": memory.method,
        "parameter_bytes": memory.parameter_bytes,
        "input_bytes": memory.input_bytes,
        "activation_peak_bytes": memory.activation_bytes,
        "peak_op": memory.peak_op,
        "seconds_per_batch": timing.seconds_per_batch,
        "seconds_per_image": timing.seconds_per_batch / output.logits.shape[0],
        "timing_warmup": timing.warmup,
        "timing_repeats": len(timing.seconds),
        "threads": torch.get_num_threads() if timing.device == "cpu" else None,
    }
    if vanilla is not None:
        row["vanilla_seconds_per_batch"] = vanilla.seconds_per_batch
        row["time_speedup_vs_vanilla"] = vanilla.seconds_per_batch / timing.seconds_per_batch
    return row


# -- a whole profile -----------------------------------------------------------------------
ImageSource = Callable[[int], torch.Tensor]


def random_images(
    image_size: tuple[int, int], device: torch.device, seed: int = 0, channels_last: bool = False
) -> ImageSource:
    """Standard-normal images (the scale of normalized inputs), the same for a given seed."""

    def make(batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, 3, *image_size, generator=generator).to(device)
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images

    return make


def loader_images(loader, device: torch.device) -> ImageSource:
    """The first images of ``loader`` in order (repeated when it holds fewer than asked)."""
    cache: list[torch.Tensor] = []

    def make(batch: int) -> torch.Tensor:
        have = sum(len(c) for c in cache)
        if have < batch:
            for images, _ in loader:
                cache.append(images)
                have += len(images)
                if have >= batch:
                    break
        if not cache:
            raise ConfigError("the run's test split holds no images to profile with")
        pool = torch.cat(cache)
        images = pool.repeat(-(-batch // len(pool)), 1, 1, 1)[:batch].to(device)
        channels_last = not cache[0].is_contiguous() and cache[0].is_contiguous(
            memory_format=torch.channels_last
        )
        # A compact copy: a slice would keep (and count) the whole repeated storage.
        return images.clone(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )

    return make


def profile_model(
    model: AdaptiveModel,
    describe: dict[str, Any],
    images: ImageSource,
    image_size: tuple[int, int],
    batch_sizes: Sequence[int],
    specs: Sequence[EvalSpec],
    seed: int = 0,
    warmup: int = 2,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """One row per (spec, batch size): ``describe`` (method, depth, ...) + :func:`cost_row`.

    The vanilla backbone is timed in turn with every row, on the same batch.
    """
    flops = FlopAccountant(model, image_size)
    rows = []
    for batch in parse_batch_sizes(batch_sizes):
        batch_images = images(batch)
        for spec in specs:
            random = spec.mode in model.random_modes
            memory, timing, vanilla, output = measure_pass(
                model, batch_images, spec, seed if random else None, warmup, repeats, True
            )
            row = dict(describe)
            row.update(cost_row(spec, model, flops, memory, timing, output, vanilla))
            row["seed"] = seed if random else None
            rows.append(row)
            del output
    return rows


def add_cost_columns(prepared, rows: list[dict[str, Any]], warmup: int = 1, repeats: int = 3):
    """Give a trained run's result rows ``peak_memory_bytes``, ``peak_memory_device`` and
    ``seconds_per_batch``, measured on the first test batch (the evaluation's batch size,
    ``cost_batch_size``; fewer when the test split is smaller)."""
    model, device, cfg = prepared.model, prepared.device, prepared.cfg
    images = None
    for batch, _ in prepared.data.test_loader:
        images = batch.to(device)
        break
    if images is None:
        return
    for row in rows:
        mode = row["eval_mode"]
        threshold = row.get("threshold")
        spec = EvalSpec(mode, row["execution"], 0.5 if threshold is None else float(threshold))
        seed = cfg.eval.seed if mode in model.random_modes else None
        memory, timing, _, output = measure_pass(model, images, spec, seed, warmup, repeats)
        del output
        row["peak_memory_bytes"] = memory.peak_bytes
        row["peak_memory_device"] = memory.device
        row["seconds_per_batch"] = timing.seconds_per_batch
        row["cost_batch_size"] = int(images.shape[0])
        row["activation_peak_bytes"] = memory.activation_bytes


# -- loading what to profile ---------------------------------------------------------------
def load_run(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's resolved config and its checkpoint; ``CheckpointError`` if either is missing."""
    from harness.train import load_checkpoint

    run_dir = Path(run_dir)
    config_file = run_dir / store.CONFIG_FILE
    ckpt_path = run_dir / store.CHECKPOINT_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"--run {run_dir}: no such run directory")
    if not config_file.is_file() or not ckpt_path.is_file():
        missing = store.CONFIG_FILE if not config_file.is_file() else store.CHECKPOINT_FILE
        raise CheckpointError(f"--run {run_dir}: no {missing} there; profile a trained run")
    try:
        cfg = from_dict(RunConfig, yaml.safe_load(config_file.read_text()))
    except (yaml.YAMLError, ConfigError) as err:
        raise CheckpointError(f"--run {run_dir}: unreadable {store.CONFIG_FILE}: {err}") from None
    checkpoint = load_checkpoint(ckpt_path)
    if "model" not in checkpoint:
        raise CheckpointError(f"--run {run_dir}: {store.CHECKPOINT_FILE} holds no model state")
    return cfg, checkpoint


def _run_target(args, device: torch.device):
    """Model, describe-dict, image source and image size of ``--run``."""
    from harness.data import resolve_data_root
    from harness.train import build_model, build_run_data

    cfg, checkpoint = load_run(args.run)
    num_classes = None
    if args.images == "test":
        if args.image_size:
            raise ConfigError("--image-size applies to --images random; test images keep theirs")
        try:
            root = resolve_data_root(args.data_root or cfg.data.root)
            data = build_run_data(
                cfg,
                root,
                train_subset=None,
                batch_size=1,
                eval_batch_size=max(args.batch_sizes),
                augment=False,
                download=False,
                num_workers=0,
            )
        except DataError as err:
            raise DataError(f"{err} (or profile with --images random)") from None
        num_classes, size = data.num_classes, tuple(data.image_size)
        images = loader_images(data.test_loader, device)
    else:
        size = _image_size(args, cfg.model.dataset)
        images = random_images(size, device, args.seed or 0, cfg.channels_last)
    _, _, model = build_model(cfg, num_classes=num_classes)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"--run {args.run}: checkpoint does not fit the configured model "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    describe = _describe(cfg, size, device, images=args.images, run=str(args.run))
    describe["epoch"] = checkpoint.get("epoch")
    return model, describe, images, size


def _image_size(args, dataset: str) -> tuple[int, int]:
    if args.image_size:
        if args.image_size < 1:
            raise ConfigError(f"--image-size {args.image_size} must be >= 1")
        return (args.image_size, args.image_size)
    return DEFAULT_IMAGE_SIZE[dataset]


def _describe(cfg: RunConfig, size, device, **extra) -> dict[str, Any]:
    return {
        "method": cfg.method,
        "dataset": cfg.model.dataset,
        "variant": cfg.model.variant,
        "depth": cfg.model.depth,
        "image_size": list(size),
        "device": str(device),
        **extra,
    }


PROFILE_FLAGS = {
    "method": "method.name",
    "dataset": "model.dataset",
    "depth": "model.depth",
    "variant": "model.variant",
}


def _architecture_targets(args, device: torch.device):
    """(model, describe, images, size) for each method of ``--method a,b,c``, one at a time."""
    from harness.cli import build_run_config
    from harness.config import validate_run_config
    from harness.train import build_model

    for name in args.method:
        ns = argparse.Namespace(**{**vars(args), "method": name, "config": None})
        cfg = build_run_config(ns, PROFILE_FLAGS)
        validate_run_config(cfg)
        torch.manual_seed(args.seed or 0)
        _, _, model = build_model(cfg)
        model.to(device)
        size = _image_size(args, cfg.model.dataset)
        images = random_images(size, device, args.seed or 0)
        describe = _describe(cfg, size, device, images="random", run=None)
        describe["method_config"] = dict(cfg.method_config)
        yield model, describe, images, size


# -- output --------------------------------------------------------------------------------
_TABLE = (
    ("method", "method", "{}"),
    ("depth", "depth", "{}"),
    ("mode", "eval_mode", "{}"),
    ("execution", "execution", "{}"),
    ("thr", "threshold", "{:g}"),
    ("batch", "batch_size", "{}"),
    ("GFLOPs/img", "flops_per_image_mean", "{:.4f}", 1e-9),
    ("std", "flops_per_image_std", "{:.4f}", 1e-9),
    ("of vanilla", "flops_fraction_of_vanilla", "{:.3f}"),
    ("peak bytes", "peak_memory_bytes", "{:,}"),
    ("activation bytes", "activation_peak_bytes", "{:,}"),
    ("device", "peak_memory_device", "{}"),
    ("ms/batch", "seconds_per_batch", "{:.1f}", 1e3),
    ("FLOP x", "flop_speedup_vs_vanilla", "{:.2f}"),
    ("time x", "time_speedup_vs_vanilla", "{:.2f}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width text table of profile rows, with the FLOP convention and units below."""
    header = [spec[0] for spec in _TABLE]
    body = []
    for row in rows:
        cells = []
        for _title, key, fmt, *scale in _TABLE:
            value = row.get(key)
            if value is None:
                cells.append("-")
                continue
            cells.append(fmt.format(value * scale[0] if scale else value))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"FLOPs: {CONVENTION}.",
        "peak bytes = parameters and buffers + input batch + activation peak of one pass "
        "(cpu: exact live tensor storage; cuda: allocator peak). FLOP x / time x: vanilla "
        "backbone FLOPs / row FLOPs and vanilla backbone time / row time on the same batch, "
        "timed in turn with the row (medians after warm-up).",
    ]
    return "\n".join(lines)


def cmd_profile(args: argparse.Namespace) -> int:
    """Profile a run or architectures; print the table and optionally write JSON rows."""
    from harness.train import resolve_device

    if args.run is not None and (args.method or args.depth or args.dataset or args.set):
        raise ConfigError("give either --run RUN_DIR or --method/--depth/--dataset/--set, not both")
    if args.run is None and not args.method:
        raise ConfigError("give --run RUN_DIR (a trained run) or --method M (an architecture)")
    args.batch_sizes = parse_batch_sizes(args.batch_sizes)
    if args.warmup < 0 or args.repeats < 1:
        raise ConfigError("--warmup must be >= 0 and --repeats >= 1")
    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    if args.run is not None:
        targets = [_run_target(args, device)]
    else:
        if args.images == "test":
            raise ConfigError("--images test needs --run (an architecture has no data)")
        targets = list(_architecture_targets(args, device))
    # Every model and plan is checked before the first measurement.
    plans = [plan_specs(t[0], args.modes or (), args.executions, args.thresholds) for t in targets]
    rows: list[dict[str, Any]] = []
    for (model, describe, images, size), specs in zip(targets, plans, strict=True):
        rows += profile_model(
            model,
            describe,
            images,
            size,
            args.batch_sizes,
            specs,
            seed=args.seed or 0,
            warmup=args.warmup,
            repeats=args.repeats,
        )
    print(format_table(rows))
    if args.out:
        store.atomic_write_text(args.out, json.dumps(rows, indent=2, default=str) + "\n")
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list, got {text!r}") from None

    return parse


EXAMPLES = """examples:
  # the memory table (CIFAR ResNet-110, batch 128, CPU: exact bytes)
  pact-harness profile --method resnet,act,pact --depth 110 --batch-sizes 128 --device cpu
  # a trained run on its own test images, writing JSON rows
  pact-harness profile --run runs/pact_cifar10_d32_lambda0.01_s0 --out costs.json
  # untrained halting branches that do halt (bias 0.5 instead of -3)
  pact-harness profile --method pact --depth 32 --set method.halting_bias_init=0.5
"""


def add_parser(sub) -> None:
    """Add the ``profile`` subcommand."""
    p = sub.add_parser(
        "profile",
        help="FLOPs, peak memory and time per evaluation mode and batch size",
        description="FLOPs, peak memory and time per evaluation mode, execution and batch size, "
        "for a trained run (--run) or an untrained architecture (--method/--depth/--dataset).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", help="a trained run directory (profiles its checkpoint)")
    p.add_argument("--method", type=_csv(str), help="method(s) of an untrained architecture")
    p.add_argument("--dataset", choices=["cifar10", "imagenet"])
    p.add_argument("--depth", type=int, help="6n+2 for CIFAR (8, 14, 32, 110); 50/101/152")
    p.add_argument("--variant", help="backbone variant: cifar10 sact|he; imagenet sact|torchvision")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 32, 128], help="e.g. 1,32,128")
    p.add_argument("--modes", type=_csv(str), help="comma list; default: all the method's")
    p.add_argument(
        "--executions",
        type=_csv(str),
        default=["all"],
        help="all (default), auto (fastest exact one) or a list of masked,early_exit,gathered",
    )
    p.add_argument("--thresholds", type=_csv(float), default=[0.5], help="deterministic modes")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, help="seeds weights, random images and random modes")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (the median is reported)")
    p.add_argument("--image-size", type=int, help="square input size (default 32 / 224)")
    p.add_argument(
        "--images",
        choices=["test", "random"],
        help="--run: the run's test images (default) or random ones; architectures: random",
    )
    p.add_argument("--data-root", help="--run: dataset folder if it moved since training")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="architecture config keys, e.g. method.halting_bias_init=0",
    )
    p.add_argument("--out", help="write the rows as a JSON list to this file")
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.images is None:
        args.images = "test" if args.run is not None else "random"
    return cmd_profile(args)
