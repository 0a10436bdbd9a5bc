"""Study presets: YAML files that describe a grid of training runs, and their expansion.

A preset is a readable file shipped in ``harness/preset_files/`` (``smoke.yaml``,
``cpu-mini.yaml``, ...) or any YAML path with the same keys::

    name: smoke                     # the preset's name (a file here must be called NAME.yaml)
    description: one paragraph      # what the study is for and what it costs
    base:                           # a RunConfig tree shared by every trial (harness.config)
      model: {dataset: cifar10, variant: sact}
      optim: {epochs: 2}
    methods:                        # method name (or fnmatch pattern) -> its grid
      act: {tau: [0.005, 0.01]}     # a list is a grid axis over a method-config field
      pact: {lambda: [0.01], config: {temperature_final: 0.5}}   # config: fixed fields
      "*": {}                       # every other registered method, at its defaults
      sact: search_space            # the method's own default search space (MethodSpec)
      spatial_pact: null            # leave a method out (wins over patterns)
      # a list of entries: variants of one method (an ablation); each variant's trials are
      # named by its fixed config fields too (pact_d20_lambda0.01_priorbernoulli_s0)
      # pact: [{lambda: [0.01]}, {lambda: [0.01], config: {prior: bernoulli}}]
      # an entry may carry its own seeds: {lambda: [0.01], seeds: [0]} (default: seeds: below)
    depths: [14]                    # backbone depths of the method trials
    seeds: [0]
    vanilla_depths: [8, 14]         # extra trials of the vanilla method (the depth series)
    vanilla_method: resnet          # the method those trials use (required with vanilla_depths)
    init_from: null                 # run directory whose backbone initialises the method
                                    # trials (not the vanilla series); "required": the user
                                    # must give one (--set init_from=RUN_DIR)
    resources: {cpu: 1, gpu: 0}     # per trial; fractions allowed
    max_concurrent: null            # at most this many trials at once (null: as resources allow)
    max_failures: 2                 # retries of a failed trial, each from its last checkpoint
    equivalence_margin: 1.0         # accuracy points within which results are "equivalent"
    comparisons:                    # what the report compares (pact-harness compare)
      - {a: "method=pact,mode=deterministic", b: "method=act", curve: true}
      - {a: "method=act,tau=0.01", b: vanilla}

A trial is one (method, grid point, depth, seed); its name (``act_d14_tau0.01_s0``) is stable,
so a study can be listed (``--dry-run``), compared with the one already in its folder and resumed.
Method-specific keys never go in ``base``: a method's fields are only known per method.

Everything here is pure Python; :mod:`harness.grid` runs the trials on Ray Tune.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.config import (
    RunConfig,
    config_key,
    deep_merge,
    from_dict,
    load_yaml,
    to_dict,
    validate_run_config,
)
from harness.errors import ConfigError
from harness.registry import get_method, list_methods, time_penalty_key
from harness.runs import resolve_method

PRESET_DIR = Path(__file__).resolve().parent / "preset_files"
#: Files in PRESET_DIR that are not grid presets: the bench's plan (``harness.bench.plan``).
NOT_PRESETS = frozenset({"bench"})

#: Top-level keys of a preset file; every other key is an error.
PRESET_KEYS = (
    "name",
    "description",
    "base",
    "methods",
    "depths",
    "seeds",
    "vanilla_depths",
    "vanilla_method",
    "init_from",
    "resources",
    "max_concurrent",
    "max_failures",
    "equivalence_margin",
    "comparisons",
)
#: Keys that ``--set`` may override at the preset level (the others go into ``base``).
GRID_KEYS = tuple(k for k in PRESET_KEYS if k not in ("name", "description", "base"))
#: Keys of a method entry that are not grid axes: fixed config fields, and the entry's own
#: seeds (replacing the preset's ``seeds`` for this entry, e.g. one seed for a screening
#: variant beside three for the reference configuration).
ENTRY_KEYS = ("config", "seeds")
#: The value of a ``methods`` entry that means "the method's default search space".
SEARCH_SPACE = "search_space"
RESOURCE_KEYS = ("cpu", "gpu")


@dataclass(frozen=True)
class _Seeds:
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Trial:
    """One training run of a study: its stable name and its resolved RunConfig tree."""

    name: str
    config: dict[str, Any]
    init_from: str | None = None

    @property
    def run_config(self) -> RunConfig:
        """The trial's :class:`~harness.config.RunConfig`."""
        return from_dict(RunConfig, self.config)


