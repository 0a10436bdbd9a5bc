"""The method registry.

Every method, built-in or third-party, is a :class:`~harness.contract.MethodSpec` published under
the entry-point group ``pact_harness.methods``::

    # your package's pyproject.toml
    [project.entry-points."pact_harness.methods"]
    my_method = "my_package.my_method:SPEC"

After ``pip install -e .`` of your package, ``get_method("my_method")`` finds it and
``pact-harness train --method my_method`` trains it. Entry points are loaded lazily, on the first
lookup. Tests and notebooks can also call :func:`register` directly.

What can go wrong with a plug-in stays with that plug-in: an entry point that fails to import, or
whose object breaks the contract (:func:`check_spec`), is recorded as *broken* with a one-line
reason. :func:`get_method` on that name raises a ``ConfigError`` carrying the reason,
``pact-harness methods`` lists it, and every other method keeps working. A name published by two
packages is broken too, with both named: a plug-in never shadows a built-in (or another plug-in).

    >>> list_methods()            # every healthy registered name, sorted
    >>> list_methods("*act")      # fnmatch filter
    >>> broken_methods()          # {name: reason} of the plug-ins that could not be registered
    >>> get_method("act").config_cls
    >>> method_origin("act")      # {"name": "pact-harness", "version": ..., "entry_point": ...}
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import sys
import traceback
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from harness.config import config_key
from harness.contract import BRANCH_PLACEMENTS, AdaptiveModel, MethodSpec
from harness.errors import ConfigError

ENTRY_POINT_GROUP = "pact_harness.methods"

_REGISTRY: dict[str, MethodSpec] = {}
#: Where each registered method comes from (see :func:`method_origin`).
_ORIGINS: dict[str, dict[str, Any]] = {}
#: Names that could not be registered, with the one-line reason.
_BROKEN: dict[str, str] = {}
_entry_points_loaded = False


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines[:1]) if lines else ""


def _field_rule(config_cls: type, what: str, name: Any) -> str | None:
    """Why ``name`` is not a field of ``config_cls`` (None if it is); the spelling rule."""
    fields = [f.name for f in dataclasses.fields(config_cls)]
    if name in fields:
        return None
    hint = ""
    by_key = {config_key(f): f for f in fields}
    if isinstance(name, str) and name in by_key:
        hint = f" (write the field name {by_key[name]!r}; {name!r} is its config key)"
    shown = ", ".join(fields) or "(none)"
    return f"{what} {name!r} is not a field of {config_cls.__name__}{hint}; fields: {shown}"


def spec_problem(spec: Any) -> str | None:
    """The first way ``spec`` breaks the contract, as one line; None if it keeps it."""
    if not isinstance(spec, MethodSpec):
        return f"is a {type(spec).__name__}, not a harness.contract.MethodSpec"
    if not isinstance(spec.name, str) or not spec.name:
        return f"name {spec.name!r} is not a non-empty string"
    config_cls, model_cls = spec.config_cls, spec.model_cls
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        return f"config_cls {config_cls!r} is not a dataclass"
    no_default = [
        f.name
        for f in dataclasses.fields(config_cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if no_default:
        return (
            f"config_cls {config_cls.__name__}: fields without a default: {', '.join(no_default)}"
        )
    if not callable(getattr(config_cls, "validate", None)):
        return f"config_cls {config_cls.__name__} has no validate() method (MethodConfig)"
    if not (isinstance(model_cls, type) and issubclass(model_cls, AdaptiveModel)):
        shown = model_cls.__name__ if isinstance(model_cls, type) else repr(model_cls)
        return f"model_cls {shown} is not a subclass of harness.contract.AdaptiveModel"
    if inspect.isabstract(model_cls):
        missing = ", ".join(sorted(model_cls.__abstractmethods__))
        return f"model_cls {model_cls.__name__} does not implement the required hooks: {missing}"
    modes = model_cls.eval_modes
    if not modes or not all(isinstance(m, str) for m in modes):
        return f"model_cls {model_cls.__name__}.eval_modes={modes!r} is not a tuple of names"
    for attr in ("random_modes", "threshold_modes", "relaxed_modes"):
        extra = [m for m in getattr(model_cls, attr) if m not in modes]
        if extra:
            return f"model_cls {model_cls.__name__}.{attr} names modes not in eval_modes: {extra}"
    placement = getattr(model_cls, "branch_placement", None)
    if placement is not None and placement not in BRANCH_PLACEMENTS:
        return (
            f"model_cls {model_cls.__name__}.branch_placement={placement!r} is not one of "
            f"{BRANCH_PLACEMENTS} (or None for a model without decision branches)"
        )
    if not callable(spec.build):
        return f"build {spec.build!r} is not callable"
    if spec.time_penalty_field is not None:
        problem = _field_rule(config_cls, "time_penalty_field", spec.time_penalty_field)
        if problem:
            return problem
    for key in spec.search_space:
        problem = _field_rule(config_cls, "search_space key", key)
        if problem:
            return problem
    return None


def check_spec(spec: Any) -> None:
    """Raise ``ConfigError`` if ``spec`` breaks the contract (what registration checks).

    A :class:`MethodSpec` whose ``config_cls`` is a dataclass with defaults and ``validate()``,
    whose ``model_cls`` is a concrete :class:`AdaptiveModel` subclass with consistent modes, and
    whose ``time_penalty_field`` and ``search_space`` keys are field names of ``config_cls``.
    """
    problem = spec_problem(spec)
    if problem:
        name = getattr(spec, "name", None)
        raise ConfigError(f"method {name!r} breaks the contract: {problem}")


def _dist_of(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _describe(ep: EntryPoint) -> str:
    """``my_pkg.mod:SPEC (my-plugin 1.0)``: the entry point's value and distribution."""
    name, version = _dist_of(ep)
    package = f"{name} {version}" if name else "unknown distribution"
    return f"{ep.value} ({package})"


