"""Structure checks that no tool does for us: every config field is read by some code.

(The import layers are checked by import-linter: ``lint-imports`` in ``make test``.)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path

import pytest

from harness.config import RunConfig, config_key
from harness.registry import get_method, list_methods

ROOT = Path(__file__).resolve().parents[1]


def _sources(*folders: str, skip: tuple[str, ...] = ()) -> str:
    files = [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]
    return "\n".join(p.read_text() for p in files if p.name not in skip)


def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, attribute name) of every leaf field of a config dataclass tree."""
    out = []
    for f in dataclasses.fields(cls):
        tp = f.type if isinstance(f.type, type) else None
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out += _leaf_fields(type(default), f"{prefix}{f.name}.")
        elif tp is not None and dataclasses.is_dataclass(tp):
            out += _leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + config_key(f.name), f.name))
    return out


def _consumed(attribute: str, source: str) -> bool:
    """Read as an attribute (``cfg.optim.lr``) or by name (``getattr(x, "lr")``)."""
    return re.search(rf"\.{attribute}\b|[\"']{attribute}[\"']", source) is not None


# The backbone fields (model.*) are read where backbones are built: methods and baselines.
HARNESS = _sources("harness", skip=("config.py",))
BACKBONES = _sources("harness", "methods", "baselines", skip=("config.py", "contract.py"))


@pytest.mark.parametrize(("key", "attribute"), _leaf_fields(RunConfig))
def test_every_run_config_field_is_read_somewhere(key, attribute):
    source = BACKBONES if key.startswith("model.") else HARNESS
    assert _consumed(attribute, source), f"config key {key} is accepted but nothing reads it"


@pytest.mark.parametrize("method", list_methods())
def test_every_method_config_field_is_read_by_its_method(method):
    spec = get_method(method)
    module = sys.modules[spec.config_cls.__module__]
    folder = Path(inspect.getsourcefile(module)).parent  # the method's package, plug-ins too
    source = _sources(str(folder)) + _sources("methods/common")
    for f in dataclasses.fields(spec.config_cls):
        assert _consumed(f.name, source), f"{method}: method.{config_key(f.name)} is never read"
