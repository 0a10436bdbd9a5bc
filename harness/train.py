"""Training runs: prepare (validate everything), train epoch by epoch with checkpoints, evaluate.

The entry point is :func:`run_trial`; the CLI and the Ray grid both call it. All validation
happens in :func:`prepare_run` before anything is written, so bad input never leaves a
half-written run directory. A run directory that already holds a checkpoint of the same
configuration is resumed from its last finished epoch; on CPU with a fixed seed the resumed run
ends bitwise equal to an uninterrupted one (the data order depends only on seed and epoch, and the
checkpoint carries the model, optimizer, scheduler and RNG states).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from harness import store
from harness.config import RunConfig, from_dict, to_dict, validate_run_config
from harness.contract import AdaptiveModel, MethodSpec
from harness.data import DataBundle, build_data, resolve_data_root
from harness.errors import CheckpointError, ConfigError
from harness.evaluate import evaluate_modes, plan_evaluations
from harness.progress import progress_bar, want_progress
from harness.registry import get_method

log = logging.getLogger(__name__)

#: Config fields that do not change what is trained, so a run may resume with other values.
RUNTIME_FIELDS = {
    ("progress",),
    ("test_crash_at_epoch",),
    ("device",),
    ("data", "root"),
    ("data", "num_workers"),
    ("data", "download"),
    ("eval",),
}


class InjectedCrash(RuntimeError):
    """Raised by the test-only ``test_crash_at_epoch`` knob to simulate a failing trial."""


@dataclass
class PreparedRun:
    """A validated run: resolved config, method, model and data, nothing written yet."""

    cfg: RunConfig
    spec: MethodSpec
    method_config: Any
    model: AdaptiveModel
    data: DataBundle
    device: torch.device


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; allowed: auto, cpu")
    return torch.device(name)


def resolve_method(cfg: RunConfig) -> tuple[MethodSpec, Any, RunConfig]:
    """Look up the method and fill its config defaults into ``cfg.method_config``."""
    spec = get_method(cfg.method)
    method_config = from_dict(spec.config_cls, cfg.method_config, "method")
    check = getattr(method_config, "validate", None)
    if callable(check):
        check()
    cfg = dataclasses.replace(cfg, method_config=to_dict(method_config))
    return spec, method_config, cfg


def build_model(cfg: RunConfig, num_classes: int | None = None) -> tuple[MethodSpec, Any, Any]:
    """Resolve the method and build its model for ``cfg.model`` (``num_classes`` from data)."""
    spec, method_config, cfg = resolve_method(cfg)
    model_spec = cfg.model
    if num_classes is not None and model_spec.num_classes is None:
        model_spec = dataclasses.replace(model_spec, num_classes=num_classes)
    model = spec.build(model_spec, method_config)
    return spec, method_config, model


def build_run_data(cfg: RunConfig, root: Path, **overrides: Any) -> DataBundle:
    """The run's data as its config describes it; ``overrides`` replace ``build_data`` arguments."""
    arguments: dict[str, Any] = {
        "fmt": cfg.data.format,
        "train_subset": cfg.data.train_subset,
        "test_subset": cfg.data.test_subset,
        "subset_seed": cfg.data.subset_seed,
        "batch_size": cfg.optim.batch_size,
        "eval_batch_size": cfg.eval.batch_size,
        "seed": cfg.seed,
        "augment": cfg.data.augment,
        "normalization": cfg.data.normalization,
        "crop_padding": cfg.data.crop_padding,
        "download": cfg.data.download,
        "verify_checksums": cfg.data.verify_checksums,
        "num_workers": cfg.data.num_workers,
        "channels_last": cfg.channels_last,
    }
    arguments.update(overrides)
    return build_data(cfg.model.dataset, root, **arguments)


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """Validate the whole run (config, method, backbone, data) before anything is written."""
    validate_run_config(cfg)
    spec, method_config, cfg = resolve_method(cfg)
    # Build the model once on the default class count to reject bad depths before data loads.
    spec.build(cfg.model, method_config)
    device = resolve_device(cfg.device)
    root = resolve_data_root(cfg.data.root)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root.resolve())))
    data = build_run_data(cfg, root)
    torch.manual_seed(cfg.seed)
    _, _, model = build_model(cfg, num_classes=data.num_classes)
    plan_evaluations(model, cfg.eval)  # unknown eval modes fail now, not after training
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return PreparedRun(cfg, spec, method_config, model, data, device)


