"""Run configuration: frozen dataclasses, built from nested dicts; unknown keys are an error.

A run is described by one :class:`RunConfig`. It is assembled from, in increasing priority:
the dataclass defaults, a YAML file (``--config``), dedicated CLI flags, and ``--set key=value``
overrides with dotted keys (``optim.lr=0.05``, ``method.tau=0.02``). The method section is
validated against the method's own ``config_cls``. Field names that would clash with Python
keywords carry a trailing underscore in code and are written without it in files and flags
(``lambda_`` is ``method.lambda``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.contract import EXECUTIONS, ModelSpec
from harness.errors import ConfigError, check_choice

#: The YAML reader: libyaml's safe loader where PyYAML was built with it (its wheels are), the
#: pure-Python one otherwise; both read the same YAML 1.1 the same way. A 5,000-trial
#: study.yaml takes ~10 s to read in pure Python.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: The YAML writer matching :data:`SAFE_LOADER`.
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

DATASETS = ("cifar10", "imagenet")
DATA_FORMATS = ("auto", "torchvision", "npz", "imagefolder")
#: per_channel: (x - mean) / std; per_image: TF per_image_standardization (SACT CIFAR);
#: inception: 2x - 1, inputs in [-1, 1] (SACT ImageNet, Inception preprocessing).
NORMALIZATIONS = ("per_channel", "per_image", "inception")
#: Image-folder preprocessing: standard (RandomResizedCrop, Resize 256 + CenterCrop 224) or the
#: SACT ImageNet code's Inception preprocessing (distorted crop, colour distortion).
PREPROCESSINGS = ("standard", "inception")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "on", "off")
#: The image side each dataset's models are built for (``data.crop_padding`` is at most half).
NATIVE_IMAGE_SIZE = {"cifar10": 32, "imagenet": 224}
#: The largest float32: the optimizer's rates are applied in float32 (torch refuses larger).
FLOAT32_MAX = 3.4028234663852886e38
#: Seeds are non-negative 63-bit integers (numpy's SeedSequence refuses negative ones).
MAX_SEED = 2**63 - 1
#: ``eval.execution``: ``auto`` (each mode's fastest exact execution) or a named one.
EVAL_EXECUTIONS = ("auto", *EXECUTIONS)

#: Config fields that do not change what is trained or measured, so a run (or a study) may
#: resume with other values: where the data lives and how it is fed, the device, progress bars.
#: ``eval`` is left out of a *run's* identity too (see :func:`config_identity`): a finished run
#: is re-evaluated with other eval settings rather than refused.
RUNTIME_FIELDS: tuple[tuple[str, ...], ...] = (
    ("data", "root"),
    ("data", "num_workers"),
    ("data", "download"),
    ("device",),
    ("progress",),
    ("speed",),
)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are fed."""

    root: str | None = None
    format: str = "auto"
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    # A class-balanced validation split carved from the training set (chosen by val_seed
    # before train_subset picks from the rest); evaluated every epoch and at the end.
    val_subset: int | None = None
    val_seed: int = 0
    augment: bool = True
    normalization: str = "per_channel"
    crop_padding: int = 4  # pad-and-crop augmentation; the SACT code pads 32 -> 36 (2)
    preprocessing: str = "standard"  # image folders: standard or inception (SACT ImageNet)
    download: bool = False
    verify_checksums: bool = True
    num_workers: int = 0
    #: What the data was, resolved at run start (never set by hand): the short form
    #: ``FORMAT:FILES/NCc/SUBSETS`` of :mod:`harness.data.fingerprint` (files' checksums, class
    #: count, subset indices). Part of a run's identity and its experiment id, so a run is never
    #: resumed, nor pooled with other seeds, on other data; None in a study's trial configs
    #: (a study records its data root's fingerprint in ``study.yaml``) and in runs made before.
    fingerprint: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum and the SACT-code piecewise schedule, scaled to the run length.

    The SACT CIFAR recipe drops the learning rate x0.1 at 60k/75k/90k of 100k steps; here the
    drops happen at the same fractions (``lr_drops``) of the total number of steps.
    """

    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_drops: tuple[float, ...] = (0.6, 0.75, 0.9)
    lr_decay: float = 0.1
    nesterov: bool = False
    label_smoothing: float = 0.0  # of the task loss (the SACT ImageNet recipe uses 0.1)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation after training: which modes, how often random modes repeat, thresholds."""

    modes: tuple[str, ...] = ()  # empty: every mode the method offers
    repeats: int = 3
    seed: int = 1234
    thresholds: tuple[float, ...] = (0.5,)
    batch_size: int = 256
    execution: str = "auto"  # auto: the cheapest exact execution the model offers
    #: Peak memory is measured over this many evaluation batches of the test split (0: every
    #: batch); the row reports the maximum and the median over them.
    memory_batches: int = 0


