"""The method registry: entry-point discovery, wildcard listing, errors, an in-process plug-in."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from dataclasses import dataclass
from importlib import metadata
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import methods.pact
import methods.template
from baselines import build_backbone
from harness import registry, store
from harness.cli import main
from harness.config import RunConfig, from_dict
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput, ModelSpec
from harness.errors import ConfigError
from harness.train import run_trial

BUILT_IN = ["act", "pact", "resnet", "sact", "spatial_pact"]
#: Every method installed in this environment (built-ins and real plug-ins such as the
#: example examples/aig_gates), before a test adds fake distributions.
INSTALLED = sorted({ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)})


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register methods without leaking them into other tests."""
    registry.list_methods()  # load the entry points into the real registry first
    for state in ("_REGISTRY", "_ORIGINS", "_BROKEN"):
        monkeypatch.setattr(registry, state, dict(getattr(registry, state)))


def test_built_in_methods_come_from_entry_points():
    published = {ep.name: ep for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert set(BUILT_IN) <= set(published)
    for name in BUILT_IN:
        spec = registry.get_method(name)
        assert spec is published[name].load()  # the registered object is the published one
        assert spec.name == name
        assert issubclass(spec.model_cls, AdaptiveModel)


def test_list_methods_is_sorted_and_filters_with_fnmatch():
    names = registry.list_methods()
    assert names == sorted(names)
    assert set(BUILT_IN) <= set(names)
    # Expected lists computed with plain string tests (other plug-ins may be installed).
    ends_in_act = [n for n in names if n.endswith("act")]
    assert registry.list_methods("*act") == ends_in_act
    assert {"act", "pact", "sact", "spatial_pact"} <= set(ends_in_act)
    four_letters = [n for n in names if len(n) == 4 and n.endswith("act")]
    assert registry.list_methods("?act") == four_letters
    assert {"pact", "sact"} <= set(four_letters) and "act" not in four_letters
    assert registry.list_methods("spatial_*") == [n for n in names if n.startswith("spatial_")]
    assert registry.list_methods("no-such-*") == []


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(ConfigError) as err:
        registry.get_method("adaptive_magic")
    message = str(err.value)
    assert message.startswith("unknown method 'adaptive_magic'; registered methods: ")
    listed = message.split("registered methods: ")[1].split(", ")
    assert listed == registry.list_methods()


def test_duplicate_name_is_an_error_but_reregistering_the_same_spec_is_not(scratch_registry):
    resnet = registry.get_method("resnet")
    assert registry.register(resnet) is resnet  # idempotent for the very same spec
    impostor = MethodSpec("resnet", resnet.config_cls, resnet.model_cls, resnet.build)
    with pytest.raises(ConfigError, match="method 'resnet' is already registered"):
        registry.register(impostor)
    assert registry.get_method("resnet") is resnet


def test_register_rejects_non_specs():
    with pytest.raises(TypeError, match="expects a MethodSpec"):
        registry.register({"name": "dict_method"})


# -- a third-party plug-in, registered in-process ---------------------------------------------


@dataclass(frozen=True)
class TruncatedConfig:
    """Run only the first ``units_per_block`` units of every block."""

    units_per_block: int = 1

    def validate(self) -> None:
        """At least one unit per block."""
        if self.units_per_block < 1:
            raise ConfigError(f"method.units_per_block={self.units_per_block} must be >= 1")


class TruncatedResNet(AdaptiveModel):
    """A static 'adaptive' model: each block stops after a fixed number of units."""

    eval_modes = ("truncated",)

    def __init__(self, backbone, config: TruncatedConfig):
        super().__init__()
        self.backbone = backbone
        self.keep = config.units_per_block

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Stem, the first ``keep`` units of each block, head."""
        x = self.backbone.stem(images)
        units = []
        for block in self.backbone.blocks:
            executed = min(self.keep, len(block))
            for unit in list(block)[:executed]:
                x = unit(x)
            units.append(torch.arange(len(block)).expand(x.shape[0], -1) < executed)
        logits = self.backbone.head(x)
        return ModelOutput(logits=logits, units_ran=units)

    def executions_for(self, mode: str) -> tuple[str, ...]:
        """Masked only."""
        return ("masked",)

    def decision_branches(self) -> list[list[nn.Module]]:
        """No halting branches."""
        return [[] for _ in self.backbone.blocks]


def build_truncated(model: ModelSpec, config: TruncatedConfig) -> TruncatedResNet:
    """The truncated network on the requested backbone."""
    config.validate()
    backbone = build_backbone(model.dataset, model.depth, model.variant, model.num_classes)
    return TruncatedResNet(backbone, config)


TRUNCATED = MethodSpec(
    name="truncated_plugin",
    config_cls=TruncatedConfig,
    model_cls=TruncatedResNet,
    build=build_truncated,
    search_space={"units_per_block": [1, 2]},
    description="test plug-in: first k units of every block",
)


def test_in_process_plugin_trains_through_run_trial(
    scratch_registry, tiny_npz_root: Path, tmp_path: Path
):
    registry.register(TRUNCATED)
    assert "truncated_plugin" in registry.list_methods("trunc*")
    cfg = from_dict(
        RunConfig,
        {
            "method": "truncated_plugin",
            "method_config": {"units_per_block": 1},
            "model": {"depth": 14},  # two units per block, so truncation skips one in each
            "data": {"root": str(tiny_npz_root), "train_subset": 64, "test_subset": 20},
            "optim": {"epochs": 1, "batch_size": 32},
            "device": "cpu",
            "progress": "off",
        },
    )
    summary = run_trial(cfg, tmp_path / "plugin_run")
    assert summary["method"] == "truncated_plugin"
    assert summary["depth"] == 14
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    # Analytic: one unit in each of the three blocks, for every image.
    assert summary["units_executed_mean"] == 3.0
    assert summary["units_executed_per_block"] == [1.0, 1.0, 1.0]
    rows = pd.read_csv(tmp_path / "plugin_run" / store.RESULTS_FILE)
    assert rows["eval_mode"].tolist() == ["truncated"]
    assert rows["time_penalty_name"].isna().all() and rows["time_penalty"].tolist() == [0.0]
    # Half of the residual units are skipped, so the FLOPs are below the full network's.
    assert 0.0 < rows["flops_fraction_of_vanilla"].iloc[0] < 1.0
    assert json.loads(rows["units_per_block"].iloc[0]) == [1.0, 1.0, 1.0]
    metrics = store.read_jsonl(tmp_path / "plugin_run" / store.METRICS_FILE)
    assert [m["epoch"] for m in metrics] == [1]
    assert metrics[0]["train_units_executed"] == 3.0


def test_plugin_config_is_validated_before_anything_is_written(
    scratch_registry, tiny_npz_root: Path, tmp_path: Path
):
    registry.register(TRUNCATED)
    cfg = from_dict(
        RunConfig,
        {
            "method": "truncated_plugin",
            "method_config": {"units_per_block": 0},
            "model": {"depth": 8},
            "data": {"root": str(tiny_npz_root)},
        },
    )
    with pytest.raises(ConfigError, match=r"method\.units_per_block=0 must be >= 1"):
        run_trial(cfg, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_in_process_plugin_has_no_package_in_provenance(scratch_registry):
    registry.register(TRUNCATED)
    assert registry.method_origin("truncated_plugin") == {
        "name": None,
        "version": None,
        "entry_point": None,
    }


def test_register_checks_the_contract(scratch_registry):
    bad = dataclasses.replace(TRUNCATED, name="bad_penalty", time_penalty_field="units")
    with pytest.raises(ConfigError, match=r"'bad_penalty' breaks the contract: time_penalty_field"):
        registry.register(bad)
    assert "bad_penalty" not in registry.list_methods()


# -- plug-ins from installed distributions (fake ones, written as real dist-info folders) ------


class HooklessModel(AdaptiveModel):
    """Implements forward only: the required hooks executions_for, decision_branches are missing."""

    def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
        """Never called."""
        raise AssertionError


def _fake_plugin_module() -> types.ModuleType:
    """The module the fake distributions' entry points point at (``fake_plugins:NAME``)."""
    template = methods.template.SPEC
    module = types.ModuleType("fake_plugins")
    module.TEMPLATE = template
    module.TRUNCATED = TRUNCATED
    module.IMPOSTOR_PACT = dataclasses.replace(template, name="pact")
    module.SHARED = dataclasses.replace(template, name="shared")
    module.NOT_A_SPEC = {"name": "not_a_spec"}
    module.BAD_FIELD = dataclasses.replace(template, name="bad_field", time_penalty_field="tau")
    module.KEY_SPELLING = dataclasses.replace(
        methods.pact.PACT_SPEC, name="key_spelling", time_penalty_field="lambda"
    )
    module.BAD_SEARCH = dataclasses.replace(template, name="bad_search", search_space={"n": [1]})
    module.NOT_ADAPTIVE = dataclasses.replace(template, name="not_adaptive", model_cls=nn.Linear)
    module.HOOKLESS = dataclasses.replace(template, name="hookless", model_cls=HooklessModel)
    module.MISNAMED = dataclasses.replace(template, name="other_name")
    return module


def fake_distribution(root: Path, name: str, version: str, entries: dict[str, str]):
    """A ``NAME-VERSION.dist-info`` folder with METADATA and entry_points.txt, as pip writes."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{registry.ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in entries.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return metadata.PathDistribution(info)


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``install(name, version, {entry: "module:attr"}, ...)``: a fresh registry that sees the
    real entry points plus those of the given fake distributions."""
    monkeypatch.setitem(sys.modules, "fake_plugins", _fake_plugin_module())
    real = list(entry_points(group=registry.ENTRY_POINT_GROUP))

    def make(*dists: tuple[str, str, dict[str, str]]) -> None:
        fakes = [
            ep
            for name, version, entries in dists
            for ep in fake_distribution(tmp_path, name, version, entries).entry_points
        ]
        published = metadata.EntryPoints([*real, *fakes])
        monkeypatch.setattr(registry, "entry_points", lambda group: published.select(group=group))
        for state in ("_REGISTRY", "_ORIGINS", "_BROKEN"):
            monkeypatch.setattr(registry, state, {})
        monkeypatch.setattr(registry, "_entry_points_loaded", False)

    return make


def test_installed_plugin_is_registered_with_its_package(install):
    install(("template-plugin", "0.3", {"template": "fake_plugins:TEMPLATE"}))
    assert registry.get_method("template") is methods.template.SPEC
    assert registry.method_origin("template") == {
        "name": "template-plugin",
        "version": "0.3",
        "entry_point": "fake_plugins:TEMPLATE",
    }
    assert registry.method_origin("pact") == {
        "name": "pact-harness",
        "version": metadata.version("pact-harness"),
        "entry_point": "methods.pact:PACT_SPEC",
    }
    assert registry.broken_methods() == {}


def test_a_plugin_never_shadows_a_built_in(install):
    install(("evil-plugin", "1.0", {"pact": "fake_plugins:IMPOSTOR_PACT"}))
    reason = registry.broken_methods()["pact"]
    assert "methods.pact:PACT_SPEC (pact-harness " in reason
    assert "fake_plugins:IMPOSTOR_PACT (evil-plugin 1.0)" in reason
    with pytest.raises(ConfigError) as err:
        registry.get_method("pact")
    assert "evil-plugin 1.0" in str(err.value) and "pact-harness" in str(err.value)
    assert "pact" not in registry.list_methods()
    assert registry.get_method("spatial_pact").name == "spatial_pact"  # the rest still works


def test_two_plugins_publishing_one_name_are_both_named(install):
    install(
        ("plugin-a", "1.0", {"shared": "fake_plugins:SHARED"}),
        ("plugin-b", "2.0", {"shared": "fake_plugins:SHARED"}),
    )
    reason = registry.broken_methods()["shared"]
    assert "(plugin-a 1.0)" in reason and "(plugin-b 2.0)" in reason
    with pytest.raises(ConfigError, match="published by more than one package"):
        registry.get_method("shared")
    # An in-process registration cannot take the name either.
    with pytest.raises(ConfigError, match="'shared' is taken"):
        registry.register(dataclasses.replace(TRUNCATED, name="shared"))


def test_a_plugin_that_fails_to_import_is_listed_as_broken(install, capsys, tmp_path: Path):
    install(
        ("exploding-plugin", "0.1", {"exploding": "no_such_plugin_module:SPEC"}),
        ("template-plugin", "0.3", {"template": "fake_plugins:TEMPLATE"}),
    )
    reason = registry.broken_methods()["exploding"]
    assert reason.startswith("no_such_plugin_module:SPEC (exploding-plugin 0.1) failed to import")
    assert "ModuleNotFoundError" in reason and "\n" not in reason
    with pytest.raises(ConfigError, match="'exploding' is broken: .*ModuleNotFoundError"):
        registry.get_method("exploding")
    assert registry.get_method("template") is methods.template.SPEC
    assert set(INSTALLED) | {"template"} == set(registry.list_methods())

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert f"exploding: BROKEN: {reason}\n" in out
    assert "\ntemplate: " in out and "package: template-plugin 0.3" in out
    assert "package: pact-harness" in out
    # Training the broken method stops with the reason, before any folder is made.
    assert main(["train", "--method", "exploding", "--out", str(tmp_path / "never")]) == 2
    assert "ModuleNotFoundError" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("NOT_A_SPEC", "is a dict, not a harness.contract.MethodSpec"),
        ("BAD_FIELD", "time_penalty_field 'tau' is not a field of TemplateConfig; fields: "),
        ("KEY_SPELLING", "(write the field name 'lambda_'; 'lambda' is its config key)"),
        ("BAD_SEARCH", "search_space key 'n' is not a field of TemplateConfig"),
        ("NOT_ADAPTIVE", "model_cls Linear is not a subclass of harness.contract.AdaptiveModel"),
        ("HOOKLESS", "does not implement the required hooks: decision_branches, executions_for"),
        ("MISNAMED", "publishes a method named 'other_name'; the two names must agree"),
    ],
)
def test_a_plugin_that_breaks_the_contract_is_refused_at_load(install, entry: str, reason: str):
    name = entry.lower()
    install(("bad-plugin", "0.1", {name: f"fake_plugins:{entry}"}))
    broken = registry.broken_methods()
    assert list(broken) == [name]
    assert broken[name].startswith(f"fake_plugins:{entry} (bad-plugin 0.1): ")
    assert reason in broken[name] and "\n" not in broken[name]
    with pytest.raises(ConfigError, match=f"method '{name}' is broken: "):
        registry.get_method(name)
    assert registry.list_methods() == INSTALLED  # every other method keeps working


def test_installed_plugin_trains_and_provenance_names_its_package(
    install, tiny_npz_root: Path, tmp_path: Path
):
    install(("truncated-plugin", "2.0", {"truncated_plugin": "fake_plugins:TRUNCATED"}))
    cfg = from_dict(
        RunConfig,
        {
            "method": "truncated_plugin",
            "model": {"depth": 8},
            "data": {"root": str(tiny_npz_root), "train_subset": 32, "test_subset": 20},
            "optim": {"epochs": 1, "batch_size": 32},
            "device": "cpu",
            "progress": "off",
        },
    )
    run_trial(cfg, tmp_path / "run")
    provenance = json.loads((tmp_path / "run" / store.PROVENANCE_FILE).read_text())
    assert provenance["method_package"] == {
        "name": "truncated-plugin",
        "version": "2.0",
        "entry_point": "fake_plugins:TRUNCATED",
    }
