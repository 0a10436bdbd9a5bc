"""Synthetic studies: a finished grid's folder without training, to time the harness's own work.

:func:`synthetic_preset` makes a preset of exactly ``trials`` trials from a shipped preset file
(its methods, penalty keys, vanilla depths and comparisons; geometric penalties and seeds added
until the count is reached), so that the real planning expands it. :func:`write_synthetic_study`
then writes what a finished ``pact-harness grid`` leaves per trial, with the harness's own
writers and schema: ``study.yaml`` (the study record it is given), and in ``trials/<name>/``
``config.yaml``, ``provenance.json``, ``metrics.jsonl``, ``summary.json``, ``results.csv``
(every evaluation mode, threshold and split the trial's model plans), ``per_image.npz`` (with
ponder maps for spatial methods) and ``per_image_correct.npz`` (one array per row's
``per_image_key``). The study-level tables (``trials.csv``, the gathered ``results.csv``) are
the grid's to write: the caller runs its bookkeeping and gather over the folder, as a grid does.

Values are made up but shaped like a real study: accuracy falls and FLOPs shrink as the time
penalty grows, seeds scatter around their experiment's mean, every row of a study has one
code version, and each trial's random numbers come from its name (the same folder each time).
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness import results, store
from harness.bench.plan import PLAN_FILE
from harness.config import RunConfig, from_dict, load_yaml, to_dict
from harness.contract import AdaptiveModel, EvalSpec
from harness.errors import ConfigError
from harness.evaluate import per_image_key, plan_evaluations, write_correct
from harness.models import build_model
from harness.registry import get_method
from harness.runs import trial_columns
from harness.train import run_summary

#: The shipped preset a synthetic study copies (methods, penalty keys, vanilla depths, base
#: config, comparisons).
SOURCE_PRESET = PLAN_FILE.parent / "cpu-mini.yaml"
#: Seeds per experiment of a synthetic study of at least :data:`MANY_TRIALS` trials (one below).
SEEDS = 5
MANY_TRIALS = 50
#: The range of the geometric time penalties.
PENALTY_RANGE = (0.001, 0.3)
#: Images per split (test and validation): every result row and per-image array has these.
IMAGES = 1000
#: Thresholds of the threshold modes (seven rows per such mode and split).
THRESHOLDS = [0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9]
#: The provenance every synthetic run carries (one code version for the whole study).
PROVENANCE = {
    "code_fingerprint": "5e7e71c0de000000",
    "command_line": ["pact-harness", "bench", "--scaling"],
    "created_utc": "2026-01-01T00:00:00+00:00",
    "device": "cpu (synthetic)",
    "git_commit": None,
    "git_dirty": False,
    "hostname": "synthetic",
    "library_versions": {"torch": "synthetic", "pact-harness": "0.1.0"},
    "method_package": {"name": "pact-harness", "version": "0.1.0"},
    "synthetic": True,
}
#: Ponder maps stored per spatial run, and their size (as a CIFAR run stores them).
MAPS, MAP_SIZE = 64, 32
#: FLOPs per image of one residual unit of a CIFAR ResNet (synthetic; a ResNet-20 has 9 units).
UNIT_FLOPS = 9.0e6


@dataclass
class SyntheticStudy:
    """What :func:`write_synthetic_study` wrote."""

    folder: Path
    trials: int
    experiments: int
    seeds: int
    rows: int


EVALUATED = results.columns_of("evaluate")
COSTS = results.columns_of("costs")


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts, the larger first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _penalties(count: int) -> list[float]:
    low, high = PENALTY_RANGE
    if count == 1:
        return [0.01]
    return [float(f"{low * (high / low) ** (i / (count - 1)):.4g}") for i in range(count)]


def synthetic_preset(trials: int, source: str | Path = SOURCE_PRESET) -> dict[str, Any]:
    """A preset tree that expands to exactly ``trials`` trials: the source preset's methods,
    each with its own penalty axis (the key the source gives it) over geometric values, its
    vanilla depths, and :data:`SEEDS` seeds per experiment from :data:`MANY_TRIALS` trials on
    (when ``trials`` divides by it; one seed otherwise). Validation split, seven thresholds:
    about ten result rows per trial."""
    if trials < 1:
        raise ConfigError(f"a synthetic study needs at least one trial, not {trials}")
    tree = load_yaml(source, "preset")
    entries = {m: dict(e or {}) for m, e in (tree.get("methods") or {}).items()}
    seeds = SEEDS if trials >= MANY_TRIALS and trials % SEEDS == 0 else 1
    experiments = trials // seeds
    vanilla = list(tree.get("vanilla_depths") or [])[: max(0, experiments - len(entries))]
    names = list(entries)[: experiments - len(vanilla)]
    methods = {}
    for name, count in zip(names, _split(experiments - len(vanilla), len(names)), strict=True):
        axis = next(iter(entries[name]), None)
        if axis is None:
            raise ConfigError(f"{source}: method {name} has no penalty axis to vary")
        methods[name] = {axis: _penalties(count)}
    base = dict(tree.get("base") or {})
    base["data"] = {**(base.get("data") or {}), "test_subset": IMAGES, "val_subset": IMAGES}
    base["eval"] = {**(base.get("eval") or {}), "thresholds": THRESHOLDS}
    tree.update(
        name=f"synthetic-{trials}",
        description=f"synthetic study of {trials} trials (pact-harness bench --scaling)",
        base=base,
        methods=methods,
        seeds=list(range(seeds)),
        vanilla_depths=vanilla,
    )
    return tree


@dataclass
class _Plan:
    """What a trial's model evaluates: its specs and which modes are random or thresholded."""

    specs: list[EvalSpec]
    random: tuple[str, ...]
    thresholded: tuple[str, ...]
    spatial: bool
    units: int  # residual units per block