@dataclass(frozen=True)
class Preset:
    """A parsed preset (see the module docstring for the meaning of each field)."""

    name: str
    description: str = ""
    base: Mapping[str, Any] = field(default_factory=dict)
    methods: Mapping[str, Any] = field(default_factory=dict)
    depths: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()
    vanilla_depths: tuple[int, ...] = ()
    vanilla_method: str = ""  # required with vanilla_depths: the harness names no method
    init_from: str | None = None
    resources: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_concurrent: int | None = None
    max_failures: int = 2
    #: The margin (accuracy points) within which two results are called equivalent, declared
    #: before the data (``pact-harness compare`` and the report's comparisons use it).
    equivalence_margin: float = 1.0
    #: Comparisons the report makes: ``{a: SELECTOR, b: SELECTOR | vanilla, curve: bool,
    #: split: test | val}`` (see :mod:`harness.report.compare`).
    comparisons: tuple[Mapping[str, Any], ...] = ()
    source: str = ""


#: Entry-point group through which a plug-in package ships presets: each entry point names a
#: path (``str`` or ``Path``) to a preset YAML file, callable by its entry-point name.
PRESET_ENTRY_POINT_GROUP = "pact_harness.presets"


def plugin_presets() -> tuple[dict[str, Path], dict[str, str]]:
    """Presets shipped by installed plug-ins: ``(name -> file, name -> why it is unusable)``.

    A plug-in preset never replaces a preset of the harness: a clashing name is unusable."""
    usable: dict[str, Path] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=PRESET_ENTRY_POINT_GROUP):
        origin = f"{ep.value} ({ep.dist.name if ep.dist else 'unknown package'})"
        if (PRESET_DIR / f"{ep.name}.yaml").is_file() or ep.name in usable:
            broken[ep.name] = f"{origin}: the name is taken by another preset"
            continue
        try:
            path = Path(ep.load())
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not break the others
            broken[ep.name] = f"{origin}: {type(err).__name__}: {err}"
            continue
        if not path.is_file():
            broken[ep.name] = f"{origin}: {path} is not a file"
            continue
        usable[ep.name] = path
    return usable, broken


