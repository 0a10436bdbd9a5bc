"""The method registry: entry-point discovery, wildcard listing, errors, an in-process plug-in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest
import torch

from baselines import build_backbone
from harness import registry, store
from harness.config import RunConfig, from_dict
from harness.contract import AdaptiveModel, EvalSpec, MethodSpec, ModelOutput, ModelSpec
from harness.errors import ConfigError
from harness.train import run_trial

BUILT_IN = ["act", "pact", "resnet", "sact", "spatial_pact"]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register methods without leaking them into other tests."""
    registry.list_methods()  # load the entry points into the real registry first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


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
            units.append(torch.full((x.shape[0],), executed, dtype=torch.int64))
        logits = self.backbone.head(x)
        return ModelOutput(logits=logits, units_executed=units)


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