def _origin_of(ep: EntryPoint) -> dict[str, Any]:
    name, version = _dist_of(ep)
    return {"name": name, "version": version, "entry_point": ep.value}


def _add(spec: MethodSpec, origin: dict[str, Any]) -> MethodSpec:
    check_spec(spec)
    broken = _BROKEN.get(spec.name)
    if broken is not None:
        raise ConfigError(f"method {spec.name!r} is taken (broken: {broken})")
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec:
        taken_by = _ORIGINS.get(spec.name, {})
        where = f" by {taken_by['entry_point']} ({taken_by['name']} {taken_by['version']})"
        raise ConfigError(
            f"method {spec.name!r} is already registered"
            f"{where if taken_by.get('entry_point') else ''}"
        )
    _REGISTRY[spec.name] = spec
    _ORIGINS.setdefault(spec.name, origin)
    return spec


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method in-process; ``ConfigError`` if the name is taken or the spec is invalid.

    The installed entry points are loaded first, so a name an installed package publishes is
    taken. Registering the very same spec object again is a no-op.
    """
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register() expects a MethodSpec, got {type(spec).__name__}")
    _load_entry_points()
    return _add(spec, {"name": None, "version": None, "entry_point": None})


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    by_name: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        same = by_name.setdefault(ep.name, [])
        if all((_dist_of(ep), ep.value) != (_dist_of(o), o.value) for o in same):
            same.append(ep)
    for name, eps in by_name.items():
        if len(eps) > 1:
            _BROKEN[name] = (
                f"published by more than one package: {' and '.join(map(_describe, eps))}; "
                "uninstall or rename all but one"
            )
            _REGISTRY.pop(name, None)
            continue
        ep = eps[0]
        try:
            spec = ep.load()
        except Exception as err:  # noqa: BLE001 - any import failure marks this plug-in only
            _BROKEN[name] = (
                f"{_describe(ep)} failed to import: {type(err).__name__}: {_one_line(err)}"
            )
            continue
        problem = spec_problem(spec)
        if problem is None and spec.name != name:
            problem = f"publishes a method named {spec.name!r}; the two names must agree"
        if problem is None and name in _REGISTRY and _REGISTRY[name] is not spec:
            problem = "the name is already registered in-process"
        if problem is not None:
            _BROKEN[name] = f"{_describe(ep)}: {problem}"
            _REGISTRY.pop(name, None)
            continue
        _REGISTRY[name] = spec
        _ORIGINS[name] = _origin_of(ep)


def plugin_frame(err: BaseException) -> tuple[str, str, int, str] | None:
    """Where inside a registered method's package ``err`` was raised: ``(who, file, line,
    module)`` of the innermost traceback frame in a package that defines a method's model class
    (``methods`` for the built-in ones, ``aig_gates``, your package), or None when no frame is
    there (an error of the harness itself). ``who`` is ``method 'name'`` when the file sits
    beside one method's model class, else ``package 'name'`` (shared code)."""
    tops: dict[Path, str] = {}
    beside: dict[Path, str] = {}
    for name, spec in _REGISTRY.items():
        module = sys.modules.get(spec.model_cls.__module__)
        top = sys.modules.get(spec.model_cls.__module__.split(".")[0])
        if module is None or top is None or not getattr(top, "__file__", None):
            continue
        tops[Path(top.__file__).resolve().parent] = top.__name__
        beside.setdefault(Path(module.__file__).resolve().parent, name)
    found = None
    for frame, line in traceback.walk_tb(err.__traceback__):
        file = Path(frame.f_code.co_filename).resolve()
        for root, package in tops.items():
            if file.is_relative_to(root):
                owners = [(len(d.parts), n) for d, n in beside.items() if file.is_relative_to(d)]
                who = f"method {max(owners)[1]!r}" if owners else f"package {package!r}"
                relative = file.relative_to(root.parent).as_posix()
                found = (who, relative, line, str(frame.f_globals.get("__name__", "?")))
    return found


