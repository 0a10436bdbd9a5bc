"""PACT: closed forms vs Monte Carlo, priors, relaxed vs hard forward, modes, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import EvalConfig, RunConfig, validate_run_config
from harness.contract import EvalSpec, ModelSpec
from harness.errors import ConfigError
from harness.evaluate import evaluate_modes
from methods.pact import (
    PRIORS,
    PACTConfig,
    expected_log_prior,
    expected_units,
    halting_distribution,
    log_prior,
    log_prior_table,
)
from methods.pact.model import PACTResNet, build_pact, build_spatial_pact

# -- closed forms ------------------------------------------------------------------------------


def sample_num_units(h: torch.Tensor, samples: int, gen: torch.Generator) -> torch.Tensor:
    """Hard samples z ~ Bernoulli(h), N = first l with z^l = 1 (L if none): [samples, B, ...]."""
    z = torch.rand((samples, *h.shape), generator=gen, dtype=h.dtype) < h
    num_units = h.shape[1] + 1
    step = torch.arange(1, num_units, dtype=torch.long).view(1, 1, -1, *([1] * (h.dim() - 2)))
    first = torch.where(z, step, num_units).amin(dim=2)
    return first


def test_expected_units_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(6, 5, generator=gen, dtype=torch.float64)
    h[0] = 0.02  # mostly runs to the end
    h[1, 0] = 0.97  # mostly halts at once
    samples = 400_000
    n = sample_num_units(h, samples, gen).double()
    mc_mean, mc_std = n.mean(0), n.std(0)
    closed = expected_units(h)
    # 5 standard errors: a false alarm has probability ~ 6e-7 per entry
    assert (closed - mc_mean).abs().max() < 5 * (mc_std / math.sqrt(samples)).max()
    assert closed.shape == (6,)


def test_expected_units_spatial_matches_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    h = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    samples = 200_000
    n = sample_num_units(h, samples, gen).double()
    closed = expected_units(h)
    assert closed.shape == (2, 4, 4)
    assert (closed - n.mean(0)).abs().max() < 5 * (n.std(0) / math.sqrt(samples)).max()


def test_halting_distribution_is_a_distribution_with_the_same_mean():
    h = torch.rand(4, 6, dtype=torch.float64)
    q = halting_distribution(h)
    torch.testing.assert_close(q.sum(1), torch.ones(4, dtype=torch.float64))
    steps = torch.arange(1, 8, dtype=torch.float64)
    torch.testing.assert_close((q * steps).sum(1), expected_units(h))


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.7])
def test_truncated_geometric_prior(lam):
    table = log_prior_table(6, lam)
    torch.testing.assert_close(table.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    log_z = math.log(sum(math.exp(-lam * m) for m in range(1, 7)))
    n = torch.arange(1, 7)
    # -log p(N) = lambda N + log Z exactly
    torch.testing.assert_close(-log_prior(n, 6, lam), lam * n.double() + log_z)
    h = torch.rand(5, 5, dtype=torch.float64)
    # E_q[log p(N)] = -lambda E_q[N] - log Z
    torch.testing.assert_close(expected_log_prior(h, lam), -lam * expected_units(h) - log_z)


def test_bernoulli_prior():
    """L = 3: rho*_3 solves rho = (1 - rho)^2, i.e. rho*_3 = (3 - sqrt 5) / 2; then
    rho = 1 - (1 - rho*_3) e^-lambda and p(N) follows from iid halting with N = L leftover."""
    lam, num_units = 0.3, 3
    floor = (3 - math.sqrt(5)) / 2
    rho = 1 - (1 - floor) * math.exp(-lam)
    expected = [rho, rho * (1 - rho), (1 - rho) ** 2]
    table = log_prior_table(num_units, lam, "bernoulli")
    torch.testing.assert_close(table.exp(), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(table.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("num_units", [3, 5, 18])
def test_every_prior_prefers_less_computation_at_every_positive_lambda(prior, num_units):
    """The prior's mode is N = 1 (one unit), strictly, over the lambda grid: a prior whose
    mode is N = L ("never halt", the first Bernoulli parameterisation at lambda <= 0.1) fails."""
    for lam in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0):
        probs = log_prior_table(num_units, lam, prior).exp()
        assert int(probs.argmax()) == 0, (prior, num_units, lam, probs.tolist())
        assert bool((probs[0] > probs[1:]).all()), (prior, num_units, lam)
        assert float(probs.sum()) == pytest.approx(1.0)


def test_bernoulli_floor_solves_its_equation():
    from methods.pact.prior import bernoulli_floor

    for num_units in (2, 3, 5, 18, 54):
        rho = bernoulli_floor(num_units)
        assert rho == pytest.approx((1 - rho) ** (num_units - 1), abs=1e-12)
    assert bernoulli_floor(2) == pytest.approx(0.5)


def test_prior_and_config_errors():
    with pytest.raises(ConfigError, match="lambda"):
        PACTConfig(lambda_=-0.1).validate()
    with pytest.raises(ConfigError, match="lambda"):
        PACTConfig(lambda_=0.0, prior="bernoulli").validate()
    with pytest.raises(ConfigError, match="temperature"):
        PACTConfig(temperature=0.0).validate()
    with pytest.raises(ConfigError, match="temperature_final"):
        PACTConfig(temperature_final=-1.0).validate()
    with pytest.raises(ConfigError, match="allowed values"):
        PACTConfig(prior="poisson").validate()
    with pytest.raises(ConfigError, match="allowed values"):
        PACTConfig(anneal="cosine").validate()


def test_temperature_schedules():
    cfg = PACTConfig(temperature=1.0, temperature_final=0.01, anneal="exponential")
    assert [round(cfg.temperature_at(e, 3), 6) for e in range(3)] == [1.0, 0.1, 0.01]
    lin = PACTConfig(temperature=1.0, temperature_final=0.5, anneal="linear")
    assert [lin.temperature_at(e, 3) for e in range(3)] == [1.0, 0.75, 0.5]
    assert PACTConfig(anneal="none").temperature_at(5, 10) == 1.0


# -- the model ---------------------------------------------------------------------------------


def spread(model, seed=0, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branches in model.halting:
            for branch in branches:
                conv = getattr(branch, "local_conv", None)
                if conv is not None:
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.5)
                    conv.bias.fill_(0.0)
                else:
                    branch.fc.weight.copy_(
                        torch.randn(branch.fc.weight.shape, generator=gen) * scale
                    )
                    branch.fc.bias.fill_(0.0)
    return model.eval()


@pytest.fixture(scope="module")
def pact_model():
    torch.manual_seed(0)
    return spread(build_pact(ModelSpec("cifar10", 20, "sact"), PACTConfig()))


@pytest.fixture(scope="module")
def spatial_model():
    torch.manual_seed(0)
    return spread(build_spatial_pact(ModelSpec("cifar10", 14, "sact"), PACTConfig()))


def images(seed=1, batch=16):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", ["deterministic", "sampled"])
def test_early_exit_equals_masked(pact_model, mode):
    x = images()
    with torch.no_grad():
        masked = pact_model(x, EvalSpec(mode, "masked", generator=gen(3)))
        early = pact_model(x, EvalSpec(mode, "early_exit", generator=gen(3)))
    torch.testing.assert_close(early.logits, masked.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(masked.units_executed, early.units_executed, strict=True):
        assert torch.equal(a, b)
    counts = torch.cat(masked.units_executed)
    assert counts.min() < counts.max()


def test_deterministic_is_first_unit_above_threshold(pact_model):
    x = pact_model.backbone.stem(images(batch=8))
    with torch.no_grad():
        result = pact_model.run_block(0, x, EvalSpec("deterministic", "early_exit", 0.5))
        states, h = [], []
        for u, unit in enumerate(pact_model.backbone.blocks[0]):
            x = unit(x)
            states.append(x)
            if u < len(pact_model.halting[0]):
                h.append(torch.sigmoid(pact_model.halting[0][u](x)))
    h = torch.stack(h, 1)
    above = torch.cat([h > 0.5, torch.ones(8, 1, dtype=torch.bool)], 1)
    n = above.float().argmax(1) + 1
    assert torch.equal(result.units, n)
    expected = torch.stack([states[k - 1][i] for i, k in enumerate(n.tolist())])
    torch.testing.assert_close(result.state, expected)


def relaxed_and_sampled_at_low_temperature(model, x, seed=7):
    """The ``stochastic`` (relaxed) and ``sampled`` forwards at T = 1e-6 on the same noise."""
    old = model.temperature.item()
    model.temperature.fill_(1e-6)
    try:
        with torch.no_grad():
            relaxed = model(x, EvalSpec("stochastic", "masked", generator=gen(seed)))
            hard = model(x, EvalSpec("sampled", "masked", generator=gen(seed)))
    finally:
        model.temperature.fill_(old)
    return relaxed, hard


def test_low_temperature_relaxed_matches_hard_on_same_noise(pact_model):
    relaxed, hard = relaxed_and_sampled_at_low_temperature(pact_model, images(seed=4, batch=8))
    torch.testing.assert_close(relaxed.logits, hard.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [20, 32, 110])
def test_spatial_relaxed_follows_the_masked_trajectory(depth):
    """At T -> 0 the relaxed forward (training, ``stochastic``) is the hard ``sampled`` forward.

    With 3 or more units per block, a position that halts keeps its value while its neighbours
    go on; the relaxed forward must freeze it too (its survival gates the residual), or the 3x3
    convs of later units see different neighbours (before the fix: logit gaps of 0.71, 1.4 and
    18 at depth 20, 32 and 110 on this set-up).
    """
    torch.manual_seed(0)
    model = spread(build_spatial_pact(ModelSpec("cifar10", depth, "sact"), PACTConfig()))
    relaxed, hard = relaxed_and_sampled_at_low_temperature(model, images(seed=4, batch=4))
    num_units = (depth - 2) // 6
    spreads = []
    for counts in hard.units_executed:
        assert counts.min() < num_units  # some positions halt before the last unit
        assert counts.min() < counts.max()  # and positions differ
        spreads.append(int(counts.max() - counts.min()))
    # A frozen position with a neighbour running >= 2 more units: where the trajectories differ.
    assert max(spreads) >= 2
    torch.testing.assert_close(relaxed.logits, hard.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["stochastic", "sampled"])
def test_random_modes_are_reproducible(pact_model, mode):
    x = images(seed=5)
    with torch.no_grad():
        a = pact_model(x, EvalSpec(mode, "masked", generator=gen(11))).logits
        b = pact_model(x, EvalSpec(mode, "masked", generator=gen(11))).logits
        c = pact_model(x, EvalSpec(mode, "masked", generator=gen(12))).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_thresholds_trace_a_monotone_compute_curve(pact_model):
    loader = [(images(seed=s), torch.randint(0, 10, (16,), generator=gen(s))) for s in range(2)]
    cfg = EvalConfig(modes=("deterministic",), thresholds=(0.2, 0.5, 0.8))
    rows = evaluate_modes(pact_model, loader, cfg, torch.device("cpu"))
    assert [r["threshold"] for r in rows] == [0.2, 0.5, 0.8]
    units = [r["units_executed_mean"] for r in rows]
    # h > 0.8 implies h > 0.5 implies h > 0.2: a higher threshold never halts earlier
    assert units[0] <= units[1] <= units[2]
    assert units[0] < units[2]


def test_random_mode_rows_report_repeat_mean_and_std(pact_model):
    loader = [(images(seed=9), torch.randint(0, 10, (16,), generator=gen(9)))]
    cfg = EvalConfig(modes=("sampled",), repeats=4, seed=100)
    row = evaluate_modes(pact_model, loader, cfg, torch.device("cpu"))[0]
    accuracies = []
    for r in range(4):
        with torch.no_grad():
            logits = pact_model(
                loader[0][0], EvalSpec("sampled", "early_exit", generator=gen(100 + r))
            ).logits
        accuracies.append((logits.argmax(1) == loader[0][1]).double().mean().item())
    mean = sum(accuracies) / 4
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / 3)
    assert row["repeats"] == 4
    assert row["accuracy"] == pytest.approx(mean)
    assert row["accuracy_std"] == pytest.approx(std)


def test_unknown_mode_and_bad_repeats(pact_model):
    with pytest.raises(ConfigError, match="allowed values: deterministic, stochastic, sampled"):
        evaluate_modes(pact_model, [], EvalConfig(modes=("greedy",)), torch.device("cpu"))
    with pytest.raises(ConfigError, match="allowed values"):
        pact_model(images(), EvalSpec("greedy"))
    with pytest.raises(ConfigError, match="eval.repeats"):
        validate_run_config(RunConfig(eval=EvalConfig(repeats=0)))


def test_training_loss_is_ce_plus_expected_negative_log_prior():
    torch.manual_seed(3)
    model = build_pact(ModelSpec("cifar10", 14, "sact"), PACTConfig(lambda_=0.2))
    model.train()
    x, y = images(batch=8), torch.randint(0, 10, (8,))
    out = model(x)
    terms = model.loss(out, y)
    ce = torch.nn.functional.cross_entropy(out.logits, y)
    prior = terms["loss"] - ce
    # E_q[-log p(N)] = lambda E_q[N] + log Z per block; ponder_cost holds E_q[N]
    log_z = math.log(sum(math.exp(-0.2 * m) for m in range(1, 3)))
    expected = sum(0.2 * p.mean() + log_z for p in out.ponder_cost)
    torch.testing.assert_close(prior, expected)
    assert all(torch.equal(u, torch.full_like(u, 2)) for u in out.units_executed)


def test_spatial_pact_counts_are_per_position(spatial_model):
    with torch.no_grad():
        out = spatial_model(images(batch=3), EvalSpec("deterministic", "masked", 0.5))
    shapes = [tuple(u.shape) for u in out.units_executed]
    assert shapes == [(3, 32, 32), (3, 16, 16), (3, 8, 8)]
    counts = torch.cat([u.flatten() for u in out.units_executed])
    assert counts.min() >= 1 and counts.max() <= 2 and counts.min() < counts.max()


# -- the deterministic rule on a toy block -----------------------------------------------------


class ToyUnit(torch.nn.Module):
    """Returns a fixed state [B, 1, 1, 1] whatever its input."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, residual_mask=None):
        return torch.full_like(x, self.value)