#: ``speed.*`` switches: ``auto`` turns a fast path on where it pays (a CUDA device), ``on``/``off``
#: force it (``on`` works on CPU too: that is how its equivalence is tested).
SPEED_SWITCHES = ("auto", "on", "off")
#: ``speed.host_sync``: read the loss on the host every ``step`` (a divergence stops before the
#: step's update) or once per ``epoch`` (no sync per step; a divergence is named at the end of the
#: epoch, whose checkpoint is then not written); ``auto``: ``step`` on CPU, ``epoch`` on CUDA.
HOST_SYNCS = ("auto", "step", "epoch")


@dataclass(frozen=True)
class SpeedConfig:
    """The fast training path: each a knob, each tested for equivalence on CPU.

    ``device_data``: in-memory datasets (CIFAR) live on the training device; shuffling, random
    crop and flip run there on random numbers drawn on the CPU, so the batches equal the host
    loader's. ``amp``: bf16 autocast of the forward pass and loss (weights and optimizer stay
    float32). ``host_sync``: see :data:`HOST_SYNCS`. ``compile``: ``torch.compile`` the model
    (``off`` by default: adaptive models recompile per batch composition);
    ``compile_backend`` picks the backend (``inductor``; ``eager`` checks the graph capture
    without code generation). Like the device, they change numerics at most (bf16), not what is
    trained: they are runtime fields (a run may resume with other values).
    """

    device_data: str = "auto"
    amp: str = "auto"
    host_sync: str = "auto"
    compile: str = "off"
    compile_backend: str = "inductor"


@dataclass(frozen=True)
class RunConfig:
    """One training run: method, backbone, data, optimisation, evaluation.

    ``method`` has no default (empty: not given): the harness names no method, so a run names
    its own (``--method``, ``method:`` in a config file, a preset's trials).
    """

    method: str = ""
    method_config: Mapping[str, Any] = field(default_factory=dict)
    model: ModelSpec = ModelSpec()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0
    device: str = "auto"
    channels_last: bool = False
    progress: str = "auto"  # auto: bars only on a terminal; "on"/"off"
    speed: SpeedConfig = SpeedConfig()


def config_key(field_name: str) -> str:
    """The key of a dataclass field in files and flags: ``lambda_`` is written ``lambda``."""
    return field_name.rstrip("_")


def _key(f: dataclasses.Field) -> str:
    return config_key(f.name)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, where) for v in value)
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value  # exact: a float would round integers beyond 2**53
        if isinstance(value, str):
            try:
                return int(value)  # "12" exactly
            except ValueError:
                pass
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: Mapping[str, Any] | Any, where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a (nested) mapping; unknown keys are an error."""
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "(none)"
        raise ConfigError(
            f"unknown config key {'.'.join(filter(None, [where, unknown[0]]))!r}; "
            f"allowed keys{' in ' + where if where else ''}: {allowed}"
        )
    kwargs = {}
    for key, value in data.items():
        f = fields[key]
        kwargs[f.name] = _coerce(value, hints[f.name], ".".join(filter(None, [where, key])))
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain, YAML/JSON-ready nested dict of a config dataclass (keys without trailing ``_``)."""
    if dataclasses.is_dataclass(obj):
        return {_key(f): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as YAML (numbers, lists, booleans)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, creating sub-dicts."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set: malformed key {dotted!r}; use dotted names like optim.lr")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set: {dotted!r} descends into the non-mapping key {part!r}")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "method.tau=0.01"]`` -> nested dict."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        set_dotted(tree, key.strip(), parse_value(text))
    return tree


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge; values in ``update`` win."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _head(text: str, before_key: str) -> str | None:
    """The lines of a block-style YAML mapping before its top-level ``before_key:`` line (None
    when there is no such line)."""
    marker = f"{before_key}:"
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.startswith(marker):
            return text[:offset]
        offset += len(line)
    return None