def _model_plan(cfg: RunConfig, cache: dict[str, _Plan]) -> _Plan:
    key = json.dumps([cfg.method, to_dict(cfg.model), to_dict(cfg.eval)], sort_keys=True)
    if key not in cache:
        model: AdaptiveModel = build_model(cfg)
        cache[key] = _Plan(
            plan_evaluations(model, cfg.eval),
            tuple(model.random_modes),
            tuple(model.threshold_modes),
            bool(getattr(model, "spatial", False)),
            max(1, (cfg.model.depth - 2) // 6),
        )
    return cache[key]


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _rows(
    cfg: RunConfig, columns: dict[str, Any], plan: _Plan, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], np.ndarray]:
    """The trial's result rows, each row's per-image correctness and the units per image of
    the first row (``[images, blocks]``)."""
    penalty = float(columns["time_penalty"] or 0.0)
    adaptive = bool(columns["time_penalty_name"])
    blocks, units = 3, plan.units
    fraction = 1.0 / (1.0 + 4.0 * math.sqrt(penalty)) if adaptive else 1.0
    backbone_flops = UNIT_FLOPS * blocks * units
    # the experiment's mean comes from its config; the seed scatters around it
    mean_accuracy = 0.45 + 0.004 * units * blocks - 0.08 * (1 - fraction)
    seed_shift = float(rng.normal(0.0, 0.01))
    rows, correct = [], {}
    first_units = np.zeros((IMAGES, blocks))
    for split in ("test", "val"):
        for index, spec in enumerate(plan.specs):
            shift = 0.01 * index + (0.005 if split == "val" else 0.0)
            accuracy = float(np.clip(mean_accuracy + seed_shift - shift, 0.05, 0.99))
            repeats = cfg.eval.repeats if spec.mode in plan.random else 1
            hits = (rng.random((repeats, IMAGES)) < accuracy).mean(0).astype(np.float32)
            per_block = np.clip(rng.normal(fraction * units, 0.3, (IMAGES, blocks)), 1, units)
            if split == "test" and index == 0:
                first_units = per_block
            flops = per_block.sum(1) * UNIT_FLOPS
            row = {
                "eval_mode": spec.mode,
                "execution": spec.execution,
                "threshold": spec.threshold if spec.mode in plan.thresholded else None,
                "split": split,
                "repeats": repeats,
                "num_images": IMAGES,
                "accuracy": float(hits.mean()),
                "accuracy_std": 0.0 if repeats == 1 else 0.003,
                "loss": float(2.3 * (1.0 - hits.mean()) + 0.3),
                "units_executed_mean": float(per_block.sum(1).mean()),
                "units_executed_std": float(per_block.sum(1).std()),
                "units_per_block": json.dumps([round(v, 4) for v in per_block.mean(0).tolist()]),
                "ponder_cost_mean": float(per_block.sum(1).mean() + 0.3 * blocks),
                "flops_per_image_mean": float(flops.mean()),
                "flops_per_image_std": float(flops.std()),
                "flops_fraction_of_vanilla": float(flops.mean() / backbone_flops),
                "flops_per_block": json.dumps(
                    [round(v * UNIT_FLOPS, 1) for v in per_block.mean(0).tolist()]
                ),
                "peak_memory_bytes": int(1.2e8 * (0.9 + 0.1 * fraction)),
                "peak_memory_median_bytes": int(1.15e8 * (0.9 + 0.1 * fraction)),
                "memory_batches": 8,
                "peak_memory_device": "cpu",
                "seconds_per_batch": float(0.4 * fraction + 0.05),
                "cost_batch_size": cfg.eval.batch_size,
                "activation_peak_bytes": int(1.1e8 * fraction),
            }
            row["per_image_key"] = per_image_key(row)
            correct[row["per_image_key"]] = hits
            evaluated = results.fields("evaluate", {k: row[k] for k in EVALUATED if k in row})
            costs = results.fields("costs", {k: row[k] for k in COSTS if k in row})
            rows.append({**columns, **evaluated, **costs})
    return rows, correct, first_units