class ToyHalting(torch.nn.Module):
    """A fixed halting probability for every image."""

    def __init__(self, proba: float):
        super().__init__()
        self.logit = math.log(proba) - math.log1p(-proba)

    def forward(self, x):
        return torch.full((x.shape[0],), self.logit)


class ToyBackbone(torch.nn.Module):
    def __init__(self, units):
        super().__init__()
        self.stem = torch.nn.Identity()
        self.blocks = torch.nn.ModuleList([torch.nn.ModuleList(units)])
        self.head = torch.nn.Identity()
        self.block_channels = [1]


@pytest.mark.parametrize(
    ("h", "rule_n", "mode_n"),
    [
        # The review's example: no h^l > 0.5, so the rule runs all 3 units, while
        # q(N) = (0.4, 0.24, 0.36) has its mode at N = 1.
        ((0.4, 0.4), 3, 1),
        ((0.6, 0.2), 1, 1),
        ((0.3, 0.9), 2, 2),
    ],
)
def test_deterministic_is_first_z_mode_one_not_the_mode_of_q_of_n(h, rule_n, mode_n):
    """``deterministic`` halts at the first unit whose z-mode is 1 (h^l > 0.5), which is not
    argmax_n q(N = n) in general."""
    model = PACTResNet(ToyBackbone([ToyUnit(v) for v in (1.0, 2.0, 3.0)]), PACTConfig())
    model.halting[0] = torch.nn.ModuleList(ToyHalting(p) for p in h)
    x = torch.zeros(2, 1, 1, 1)
    for execution in ("early_exit", "masked"):
        result = model.run_block(0, x, EvalSpec("deterministic", execution, 0.5))
        assert result.units.tolist() == [rule_n, rule_n]
        assert result.state.flatten().tolist() == [float(rule_n)] * 2
    q = halting_distribution(torch.tensor([h], dtype=torch.float64))
    assert int(q.argmax(1)) + 1 == mode_n


