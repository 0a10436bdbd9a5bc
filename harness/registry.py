"""The method registry.

Every method, built-in or third-party, is a :class:`~harness.contract.MethodSpec` published under
the entry-point group ``pact_harness.methods``::

    # your package's pyproject.toml
    [project.entry-points."pact_harness.methods"]
    my_method = "my_package.my_method:SPEC"

After ``pip install -e .`` of your package, ``get_method("my_method")`` finds it and
``pact-harness train --method my_method`` trains it. Entry points are loaded lazily, on the first
lookup. Tests and notebooks can also call :func:`register` directly. A duplicate name is an error,
so a plug-in can never silently replace another method.

    >>> list_methods()            # every registered name, sorted
    >>> list_methods("*act")      # fnmatch filter
    >>> get_method("act").config_cls
"""

from __future__ import annotations

import fnmatch
from importlib.metadata import entry_points

from harness.config import config_key
from harness.contract import MethodSpec
from harness.errors import ConfigError

ENTRY_POINT_GROUP = "pact_harness.methods"

_REGISTRY: dict[str, MethodSpec] = {}
_entry_points_loaded = False


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; raises ``ConfigError`` if the name is taken by another spec."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register() expects a MethodSpec, got {type(spec).__name__}")
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec:
        raise ConfigError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            spec = ep.load()
        except Exception as err:
            raise ConfigError(
                f"method plug-in {ep.name!r} ({ep.value}) failed to import: "
                f"{type(err).__name__}: {err}"
            ) from err
        if spec.name != ep.name:
            raise ConfigError(
                f"entry point {ep.name!r} ({ep.value}) publishes a method named {spec.name!r}; "
                "the two names must agree"
            )
        register(spec)
    _entry_points_loaded = True


def list_methods(pattern: str = "*") -> list[str]:
    """Sorted names of registered methods matching the fnmatch ``pattern``."""
    _load_entry_points()
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``; ``ConfigError`` listing the known names otherwise."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise ConfigError(f"unknown method {name!r}; registered methods: {known}") from None


def time_penalty_key(spec: MethodSpec) -> str | None:
    """The config key (as in files and flags) of the method's time penalty; None if vanilla."""
    return config_key(spec.time_penalty_field) if spec.time_penalty_field else None