def load_yaml(
    path: str | Path,
    what: str = "--config",
    error: type = ConfigError,
    before_key: str | None = None,
) -> dict:
    """Read a YAML mapping with ``safe_load`` (the one YAML reader of the harness).

    ``what`` names the file's role in the message (``--config``, ``preset``, ``study.yaml``);
    ``error`` is the exception raised for a missing, unreadable or non-mapping file.
    ``before_key``: only the top-level keys written before that one are wanted (a 5,000-trial
    ``study.yaml`` holds its declared margin and comparisons before its ``trials``, and takes
    ~10 s to read whole); the rest of the file is not parsed. A file whose head does not read
    as a mapping is read whole.
    """
    path = Path(path)
    try:
        text = path.read_text()
        head = _head(text, before_key) if before_key else None
        if head is not None:
            try:
                data = yaml.load(head, Loader=SAFE_LOADER)
                if isinstance(data, Mapping):
                    return dict(data)
            except yaml.YAMLError:
                pass
        data = yaml.load(text, Loader=SAFE_LOADER)
    except OSError as err:
        raise error(f"{what}: cannot read {path}: {err.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{what}: {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise error(f"{what}: {path} must hold a mapping of keys")
    return dict(data)


def validate_run_config(cfg: RunConfig) -> None:
    """Method-independent range checks; raise ``ConfigError`` naming the field."""
    check_choice("model.dataset", cfg.model.dataset, DATASETS)
    check_choice("data.format", cfg.data.format, DATA_FORMATS)
    check_choice("data.normalization", cfg.data.normalization, NORMALIZATIONS)
    check_choice("data.preprocessing", cfg.data.preprocessing, PREPROCESSINGS)
    if cfg.data.preprocessing == "inception" and cfg.model.dataset != "imagenet":
        raise ConfigError(
            "data.preprocessing='inception' is the SACT ImageNet recipe; for "
            f"model.dataset={cfg.model.dataset!r} use 'standard'"
        )
    check_choice("device", cfg.device, DEVICES)
    check_choice("progress", cfg.progress, PROGRESS)
    for name in ("device_data", "amp", "compile"):
        check_choice(f"speed.{name}", getattr(cfg.speed, name), SPEED_SWITCHES)
    check_choice("speed.host_sync", cfg.speed.host_sync, HOST_SYNCS)
    if not cfg.speed.compile_backend:
        raise ConfigError("speed.compile_backend must name a torch.compile backend (inductor)")
    positive = {
        "optim.epochs": cfg.optim.epochs,
        "optim.batch_size": cfg.optim.batch_size,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.repeats": cfg.eval.repeats,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be a positive integer (>= 1)")
    if not 0 < cfg.optim.lr <= FLOAT32_MAX:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be > 0 (and a float32: <= 3.4e38)")
    if not 0 <= cfg.optim.momentum < 1:
        raise ConfigError(f"optim.momentum={cfg.optim.momentum} must be in [0, 1)")
    if not 0 <= cfg.optim.weight_decay <= FLOAT32_MAX:
        raise ConfigError(
            f"optim.weight_decay={cfg.optim.weight_decay} must be >= 0 (and a float32: <= 3.4e38)"
        )
    if any(not 0 < d < 1 for d in cfg.optim.lr_drops) or list(cfg.optim.lr_drops) != sorted(
        cfg.optim.lr_drops
    ):
        raise ConfigError(
            f"optim.lr_drops={list(cfg.optim.lr_drops)} must be increasing fractions in (0, 1)"
        )
    if cfg.eval.memory_batches < 0:
        raise ConfigError(
            f"eval.memory_batches={cfg.eval.memory_batches} must be >= 0 (0: every test batch)"
        )
    if not 0 < cfg.optim.lr_decay <= 1:
        raise ConfigError(
            f"optim.lr_decay={cfg.optim.lr_decay} must be in (0, 1]: the factor the learning "
            "rate is multiplied by at each of optim.lr_drops (1: a constant rate)"
        )
    native = NATIVE_IMAGE_SIZE[cfg.model.dataset]
    if not 0 <= cfg.data.crop_padding <= native // 2:
        raise ConfigError(
            f"data.crop_padding={cfg.data.crop_padding} must be in [0, {native // 2}]: at most "
            f"half the {native}x{native} images of model.dataset={cfg.model.dataset!r}"
        )
    non_negative = {
        "seed": cfg.seed,
        "data.subset_seed": cfg.data.subset_seed,
        "data.val_seed": cfg.data.val_seed,
        "eval.seed": cfg.eval.seed,
    }
    for name, value in non_negative.items():
        if not 0 <= value <= MAX_SEED:
            raise ConfigError(f"{name}={value} must be a seed in [0, 2**63 - 1]")
    if cfg.data.num_workers < 0:
        raise ConfigError(
            f"data.num_workers={cfg.data.num_workers} must be >= 0 (0: load in the main process)"
        )
    if cfg.model.depth < 1:
        raise ConfigError(f"model.depth={cfg.model.depth} must be a positive integer")
    if cfg.model.num_classes is not None and cfg.model.num_classes < 2:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} must be at least 2 (or unset: the data's)"
        )
    for name in ("train_subset", "test_subset", "val_subset"):
        value = getattr(cfg.data, name)
        if value is not None and value < 1:
            raise ConfigError(f"data.{name}={value} must be a positive integer (or unset)")
    if any(not 0 < t < 1 for t in cfg.eval.thresholds) or not cfg.eval.thresholds:
        raise ConfigError(f"eval.thresholds={list(cfg.eval.thresholds)} must be values in (0, 1)")
    check_choice("eval.execution", cfg.eval.execution, EVAL_EXECUTIONS)
    if not 0.0 <= cfg.optim.label_smoothing < 1.0:
        raise ConfigError(f"optim.label_smoothing={cfg.optim.label_smoothing} must be in [0, 1)")