def config_identity(cfg: RunConfig) -> dict[str, Any]:
    """The part of the config that determines the trained weights (for resume checks)."""
    tree = to_dict(cfg)
    for path in RUNTIME_FIELDS:
        node = tree
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return tree


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} (checkpoint) != {b!r} (now)"]


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD with momentum; L2 on conv/linear weights only, as the SACT code regularises."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov
    )


def make_scheduler(optimizer, cfg: RunConfig, steps_per_epoch: int):
    """Piecewise-constant LR: x ``lr_decay`` at each fraction in ``lr_drops`` of all steps."""
    total = cfg.optim.epochs * steps_per_epoch
    boundaries = [math.floor(frac * total) for frac in cfg.optim.lr_drops]
    decay = cfg.optim.lr_decay

    def factor(step: int) -> float:
        return decay ** sum(step >= b for b in boundaries)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(
    model: AdaptiveModel,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over the training loader; returns the mean of every logged loss term."""
    model.train()
    sums: dict[str, float] = {}
    count = correct = 0
    lr = optimizer.param_groups[0]["lr"]
    bar = progress_bar(loader, progress, desc)
    for images, labels in bar:
        images, labels = images.to(device), labels.to(device)
        output = model(images)
        terms = model.loss(output, labels)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used, before the schedule moves
        scheduler.step()
        batch = labels.shape[0]
        count += batch
        correct += (output.logits.argmax(1) == labels).sum().item()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value.item() * batch
        if output.units_executed:
            units = sum(
                u.double().flatten(1).mean(1).sum().item()
                if u.dim() > 1
                else u.double().sum().item()
                for u in output.units_executed
            )
            sums["units_executed"] = sums.get("units_executed", 0.0) + units
    metrics = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
    metrics["train_accuracy"] = correct / max(count, 1)
    metrics["lr"] = lr  # of the epoch's last step
    return metrics


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); CheckpointError if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}"
        ) from None


def check_run_dir(run_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """Return the checkpoint to resume from, or None for a fresh run; errors on a mismatch."""
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a directory")
    config_file = run_dir / store.CONFIG_FILE
    if not config_file.exists():
        leftovers = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]
        if leftovers:
            raise ConfigError(
                f"--out {run_dir} is not empty and holds no run ({', '.join(sorted(leftovers)[:3])}"
                "...); choose an empty or new directory"
            )
        return None
    ckpt_path = run_dir / store.CHECKPOINT_FILE
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if checkpoint is not None:
        reference = checkpoint["config_identity"]
        try:  # fill keys added to the config since the checkpoint with their defaults
            reference = config_identity(from_dict(RunConfig, reference))
        except ConfigError:
            pass  # a key that no longer exists: the diff below names it
    else:
        reference = config_identity(read_run_config(run_dir))
    differences = _diff(reference, config_identity(cfg))
    if differences:
        raise CheckpointError(
            f"run directory {run_dir} holds a run of another configuration ("
            + "; ".join(differences[:3])
            + "); use a different --out or the same settings"
        )
    return checkpoint


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved configuration stored in a run directory (CheckpointError if unreadable)."""
    path = run_dir / store.CONFIG_FILE
    try:
        return from_dict(RunConfig, yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ConfigError) as err:
        raise CheckpointError(f"cannot read the run configuration {path}: {err}") from None


def trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs after the checkpoint (an interrupted epoch is redone)."""
    records = store.read_jsonl(path)
    kept = [r for r in records if r.get("epoch", 0) <= epochs_done]
    if len(kept) != len(records):
        text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in kept)
        store.atomic_write_text(path, text)


def init_from_run(model: AdaptiveModel, source: Path, cfg: RunConfig) -> list[str]:
    """Copy weights from another run's checkpoint, leaving the halting branches fresh.

    The source must have the same backbone (dataset, depth, variant); returns the keys left fresh.
    """
    config_file = source / store.CONFIG_FILE
    ckpt_path = source / store.CHECKPOINT_FILE
    if not config_file.exists() or not ckpt_path.exists():
        raise CheckpointError(f"--init-from {source}: no run with a checkpoint there")
    other = read_run_config(source)
    for name in ("dataset", "depth", "variant"):
        mine, theirs = getattr(cfg.model, name), getattr(other.model, name)
        if mine != theirs:
            raise CheckpointError(
                f"--init-from {source}: its model.{name}={theirs!r} differs from this run's "
                f"{mine!r}; initialise from a run with the same backbone"
            )
    state = load_checkpoint(ckpt_path)["model"]
    skip = model.finetune_skip_prefixes()
    wanted = {
        k: v for k, v in state.items() if not k.startswith(skip) and k.startswith("backbone.")
    }
    missing, _ = model.load_state_dict(wanted, strict=False)
    # Only backbone keys must come from the source; the method's own parameters and buffers
    # (halting branches, PACT's temperature) are fresh by design.
    unexpected_fresh = [k for k in missing if k.startswith("backbone.") and not k.startswith(skip)]
    if unexpected_fresh:
        raise CheckpointError(
            f"--init-from {source}: backbone weights missing from its checkpoint: "
            + ", ".join(unexpected_fresh[:3])
        )
    return sorted(missing)


def trial_columns(cfg: RunConfig, spec: MethodSpec, trial_id: str) -> dict[str, Any]:
    """The per-trial columns of every result row."""
    field = spec.time_penalty_field
    return {
        "trial_id": trial_id,
        "method": cfg.method,
        "variant": cfg.model.variant,
        "dataset": cfg.model.dataset,
        "depth": cfg.model.depth,
        "time_penalty_name": field.rstrip("_") if field else "",
        "time_penalty": float(cfg.method_config[field.rstrip("_")]) if field else 0.0,
        "seed": cfg.seed,
        "eval_batch_size": cfg.eval.batch_size,
    }


EpochCallback = Callable[[int, dict[str, Any], Path], None]


def run_trial(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    init_from: str | Path | None = None,
    argv: list[str] | None = None,
    on_epoch_end: EpochCallback | None = None,
    evaluation_hook: Callable[[PreparedRun, list[dict]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns ``summary.json``'s content."""
    run_dir = Path(run_dir).resolve()
    prepared = prepare_run(cfg)
    cfg, model, device = prepared.cfg, prepared.model, prepared.device
    resume = check_run_dir(run_dir, cfg)
    summary_path = run_dir / store.SUMMARY_FILE
    if resume is not None and resume["epoch"] >= cfg.optim.epochs:
        evaluated = summary_path.exists() and (run_dir / store.PER_IMAGE_FILE).exists()
        if evaluated and read_run_config(run_dir).eval == cfg.eval:
            log.info("run %s is already finished", run_dir)
            return json.loads(summary_path.read_text())
        # Trained, but not evaluated (or evaluated with other eval settings): evaluate only.
        model.load_state_dict(resume["model"])
        store.atomic_write_text(run_dir / store.CONFIG_FILE, yaml.safe_dump(to_dict(cfg)))
        return finish_run(prepared, run_dir, resume["train_seconds"], evaluation_hook)
    fresh_keys: list[str] = []
    if init_from is not None and resume is None:
        fresh_keys = init_from_run(model, Path(init_from).resolve(), cfg)

    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(prepared.data.train_loader))
    start_epoch, train_seconds = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        _set_rng_state(resume["rng"], device)
        start_epoch, train_seconds = resume["epoch"], resume["train_seconds"]
        trim_metrics(run_dir / store.METRICS_FILE, start_epoch)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        store.atomic_write_text(run_dir / store.CONFIG_FILE, yaml.safe_dump(to_dict(cfg)))
        provenance = store.collect_provenance(cfg.seed, device, argv)
        provenance["init_from"] = str(init_from) if init_from else None
        provenance["fresh_parameters"] = fresh_keys
        store.atomic_write_json(run_dir / store.PROVENANCE_FILE, provenance)
        torch.manual_seed(cfg.seed)

    progress = want_progress(cfg.progress)
    for epoch in range(start_epoch, cfg.optim.epochs):
        epoch_logs = model.on_epoch_start(epoch, cfg.optim.epochs)
        prepared.data.train_loader.set_epoch(epoch)
        tic = time.perf_counter()
        metrics = train_one_epoch(
            model,
            prepared.data.train_loader,
            optimizer,
            scheduler,
            device,
            progress,
            desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
        )
        train_seconds += time.perf_counter() - tic
        metrics.update(epoch_logs)
        metrics.update(epoch=epoch + 1, train_seconds=train_seconds)
        # Metrics first, then the checkpoint: a crash in between leaves a line for an epoch the
        # checkpoint lacks, which the resumed run drops (see ``trim_metrics``) and redoes.
        store.append_jsonl(run_dir / store.METRICS_FILE, metrics)
        store.atomic_torch_save(
            run_dir / store.CHECKPOINT_FILE,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(device),
                "epoch": epoch + 1,
                "train_seconds": train_seconds,
                "config_identity": config_identity(cfg),
            },
        )
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items()})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics, run_dir)
        if cfg.test_crash_at_epoch is not None and epoch + 1 == cfg.test_crash_at_epoch:
            raise InjectedCrash(f"test_crash_at_epoch={cfg.test_crash_at_epoch}: injected crash")

    return finish_run(prepared, run_dir, train_seconds, evaluation_hook)


