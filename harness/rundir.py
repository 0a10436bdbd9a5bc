"""What a run directory holds, checked before training continues in it: the stored checkpoint
against the configuration asked for now (same data, same identity, or a ``--restart-from-epoch``
that changes only what may change), its fields and tensors before anything is loaded, and the
files a restart removes. :mod:`harness.train` resumes, restarts and finishes runs with these;
:mod:`harness.reevaluate` loads finished ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import store
from harness.config import RunConfig, config_diff, config_identity, from_dict
from harness.errors import CheckpointError, ConfigError
from harness.runs import load_checkpoint, read_run_config

log = logging.getLogger(__name__)


#: What every checkpoint of a run holds.
CHECKPOINT_KEYS = frozenset(
    ("model", "optimizer", "scheduler", "rng", "epoch", "train_seconds", "config_identity")
)


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
    checkpoint, reference = _stored_run(run_dir)
    now = config_identity(cfg)
    _check_same_data(run_dir, reference, now)
    differences = config_diff(reference, now, ("checkpoint", "now"))
    if differences:
        changeable = all(d.split(":")[0] in RESTARTABLE for d in differences)
        hint = (
            f"; to change {', '.join(RESTARTABLE)} in this folder add --restart-from-epoch "
            f"{checkpoint['epoch'] if checkpoint else 0} (or 0: from scratch)"
            if changeable
            else ""
        )
        raise CheckpointError(
            f"run directory {run_dir} holds a run of another configuration ("
            + "; ".join(differences[:3])
            + f"); use a different --out or the same settings{hint}"
        )
    return checkpoint


#: What ``--restart-from-epoch`` may change in a run directory (the dotted config keys).
RESTARTABLE = ("optim.lr",)


@dataclass
class Restart:
    """``--restart-from-epoch``: the epoch restarted from, the config changes it makes (config
    diff lines), and the checkpoint to resume from (None: from scratch)."""

    epoch: int
    changes: list[str]
    checkpoint: dict[str, Any] | None


def plan_restart(run_dir: Path, cfg: RunConfig, epoch: int) -> Restart:
    """Check a ``--restart-from-epoch EPOCH`` against the run in ``run_dir``: it holds a run on
    the same data, differing at most in :data:`RESTARTABLE`, and EPOCH is 0 (from scratch) or
    its checkpoint's epoch (the only one kept: the checkpoint of the last finished epoch)."""
    if epoch < 0:
        raise ConfigError(f"--restart-from-epoch {epoch}: give an epoch >= 0")
    if not (run_dir / store.CONFIG_FILE).is_file():
        raise ConfigError(
            f"--restart-from-epoch {epoch}: {run_dir} holds no run to restart; drop the flag to "
            "start one"
        )
    checkpoint, reference = _stored_run(run_dir)
    now = config_identity(cfg)
    _check_same_data(run_dir, reference, now)
    kept = checkpoint["epoch"] if checkpoint is not None else 0
    if epoch not in (0, kept):
        raise ConfigError(
            f"--restart-from-epoch {epoch}: {run_dir} keeps the checkpoint of epoch {kept} only "
            f"(the last finished one); restart from {kept} or from 0 (from scratch)"
            if kept
            else f"--restart-from-epoch {epoch}: {run_dir} holds no checkpoint (no epoch "
            "finished); restart from 0"
        )
    changes = config_diff(reference, now, ("before", "now"))
    other = [c for c in changes if c.split(":")[0] not in RESTARTABLE]
    if other:
        raise CheckpointError(
            f"--restart-from-epoch changes only {', '.join(RESTARTABLE)}, but run directory "
            f"{run_dir} differs in more (" + "; ".join(other[:3]) + "); use a different --out"
        )
    if epoch and epoch >= cfg.optim.epochs:
        raise ConfigError(
            f"--restart-from-epoch {epoch}: the run has {cfg.optim.epochs} epochs, so none is "
            "left to train at another rate; restart from 0 or raise --epochs"
        )
    return Restart(epoch, changes, checkpoint if epoch else None)


