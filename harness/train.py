"""Training runs: prepare (validate everything), train epoch by epoch with checkpoints, evaluate.

The entry point is :func:`run_trial`; the CLI and the Ray grid both call it. All validation
happens in :func:`prepare_run` before anything is written, so bad input never leaves a
half-written run directory. A run directory that already holds a checkpoint of the same
configuration is resumed from its last finished epoch; on CPU with a fixed seed the resumed run
ends bitwise equal to an uninterrupted one (the data order depends only on seed and epoch, and the
checkpoint carries the model, optimizer, scheduler and RNG states).

A run holds its directory's lock (:func:`harness.store.folder_lock`) from the checks of the
directory to the last write, so a second process on the same directory is refused. A fresh start
empties ``metrics.jsonl`` (lines of a start killed before its first checkpoint go); a resumed one
drops the lines after its checkpoint and a torn last line. A non-finite loss stops training with
:class:`~harness.errors.DivergenceError` and leaves ``failed.json``; a checkpoint that cannot be
written (a full disk) is a :class:`~harness.errors.StorageError` that names the intact one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from harness import results, store
from harness.config import (
    RunConfig,
    config_identity,
    to_dict,
    validate_run_config,
)
from harness.conformance import preflight, verify_flops
from harness.contract import AdaptiveModel, MethodSpec
from harness.costs import evaluating
from harness.costs.flops import FlopAccountant
from harness.costs.measure import add_cost_columns
from harness.data import DataBundle, resolve_data_root
from harness.errors import CheckpointError, ConfigError, DivergenceError, StorageError
from harness.evaluate import evaluate, evaluate_modes, plan_evaluations, write_correct
from harness.models import backbone_identity, build_model
from harness.progress import progress_bar, want_progress
from harness.registry import method_origin
from harness.rundir import (
    Restart,
    check_checkpoint_fits,
    check_run_dir,
    clear_for_restart,
    plan_restart,
    trim_metrics,
)
from harness.runs import (
    build_run_data,
    init_from_source,
    init_source_fingerprint,
    read_run_config,
    resolve_device,
    resolve_method,
    trial_columns,
)
from harness.speed import Speed, compiled, resolve_speed
from harness.stats import per_image_mean

log = logging.getLogger(__name__)

#: Fault-injection tests set this environment variable to an epoch number: the run then raises
#: :class:`InjectedCrash` right after checkpointing that epoch (once: a resumed run has passed
#: it). It is not part of the run configuration, so no config file or result records it.
CRASH_ENV = "PACT_HARNESS_CRASH_AT_EPOCH"


class InjectedCrash(RuntimeError):
    """Raised when ``$PACT_HARNESS_CRASH_AT_EPOCH`` asks for a crash (fault-injection tests)."""


@dataclass
class PreparedRun:
    """A validated run: resolved config, method, model and data, nothing written yet."""

    cfg: RunConfig
    spec: MethodSpec
    method_config: Any
    model: AdaptiveModel
    data: DataBundle
    device: torch.device
    speed: Speed = Speed()  # the fast path, resolved for the device (``speed.*``)
    forward: Callable[[torch.Tensor], Any] | None = None  # runs the model (compiled or not)
    #: Two test images on the device: the model's outputs on them must stay finite (checked
    #: at the end of every epoch, before its checkpoint is written).
    probe: torch.Tensor | None = None


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """Validate the whole run (config, method, backbone, data) before anything is written."""
    validate_run_config(cfg)
    spec, method_config, cfg = resolve_method(cfg)
    # Build the model once on the default class count to reject bad depths before data loads.
    build_model(cfg)
    device = resolve_device(cfg.device)
    root = resolve_data_root(cfg.data.root)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root.resolve())))
    speed = resolve_speed(cfg.speed, device)
    data = build_run_data(cfg, root, device=device if speed.device_data else None)
    found = data.fingerprint["fingerprint"] if data.fingerprint else None
    if cfg.data.fingerprint is not None and cfg.data.fingerprint != found:
        raise ConfigError(
            f"data.fingerprint={cfg.data.fingerprint} names other data than {root} holds "
            f"({found}); it is recorded at run start, not set: remove it from the config to "
            "train on this data"
        )
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fingerprint=found))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes=data.num_classes)
    specs = plan_evaluations(model, cfg.eval)  # unknown eval modes fail now, not after training
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    # The method's output against the contract, on two test images, and its FLOPs (the
    # accountant is built: every decision branch must run; each spec's claim is verified on a
    # few test images), before any epoch is spent.
    first = next(iter(data.test_loader), None)
    probe = None
    if first is not None:
        probe = first[0][:2].to(device)
        preflight(model, probe, specs, cfg.method, cfg.eval.seed)
        verify_flops(model, first[0].to(device), specs, cfg.method, cfg.eval.seed)
    forward = compiled(model, speed)
    return PreparedRun(cfg, spec, method_config, model, data, device, speed, forward, probe)


def run_summary(
    cfg: RunConfig,
    columns: dict[str, Any],
    rows: list[dict[str, Any]],
    train_seconds: float,
    num_train: int,
    num_test: int,
    num_val: int,
) -> dict[str, Any]:
    """``summary.json`` of a finished run from its results rows (the first row: the default
    mode on the test split; a validation row adds the validation accuracy)."""
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
        "num_train": num_train,
        "num_test": num_test,
        "flops_per_image_mean": main.get("flops_per_image_mean"),
    }
    val_main = next((r for r in rows if r["split"] == "val"), None)
    if val_main is not None:
        summary.update(val_accuracy=val_main["accuracy"], num_val=num_val)
    # Any model that reports executed units (ACT at depth 8 too: one unit, no branches).
    if not math.isnan(main["units_executed_mean"]):
        summary["units_executed_mean"] = main["units_executed_mean"]
        summary["units_executed_per_block"] = json.loads(main["units_per_block"])
    return summary


def _backbone_text(provenance: dict[str, Any]) -> str:
    """``name@hash`` of the provenance's backbone identity ("" for runs made before it)."""
    backbone = provenance.get("backbone") or {}
    if not backbone.get("architecture_hash"):
        return ""
    return f"{backbone.get('name', '?')}@{backbone['architecture_hash']}"


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
    label_smoothing: float = 0.0,
    epoch: int = 1,
    speed: Speed | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> dict[str, float]:
    """One pass over the training loader; returns the mean of every logged loss term.

    A non-finite loss stops training with :class:`DivergenceError` naming ``epoch`` (1-based)
    and the step: at once, before the step updates the weights, when ``speed`` syncs every step
    (the default, and ``speed.host_sync=auto`` on CPU); at the end of the epoch, naming the first
    bad step, when it syncs once per epoch (``auto`` on CUDA). The metrics are accumulated on the
    device in float64 either way (the same numbers as reading each step on the host).
    ``speed.amp`` runs the forward pass and the loss under bf16 autocast; ``forward`` is the
    callable that runs the model (a ``torch.compile`` of it; default the model).
    """
    speed = Speed() if speed is None else speed
    forward = model if forward is None else forward
    model.train()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    correct = torch.zeros((), dtype=torch.long, device=device)
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: every loss finite
    lr = optimizer.param_groups[0]["lr"]
    bar = progress_bar(loader, progress, desc)
    for step, (images, labels) in enumerate(bar, 1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with speed.autocast(device):
            output = forward(images)
            terms = model.loss(output, labels, label_smoothing=label_smoothing)
        if speed.sync_every_step:
            loss = terms["loss"].item()
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"training diverged: the loss is {loss} at epoch {epoch}, step {step} "
                    f"(learning rate {optimizer.param_groups[0]['lr']:g}); lower the learning "
                    f"rate (--lr) or check the data; in this folder: --restart-from-epoch "
                    f"{epoch - 1} --lr LOWER",
                    epoch,
                    step,
                )
        else:
            bad = ~torch.isfinite(terms["loss"].detach()) & (first_bad == 0)
            first_bad = torch.where(bad, step, first_bad)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used, before the schedule moves
        scheduler.step()
        batch = labels.shape[0]
        count += batch
        correct += (output.logits.detach().argmax(1) == labels).sum()
        for key, value in terms.items():
            term = value.detach().to(torch.float64) * batch
            sums[key] = sums[key] + term if key in sums else term
        if output.units_executed:
            units = sum(per_image_mean(u).sum() for u in output.units_executed)
            sums["units_executed"] = (
                sums["units_executed"] + units if "units_executed" in sums else units
            )
    # The one host sync of the epoch.
    values = torch.stack([first_bad.double(), correct.double(), *sums.values()]).tolist()
    bad_step, correct_total, totals = int(values[0]), values[1], values[2:]
    if bad_step:
        raise DivergenceError(
            f"training diverged: the loss is not finite at epoch {epoch}, step {bad_step} "
            "(found at the end of the epoch: speed.host_sync=epoch); lower the learning rate "
            "(--lr) or check the data; the checkpoint of the previous epoch is intact: "
            f"--restart-from-epoch {epoch - 1} --lr LOWER",
            epoch,
            bad_step,
        )
    metrics = {f"train_{k}": v / max(count, 1) for k, v in zip(sums, totals, strict=True)}
    metrics["train_accuracy"] = correct_total / max(count, 1)
    metrics["lr"] = lr  # of the epoch's last step
    return metrics


