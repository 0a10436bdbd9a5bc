"""ACT: the pure halting function (SACT code's act_test.py cases), the model's executions, loss."""

from __future__ import annotations

import pytest
import torch

from harness.contract import EvalSpec, ModelSpec
from harness.errors import ConfigError
from methods.act import ACTConfig, act_halting
from methods.act.model import build_act

# -- the pure function ------------------------------------------------------------------------


def test_stops_at_first_unit():
    dist, ponder, n = act_halting(torch.tensor([[0.999] * 4]), eps=0.01)
    assert n.tolist() == [1]
    assert n.dtype == torch.int64
    torch.testing.assert_close(ponder, torch.tensor([2.0]))
    torch.testing.assert_close(dist, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]))


def test_stops_at_middle_unit():
    dist, ponder, n = act_halting(torch.tensor([[0.01, 0.50, 0.60, 0.70]]))
    assert n.tolist() == [3]
    torch.testing.assert_close(ponder, torch.tensor([3.49]))
    torch.testing.assert_close(dist, torch.tensor([[0.01, 0.50, 0.49, 0.0, 0.0]]))


def test_stops_at_last_unit():
    dist, ponder, n = act_halting(torch.tensor([[0.01] * 4]))
    assert n.tolist() == [5]
    torch.testing.assert_close(ponder, torch.tensor([5.96]))
    torch.testing.assert_close(dist, torch.tensor([[0.01] * 4 + [0.96]]))


@pytest.mark.parametrize(
    ("h", "grad"),
    [
        ([0.999] * 4, [0.0] * 4),  # N = 1: R = 1, no h before N
        ([0.01, 0.50, 0.60, 0.70], [-1.0, -1.0, 0.0, 0.0]),  # dR/dh^l = -1 for l < N
        ([0.01] * 4, [-1.0] * 4),
    ],
)
def test_ponder_cost_gradients(h, grad):
    h = torch.tensor([h], requires_grad=True)
    _, ponder, _ = act_halting(h)
    ponder.sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([grad]))


def test_equal_rows_give_equal_results():
    h = torch.sigmoid(torch.randn(1, 7)).repeat(3, 1)
    dist, ponder, n = act_halting(h)
    assert (n == n[0]).all() and (ponder == ponder[0]).all() and (dist == dist[0]).all()


def reference_act(h_row: list[float], eps: float) -> tuple[list[float], float, int]:
    """Graves' definition, written out directly for one row (python floats)."""
    h_full = list(h_row) + [1.0]
    total = 0.0
    for n, h in enumerate(h_full, start=1):
        if total + h >= 1.0 - eps:
            remainder = 1.0 - total
            dist = h_full[: n - 1] + [remainder] + [0.0] * (len(h_full) - n)
            return dist, n + remainder, n
        total += h
    raise AssertionError("unreachable: the last unit always halts")


def test_matches_independent_implementation_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    # float64 so the sequential sums match python floats exactly
    h = torch.rand(64, 9, generator=gen, dtype=torch.float64) * 0.4
    h[:8] = 0.001  # rows that never reach 1 - eps before the last unit
    dist, ponder, n = act_halting(h, eps=0.01)
    for row in range(h.shape[0]):
        ref_dist, ref_ponder, ref_n = reference_act(h[row].tolist(), 0.01)
        assert n[row].item() == ref_n
        assert ponder[row].item() == pytest.approx(ref_ponder, abs=1e-12)
        assert dist[row].tolist() == pytest.approx(ref_dist, abs=1e-12)
    assert (n[:8] == 10).all()
    torch.testing.assert_close(dist.sum(1), torch.ones(64, dtype=torch.float64))


def test_tie_at_the_boundary_halts():
    # Dyadic values: the running sum hits 1 - eps = 0.75 exactly at unit 2, in float32 too.
    h = torch.tensor([[0.5, 0.25, 0.125], [0.5, 0.125, 0.0625]])
    dist, ponder, n = act_halting(h, eps=0.25)
    assert n.tolist() == [2, 4]
    for row in range(2):
        ref_dist, ref_ponder, ref_n = reference_act(h[row].tolist(), 0.25)
        assert n[row].item() == ref_n
        assert dist[row].tolist() == pytest.approx(ref_dist)
        assert ponder[row].item() == pytest.approx(ref_ponder)


