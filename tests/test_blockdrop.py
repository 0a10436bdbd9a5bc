"""The BlockDrop example plug-in (examples/blockdrop): a policy network decides up front which
units run. Installed from its own package, it passes check-method with FLOPs verified on an
execution that skips units out of order; its accounting equals FlopCounterMode at depths 20
and 110 with stage-opening units skipped; its reward and policy gradient follow the peer's
code; it trains through the command line."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import registry
from harness.checkmethod import assert_method_conforms
from harness.cli import main
from harness.contract import EvalSpec
from harness.costs.flops import FlopAccountant
from harness.models import create_model

blockdrop = pytest.importorskip("blockdrop", reason="run `make install` (examples/blockdrop)")


def test_the_plugin_is_installed_and_its_flops_are_verified_where_it_skips():
    assert registry.method_origin("blockdrop")["name"] == "pact-harness-blockdrop"
    results = {r.name: r for r in assert_method_conforms("blockdrop")}
    detail = results["flops"].detail
    assert "deterministic/gathered: flop-counter" in detail, detail
    assert "sampled/gathered: flop-counter" in detail, detail
    assert "deterministic/masked: mask-perturbation" in detail, detail


def _not_a_prefix(mask: torch.Tensor) -> bool:
    """Some image keeps a unit after one it dropped."""
    dropped_before = (~mask).int().cummax(1).values.bool()
    return bool((mask & dropped_before).any())


@pytest.mark.parametrize("depth", [20, 110])
def test_accounting_equals_flop_counter_on_the_gathered_execution(depth):
    """The policy is charged once per image (listed under block 0), every unit at its own
    cost where it ran and its shortcut where it was dropped, stage-opening units included."""
    torch.manual_seed(0)
    model = create_model("blockdrop", depth=depth).eval()
    images = torch.randn(8, 3, 32, 32)
    spec = EvalSpec("sampled", "gathered", generator=torch.Generator().manual_seed(1))
    accountant = FlopAccountant(model, (32, 32))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(images, spec)
    openers = torch.stack([ran[:, 0] for ran in out.units_ran])
    assert not bool(openers.all())  # some stage-opening unit was dropped
    assert _not_a_prefix(torch.cat(out.units_ran, 1))
    assert accountant.per_image(out)[0].sum().item() == float(counter.get_total_flops())
    # the policy network is one decision branch, charged once per image
    assert [len(branches) for branches in model.decision_branches()] == [1, 0, 0]
    policy_flops = 2.0 * accountant.halting[0][0].total
    assert accountant.full_flops == accountant.vanilla_flops + policy_flops


def test_reward_is_the_papers_against_hand_computed_values():
    """1 - (fraction of units kept)^2 when right, -gamma when wrong."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    targets = torch.tensor([0, 1, 1, 0])
    kept = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    got = blockdrop.reward(logits, targets, kept, penalty=5.0)
    assert torch.allclose(got, torch.tensor([1 - 0.25**2, 0.0, -5.0, -5.0]))


def test_loss_is_cross_entropy_plus_self_critical_reinforce():
    """The policy term is -mean(log pi(sample) * (R(sample) - R(greedy))), with the
    log-probability of the alpha-bounded Bernoulli; its gradient reaches the policy only."""
    torch.manual_seed(0)
    model = create_model("blockdrop", depth=8, penalty=2.0).train()
    images, targets = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    out = model(images)
    probs = torch.sigmoid(model.policy(images))  # BN in training mode: same batch, same stats
    bounded = 0.8 * probs + 0.2 * (1 - probs)
    assert torch.allclose(out.bounded, bounded, atol=1e-6)
    assert torch.equal(out.greedy, probs >= 0.5)
    keep = out.sampled.float()
    log_prob = (keep * bounded.log() + (1 - keep) * (1 - bounded).log()).sum(1)
    advantage = blockdrop.reward(out.logits, targets, out.sampled, 2.0) - blockdrop.reward(
        out.greedy_logits, targets, out.greedy, 2.0
    )
    terms = model.loss(out, targets)
    assert torch.allclose(terms["policy_loss"], -(log_prob * advantage).mean(), atol=1e-5)
    ce = torch.nn.functional.cross_entropy(out.logits, targets)
    assert torch.allclose(terms["loss"], ce + terms["policy_loss"], atol=1e-6)
    assert torch.equal(torch.cat(out.units_ran, 1), out.sampled)


def test_one_epoch_through_the_command_line(tiny_args, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_args(out, "--time-penalty", "1", method="blockdrop")) == 0
    config = (out / "config.yaml").read_text()
    assert "blockdrop" in config and "penalty: 1.0" in config
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_task_loss", "train_policy_loss", "train_reward"} <= set(epoch)
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert rows and all(row["flops_verified"] for row in rows)