def list_presets() -> dict[str, str]:
    """Name -> first line of the description, for every shipped and plug-in preset."""
    out = {}
    files = {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml")) if p.stem not in NOT_PRESETS}
    files.update(plugin_presets()[0])
    for name, path in files.items():
        try:
            description = str(_read_yaml(path).get("description", "")).strip()
        except ConfigError as err:
            description = f"(unreadable: {err})"
        out[name] = description.splitlines()[0] if description else ""
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    return load_yaml(path, "--preset")


def preset_path(name_or_path: str) -> Path:
    """The file of a shipped or plug-in preset name, or ``name_or_path`` if it is a YAML file."""
    shipped = PRESET_DIR / f"{name_or_path}.yaml"
    if shipped.is_file() and name_or_path not in NOT_PRESETS:
        return shipped
    usable, broken = plugin_presets()
    if name_or_path in usable:
        return usable[name_or_path]
    if name_or_path in broken:
        raise ConfigError(
            f"preset {name_or_path!r} of a plug-in is unusable: {broken[name_or_path]}"
        )
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    known = ", ".join(list_presets()) or "(none)"
    raise ConfigError(
        f"unknown preset {name_or_path!r}; presets: {known} (or give a path to a "
        ".yaml file with the same keys)"
    )


def load_preset_tree(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw preset mapping and its source file."""
    path = preset_path(name_or_path)
    tree = _read_yaml(path)
    if path.parent == PRESET_DIR and tree.get("name") != path.stem:
        raise ConfigError(f"preset file {path.name} must say name: {path.stem}")
    plugin = {p: n for n, p in plugin_presets()[0].items()}.get(path)
    if plugin is not None and tree.get("name") != plugin:
        raise ConfigError(
            f"preset file {path} of plug-in preset {plugin!r} must say name: {plugin}"
        )
    return tree, str(path)


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``--set`` tree into preset-level keys (``seeds``, ``methods.act.tau``, ...) and
    keys of the shared base config (``optim.epochs``); method keys in base are an error."""
    grid, base = {}, {}
    for key, value in overrides.items():
        if key in ("name", "description"):
            raise ConfigError(f"--set {key}=...: a study's {key} comes from its preset file")
        if key in ("method", "method_config"):
            raise ConfigError(
                f"--set {key}.*: method settings differ per method; use "
                "methods.<name>.config.<field>=VALUE or methods.<name>.<field>=[values]"
            )
        (grid if key in GRID_KEYS else base)[key] = value
    return grid, base


def _check_ints(values: tuple[int, ...], where: str, minimum: int) -> None:
    for item in values:
        if item < minimum:
            raise ConfigError(f"{where}: expected integers >= {minimum}, got {item!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: repeated values in {list(values)}")


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"resources: expected a mapping like {{cpu: 1, gpu: 0}}, got {value!r}")
    unknown = sorted(set(value) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key resources.{unknown[0]}; allowed keys: cpu, gpu")
    out = {"cpu": 1.0, "gpu": 0.0}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ConfigError(f"resources.{key}: expected a number, got {item!r}")
        out[key] = float(item)
    if out["cpu"] <= 0:
        raise ConfigError(f"resources.cpu={out['cpu']:g} must be > 0 (fractions allowed)")
    if out["gpu"] < 0:
        raise ConfigError(f"resources.gpu={out['gpu']:g} must be >= 0")
    if out["gpu"] > 1 and not out["gpu"].is_integer():
        raise ConfigError(f"resources.gpu={out['gpu']:g}: above 1, ask for whole GPUs (Ray's rule)")
    return out


#: A preset name: one path component, never ``..`` or absolute (it names a folder).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_preset(tree: Mapping[str, Any], source: str = "") -> Preset:
    """Check a preset mapping: keys and types through :func:`~harness.config.from_dict`, then
    what types cannot say (ranges, no method or seed settings in ``base``). Method-level checks
    happen at expansion."""
    unknown = sorted(set(tree) - set(PRESET_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown preset key {unknown[0]!r}; allowed keys: {', '.join(PRESET_KEYS)}"
        )
    for key in ("name", "methods", "depths", "seeds"):
        if tree.get(key) is None:
            raise ConfigError(f"preset {source or '(unnamed)'} lacks the required key {key!r}")
    values = {
        k: v for k, v in tree.items() if v is not None or k in ("init_from", "max_concurrent")
    }
    values.setdefault("resources", {})
    preset = from_dict(Preset, values)
    preset = dataclasses.replace(
        preset,
        description=preset.description.strip(),
        base=copy.deepcopy(dict(preset.base)),
        methods=copy.deepcopy(dict(preset.methods)),
        resources=_resources(preset.resources),
        source=source,
    )
    for key in ("method", "method_config"):
        if key in preset.base:
            raise ConfigError(
                f"base.{key}: method settings differ per method; put them under "
                "methods.<name>.config"
            )
    model = preset.base.get("model")
    if "seed" in preset.base or (isinstance(model, Mapping) and "depth" in model):
        raise ConfigError("base: give depths and seeds in the preset's depths: and seeds: lists")
    if not isinstance(preset.name, str) or not _PLAIN_NAME.fullmatch(preset.name):
        raise ConfigError(
            f"preset name {preset.name!r} is not a plain name (letters, digits, '.', '_', '-', "
            "no path): it names the study folder runs/grid/<name>"
        )
    _check_ints(preset.seeds, "seeds", 0)
    _check_ints(preset.depths, "depths", 1)
    _check_ints(preset.vanilla_depths, "vanilla_depths", 1)
    if preset.vanilla_depths and not preset.vanilla_method:
        raise ConfigError(
            f"vanilla_depths={list(preset.vanilla_depths)} needs vanilla_method: the registered "
            "method those trials use (the plain backbone)"
        )
    if not preset.seeds:
        raise ConfigError("seeds: give at least one seed")
    if not preset.methods:
        raise ConfigError("methods: expected a mapping of method name -> grid")
    if preset.max_concurrent is not None and preset.max_concurrent < 1:
        raise ConfigError(
            f"max_concurrent={preset.max_concurrent!r} must be a positive integer or null"
        )
    if preset.max_failures < 0:
        raise ConfigError(f"max_failures={preset.max_failures!r} must be an integer >= 0")
    if not (math.isfinite(preset.equivalence_margin) and preset.equivalence_margin > 0):
        raise ConfigError(
            f"equivalence_margin={preset.equivalence_margin!r} must be a positive number of "
            "accuracy points"
        )
    for index, entry in enumerate(preset.comparisons):
        _check_comparison(entry, f"comparisons[{index}]")
    return preset


#: Keys of a ``comparisons`` entry.
COMPARISON_KEYS = ("a", "b", "curve", "split")


def _check_comparison(entry: Any, where: str) -> None:
    from harness.report.compare import parse_selector

    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(COMPARISON_KEYS)}")
    unknown = sorted(set(entry) - set(COMPARISON_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; allowed keys: {', '.join(COMPARISON_KEYS)}"
        )
    for side in ("a", "b"):
        if not isinstance(entry.get(side), str):
            raise ConfigError(f"{where}.{side}: required, a selector string (key=value,...)")
        parse_selector(entry[side], f"{where}.{side}")
    if not isinstance(entry.get("curve", False), bool):
        raise ConfigError(f"{where}.curve: must be true or false")
    if entry.get("split", "test") not in ("test", "val"):
        raise ConfigError(f"{where}.split={entry.get('split')!r}; allowed: test, val")


def load_preset(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> Preset:
    """Read a preset and apply a ``--set`` tree: preset-level keys (``seeds=[0,1]``,
    ``methods.act.tau=[0.01]``, ``resources.cpu=2``) replace the file's, other keys are merged
    into ``base`` (``optim.epochs=1``)."""
    tree, source = load_preset_tree(name_or_path)
    grid, base = split_overrides(overrides or {})
    tree = deep_merge(tree, grid)
    if base:
        tree["base"] = deep_merge(tree.get("base") or {}, base)
    return parse_preset(tree, source)


# ---------------------------------------------------------------------------------- expansion


def _method_entries(preset: Preset) -> list[tuple[str, Any]]:
    """(method, entry) pairs in preset order; an exact name wins over a pattern, and among
    patterns the first that matches wins; ``null`` leaves a method out."""
    registered = list_methods()
    explicit = {k for k in preset.methods if not any(c in k for c in "*?[")}
    for name in explicit:
        get_method(name)  # unknown method: a clear ConfigError listing the registered ones
    taken: set[str] = set()
    out = []
    for key, entry in preset.methods.items():
        if key in explicit:
            names = [key]
        else:
            names = [n for n in registered if fnmatch.fnmatch(n, key) and n not in explicit]
            if not any(fnmatch.fnmatch(n, key) for n in registered):
                raise ConfigError(f"methods: pattern {key!r} matches no registered method")
        for name in names:
            if name in taken:
                continue
            taken.add(name)
            if entry is not None and entry is not False:
                out.append((name, entry))
    return out


def _field_names(spec) -> dict[str, str]:
    """Config key (no trailing underscore) -> dataclass field name."""
    return {config_key(f.name): f.name for f in dataclasses.fields(spec.config_cls)}


def _method_axes(method: str, entry: Any) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """A method entry -> (grid axes in file order, fixed method-config fields)."""
    spec = get_method(method)
    where = f"methods.{method}"
    if entry == SEARCH_SPACE:
        entry = {config_key(k): list(v) for k, v in spec.search_space.items()}
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of field -> values, {SEARCH_SPACE!r} or null, "
            f"got {entry!r}"
        )
    fields = _field_names(spec)
    fixed = entry.get("config") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"{where}.config: expected a mapping of method-config fields")
    axes: dict[str, list[Any]] = {}
    for key, values in entry.items():
        if key in ENTRY_KEYS:
            continue
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "(none: it has no hyper-parameters)"
            raise ConfigError(
                f"grid key {where}.{key}: method {method!r} has no config field {key!r}; "
                f"allowed keys: {allowed}"
            )
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"{where}.{key}: empty list (use null to leave the method out)")
        axes[key] = values
    for key in fixed:
        if key in axes:
            raise ConfigError(f"{where}: {key!r} is both a grid axis and under config")
    return axes, dict(fixed)


def _token(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", text)


def trial_name(method: str, depth: int, point: Mapping[str, Any], seed: int) -> str:
    """``act_d14_tau0.01_s0``: method, depth, each grid value (file order), seed."""
    parts = [method, f"d{depth}"] + [f"{k}{_token(v)}" for k, v in point.items()]
    return "_".join([*parts, f"s{seed}"])


def _trial_tree(preset: Preset, method: str, config: dict, depth: int, seed: int) -> dict:
    tree = deep_merge(preset.base, {"model": {"depth": depth}, "seed": seed})
    return {**tree, "method": method, "method_config": config}


def expand(preset: Preset) -> list[Trial]:
    """Every trial of the preset, in a fixed order: method entries in file order, then depth,
    then grid point, then seed; the vanilla depth series last. Configs are resolved (method
    defaults filled in) and validated; nothing is trained or written."""
    planned: list[tuple[str, str, dict, int, int]] = []
    for method, entry in _method_entries(preset):
        # A list of entries: variants of one method (an ablation), each named by its fixed
        # fields too, so that the variants' trials never share a name.
        variants = entry if isinstance(entry, list) else [entry]
        for variant in variants:
            planned += _plan_entry(preset, method, variant, name_fixed=isinstance(entry, list))
    for depth in preset.vanilla_depths:
        for seed in preset.seeds:
            name = trial_name(preset.vanilla_method, depth, {}, seed)
            planned.append((name, preset.vanilla_method, {}, depth, seed))
    if not planned:
        raise ConfigError(f"preset {preset.name!r} expands to no trial (no methods or depths)")

    trials: dict[str, Trial] = {}
    for name, method, config, depth, seed in planned:
        tree = _trial_tree(preset, method, config, depth, seed)
        try:
            cfg = from_dict(RunConfig, tree)
            validate_run_config(cfg)
            _, _, cfg = resolve_method(cfg)
        except ConfigError as err:
            raise ConfigError(f"trial {name}: {err}") from None
        init_from = preset.init_from if method != preset.vanilla_method else None
        trial = Trial(name, to_dict(cfg), init_from)
        if name in trials:
            if trials[name] != trial:
                raise ConfigError(f"two different trials are both named {name!r}")
            continue  # e.g. the vanilla method listed under methods and in vanilla_depths
        trials[name] = trial
    return list(trials.values())


def _plan_entry(
    preset: Preset, method: str, entry: Any, name_fixed: bool
) -> list[tuple[str, str, dict, int, int]]:
    """(name, method, method config, depth, seed) of every trial of one method entry."""
    axes, fixed = _method_axes(method, entry)
    spec = get_method(method)
    penalty = time_penalty_key(spec)
    seeds = preset.seeds
    if isinstance(entry, Mapping) and entry.get("seeds") is not None:
        seeds = from_dict(_Seeds, {"seeds": entry["seeds"]}, f"methods.{method}").seeds
        _check_ints(seeds, f"methods.{method}.seeds", 0)
    planned = []
    for depth in preset.depths:
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values, strict=True))
            config = {**fixed, **point}
            shown = {**point, **fixed} if name_fixed else dict(point)
            if penalty and penalty not in shown:
                # Name every adaptive trial by its time penalty, default or not.
                shown = {penalty: _default_penalty(spec, fixed, penalty), **shown}
            for seed in seeds:
                name = trial_name(method, depth, shown, seed)
                planned.append((name, method, config, depth, seed))
    return planned


def _default_penalty(spec, fixed: Mapping[str, Any], key: str) -> Any:
    if key in fixed:
        return fixed[key]
    return getattr(spec.config_cls(), _field_names(spec)[key])
