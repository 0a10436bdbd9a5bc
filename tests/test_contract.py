"""The explicit contract: required hooks, backbone and config protocols, building a model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import methods.template
from baselines import build_backbone
from harness import registry
from harness.config import EvalConfig, RunConfig
from harness.contract import (
    AdaptiveModel,
    EvalSpec,
    MethodConfig,
    ModelOutput,
    ModelSpec,
    check_backbone,
)
from harness.errors import ConfigError
from harness.models import build_model, create_model

BUILT_IN = ["act", "pact", "resnet", "sact", "spatial_pact"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_keeps_the_contract(name: str):
    spec = registry.get_method(name)
    registry.check_spec(spec)
    assert isinstance(spec.config_cls(), MethodConfig)
    model = create_model(name, depth=8)
    assert isinstance(model, spec.model_cls)
    check_backbone(model.backbone, spatial=model.spatial)
    branches = model.decision_branches()
    assert len(branches) == len(model.backbone.blocks)
    for mode in model.eval_modes:
        assert model.executions_for(mode)


def test_the_template_keeps_the_contract():
    registry.check_spec(methods.template.SPEC)
    spec = methods.template.SPEC
    model = spec.build(ModelSpec(depth=8), spec.config_cls())
    check_backbone(model.backbone)
    out = model(torch.randn(2, 3, 32, 32), EvalSpec("standard"))
    assert out.logits.shape == (2, 10)
    assert [u.tolist() for u in out.units_executed] == [[1, 1]] * 3


def test_required_hooks_are_abstract():
    class ForwardOnly(AdaptiveModel):
        def forward(self, images: torch.Tensor, spec: EvalSpec | None = None) -> ModelOutput:
            """Unused."""
            raise AssertionError

    assert ForwardOnly.__abstractmethods__ == {"decision_branches", "executions_for"}
    with pytest.raises(TypeError, match="abstract"):
        ForwardOnly()


def test_check_backbone_names_what_is_missing():
    backbone = build_backbone("cifar10", 8, "sact")
    check_backbone(backbone, spatial=True)
    del backbone.head
    with pytest.raises(ConfigError, match="has no 'head'"):
        check_backbone(backbone)
    plain = nn.Module()
    plain.stem, plain.head = nn.Identity(), nn.Identity()
    plain.blocks = nn.ModuleList([nn.ModuleList([nn.Identity()])])
    plain.block_channels = [16, 32]
    with pytest.raises(ConfigError, match="2 block_channels for 1 blocks"):
        check_backbone(plain)
    plain.block_channels = [16]
    check_backbone(plain)
    with pytest.raises(ConfigError, match=r"unit 0 of block 0 \(Identity\) is not a SpatialUnit"):
        check_backbone(plain, spatial=True)


# -- create_model ---------------------------------------------------------------------------


def test_create_model_splits_backbone_and_method_arguments():
    model = create_model("pact", depth=20, lambda_=0.03)
    assert type(model) is registry.get_method("pact").model_cls
    assert model.config.lambda_ == 0.03
    defaults = registry.get_method("pact").config_cls()
    assert dataclasses.replace(model.config, lambda_=defaults.lambda_) == defaults
    assert [len(block) for block in model.backbone.blocks] == [3, 3, 3]  # (20 - 2) / 6
    assert model.backbone.num_classes == 10
    # The config key spelling works too.
    assert create_model("pact", depth=8, **{"lambda": 0.05}).config.lambda_ == 0.05
    act = create_model("act", depth=8, variant="he", num_classes=7, tau=0.1)
    assert act.backbone.variant == "he" and act.backbone.num_classes == 7
    assert act.penalty_weight == 0.1
    out = act(torch.randn(2, 3, 32, 32), EvalSpec("act"))
    assert out.logits.shape == (2, 7)


def test_create_model_refuses_unknown_and_bad_arguments():
    with pytest.raises(ConfigError) as err:
        create_model("act", depht=20)
    assert str(err.value) == (
        "create_model('act'): unknown argument 'depht'; allowed: dataset, depth, variant, "
        "num_classes, tau, eps, halting_bias_init"
    )
    with pytest.raises(ConfigError, match="unknown argument 'lambda_'"):
        create_model("resnet", lambda_=0.1)
    with pytest.raises(ConfigError, match=r"method\.tau=-1.0 must be >= 0"):
        create_model("act", depth=8, tau=-1.0)
    with pytest.raises(ConfigError, match="model.dataset='mnist' is not allowed"):
        create_model("resnet", dataset="mnist")
    with pytest.raises(ConfigError, match="model.depth"):
        create_model("resnet", depth="deep")
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        create_model("nope")


def test_a_run_config_and_keyword_arguments_build_the_same_model():
    """One way to build a model: ``create_model`` is ``build_model`` of the config it describes;
    the data's class count applies only where the config leaves it open."""
    torch.manual_seed(3)
    by_keywords = create_model("pact", depth=8, variant="he", **{"lambda": 0.05})
    model = ModelSpec(depth=8, variant="he")
    cfg = RunConfig(method="pact", method_config={"lambda": 0.05}, model=model)
    torch.manual_seed(3)
    by_config = build_model(cfg)
    assert type(by_config) is type(by_keywords) and by_config.config == by_keywords.config
    mine, theirs = by_config.state_dict(), by_keywords.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert build_model(cfg, num_classes=7).backbone.num_classes == 7
    fixed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=5))
    assert build_model(fixed, num_classes=7).backbone.num_classes == 5
    with pytest.raises(ConfigError, match=r"method\.lambda=-1.0 must be >= 0"):
        build_model(dataclasses.replace(cfg, method_config={"lambda": -1.0}))
    with pytest.raises(ConfigError, match="no method given"):
        build_model(RunConfig())


def test_a_non_finite_ponder_cost_is_refused_on_the_first_batch_and_on_any_later_one():
    """A ponder cost with NaN is a contract error at the first batch (conformance) and, if it
    only appears later, when the evaluation summarises (never stored, averaged or drawn)."""
    from harness.conformance import check_output
    from harness.errors import ContractError
    from harness.evaluate import evaluate_modes

    model = create_model("act", depth=14).eval()
    images = torch.randn(4, 3, 32, 32)
    out = model(images, EvalSpec("act"))
    check_output(model, out, 4)  # the honest output passes
    poisoned = dataclasses.replace(
        out, ponder_cost=[out.ponder_cost[0].clone().fill_(float("nan")), *out.ponder_cost[1:]]
    )
    with pytest.raises(ContractError, match=r"ponder_cost\[0\].*NaN"):
        check_output(model, poisoned, 4)

    calls = {"n": 0}
    honest_forward = model.forward

    def late_nan(images, spec=None):
        output = honest_forward(images, spec)
        calls["n"] += 1
        if calls["n"] > 1:  # the first batch is clean, the second is not
            output.ponder_cost[-1] = output.ponder_cost[-1] * float("nan")
        return output

    model.forward = late_nan
    batches = [(images, torch.zeros(4, dtype=torch.long))] * 2
    with pytest.raises(ContractError, match="ponder_cost holds NaN"):
        evaluate_modes(model, batches, EvalConfig(batch_size=4), torch.device("cpu"))
