"""The bench plan: which methods each figure measures, and each figure's key and target.

The harness names no method; the plan does. The shipped plan is ``harness/preset_files/bench.yaml``
(:data:`PLAN_FILE`); ``pact-harness bench --plan FILE`` reads another one with the same keys.
:func:`load_plan` validates the whole file before anything is measured: an unknown key, a method
that is not registered, a mode the method lacks, an unknown method-config key or a malformed
target is a :class:`~harness.errors.ConfigError` that names the field and what it allows.

The order of the figures is the order of the plan's sections (``harness_vs_bare``, ``train``,
``early_exit``, ``gathered``, ``memory``, ``grid``, ``cuda_throughput``) and, inside a section,
the order of its entries: the table and the JSON's ``ratios`` list them so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import load_yaml
from harness.contract import EXECUTIONS
from harness.errors import ConfigError
from harness.models import split_overrides
from harness.registry import get_method

#: The shipped plan (``--plan`` reads another).
PLAN_FILE = Path(__file__).resolve().parent.parent / "preset_files" / "bench.yaml"
#: How a target compares a measured value with its bound (``"<= 1.05"``: at most 1.05).
COMPARISONS = ("<=", "<", ">=", ">")
#: The sections of a plan file, in the order their figures are listed.
SECTIONS = (
    "vanilla",
    "harness_vs_bare",
    "train",
    "early_exit",
    "gathered",
    "memory",
    "grid",
    "cuda_throughput",
)


@dataclass(frozen=True)
class Target:
    """What a figure must reach: ``comparison`` (one of :data:`COMPARISONS`) ``bound``, and the
    ``goal`` it aims at beyond that (shown, never judged)."""

    comparison: str
    bound: float
    goal: float | None = None

    @property
    def text(self) -> str:
        """``"<= 1.05"``: the target as the table and the JSON show it."""
        return f"{self.comparison} {self.bound:g}"


@dataclass(frozen=True)
class Figure:
    """One ratio of the bench: its key (in the table and the JSON's ``ratios``) and target."""

    key: str
    target: Target


@dataclass(frozen=True)
class Subject:
    """A model a figure builds: a registered method, the evaluation mode it is measured in
    (None for training) and method-config overrides (config key -> value)."""

    method: str
    mode: str | None = None
    config: tuple[tuple[str, Any], ...] = ()

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.config)


@dataclass(frozen=True)
class MethodFigure:
    """A figure of one method: in ``train``, one training step of ``subject`` over one of the
    vanilla network of the same depth; in ``early_exit``, ``subject``'s early exit (calibrated
    halting) over the vanilla network, per depth: the realized speed-up divided by the FLOP
    reduction."""

    subject: Subject
    figure: Figure


@dataclass(frozen=True)
class GatheredPlan:
    """``subject`` in ``execution`` (timed beside ``compare`` and the vanilla network), its
    halting calibrated in ``compare``; ``attributes`` are set on the model first (a model
    without one of them has no such execution: the figure is skipped)."""

    subject: Subject
    execution: str
    compare: str
    attributes: tuple[tuple[str, Any], ...]
    figure: Figure


@dataclass(frozen=True)
class MemoryPlan:
    """Peak memory of ``subject``'s early exit over the vanilla network's (``vs_vanilla``) and
    over ``against``'s early exit (``vs_against``). Each side is named ``label`` in the JSON's
    details (default: its method)."""

    subject: Subject
    label: str
    against: Subject
    against_label: str
    vs_vanilla: Figure
    vs_against: Figure


@dataclass(frozen=True)
class GridPlan:
    """``preset`` through the grid vs the same trials in a plain loop; when the settings cut the
    trial count, only ``quick_methods`` plus vanilla depths run."""

    preset: str
    quick_methods: tuple[str, ...]
    figure: Figure
    #: Config overrides (dotted keys, as ``--set``) that make each trial long enough for the
    #: figure to weigh the grid's per-trial work rather than Ray's start.
    overrides: tuple[tuple[str, Any], ...] = ()
    #: The shortest trial (seconds, in the plain loop) for which the figure is judged.
    min_trial_seconds: float = 60.0


@dataclass(frozen=True)
class ThroughputFigure:
    """Training images/s of the vanilla network of ``depth`` (CUDA only)."""

    depth: int
    figure: Figure


