"""The layout rules of DESIGN.md section 2 that import-linter alone cannot state.

- The harness names no method: no built-in method's name appears in ``harness/**/*.py`` as a
  string literal or as part of an identifier. Preset files (``harness/preset_files/*.yaml``)
  may name methods: a preset is a choice of methods. Prose is not checked: comments,
  docstrings and the help texts argparse shows (a docstring or a command's examples may show
  ``--method pact``, as the README does). What is checked is everything code can act on or
  report: every other string literal (dict keys, defaults, comparisons, row values, error
  messages) and every name. Matching is by word and case-sensitive on the registered (lower-case)
  names: ``exact``, ``impact``, ``action``, ``resnet101`` and ``SACT`` (the paper, as in "the
  SACT code's recipe") are not method names; ``act_d14_s0``, ``"spatial_pact"`` and a variable
  ``pact_rows`` are.
- No method is a default: ``RunConfig.method`` and a preset's ``vanilla_method`` have none.
- The plug-in API: ``methods``, ``baselines`` and the example plug-in import from ``harness``
  only ``harness.contract`` and ``harness.errors``. import-linter's forbidden contract lists
  the other harness modules by name, so this test checks that the list is every one of them
  (a new harness module must be added there, or the contract would not forbid it).
"""

from __future__ import annotations

import ast
import io
import pkgutil
import re
import tokenize
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import harness
from harness.config import RunConfig
from harness.errors import ConfigError
from harness.presets import parse_preset
from harness.registry import ENTRY_POINT_GROUP

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "harness"
#: The plug-in API: the only harness modules a method or a backbone may import.
PLUGIN_API = {"harness.contract", "harness.errors"}
#: Keyword arguments whose text argparse shows as help: prose, like docstrings.
PROSE_KEYWORDS = {"help", "help_text", "epilog", "description", "usage"}
#: The project's own name contains a method's name; it is not one.
PROJECT_NAME = re.compile(r"pact[-_]harness", re.IGNORECASE)
#: Literals that contain a method's name as a word but mean something else, by file. Each entry
#: says why; anything else that names a method fails.
ALLOWED_LITERALS = {
    ("harness/contract.py", "sact"): "ModelSpec.variant: the backbone variant named after the "
    "SACT code's ResNet (baselines.BACKBONE_VARIANTS), not the method",
    ("harness/results.py", "backbone variant (sact, he, torchvision)"): "variant column: "
    "backbone variant names",
}


def builtin_methods() -> set[str]:
    """The names of the methods this distribution publishes (its own entry points)."""
    names = {
        ep.name
        for ep in entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.metadata["Name"] == "pact-harness"
    }
    assert {"resnet", "act", "pact"} <= names, names  # the install is the one under test
    return names


