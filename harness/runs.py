"""Core services around one run: resolve its method, build its data, read what a run directory
holds, and the per-trial columns of its result rows (its model: :func:`harness.models.build_model`).

Every job (train, profile, study, report) uses these; none of them is a job itself. The run
lifecycle (prepare, train, resume, evaluate) is :mod:`harness.train`.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torchvision

from harness import results, store
from harness.config import (
    RunConfig,
    experiment_id,
    experiment_identity,
    from_dict,
    load_yaml,
    to_dict,
)
from harness.contract import AdaptiveModel, MethodConfig, MethodSpec
from harness.data import DataBundle, build_data
from harness.errors import CheckpointError, ConfigError
from harness.models import build_method_config
from harness.registry import get_method, time_penalty_key


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; allowed: auto, cpu")
    return torch.device(name)


def resolve_method(cfg: RunConfig) -> tuple[MethodSpec, MethodConfig, RunConfig]:
    """Look up the method, build and validate its config, and fill its defaults into
    ``cfg.method_config``: ``(spec, method config, resolved cfg)``."""
    spec = get_method(cfg.method)
    method_config = build_method_config(spec, cfg.method_config)
    cfg = dataclasses.replace(cfg, method_config=to_dict(method_config))
    return spec, method_config, cfg


def build_run_data(cfg: RunConfig, root: Path, **data_overrides: Any) -> DataBundle:
    """The run's data as its config describes it, from ``root``.

    ``data_overrides`` replace :class:`~harness.config.DataConfig` fields (profiling reads the
    test split only: ``train_subset``, ``augment`` ...); ``eval_batch_size`` replaces the
    evaluation batch size; ``device`` keeps in-memory datasets on that device
    (``speed.device_data``).
    """
    eval_batch_size = data_overrides.pop("eval_batch_size", cfg.eval.batch_size)
    batch_size = data_overrides.pop("batch_size", cfg.optim.batch_size)
    device = data_overrides.pop("device", None)
    data = dataclasses.replace(cfg.data, root=str(root), **data_overrides)
    return build_data(
        cfg.model.dataset,
        data,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=cfg.seed,
        channels_last=cfg.channels_last,
        device=device,
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); CheckpointError (one line) if it is
    unreadable, truncated, or holds objects beyond tensors and plain containers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        named = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds Python objects{named} beyond tensors and "
            "plain containers, which could run code when loaded, so this harness did not write "
            "it; restore the run's own checkpoint, or delete it to restart the run"
        ) from None
    except Exception as err:  # noqa: BLE001 - any other failure means an unusable file
        reason = str(err).split(". ")[0].splitlines()[0][:160] if str(err).strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}{': ' if reason else ''}"
            f"{reason}): it is truncated or corrupt; delete it and rerun the same command to "
            "restart the run from scratch, or restore it from a copy"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint")
    return state


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved configuration stored in a run directory (CheckpointError if unreadable)."""
    path = Path(run_dir) / store.CONFIG_FILE
    try:
        return from_dict(RunConfig, load_yaml(path, store.CONFIG_FILE, CheckpointError))
    except ConfigError as err:
        raise CheckpointError(f"cannot read the run configuration {path}: {err}") from None