def finish_run(
    prepared: PreparedRun,
    run_dir: Path,
    train_seconds: float,
    evaluation_hook: Callable[[PreparedRun, list[dict]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every mode, write ``results.csv`` and ``summary.json``."""
    from harness.costs.flops import FlopAccountant
    from harness.profile import add_cost_columns

    cfg, model = prepared.cfg, prepared.model
    flop_counter = FlopAccountant(model, image_size=prepared.data.image_size)
    rows = evaluate_modes(
        model,
        prepared.data.test_loader,
        cfg.eval,
        prepared.device,
        flop_counter,
        want_progress(cfg.progress),
        per_image_path=run_dir / store.PER_IMAGE_FILE,
    )
    columns = trial_columns(cfg, prepared.spec, run_dir.name)
    columns.update(epochs=cfg.optim.epochs, num_train=prepared.data.num_train)
    rows = [{**columns, **row} for row in rows]
    add_cost_columns(prepared, rows)  # peak memory and time per row, at the eval batch size
    if evaluation_hook is not None:
        evaluation_hook(prepared, rows)
    store.write_results_csv(run_dir / store.RESULTS_FILE, rows)
    main = rows[0]
    summary = {
        "method": cfg.method,
        "depth": cfg.model.depth,
        "variant": cfg.model.variant,
        "dataset": cfg.model.dataset,
        "seed": cfg.seed,
        "time_penalty_name": columns["time_penalty_name"],
        "time_penalty": columns["time_penalty"],
        "eval_mode": main["eval_mode"],
        "test_accuracy": main["accuracy"],
        "test_loss": main["loss"],
        "train_seconds": train_seconds,
        "epochs": cfg.optim.epochs,
        "num_train": prepared.data.num_train,
        "num_test": prepared.data.num_test,
        "flops_per_image_mean": main.get("flops_per_image_mean"),
    }
    # Any model that reports executed units (ACT at depth 8 too: one unit, no branches).
    if not math.isnan(main["units_executed_mean"]):
        summary["units_executed_mean"] = main["units_executed_mean"]
        summary["units_executed_per_block"] = json.loads(main["units_per_block"])
    store.atomic_write_json(run_dir / store.SUMMARY_FILE, summary)
    return summary