def _per_image(plan: _Plan, mode: str, units: np.ndarray, rng: np.random.Generator) -> bytes:
    """A run's ``per_image.npz`` (as :func:`harness.evaluate.write_per_image` writes it)."""
    arrays: dict[str, np.ndarray] = {
        "units": units,
        "ponder": units + 0.1,
        "correct": rng.random(IMAGES) < 0.5,
    }
    if plan.spatial:
        grid = np.add.outer(np.arange(MAP_SIZE), np.arange(MAP_SIZE)) * plan.units // MAP_SIZE
        counts = np.clip(grid[None] + rng.integers(0, 2, (MAPS, 1, 1)), 1, 3 * plan.units)
        arrays["units_map"] = counts.astype(np.int32)
        arrays["ponder_map"] = (counts + 0.5).astype(np.float32)
        colour = rng.integers(0, 256, (MAPS, 1, 1, 3), dtype=np.uint8)
        arrays["thumbnails"] = np.broadcast_to(colour, (MAPS, MAP_SIZE, MAP_SIZE, 3)).copy()
        arrays["map_index"] = np.linspace(0, IMAGES - 1, MAPS).astype(np.int64)
    arrays["eval_mode"] = np.array(mode)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _dump_yaml(data: Any) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False)


def write_trial(
    run_dir: Path, name: str, config: Mapping[str, Any], cache: dict[str, _Plan] | None = None
) -> int:
    """Write one finished trial's run directory; returns its number of result rows."""
    cfg = from_dict(RunConfig, config)
    spec = get_method(cfg.method)
    plan = _model_plan(cfg, {} if cache is None else cache)
    rng = np.random.default_rng(_seed(name))
    columns = trial_columns(cfg, spec, name)
    columns.update(
        results.fields(
            "train",
            {
                "epochs": cfg.optim.epochs,
                "num_train": cfg.data.train_subset or 50000,
                "num_val": cfg.data.val_subset or 0,
                "code_version": store.code_version(PROVENANCE),
            },
        )
    )
    rows, correct, units = _rows(cfg, columns, plan, rng)
    run_dir.mkdir(parents=True, exist_ok=True)
    store.atomic_write_text(run_dir / store.CONFIG_FILE, _dump_yaml(to_dict(cfg)))
    store.atomic_write_json(run_dir / store.PROVENANCE_FILE, {**PROVENANCE, "seed": cfg.seed})
    metrics = "".join(
        store.jsonl_line({"epoch": e + 1, "train_loss": 2.0 - 0.2 * e, "lr": cfg.optim.lr})
        for e in range(cfg.optim.epochs)
    )
    store.atomic_write_text(run_dir / store.METRICS_FILE, metrics)
    store.atomic_write_bytes(
        run_dir / store.PER_IMAGE_FILE, _per_image(plan, rows[0]["eval_mode"], units, rng)
    )
    write_correct(correct, run_dir / store.CORRECT_FILE)
    store.write_results_csv(run_dir / store.RESULTS_FILE, rows)
    summary = run_summary(
        cfg, columns, rows, 60.0, columns["num_train"], IMAGES, columns["num_val"]
    )
    store.atomic_write_json(run_dir / store.SUMMARY_FILE, summary)
    return len(rows)


def write_synthetic_study(folder: str | Path, record: Mapping[str, Any]) -> SyntheticStudy:
    """Write ``study.yaml`` (``record``: a planned study's record, as ``pact-harness grid``
    stores it) and every trial's finished run directory under ``folder/trials/``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store.atomic_write_text(folder / store.STUDY_FILE, _dump_yaml(dict(record)))
    cache: dict[str, _Plan] = {}
    rows = 0
    experiments: set[str] = set()
    seeds: set[int] = set()
    for trial in record["trials"]:
        config = trial["config"]
        rows += write_trial(folder / store.TRIALS_DIR / trial["name"], trial["name"], config, cache)
        seeds.add(int(config.get("seed", 0)))
        identity = {k: v for k, v in config.items() if k != "seed"}
        experiments.add(json.dumps(identity, sort_keys=True, default=str))
    return SyntheticStudy(folder, len(record["trials"]), len(experiments), len(seeds), rows)


def write_synthetic_data(root: str | Path, train: int = 100, test: int = 50) -> Path:
    """A tiny CIFAR-like data root in the npz format (blank 32x32 images, 10 classes) for the
    synthetic study's plan to read; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        images = np.zeros((count, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(count, dtype=np.int64) % 10
        np.savez(root / f"{name}.npz", images=images, labels=labels)
    return root
