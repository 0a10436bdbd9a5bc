"""SACT: the SACT code's toy map case, per-position ACT on a real block, bad backbones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.contract import EvalSpec, ModelSpec
from harness.errors import ConfigError
from methods.act import act_halting
from methods.sact import SACTConfig, SACTResNet
from methods.sact.model import build_sact


class ToyUnit(nn.Module):
    """Returns a fixed map where the residual mask is 1 and keeps its input elsewhere."""

    DILATED_CONVS = ()
    identity_shortcut = True

    def __init__(self, target: torch.Tensor, log: list):
        super().__init__()
        self.register_buffer("target", target)
        self.log = log

    def forward(self, x, residual_mask=None):
        self.log.append(residual_mask)
        if residual_mask is None:
            return self.target.clone()
        return x + (self.target - x) * residual_mask


class ToyHalting(nn.Module):
    def __init__(self, proba: torch.Tensor):
        super().__init__()
        self.register_buffer("logit", torch.log(proba) - torch.log1p(-proba))

    def forward(self, x):
        return self.logit.expand(x.shape[0], -1, -1)


class ToyBackbone(nn.Module):
    def __init__(self, units):
        super().__init__()
        self.stem = nn.Identity()
        self.blocks = nn.ModuleList([nn.ModuleList(units)])
        self.head = nn.Identity()
        self.block_channels = [1]


def toy_model(units, probas) -> SACTResNet:
    """SACT on one block of toy units whose halting probabilities are fixed maps."""
    model = SACTResNet(ToyBackbone(units), SACTConfig())
    model.halting[0] = nn.ModuleList(ToyHalting(p) for p in probas)
    return model


# The numbers below are those of the SACT code's act_test.SactTest (a 1x2 map, 3 units,
# eps 0.01): halting probabilities (0.9, 0.1) after unit 1 and (0.5, 0.1) after unit 2, so
# position 0 halts at unit 2 (0.9 + 0.5 >= 0.99, remainder 0.1, halting distribution
# (0.9, 0.1, 0)) and position 1 at unit 3 (distribution (0.1, 0.1, 0.8)).
SACT_TEST_PROBAS = [torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.1]])]


def test_sact_code_toy_map():
    """act_test.SactTest.testSimple: units return fixed maps 1/2, 3/4, 5/6."""
    log: list = []
    outputs = [
        torch.tensor([[[[1.0, 2.0]]]]),
        torch.tensor([[[[3.0, 4.0]]]]),
        torch.tensor([[[[5.0, 6.0]]]]),
    ]
    model = toy_model([ToyUnit(o, log) for o in outputs], SACT_TEST_PROBAS)
    result = model.run_block(0, torch.zeros(1, 1, 1, 2), EvalSpec("act"))
    # testSimple: cost (2.1, 3.8), num_units (2, 3), outputs (1.2, 5.4) = 0.9*1 + 0.1*3 and
    # 0.1*2 + 0.1*4 + 0.8*6; masks of units 2 and 3: (1, 1) and (0, 1).
    torch.testing.assert_close(result.ponder, torch.tensor([[[2.1, 3.8]]]))
    assert result.units.tolist() == [[[2, 3]]]
    torch.testing.assert_close(result.state, torch.tensor([[[[1.2, 5.4]]]]))
    assert log[0] is None  # the first unit runs densely
    assert log[1].flatten().tolist() == [1.0, 1.0]
    assert log[2].flatten().tolist() == [0.0, 1.0]  # the halted position is frozen
    # The penalty (tau's factor) is the ponder cost, as the code's ponder_cost end point.
    torch.testing.assert_close(result.penalty, result.ponder)


class AddOneUnit(nn.Module):
    """act_test.SactTest.testResidualMask's unit: x + ones * residual_mask."""

    DILATED_CONVS = ()
    identity_shortcut = True

    def __init__(self, log: list):
        super().__init__()
        self.log = log

    def forward(self, x, residual_mask=None):
        residual = torch.ones_like(x)
        if residual_mask is not None:
            residual = residual * residual_mask
        out = x + residual
        self.log.append(out)
        return out


def test_sact_code_toy_residual_mask():
    """act_test.SactTest.testResidualMask: unit outputs (1, 1), (2, 2), (2, 3); output
    (1.1, 2.7) = 0.9*1 + 0.1*2 and 0.1*1 + 0.1*2 + 0.8*3."""
    log: list = []
    model = toy_model([AddOneUnit(log) for _ in range(3)], SACT_TEST_PROBAS)
    result = model.run_block(0, torch.zeros(1, 1, 1, 2), EvalSpec("act"))
    assert [t.flatten().tolist() for t in log] == [[1.0, 1.0], [2.0, 2.0], [2.0, 3.0]]
    torch.testing.assert_close(result.state, torch.tensor([[[[1.1, 2.7]]]]))