@dataclass(frozen=True)
class BenchPlan:
    """A validated plan file (see the module docstring); a missing section measures nothing."""

    source: str
    vanilla: str
    harness_vs_bare: Figure | None = None
    train: tuple[MethodFigure, ...] = ()
    early_exit: tuple[MethodFigure, ...] = ()
    gathered: GatheredPlan | None = None
    memory: MemoryPlan | None = None
    grid: GridPlan | None = None
    cuda_throughput: tuple[ThroughputFigure, ...] = ()

    def figures(self, cuda: bool = False) -> list[Figure]:
        """Every figure in table order; the CUDA throughput ones only if ``cuda``."""
        out = [self.harness_vs_bare] if self.harness_vs_bare else []
        out += [f.figure for f in self.train]
        out += [f.figure for f in self.early_exit]
        out += [self.gathered.figure] if self.gathered else []
        out += [self.memory.vs_vanilla, self.memory.vs_against] if self.memory else []
        out += [self.grid.figure] if self.grid else []
        if cuda:
            out += [f.figure for f in self.cuda_throughput]
        return out

    def targets(self, cuda: bool = False) -> dict[str, Target]:
        """Figure key -> target, in table order."""
        return {f.key: f.target for f in self.figures(cuda)}

    @property
    def cpu_keys(self) -> tuple[str, ...]:
        """The keys of a CPU run's ``ratios``."""
        return tuple(self.targets(cuda=False))


# -- reading and validating ----------------------------------------------------------------------