def test_spatial_shape_is_per_position_act():
    h = torch.rand(2, 4, 3, 5) * 0.5
    dist, ponder, n = act_halting(h)
    assert dist.shape == (2, 5, 3, 5) and ponder.shape == (2, 3, 5) and n.shape == (2, 3, 5)
    flat = h.permute(0, 2, 3, 1).reshape(-1, 4)
    ref_dist, ref_ponder, ref_n = act_halting(flat)
    torch.testing.assert_close(dist.permute(0, 2, 3, 1).reshape(-1, 5), ref_dist)
    torch.testing.assert_close(ponder.reshape(-1), ref_ponder)
    assert torch.equal(n.reshape(-1), ref_n)


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5])
def test_bad_eps(eps):
    with pytest.raises(ConfigError, match="eps"):
        act_halting(torch.rand(2, 3), eps=eps)


def test_bad_config():
    with pytest.raises(ConfigError, match="tau"):
        ACTConfig(tau=-0.1).validate()
    with pytest.raises(ConfigError, match="eps"):
        ACTConfig(eps=1.0).validate()


# -- the model ---------------------------------------------------------------------------------


def spread_halting(model, seed=0):
    """Randomise the halting branches so samples halt at different units."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branches in model.halting:
            for branch in branches:
                branch.fc.weight.copy_(torch.randn(branch.fc.weight.shape, generator=gen) * 3)
                branch.fc.bias.fill_(0.0)
    return model


@pytest.fixture(scope="module")
def act_model():
    torch.manual_seed(0)
    model = build_act(ModelSpec("cifar10", 20, "sact"), ACTConfig(tau=0.01))
    return spread_halting(model).eval()


def test_early_exit_equals_masked(act_model):
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        masked = act_model(images, EvalSpec("act", "masked"))
        early = act_model(images, EvalSpec("act", "early_exit"))
    torch.testing.assert_close(early.logits, masked.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(masked.units_executed, early.units_executed, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(masked.ponder_cost, early.ponder_cost, strict=True):
        torch.testing.assert_close(a, b)
    # the random halting really spreads samples over units
    counts = torch.cat(masked.units_executed)
    assert counts.min() < counts.max()


def test_early_exit_runs_only_unhalted_samples(act_model):
    """Each unit sees exactly the samples with N >= its index (samples leave the batch)."""
    seen: dict[tuple[int, int], int] = {}
    hooks = [
        unit.register_forward_hook(
            lambda m, args, out, key=(b, u): seen.__setitem__(key, args[0].shape[0])
        )
        for b, block in enumerate(act_model.backbone.blocks)
        for u, unit in enumerate(block)
    ]
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            out = act_model(images, EvalSpec("act", "early_exit"))
    finally:
        for hook in hooks:
            hook.remove()
    for b, counts in enumerate(out.units_executed):
        for u in range(len(act_model.backbone.blocks[b])):
            assert seen.get((b, u), 0) == int((counts > u).sum())


def test_loss_is_ce_plus_tau_times_ponder(act_model):
    act_model.train()
    try:
        images = torch.randn(8, 3, 32, 32)
        labels = torch.randint(0, 10, (8,))
        out = act_model(images)
        terms = act_model.loss(out, labels)
    finally:
        act_model.eval()
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    ponder = sum(p.mean() for p in out.ponder_cost)
    torch.testing.assert_close(terms["loss"], ce + 0.01 * ponder)
    assert set(terms) >= {"loss", "task_loss", "ponder_loss"}


def test_output_is_halting_weighted_sum_of_unit_outputs(act_model):
    """Block output = sum_l p^l x^l with p from act_halting on the branch outputs."""
    x = act_model.backbone.stem(torch.randn(4, 3, 32, 32))
    with torch.no_grad():
        result = act_model.run_block(0, x, EvalSpec("act", "early_exit"))
        states, h = [], []
        for u, unit in enumerate(act_model.backbone.blocks[0]):
            x = unit(x)
            states.append(x)
            if u < len(act_model.halting[0]):
                h.append(torch.sigmoid(act_model.halting[0][u](x)))
        dist, ponder, n = act_halting(torch.stack(h, 1))
        expected = sum(dist[:, u].view(-1, 1, 1, 1) * s for u, s in enumerate(states))
    torch.testing.assert_close(result.state, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(result.units, n)
    torch.testing.assert_close(result.ponder, ponder)