class IdentityUnit(nn.Module):
    DILATED_CONVS = ()
    identity_shortcut = True

    def forward(self, x, residual_mask=None):
        return x


def test_sact_code_toy_identity_units_return_the_input():
    """act_test.SactTest.testInputs: 5 identity units, halting probabilities of the first 4
    summing to one per position (a softmax), on a 2x5x3 batch: the output is the input."""
    gen = torch.Generator().manual_seed(0)
    probas = torch.softmax(torch.randn(4, 2 * 5 * 3, generator=gen), 0).view(4, 2, 5, 3)
    # The last probability is 1 - (sum of the others) at float precision, i.e. ~0: clamp it
    # into (0, 1) so that it has a logit.
    model = toy_model([IdentityUnit() for _ in range(5)], list(probas.clamp(1e-7, 1 - 1e-7)))
    x = torch.randn(2, 3, 5, 3, generator=gen)
    result = model.run_block(0, x, EvalSpec("act"))
    torch.testing.assert_close(result.state, x)
    assert result.units.max() <= 4  # the cumulative sum reaches 1 - eps by unit 4


def randomise(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branches in model.halting:
            for branch in branches:
                w = branch.local_conv.weight
                w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
                branch.local_conv.bias.fill_(0.0)
    return model.eval()


def test_block_is_per_position_act_on_the_masked_trajectory():
    torch.manual_seed(0)
    model = randomise(build_sact(ModelSpec("cifar10", 32, "sact"), SACTConfig()))
    x = model.backbone.stem(torch.randn(3, 3, 32, 32))
    with torch.no_grad():
        result = model.run_block(1, x, EvalSpec("act"))
        # Independent replay, as act.spatially_adaptive_computation_time does it: the mask of
        # unit u+1 is "the running sum of h has not reached 1 - eps after unit u", computed
        # here from this replay's own halting scores (not from the result's N).
        states, h = [], []
        cum = torch.zeros(3, 16, 16, dtype=torch.float64)
        for u, unit in enumerate(model.backbone.blocks[1]):
            mask = None if u == 0 else (cum < 1 - 0.01).unsqueeze(1).float()
            x = unit(x, mask)
            states.append(x)
            if u < len(model.halting[1]):
                h.append(torch.sigmoid(model.halting[1][u](x)))
                cum = cum + h[-1].double()
        dist, ponder, n_ref = act_halting(torch.stack(h, 1))
        expected = sum(dist[:, u].unsqueeze(1) * s for u, s in enumerate(states))
    n = result.units
    assert torch.equal(n, n_ref)
    assert n.shape == (3, 16, 16)
    assert 1 <= n.min() and n.max() - n.min() >= 2  # positions really halt at different units
    torch.testing.assert_close(result.ponder, ponder)
    torch.testing.assert_close(result.state, expected, rtol=1e-4, atol=1e-5)


def test_penalty_is_position_and_batch_mean():
    torch.manual_seed(1)
    model = randomise(build_sact(ModelSpec("cifar10", 14, "sact"), SACTConfig(tau=0.5)))
    out = model(torch.randn(2, 3, 32, 32), EvalSpec("act"))
    expected = 0.5 * sum(p.mean() for p in out.ponder_cost)
    torch.testing.assert_close(out.aux_losses["ponder_loss"], expected)
    assert all(p.shape[0] == 2 and p.dim() == 3 for p in out.ponder_cost)


class DenseOnlyUnit(nn.Module):
    def forward(self, x):
        return x


def test_spatial_method_needs_spatial_blocks():
    backbone = ToyBackbone([DenseOnlyUnit(), DenseOnlyUnit()])
    with pytest.raises(ConfigError, match="spatial blocks"):
        SACTResNet(backbone, SACTConfig())


def test_training_forward_backpropagates_into_decision_branches():
    torch.manual_seed(2)
    model = build_sact(ModelSpec("cifar10", 14, "he"), SACTConfig(tau=0.1))
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    loss = model.loss(out, torch.randint(0, 10, (4,)))["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    for branches in model.decision_branches():
        for branch in branches:
            assert branch.local_conv.weight.grad.abs().sum() > 0
            assert branch.global_fc.weight.grad.abs().sum() > 0