def describe_plugin_error(err: BaseException) -> str | None:
    """One line for an exception raised inside a method's package (see :func:`plugin_frame`):
    ``method 'x' raised ValueError at aig_gates/__init__.py:123 (module aig_gates): ...``."""
    where = plugin_frame(err)
    if where is None:
        return None
    who, file, line, module = where
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{who} raised {type(err).__name__} at {file}:{line} (module {module})" + (
        f": {message}" if message else ""
    )


def list_methods(pattern: str = "*") -> list[str]:
    """Sorted names of the healthy registered methods matching the fnmatch ``pattern``."""
    _load_entry_points()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def broken_methods(pattern: str = "*") -> dict[str, str]:
    """``{name: one-line reason}`` of the plug-ins that could not be registered, sorted."""
    _load_entry_points()
    return {name: _BROKEN[name] for name in sorted(_BROKEN) if fnmatch.fnmatch(name, pattern)}


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; ``ConfigError`` listing the known names otherwise (an
    empty name is a run that names no method: the harness has no default one)."""
    _load_entry_points()
    if name in _BROKEN:
        raise ConfigError(f"method {name!r} is broken: {_BROKEN[name]}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = ", ".join(sorted(_REGISTRY)) or "(none)"
    broken = f" (broken: {', '.join(sorted(_BROKEN))})" if _BROKEN else ""
    if not name:
        raise ConfigError(
            f"no method given: name one (--method NAME, or method: in a config file); "
            f"registered methods: {known}{broken}"
        )
    raise ConfigError(f"unknown method {name!r}; registered methods: {known}{broken}")


def method_origin(name: str) -> dict[str, Any]:
    """The package a method comes from: ``{"name", "version", "entry_point"}``.

    ``name`` and ``version`` are the distribution's (``pact-harness`` for the built-ins), from the
    entry point's metadata; all three are None for a method registered in-process. Recorded in a
    run's ``provenance.json`` as ``method_package``.
    """
    get_method(name)
    return dict(_ORIGINS.get(name) or {"name": None, "version": None, "entry_point": None})


def time_penalty_key(spec: MethodSpec) -> str | None:
    """The config key (as in files and flags) of the method's time penalty; None if vanilla."""
    return config_key(spec.time_penalty_field) if spec.time_penalty_field else None