def load_run(run_dir: str | Path, flag: str = "--run") -> tuple[RunConfig, dict[str, Any]]:
    """A trained run's resolved config and checkpoint; ``CheckpointError`` if either is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{flag} {run_dir}: no such run directory")
    for name in (store.CONFIG_FILE, store.CHECKPOINT_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{flag} {run_dir}: no {name} there; give a trained run")
    cfg = read_run_config(run_dir)
    checkpoint = load_checkpoint(run_dir / store.CHECKPOINT_FILE)
    if "model" not in checkpoint:
        raise CheckpointError(f"{flag} {run_dir}: {store.CHECKPOINT_FILE} holds no model state")
    return cfg, checkpoint


#: ``--init-from torchvision:ARCH[=FILE]``: torchvision's published ImageNet weights.
TORCHVISION_PREFIX = "torchvision:"


def is_torchvision_source(source: str | Path | None) -> bool:
    """True for ``torchvision:ARCH`` or ``torchvision:ARCH=FILE`` (not a run directory)."""
    return isinstance(source, str) and source.startswith(TORCHVISION_PREFIX)


def init_from_source(model: AdaptiveModel, source: str | Path, cfg: RunConfig) -> list[str]:
    """``--init-from``: a run directory, or ``torchvision:resnet101`` (torchvision's weights,
    downloaded into torch's cache on this explicit request) or ``torchvision:resnet101=FILE``
    (a saved torchvision state dict). Returns the keys left fresh (the method's own)."""
    if is_torchvision_source(source):
        return init_from_torchvision(model, str(source), cfg)
    return init_from_run(model, Path(source).resolve(), cfg)


def check_torchvision_source(model: AdaptiveModel, source: str, cfg: RunConfig) -> None:
    """``torchvision:ARCH[=FILE]`` fits this run (architecture, variant, file); loads nothing."""
    arch, _, file = source[len(TORCHVISION_PREFIX) :].partition("=")
    expected = f"resnet{cfg.model.depth}"
    if arch != expected:
        raise CheckpointError(
            f"--init-from {source}: this run's backbone is {expected} (model.depth="
            f"{cfg.model.depth}); use --init-from torchvision:{expected}"
        )
    loader = getattr(model.backbone, "load_torchvision_state_dict", None)
    if cfg.model.dataset != "imagenet" or cfg.model.variant != "torchvision" or loader is None:
        raise CheckpointError(
            f"--init-from {source}: only the ImageNet 'torchvision' backbone takes torchvision "
            f"weights (this run: dataset={cfg.model.dataset!r}, variant={cfg.model.variant!r})"
        )
    if file and not Path(file).is_file():
        raise CheckpointError(f"--init-from {source}: no file {file}")


def init_from_torchvision(model: AdaptiveModel, source: str, cfg: RunConfig) -> list[str]:
    """Load torchvision's ResNet weights into a backbone that can take them."""
    check_torchvision_source(model, source, cfg)
    arch, _, file = source[len(TORCHVISION_PREFIX) :].partition("=")
    loader = model.backbone.load_torchvision_state_dict
    if file:
        state = load_checkpoint(Path(file))
    else:
        try:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
            state = weights.get_state_dict(progress=False)
        except Exception as err:  # noqa: BLE001 - network, cache or version problems
            raise CheckpointError(
                f"--init-from {source}: cannot fetch torchvision's {arch} weights ({err}); "
                f"download them on a connected machine and give --init-from {source}=FILE"
            ) from None
    try:
        loader(state)
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"--init-from {source}: not a torchvision {arch} ({first})") from None
    return sorted(k for k in model.state_dict() if not k.startswith("backbone."))


def init_from_run(model: AdaptiveModel, source: Path, cfg: RunConfig) -> list[str]:
    """Copy weights from another run's checkpoint, leaving the halting branches fresh.

    The source must have the same backbone (dataset, depth, variant); returns the keys left fresh.
    """
    if not (source / store.CONFIG_FILE).exists() or not (source / store.CHECKPOINT_FILE).exists():
        raise CheckpointError(f"--init-from {source}: no run with a checkpoint there")
    other = read_run_config(source)
    for name in ("dataset", "depth", "variant"):
        mine, theirs = getattr(cfg.model, name), getattr(other.model, name)
        if mine != theirs:
            raise CheckpointError(
                f"--init-from {source}: its model.{name}={theirs!r} differs from this run's "
                f"{mine!r}; initialise from a run with the same backbone"
            )
    _check_init_data(source, other.data.fingerprint, cfg.data.fingerprint)
    state = load_checkpoint(source / store.CHECKPOINT_FILE)["model"]
    skip = model.finetune_skip_prefixes()
    wanted = {
        k: v for k, v in state.items() if not k.startswith(skip) and k.startswith("backbone.")
    }
    own = model.state_dict()
    for key, value in wanted.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"--init-from {source}: its {key} has shape {tuple(value.shape)} but this run's "
                f"has {tuple(own[key].shape)} (another number of classes?); initialise from a "
                "run on the same classes"
            )
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


def _check_init_data(source: Path, theirs: str | None, mine: str | None) -> None:
    """``--init-from`` a run on other data is legitimate (pretraining, then fine-tuning on this
    data), so only the class count its fingerprint names must match this run's: the copied
    backbone's classifier must fit. Unknown on either side (a run made before fingerprints, a
    study's pre-check before its data is read): not checked here (the weights' shapes are)."""
    from harness.data.fingerprint import class_count_of

    a, b = class_count_of(theirs), class_count_of(mine)
    if a is not None and b is not None and a != b:
        raise CheckpointError(
            f"--init-from {source}: it was trained on {a} classes (data.fingerprint {theirs}) "
            f"but this run's data has {b} (data.fingerprint {mine}); initialise from a run on "
            "the same classes"
        )


def init_source_fingerprint(source: str | Path | None) -> str | None:
    """The ``data.fingerprint`` of an ``--init-from`` run (None: torchvision weights, none
    given, or a run made before fingerprints)."""
    if source is None or is_torchvision_source(source):
        return None
    try:
        return read_run_config(Path(source)).data.fingerprint
    except CheckpointError:
        return None


def trial_columns(cfg: RunConfig, spec: MethodSpec, trial_id: str) -> dict[str, Any]:
    """The per-trial columns of every result row (the time penalty named by the method)."""
    key = time_penalty_key(spec)
    identity = experiment_identity(cfg)
    return results.fields(
        "trial",
        {
            "trial_id": trial_id,
            "experiment_id": experiment_id(identity),
            "experiment_config": json.dumps(identity, sort_keys=True, separators=(",", ":")),
            "method": cfg.method,
            "method_label": spec.label or spec.name,
            "variant": cfg.model.variant,
            "dataset": cfg.model.dataset,
            "depth": cfg.model.depth,
            "time_penalty_name": key or "",
            "time_penalty": float(cfg.method_config[key]) if key else 0.0,
            "seed": cfg.seed,
            "eval_batch_size": cfg.eval.batch_size,
        },
    )