def _stored_run(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the checkpoint or None, the identity it, else ``config.yaml``, records)."""
    ckpt_path = run_dir / store.CHECKPOINT_FILE
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if checkpoint is not None:
        missing = CHECKPOINT_KEYS - set(checkpoint)
        if missing:
            raise CheckpointError(
                f"checkpoint {ckpt_path} lacks {', '.join(sorted(missing))}; delete it and rerun "
                "the same command to restart the run from scratch"
            )
        _check_checkpoint_structure(checkpoint, ckpt_path)
        reference = checkpoint["config_identity"]
        try:  # fill keys added to the config since the checkpoint with their defaults
            reference = config_identity(from_dict(RunConfig, reference))
        except ConfigError:
            pass  # a key that no longer exists: the diff below names it
    else:
        reference = config_identity(read_run_config(run_dir))
    return checkpoint, reference


def _forged(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} {problem}, so this harness did not write it as it is; restore it "
        "from a copy, or delete it and rerun the same command to restart the run from scratch"
    )


def _check_checkpoint_structure(checkpoint: dict[str, Any], path: Path) -> None:
    """The types of a checkpoint's fields (before any is used): one line naming the field."""
    epoch = checkpoint["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise _forged(path, f"holds epoch {epoch!r}, not a count of epochs")
    seconds = checkpoint["train_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise _forged(path, f"holds train_seconds {seconds!r}, not a number")
    model = checkpoint["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise _forged(path, "holds a 'model' that is not a mapping of tensors")
    optimizer = checkpoint["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list):
        raise _forged(path, "holds an 'optimizer' without a list of parameter groups")
    if not isinstance(checkpoint["scheduler"], dict):
        raise _forged(path, "holds a 'scheduler' that is not a mapping")
    rng = checkpoint["rng"]
    state = rng.get("torch") if isinstance(rng, dict) else None
    reference = torch.get_rng_state()
    if (
        not isinstance(state, torch.Tensor)
        or state.dtype != reference.dtype
        or state.shape != reference.shape
    ):
        raise _forged(path, "holds an 'rng' without torch's random state (a uint8 tensor)")
    if not isinstance(checkpoint["config_identity"], dict):
        raise _forged(path, "holds a 'config_identity' that is not a mapping")


def check_checkpoint_fits(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    path: Path,
) -> None:
    """The checkpoint's tensors fit the model (every key, every shape) and its optimizer state
    the optimizer (groups and their sizes), before anything is loaded."""
    own = model.state_dict()
    saved = checkpoint["model"]
    if set(saved) != set(own):
        odd = sorted(set(saved) ^ set(own))[0]
        where = "lacks" if odd in own else "has the extra tensor"
        raise _forged(path, f"{where} {odd}")
    for key, tensor in own.items():
        if tuple(saved[key].shape) != tuple(tensor.shape) or saved[key].dtype != tensor.dtype:
            raise _forged(
                path,
                f"holds {key} as {saved[key].dtype} {tuple(saved[key].shape)} but the model "
                f"has {tensor.dtype} {tuple(tensor.shape)}",
            )
    if optimizer is None:
        return
    groups = checkpoint["optimizer"]["param_groups"]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    saved_sizes = [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups]
    if saved_sizes != sizes:
        raise _forged(
            path,
            f"holds optimizer groups of {saved_sizes} parameters, but this run's has {sizes}",
        )


def _check_same_data(run_dir: Path, reference: dict[str, Any], now: dict[str, Any]) -> None:
    """A run on other data is another configuration: one line naming both fingerprints. A run
    made before data fingerprints (none recorded) resumes with a warning; ``reference`` then
    takes the current fingerprint so that the rest of the identity is compared."""
    stored = (reference.get("data") or {}).get("fingerprint")
    current = (now.get("data") or {}).get("fingerprint")
    if stored is None:
        log.warning(
            "run directory %s records no data fingerprint (made before they were recorded): "
            "resuming without checking that it is the same data (now %s)",
            run_dir,
            current,
        )
        reference.setdefault("data", {})["fingerprint"] = current
        return
    if stored != current:
        raise CheckpointError(
            f"run directory {run_dir} holds a run of another configuration: it was trained on "
            f"other data (data.fingerprint {stored} (checkpoint) != {current} (now)); give the "
            "--data-root it was trained on, or a different --out"
        )


def trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs after the checkpoint (an interrupted epoch is redone) and a
    torn last line (a kill mid-append), so that the next line appends to a clean file."""
    records = store.read_jsonl(path)
    kept = [r for r in records if r.get("epoch", 0) <= epochs_done]
    text = "".join(store.jsonl_line(r) for r in kept)
    if not path.exists() or path.read_bytes() != text.encode():
        store.atomic_write_text(path, text)


#: What a restart from an epoch removes (the outputs of the run it replaces).
RESTART_REMOVES = (
    store.SUMMARY_FILE,
    store.RESULTS_FILE,
    store.PER_IMAGE_FILE,
    store.CORRECT_FILE,
    store.FAILED_FILE,
)


def clear_for_restart(run_dir: Path, restart: Restart) -> list[dict[str, Any]]:
    """Remove the outputs of the run being restarted (and its checkpoint for a restart from
    scratch); returns the restarts recorded before (from ``provenance.json``)."""
    try:
        earlier = store.read_json(run_dir / store.PROVENANCE_FILE).get("restarts") or []
    except CheckpointError:
        earlier = []
    names = RESTART_REMOVES + (() if restart.epoch else (store.CHECKPOINT_FILE,))
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    return list(earlier)