# ------------------------------------------------------------------------------ identity
def config_identity(config: RunConfig | Mapping[str, Any], keep_eval: bool = False) -> dict:
    """The part of a config that determines what is trained (and, with ``keep_eval``, what is
    measured): the config tree without :data:`RUNTIME_FIELDS` (and without ``eval``)."""
    tree = to_dict(config) if dataclasses.is_dataclass(config) else to_dict(dict(config))
    paths = RUNTIME_FIELDS if keep_eval else (*RUNTIME_FIELDS, ("eval",))
    for path in paths:
        node = tree
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return tree


def experiment_identity(config: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same experiment, so that they may be pooled as seeds: the whole
    resolved config (evaluation settings included) except the seed and :data:`RUNTIME_FIELDS`."""
    tree = config_identity(config, keep_eval=True)
    tree.pop("seed", None)
    return tree


def experiment_id(identity: Mapping[str, Any]) -> str:
    """A short stable hash of an :func:`experiment_identity` (12 hex digits)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (lists stay values)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def config_diff(old: Any, new: Any, labels: tuple[str, str] = ("stored", "now")) -> list[str]:
    """``key: old (stored) != new (now)`` for every dotted key whose values differ."""
    a, b = flatten(old), flatten(new)
    return [
        f"{key}: {a.get(key)!r} ({labels[0]}) != {b.get(key)!r} ({labels[1]})"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


# ------------------------------------------------------------------- configs from flags
def method_name_as_key(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``method: act`` -> ``method: {name: act}``: a plain name would otherwise be replaced by
    (or refuse to merge with) a later layer's ``method.tau``."""
    tree = dict(tree)
    if isinstance(tree.get("method"), str):
        tree["method"] = {"name": tree["method"]}
    return tree


def _set_pairs(pairs: list[str]) -> list[str]:
    """``--set method=act`` -> ``--set method.name=act`` (see :func:`method_name_as_key`)."""
    return [
        "method.name=" + pair.split("=", 1)[1]
        if "=" in pair and pair.split("=", 1)[0].strip() == "method"
        else pair
        for pair in pairs
    ]


def run_config_from_tree(tree: Mapping[str, Any]) -> RunConfig:
    """Accept ``method: {name: act, tau: ...}`` (from dotted keys) as the method's section."""
    tree = dict(tree)
    method = tree.get("method")
    if isinstance(method, Mapping):
        method = dict(method)
        name = method.pop("name", None)
        tree["method_config"] = deep_merge(tree.get("method_config", {}), method)
        if name is not None:
            tree["method"] = name
        else:
            tree.pop("method")
    return from_dict(RunConfig, tree)


def build_run_config(
    flags: Mapping[str, Any],
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Defaults < ``config_file`` < ``flags`` (dotted key -> value; None: not given) <
    ``overrides`` (``--set key=value`` pairs)."""
    tree: dict[str, Any] = method_name_as_key(load_yaml(config_file)) if config_file else {}
    given: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            set_dotted(given, key, value)
    tree = deep_merge(tree, given)
    tree = deep_merge(tree, parse_overrides(_set_pairs(list(overrides or []))))
    return run_config_from_tree(tree)