class _Reader:
    """Checks one plan file, naming each field by its path (``early_exit[1].target``)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"bench plan {self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], required=()) -> dict:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping with keys {', '.join(allowed)}")
        unknown = [str(k) for k in value if k not in allowed]
        if unknown:
            raise self.fail(
                where, f"unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}"
            )
        missing = [k for k in required if k not in value]
        if missing:
            raise self.fail(f"{where}.{missing[0]}" if where else missing[0], "missing")
        return dict(value)

    def items(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, "expected a list")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"expected a number, got {value!r}")
        return float(value)

    def depth(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(where, f"expected a positive integer depth, got {value!r}")
        return value

    def method(self, value: Any, where: str) -> str:
        name = self.text(value, where)
        try:
            get_method(name)
        except ConfigError as err:
            raise self.fail(where, str(err)) from None
        return name

    def target(self, value: Any, goal: float | None, where: str) -> Target:
        match = _TARGET.fullmatch(value.strip()) if isinstance(value, str) else None
        parts = match.groups() if match else ()
        if not parts:
            raise self.fail(
                where,
                f"{value!r} is not a target; write COMPARISON NUMBER with COMPARISON one of "
                f"{', '.join(COMPARISONS)} (e.g. '<= 1.05')",
            )
        try:
            bound = float(parts[1])
        except ValueError:
            bound = math.nan
        if not math.isfinite(bound):
            raise self.fail(where, f"{parts[1]!r} is not a finite number")
        return Target(parts[0], bound, goal)

    def figure(self, tree: dict, where: str) -> Figure:
        key = self.text(tree.get("key"), f"{where}.key")
        goal = tree.get("goal")
        if goal is not None:
            goal = self.number(goal, f"{where}.goal")
        return Figure(key, self.target(tree.get("target"), goal, f"{where}.target"))

    def subject(self, tree: dict, where: str, mode: bool = True) -> Subject:
        method = self.method(tree.get("method"), f"{where}.method")
        spec = get_method(method)
        chosen = None
        if mode:
            chosen = self.text(tree.get("mode"), f"{where}.mode")
            modes = tuple(spec.model_cls.eval_modes)
            if chosen not in modes:
                raise self.fail(
                    f"{where}.mode",
                    f"{chosen!r} is not a mode of {method}; allowed values: {', '.join(modes)}",
                )
        config = tree.get("config") or {}
        if not isinstance(config, Mapping):
            raise self.fail(f"{where}.config", "expected a mapping of method-config keys")
        try:
            model_keys, _ = split_overrides(method, dict(config))
        except ConfigError as err:
            raise self.fail(f"{where}.config", str(err)) from None
        if model_keys:
            raise self.fail(
                f"{where}.config",
                f"{sorted(model_keys)[0]!r} is a backbone field; the bench sets the backbone",
            )
        return Subject(method, chosen, tuple(sorted(config.items())))

    def execution(self, value: Any, where: str) -> str:
        if value not in EXECUTIONS:
            raise self.fail(where, f"{value!r}; allowed values: {', '.join(EXECUTIONS)}")
        return value


_TARGET = re.compile(r"(<=|>=|<|>)\s*(\S+)")
_FIGURE = ("key", "target", "goal")
_SUBJECT = ("method", "mode", "config")


def parse_plan(tree: Mapping[str, Any], source: str = "<plan>") -> BenchPlan:
    """A :class:`BenchPlan` from a plan file's mapping (see :func:`load_plan`)."""
    r = _Reader(source)
    tree = r.mapping(tree, "(top level)", SECTIONS + ("description",), required=("vanilla",))
    vanilla = r.method(tree["vanilla"], "vanilla")
    plan: dict[str, Any] = {"source": source, "vanilla": vanilla}

    if tree.get("harness_vs_bare") is not None:
        section = r.mapping(tree["harness_vs_bare"], "harness_vs_bare", _FIGURE, ("key",))
        plan["harness_vs_bare"] = r.figure(section, "harness_vs_bare")

    train = []
    for i, entry in enumerate(r.items(tree.get("train"), "train")):
        where = f"train[{i}]"
        entry = r.mapping(entry, where, ("method", "config", *_FIGURE), ("method", "key"))
        train.append(MethodFigure(r.subject(entry, where, mode=False), r.figure(entry, where)))
    timed = [vanilla]
    for i, entry in enumerate(train):
        if entry.subject.method in timed:
            raise r.fail(
                f"train[{i}].method",
                f"{entry.subject.method!r} is timed twice (or is the vanilla method); "
                "each method once",
            )
        timed.append(entry.subject.method)
    plan["train"] = tuple(train)

    exits = []
    for i, entry in enumerate(r.items(tree.get("early_exit"), "early_exit")):
        where = f"early_exit[{i}]"
        entry = r.mapping(entry, where, _SUBJECT + _FIGURE, ("method", "mode", "key"))
        exits.append(MethodFigure(r.subject(entry, where), r.figure(entry, where)))
    plan["early_exit"] = tuple(exits)

    if tree.get("gathered") is not None:
        keys = (*_SUBJECT, "execution", "compare", "attributes", *_FIGURE)
        entry = r.mapping(tree["gathered"], "gathered", keys, ("method", "mode", "key"))
        attributes = entry.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            raise r.fail("gathered.attributes", "expected a mapping of model attribute -> value")
        gathered = GatheredPlan(
            r.subject(entry, "gathered"),
            r.execution(entry.get("execution", "gathered"), "gathered.execution"),
            r.execution(entry.get("compare", "masked"), "gathered.compare"),
            tuple(attributes.items()),
            r.figure(entry, "gathered"),
        )
        if gathered.execution == gathered.compare:
            raise r.fail("gathered.compare", "must differ from gathered.execution")
        plan["gathered"] = gathered

    if tree.get("memory") is not None:
        keys = (*_SUBJECT, "label", "against", "vs_vanilla", "vs_against")
        need = ("method", "mode", "against", "vs_vanilla", "vs_against")
        entry = r.mapping(tree["memory"], "memory", keys, need)
        against = r.mapping(
            entry["against"], "memory.against", (*_SUBJECT, "label"), ("method", "mode")
        )
        subject, other = r.subject(entry, "memory"), r.subject(against, "memory.against")
        label = r.text(entry.get("label", subject.method), "memory.label")
        other_label = r.text(against.get("label", other.method), "memory.against.label")
        if len({label, other_label, "vanilla"}) < 3:
            raise r.fail(
                "memory.label",
                f"the two sides are both named {label!r} (or 'vanilla'); give each a distinct "
                "label",
            )
        figures = [
            r.figure(r.mapping(entry[name], f"memory.{name}", _FIGURE, ("key",)), f"memory.{name}")
            for name in ("vs_vanilla", "vs_against")
        ]
        plan["memory"] = MemoryPlan(subject, label, other, other_label, *figures)

    if tree.get("grid") is not None:
        allowed = ("preset", "quick_methods", "set", "min_trial_seconds", *_FIGURE)
        entry = r.mapping(tree["grid"], "grid", allowed, ("key",))
        quick = tuple(
            r.method(m, f"grid.quick_methods[{i}]")
            for i, m in enumerate(r.items(entry.get("quick_methods"), "grid.quick_methods"))
        )
        preset = r.text(entry.get("preset", "smoke"), "grid.preset")
        overrides = entry.get("set") or {}
        if not isinstance(overrides, Mapping) or not all(
            isinstance(k, str) and k for k in overrides
        ):
            raise r.fail("grid.set", "expected a mapping of dotted config keys to values")
        shortest = r.number(entry.get("min_trial_seconds", 60.0), "grid.min_trial_seconds")
        if shortest < 0:
            raise r.fail("grid.min_trial_seconds", f"expected >= 0, got {shortest:g}")
        plan["grid"] = GridPlan(
            preset, quick, r.figure(entry, "grid"), tuple(overrides.items()), shortest
        )

    cuda = []
    for i, entry in enumerate(r.items(tree.get("cuda_throughput"), "cuda_throughput")):
        where = f"cuda_throughput[{i}]"
        entry = r.mapping(entry, where, ("depth", *_FIGURE), ("depth", "key"))
        cuda.append(
            ThroughputFigure(r.depth(entry["depth"], f"{where}.depth"), r.figure(entry, where))
        )
    plan["cuda_throughput"] = tuple(cuda)

    result = BenchPlan(**plan)
    keys = [f.key for f in result.figures(cuda=True)]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise r.fail("key", f"{repeated[0]!r} names two figures; each key must be unique")
    return result


def load_plan(path: str | Path | None = None) -> BenchPlan:
    """Read and validate a plan file (default: the shipped :data:`PLAN_FILE`)."""
    path = Path(path) if path is not None else PLAN_FILE
    return parse_plan(load_yaml(path, "--plan"), str(path))