def _word_pattern(names: set[str]) -> re.Pattern:
    # A name is a word when no letter or digit touches it: "act_d14" and "spatial_pact" name
    # methods, "exact", "action" and "resnet101" do not.
    alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def _prose(tree: ast.AST) -> set[int]:
    """``id`` of every literal that is prose: docstrings (module, class, function) and the
    help texts argparse shows (``help=``, ``epilog=``, ``description=``, ``usage=``, the
    ``help_text=`` of :mod:`harness.cli.flags`' helpers, and the
    module-level constants passed there, such as a command's ``EXAMPLES``)."""
    found: set[int] = set()
    help_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    found.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in PROSE_KEYWORDS:
            for part in ast.walk(node.value):
                found.add(id(part))
                if isinstance(part, ast.Name):
                    help_names.add(part.id)
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in help_names for t in node.targets
        ):
            found.update(id(part) for part in ast.walk(node.value))
    return found


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal but docstrings; an f-string is one literal
    whose placeholders read as ``0`` (``f"resnet{depth}"`` is ``resnet0``, no method)."""
    skip = _prose(tree)
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.JoinedStr) and id(node) not in skip:
            parts = [
                v.value if isinstance(v, ast.Constant) else "0" for v in node.values
            ]  # a FormattedValue is a placeholder
            out.append((node.lineno, "".join(map(str, parts))))
            for value in node.values:  # expressions inside the placeholders
                if isinstance(value, ast.FormattedValue):
                    visit(value)
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append((node.lineno, node.value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _identifiers(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every name token (identifiers, attributes, keywords)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [(tok.start[0], tok.string) for tok in tokens if tok.type == tokenize.NAME]


def method_names_in(path: Path, names: set[str]) -> list[str]:
    """``file:line: ...`` for every literal or identifier of ``path`` that names a method."""
    source = path.read_text()
    relative = path.relative_to(ROOT).as_posix()
    words = _word_pattern(names)
    found = []
    for line, text in _literals(ast.parse(source)):
        if (relative, text) in ALLOWED_LITERALS:
            continue
        match = words.search(PROJECT_NAME.sub("", text))
        if match:
            found.append(f"{relative}:{line}: {match.group(0)!r} in the literal {text[:60]!r}")
    for line, name in _identifiers(source):
        parts = set(PROJECT_NAME.sub("", name).split("_")) | {name}
        hit = sorted(parts & names)
        if hit:
            found.append(f"{relative}:{line}: {hit[0]!r} in the name {name}")
    return found


def test_the_harness_names_no_builtin_method():
    names = builtin_methods()
    found = [hit for path in sorted(HARNESS.rglob("*.py")) for hit in method_names_in(path, names)]
    assert not found, (
        "the harness names built-in methods (method knowledge belongs in the method's "
        "MethodSpec or in a preset file):\n" + "\n".join(found)
    )


def test_the_scan_finds_names_and_skips_prose_and_other_words():
    names = {"act", "pact", "spatial_pact", "resnet"}
    source = '''
"""Docstrings may say create_model("pact") and act."""
# comments may say act and pact
EXACT = "exact impact, action, resnet101, SACT code, pact-harness"
DEPTH = 8
name = f"resnet{DEPTH}"
mode = "act"
trial = f"act_d{DEPTH}_s0"
rows = {"spatial_pact": 1}
pact_rows = []
def f(p):
    """act"""
    p.add_argument("--x", help="for act or " + "pact", epilog=EXAMPLES)
    return "fine"
EXAMPLES = "pact-harness profile --method resnet,act"
'''
    tree_hits = []
    for line, text in _literals(ast.parse(source)):
        match = _word_pattern(names).search(PROJECT_NAME.sub("", text))
        if match:
            tree_hits.append((line, match.group(0)))
    assert tree_hits == [(7, "act"), (8, "act"), (9, "spatial_pact")]
    idents = [(line, n) for line, n in _identifiers(source) if set(n.split("_")) & names]
    assert idents == [(10, "pact_rows")]


def _harness_modules() -> set[str]:
    """Every top-level module and subpackage of ``harness``."""
    return {f"harness.{m.name}" for m in pkgutil.iter_modules(harness.__path__)}


def _plugin_api_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for contract in config["contracts"]:
        if contract["type"] == "forbidden" and "methods" in contract["source_modules"]:
            if any(m.startswith("harness.") for m in contract["forbidden_modules"]):
                return contract
    raise AssertionError("pyproject.toml has no forbidden contract methods -> harness.*")


def test_plugin_api_contract_forbids_every_other_harness_module():
    contract = _plugin_api_contract()
    assert {"methods", "baselines"} <= set(contract["source_modules"])
    forbidden = set(contract["forbidden_modules"])
    expected = _harness_modules() - PLUGIN_API
    assert PLUGIN_API <= _harness_modules()
    assert not forbidden & PLUGIN_API
    missing, stale = sorted(expected - forbidden), sorted(forbidden - expected)
    assert not missing, (
        f"pyproject.toml: add {', '.join(missing)} to the forbidden_modules of the contract "
        f"{contract['name']!r}: methods and baselines import only {sorted(PLUGIN_API)}"
    )
    assert not stale, f"pyproject.toml: {', '.join(stale)} in forbidden_modules no longer exist"


def test_no_method_is_a_default():
    """A run and a preset's vanilla series name their method; the harness supplies none."""
    assert RunConfig().method == ""
    tree = {"name": "x", "methods": {"act": {}}, "depths": [8], "seeds": [0], "vanilla_depths": [8]}
    with pytest.raises(ConfigError, match=r"vanilla_depths=\[8\] needs vanilla_method"):
        parse_preset(tree)
    assert parse_preset({**tree, "vanilla_method": "resnet"}).vanilla_method == "resnet"
    assert parse_preset({**tree, "vanilla_depths": []}).vanilla_method == ""