def validate(prepared: PreparedRun) -> dict[str, float]:
    """Accuracy and loss on the validation split (``data.val_subset``) in the default mode;
    empty without one. Random modes draw from their own seeded generator, so validating never
    changes the training randomness."""
    loader = prepared.data.val_loader
    if loader is None:
        return {}
    spec = plan_evaluations(prepared.model, prepared.cfg.eval)[0]
    if spec.mode in prepared.model.random_modes:
        generator = torch.Generator(device=prepared.device).manual_seed(prepared.cfg.eval.seed)
        spec = dataclasses.replace(spec, generator=generator)
    stats = evaluate(prepared.model, loader, spec, prepared.device)
    return {
        "val_accuracy": stats.correct.double().mean().item(),
        "val_loss": stats.loss.double().mean().item(),
    }


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


EpochCallback = Callable[[int, dict[str, Any], Path], None]


@dataclass
class TrainingState:
    """Where the epoch loop starts: optimizer and schedule (restored or fresh), epochs done."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_epoch: int = 0
    train_seconds: float = 0.0


def evaluation_code_version(model: nn.Module, provenance: dict[str, Any]) -> str:
    """The code evaluating ``model`` now, in :func:`harness.store.code_version`'s words: the
    source fingerprint of this process's harness and method packages, with the libraries and
    method package of the run's provenance (the same string as ``code_version`` when the run is
    evaluated by the code that trained it)."""
    current = {k: v for k, v in provenance.items() if k not in ("git_commit", "git_dirty")}
    current["code_fingerprint"] = store.code_fingerprint(source_folders(model))
    current["library_versions"] = {
        **(provenance.get("library_versions") or {}),
        "torch": store.library_version("torch"),
    }
    return store.code_version(current)


def source_folders(model: nn.Module) -> list[Path]:
    """The folders of the source that trains and evaluates ``model``: the harness and every
    top-level package (other than torch's) that a class of the model or of its submodules
    comes from (a built-in method's package and the backbones, or a plug-in's own)."""
    tops = {"harness"}
    for module in model.modules():
        for cls in type(module).__mro__:
            tops.add(cls.__module__.split(".")[0])
    folders = []
    for top in sorted(tops - {"torch", "builtins", "typing", "abc"}):
        package = sys.modules.get(top)
        path = getattr(package, "__file__", None)
        if path and Path(path).name == "__init__.py":
            folders.append(Path(path).parent)
    return folders


def restore_or_start(
    prepared: PreparedRun,
    run_dir: Path,
    resume: dict[str, Any] | None,
    init_from: str | Path | None,
    argv: list[str] | None,
) -> TrainingState:
    """Resume from ``resume`` (a checkpoint), or start fresh: write the config and provenance,
    optionally copy backbone weights from ``init_from``, seed the RNG."""
    cfg, model, device = prepared.cfg, prepared.model, prepared.device
    fresh_keys: list[str] = []
    if init_from is not None and resume is None:
        fresh_keys = init_from_source(model, init_from, cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(prepared.data.train_loader))
    (run_dir / store.FAILED_FILE).unlink(missing_ok=True)  # this attempt may succeed
    if resume is not None:
        check_checkpoint_fits(resume, model, optimizer, run_dir / store.CHECKPOINT_FILE)
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        _set_rng_state(resume["rng"], device)
        trim_metrics(run_dir / store.METRICS_FILE, resume["epoch"])
        # config.yaml says what the checkpoint continues: a restart that failed before its
        # first checkpoint, or a run from before data fingerprints, left it saying otherwise.
        if config_identity(read_run_config(run_dir)) != config_identity(cfg):
            store.atomic_write_text(run_dir / store.CONFIG_FILE, yaml.safe_dump(to_dict(cfg)))
        return TrainingState(optimizer, scheduler, resume["epoch"], resume["train_seconds"])
    run_dir.mkdir(parents=True, exist_ok=True)
    # A fresh start: lines of an earlier start killed before its first checkpoint go.
    store.atomic_write_text(run_dir / store.METRICS_FILE, "")
    store.atomic_write_text(run_dir / store.CONFIG_FILE, yaml.safe_dump(to_dict(cfg)))
    provenance = store.collect_provenance(cfg.seed, device, argv)
    provenance["method_package"] = method_origin(cfg.method)
    provenance["code_fingerprint"] = store.code_fingerprint(source_folders(model))
    provenance["init_from"] = str(init_from) if init_from else None
    provenance["fresh_parameters"] = fresh_keys
    provenance["data_fingerprint"] = prepared.data.fingerprint
    provenance["backbone"] = backbone_identity(model)  # who built it, and its architecture
    provenance["init_from_data_fingerprint"] = init_source_fingerprint(init_from)
    store.atomic_write_json(run_dir / store.PROVENANCE_FILE, provenance)
    torch.manual_seed(cfg.seed)
    return TrainingState(optimizer, scheduler)


def _check_finite_model(prepared: PreparedRun, epoch: int) -> None:
    """Before an epoch's checkpoint: weights (or buffers) holding NaN or infinite values, or
    outputs on two test images that do, are a divergence (the loss can stay finite through the
    step that broke them). The epoch's checkpoint is then not written: the run keeps the last
    sound one, and the error says how to restart from it at a lower rate."""
    model = prepared.model
    tensors = [(k, t) for k, t in model.state_dict().items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist() if tensors else []
    bad = [k for (k, _), ok in zip(tensors, finite, strict=True) if not ok]
    if bad:
        broken = (
            f"{len(bad)} of {len(tensors)} weight tensors hold NaN or infinite values "
            f"({bad[0]}, ...)"
        )
    elif prepared.probe is not None:
        images = prepared.probe
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.no_grad(), evaluating(model), torch.random.fork_rng(devices=devices):
            logits = model(images).logits
        if bool(torch.isfinite(logits).all()):
            return
        broken = (
            "the model's outputs on two test images are NaN or infinite (its weights grew "
            "too large)"
        )
    else:
        return
    kept = f"epoch {epoch - 1}'s is kept" if epoch > 1 else "none was written before"
    raise DivergenceError(
        f"training diverged: after epoch {epoch} {broken} although the loss stayed finite; "
        f"lower the learning rate (--lr); the epoch's checkpoint was not written ({kept}): "
        f"rerun with --restart-from-epoch {epoch - 1} --lr LOWER",
        epoch,
        0,
    )


def _crash_epoch() -> int | None:
    value = os.environ.get(CRASH_ENV)
    return int(value) if value else None


def train_epochs(
    prepared: PreparedRun,
    run_dir: Path,
    state: TrainingState,
    on_epoch_end: EpochCallback | None = None,
) -> float:
    """The epoch loop from ``state.start_epoch``: train, log, checkpoint; returns the seconds
    spent training (resumed runs included)."""
    cfg, model, device = prepared.cfg, prepared.model, prepared.device
    progress = want_progress(cfg.progress)
    crash_at = _crash_epoch()
    train_seconds = state.train_seconds
    for epoch in range(state.start_epoch, cfg.optim.epochs):
        epoch_logs = model.on_epoch_start(epoch, cfg.optim.epochs)
        prepared.data.train_loader.set_epoch(epoch)
        tic = time.perf_counter()
        metrics = train_one_epoch(
            model,
            prepared.data.train_loader,
            state.optimizer,
            state.scheduler,
            device,
            progress,
            desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
            label_smoothing=cfg.optim.label_smoothing,
            epoch=epoch + 1,
            speed=prepared.speed,
            forward=prepared.forward,
        )
        train_seconds += time.perf_counter() - tic
        _check_finite_model(prepared, epoch + 1)
        metrics.update(epoch_logs)
        metrics.update(validate(prepared))
        metrics.update(epoch=epoch + 1, train_seconds=train_seconds)
        # Metrics first, then the checkpoint: a crash in between leaves a line for an epoch the
        # checkpoint lacks, which the resumed run drops (see ``trim_metrics``) and redoes.
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": _rng_state(device),
            "epoch": epoch + 1,
            "train_seconds": train_seconds,
            "config_identity": config_identity(cfg),
        }
        try:
            store.append_jsonl(run_dir / store.METRICS_FILE, metrics)
            store.atomic_torch_save(run_dir / store.CHECKPOINT_FILE, checkpoint)
        except OSError as err:
            kept = (
                f"the last checkpoint (epoch {epoch}) is intact: free space and rerun the "
                "same command to resume from it"
                if epoch
                else "no checkpoint was written yet: free space and rerun the same command"
            )
            raise StorageError(
                f"cannot write the checkpoint of epoch {epoch + 1} to {run_dir}: "
                f"{err.strerror or err}; {kept}"
            ) from None
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items()})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics, run_dir)
        if crash_at is not None and epoch + 1 == crash_at:
            raise InjectedCrash(f"{CRASH_ENV}={crash_at}: injected crash after epoch {crash_at}")
    return train_seconds


def _in_use(run_dir: Path) -> Callable[[str], str]:
    def message(holder: str) -> str:
        return (
            f"--out {run_dir} is in use by another run ({holder}); wait for it to end or "
            "choose another --out"
        )

    return message


def run_trial(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    init_from: str | Path | None = None,
    argv: list[str] | None = None,
    on_epoch_end: EpochCallback | None = None,
    evaluation_hook: Callable[[PreparedRun, list[dict]], None] | None = None,
    restart_from: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; returns ``summary.json``'s content.

    ``restart_from`` (``--restart-from-epoch``): continue the run in ``run_dir`` from that
    epoch (0: from scratch, else its checkpoint's epoch) with another learning rate
    (:data:`RESTARTABLE`); ``provenance.json`` lists every restart under ``restarts``."""
    run_dir = Path(run_dir).resolve()
    store.check_writable_dir(run_dir, "--out")
    prepared = prepare_run(cfg)
    with store.folder_lock(run_dir, _in_use(run_dir)):
        try:
            return _run_locked(
                prepared, run_dir, init_from, argv, on_epoch_end, evaluation_hook, restart_from
            )
        except OSError as err:  # a write of the harness failed (a full disk, a size limit)
            raise StorageError(
                f"cannot write to {run_dir}: {err.strerror or err}"
                + (f" ({err.filename})" if err.filename else "")
                + "; every file is written atomically and finished epochs are kept: free "
                "space and rerun the same command"
            ) from None


def _run_locked(
    prepared: PreparedRun,
    run_dir: Path,
    init_from: str | Path | None,
    argv: list[str] | None,
    on_epoch_end: EpochCallback | None,
    evaluation_hook: Callable[[PreparedRun, list[dict]], None] | None,
    restart_from: int | None,
) -> dict[str, Any]:
    """:func:`run_trial` while it holds the run directory's lock."""
    restart = None
    if restart_from is not None:
        restart = plan_restart(run_dir, prepared.cfg, restart_from)
        resume = restart.checkpoint
        earlier = clear_for_restart(run_dir, restart)
    else:
        resume = check_run_dir(run_dir, prepared.cfg)
    if resume is not None and resume["epoch"] >= prepared.cfg.optim.epochs:
        return _finished_run(prepared, run_dir, resume, evaluation_hook)
    state = restore_or_start(prepared, run_dir, resume, init_from, argv)
    if restart is not None:
        _record_restart(prepared, run_dir, state, restart, earlier, argv)
    try:
        train_seconds = train_epochs(prepared, run_dir, state, on_epoch_end)
    except DivergenceError as err:
        failure = {"error": str(err), "epoch": err.epoch, "step": err.step}
        store.atomic_write_json(run_dir / store.FAILED_FILE, failure)
        raise
    return finish_run(prepared, run_dir, train_seconds, evaluation_hook)


def set_learning_rate(state: TrainingState, lr: float) -> None:
    """Make a restored optimizer and schedule run at base rate ``lr`` from where they are (the
    schedule's factor at its current step kept)."""
    scheduler, groups = state.scheduler, state.optimizer.param_groups
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    scheduler.base_lrs = [lr] * len(groups)
    scheduler._last_lr = [group["lr"] for group in groups]


def _record_restart(
    prepared: PreparedRun,
    run_dir: Path,
    state: TrainingState,
    restart: Restart,
    earlier: list[dict[str, Any]],
    argv: list[str] | None,
) -> None:
    """Apply a restart from a checkpoint (the new rate, the new ``config.yaml``) and add it to
    ``provenance.json``'s ``restarts``."""
    if restart.epoch:
        set_learning_rate(state, prepared.cfg.optim.lr)
        store.atomic_write_text(run_dir / store.CONFIG_FILE, yaml.safe_dump(to_dict(prepared.cfg)))
    provenance = store.read_json(run_dir / store.PROVENANCE_FILE)
    record = {
        "from_epoch": restart.epoch,
        "changes": restart.changes,
        "command_line": list(argv) if argv is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    provenance["restarts"] = [*earlier, record]
    store.atomic_write_json(run_dir / store.PROVENANCE_FILE, provenance)


def _finished_run(
    prepared: PreparedRun,
    run_dir: Path,
    checkpoint: dict[str, Any],
    evaluation_hook: Callable[[PreparedRun, list[dict]], None] | None,
) -> dict[str, Any]:
    """A run trained to the end: its summary, or (if not yet evaluated, or evaluated with other
    eval settings) a fresh evaluation of its checkpoint."""
    summary_path = run_dir / store.SUMMARY_FILE
    evaluated = summary_path.exists() and (run_dir / store.PER_IMAGE_FILE).exists()
    if evaluated and read_run_config(run_dir).eval == prepared.cfg.eval:
        try:
            summary = store.read_json(summary_path)
            log.info("run %s is already finished", run_dir)
            return summary
        except CheckpointError as err:  # re-evaluate the checkpoint: nothing is lost
            log.warning("%s; evaluating the checkpoint again to rewrite it", err)
    check_checkpoint_fits(checkpoint, prepared.model, None, run_dir / store.CHECKPOINT_FILE)
    prepared.model.load_state_dict(checkpoint["model"])
    store.atomic_write_text(run_dir / store.CONFIG_FILE, yaml.safe_dump(to_dict(prepared.cfg)))
    return finish_run(prepared, run_dir, checkpoint["train_seconds"], evaluation_hook)


def finish_run(
    prepared: PreparedRun,
    run_dir: Path,
    train_seconds: float,
    evaluation_hook: Callable[[PreparedRun, list[dict]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every mode, write ``results.csv`` and ``summary.json``."""
    cfg, model = prepared.cfg, prepared.model
    flop_counter = FlopAccountant(model, image_size=prepared.data.image_size)
    correct: dict[str, Any] = {}
    verified: dict[tuple[str, str, float], str] = {}  # on the test batch, for both splits
    rows = evaluate_modes(
        model,
        prepared.data.test_loader,
        cfg.eval,
        prepared.device,
        flop_counter,
        want_progress(cfg.progress),
        per_image_path=run_dir / store.PER_IMAGE_FILE,
        correct=correct,
        verified=verified,
    )
    # Time per row on the first test batch; peak memory over the first eval.memory_batches
    # batches (0: all); add_cost_columns moves each to the device only while it measures it.
    batches = iter(prepared.data.test_loader)
    first = next(batches, None)
    images = first[0].to(prepared.device) if first is not None else None
    limit = cfg.eval.memory_batches - 1 if cfg.eval.memory_batches else None
    more = (b[0] for b in itertools.islice(batches, limit))
    add_cost_columns(model, images, rows, cfg.eval.seed, memory_batches=more)
    if prepared.data.val_loader is not None:
        val_rows = evaluate_modes(
            model,
            prepared.data.val_loader,
            cfg.eval,
            prepared.device,
            flop_counter,
            want_progress(cfg.progress),
            split="val",
            correct=correct,
            verified=verified,
        )
        cost_keys = results.columns_of("costs")
        for val_row, test_row in zip(val_rows, rows, strict=True):  # the same plan, in order
            val_row.update({k: test_row[k] for k in cost_keys if k in test_row})
        rows = rows + val_rows
    columns = trial_columns(cfg, prepared.spec, run_dir.name)
    provenance = store.read_json(run_dir / store.PROVENANCE_FILE)
    columns.update(
        results.fields(
            "train",
            {
                "epochs": cfg.optim.epochs,
                "num_train": prepared.data.num_train,
                "num_val": prepared.data.num_val,
                "code_version": store.code_version(provenance),
                "eval_code_version": evaluation_code_version(model, provenance),
                "backbone": _backbone_text(provenance),
            },
        )
    )
    rows = [{**columns, **row} for row in rows]
    if evaluation_hook is not None:
        evaluation_hook(prepared, rows)
    write_correct(correct, run_dir / store.CORRECT_FILE)
    store.write_results_csv(run_dir / store.RESULTS_FILE, rows)
    data = prepared.data
    summary = run_summary(
        cfg, columns, rows, train_seconds, data.num_train, data.num_test, data.num_val
    )
    store.atomic_write_json(run_dir / store.SUMMARY_FILE, summary)
    return summary