def test_spatial_training_forward_backpropagates_through_the_masked_trajectory():
    torch.manual_seed(2)
    model = build_spatial_pact(ModelSpec("cifar10", 20, "sact"), PACTConfig(lambda_=0.1))
    model.train()
    out = model(images(batch=4))
    loss = model.loss(out, torch.randint(0, 10, (4,)))["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    for branches in model.decision_branches():
        for branch in branches:
            assert branch.local_conv.weight.grad.abs().sum() > 0
            assert branch.global_fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", ["truncated_geometric", "bernoulli"])
def test_training_loss_prior_term_by_enumerating_every_halting_pattern(prior):
    """ResNet-20 (three units per block): the loss's prior term against an independent
    computation that enumerates all 2^(L-1) halting patterns z of each block under the
    factorised q (h from the model's own halting branches, captured by hooks) and writes the
    prior's -log p(N) from its definition."""
    import itertools

    lam = 0.3
    torch.manual_seed(5)
    config = PACTConfig(lambda_=lam, prior=prior, halting_bias_init=0.0)
    model = build_pact(ModelSpec("cifar10", 20, "sact"), config).train()
    logits: dict[tuple[int, int], torch.Tensor] = {}
    for b, branches in enumerate(model.decision_branches()):
        for k, branch in enumerate(branches):
            branch.register_forward_hook(
                lambda mod, args, out, key=(b, k): logits.__setitem__(key, out.detach())
            )
    x, y = images(batch=6), torch.randint(0, 10, (6,))
    with torch.random.fork_rng():
        out = model(x)
    prior_term = model.loss(out, y)["loss"] - torch.nn.functional.cross_entropy(out.logits, y)
    length = 3

    def neg_log_prior(n: int) -> float:
        if prior == "truncated_geometric":
            z = sum(math.exp(-lam * m) for m in range(1, length + 1))
            return lam * n + math.log(z)
        floor = (3 - math.sqrt(5)) / 2  # rho = (1 - rho)^2 at L = 3
        stop = 1.0 - (1.0 - floor) * math.exp(-lam)  # each unit halts with this probability
        p = stop * (1 - stop) ** (n - 1) if n < length else (1 - stop) ** (length - 1)
        return -math.log(p)

    expected = 0.0
    for b in range(3):
        h = [torch.sigmoid(logits[(b, k)]).double() for k in range(length - 1)]
        per_image = torch.zeros(6, dtype=torch.float64)
        for z in itertools.product([0, 1], repeat=length - 1):
            n = next((k + 1 for k, zk in enumerate(z) if zk), length)
            prob = torch.ones(6, dtype=torch.float64)
            for k, zk in enumerate(z):
                prob = prob * (h[k] if zk else 1 - h[k])
            per_image += prob * neg_log_prior(n)
        expected += per_image.mean().item()
    assert len(logits) == 6 and any(0.2 < torch.sigmoid(v).mean() < 0.8 for v in logits.values())
    assert prior_term.item() == pytest.approx(expected, rel=1e-5)
