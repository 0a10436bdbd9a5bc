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
:func:`harness.costs.measure.add_cost_columns` gives every trained run's result rows the same
memory and time columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import store
from harness.config import RunConfig, build_run_config, validate_run_config
from harness.conformance import preflight
from harness.contract import AdaptiveModel, EvalSpec
from harness.costs.flops import CONVENTION, FlopAccountant
from harness.costs.measure import cost_row, measure_pass
from harness.costs.timing import set_threads
from harness.data import resolve_data_root
from harness.errors import CheckpointError, ConfigError, DataError
from harness.evaluate import plan_specs
from harness.models import build_model
from harness.runs import build_run_data, load_run, resolve_device

#: Image size of an untrained architecture, per dataset (override with ``--image-size``).
DEFAULT_IMAGE_SIZE = {"cifar10": (32, 32), "imagenet": (224, 224)}
#: How the planning inputs are named in profile's messages (its flags).
PROFILE_FIELDS = {"modes": "--modes", "execution": "--executions", "thresholds": "--thresholds"}


@dataclass
class ProfileOptions:
    """What ``pact-harness profile`` was asked to do (the CLI flags, as values).

    Either ``run`` (a trained run directory) or ``methods`` (untrained architectures built from
    ``model_flags``, dotted config key -> value, and ``overrides``, ``--set`` pairs).
    """

    run: str | None = None
    methods: list[str] = field(default_factory=list)
    model_flags: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    batch_sizes: Sequence[int] = (1, 32, 128)
    modes: Sequence[str] = ()
    executions: Sequence[str] = ("all",)
    thresholds: Sequence[float] = (0.5,)
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    warmup: int = 2
    repeats: int = 5
    image_size: int | None = None
    images: str | None = None  # test | random (default: test for a run, random otherwise)
    data_root: str | None = None
    out: str | None = None


def parse_batch_sizes(values: Sequence[int]) -> tuple[int, ...]:
    """Batch sizes must be integers >= 1 (at least one)."""
    if not values:
        raise ConfigError("--batch-sizes: give at least one batch size, e.g. 1,32,128")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--batch-sizes: batch size {value!r} must be an integer >= 1")
    return tuple(values)


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


def run_target(options: ProfileOptions, device: torch.device):
    """Model, describe-dict, image source and image size of ``options.run``."""
    cfg, checkpoint = load_run(options.run)
    num_classes = None
    if options.images == "test":
        if options.image_size:
            raise ConfigError("--image-size applies to --images random; test images keep theirs")
        try:
            root = resolve_data_root(options.data_root or cfg.data.root)
            data = build_run_data(
                cfg,
                root,
                train_subset=None,
                batch_size=1,
                eval_batch_size=max(options.batch_sizes),
                augment=False,
                download=False,
                num_workers=0,
            )
        except DataError as err:
            raise DataError(f"{err} (or profile with --images random)") from None
        num_classes, size = data.num_classes, tuple(data.image_size)
        images = loader_images(data.test_loader, device)
    else:
        size = _image_size(options.image_size, cfg.model.dataset)
        images = random_images(size, device, options.seed, cfg.channels_last)
    model = build_model(cfg, num_classes=num_classes)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"--run {options.run}: checkpoint does not fit the configured model "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    describe = _describe(cfg, size, device, images=options.images, run=str(options.run))
    describe["epoch"] = checkpoint.get("epoch")
    return model, describe, images, size


def _image_size(image_size: int | None, dataset: str) -> tuple[int, int]:
    if image_size:
        if image_size < 1:
            raise ConfigError(f"--image-size {image_size} must be >= 1")
        return (image_size, image_size)
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


def architecture_targets(options: ProfileOptions, device: torch.device):
    """(model, describe, images, size) for each method of ``options.methods``, one at a time."""
    for name in options.methods:
        flags = {**options.model_flags, "method.name": name}
        cfg = build_run_config(flags, overrides=options.overrides)
        validate_run_config(cfg)
        torch.manual_seed(options.seed)
        model = build_model(cfg)
        model.to(device)
        size = _image_size(options.image_size, cfg.model.dataset)
        images = random_images(size, device, options.seed)
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


def run_profile(options: ProfileOptions) -> list[dict[str, Any]]:
    """Profile a run or architectures and optionally write the JSON rows; returns the rows
    (:func:`format_table` renders them; ``pact-harness profile`` prints that).

    Every input (flags, output path, models, plans) is checked before the first measurement.
    """
    has_architecture = options.methods or options.model_flags or options.overrides
    if options.run is not None and has_architecture:
        raise ConfigError("give either --run RUN_DIR or --method/--depth/--dataset/--set, not both")
    if options.run is None and not options.methods:
        raise ConfigError("give --run RUN_DIR (a trained run) or --method M (an architecture)")
    if options.images is None:
        options.images = "test" if options.run is not None else "random"
    batch_sizes = parse_batch_sizes(options.batch_sizes)
    if options.warmup < 0 or options.repeats < 1:
        raise ConfigError("--warmup must be >= 0 and --repeats >= 1")
    if options.out is not None:
        store.check_writable_file(options.out, "--out")
    device = resolve_device(options.device)
    set_threads(options.threads)
    if options.run is not None:
        targets = [run_target(options, device)]
    else:
        if options.images == "test":
            raise ConfigError("--images test needs --run (an architecture has no data)")
        targets = list(architecture_targets(options, device))
    plans = [
        plan_specs(t[0], options.modes, options.executions, options.thresholds, PROFILE_FIELDS)
        for t in targets
    ]
    for (model, describe, images, _), specs in zip(targets, plans, strict=True):
        preflight(model, images(2), specs, describe["method"], options.seed)
    rows: list[dict[str, Any]] = []
    for (model, describe, images, size), specs in zip(targets, plans, strict=True):
        rows += profile_model(
            model,
            describe,
            images,
            size,
            batch_sizes,
            specs,
            seed=options.seed,
            warmup=options.warmup,
            repeats=options.repeats,
        )
    if options.out:
        # Strict JSON: a non-finite value becomes null, listed in its row's non_finite_keys.
        strict = [json.loads(store.json_text(row)) for row in rows]
        store.atomic_write_text(options.out, store.json_text(strict, indent=2) + "\n")
    return rows
