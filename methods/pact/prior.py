"""PACT's closed-form quantities: q(N), E_q[N] and the prior on N (pure functions).

Halting variables z^l ~ Bernoulli(h^l) for l < L, z^L = 1, and N = min{l : z^l = 1}, so

    q(N = n) = h^n prod_{j<n} (1 - h^j)                      (h^L = 1)
    E_q[N]   = sum_{n>=1} q(N >= n) = 1 + sum_{n=1}^{L-1} prod_{j<=n} (1 - h^j)

Priors on N over 1..L with time penalty lambda >= 0:

* ``truncated_geometric``: p(N = n) = exp(-lambda n) / Z, Z = sum_{m=1}^{L} exp(-lambda m), so
  -log p(N) = lambda N + log Z and E_q[-log p(N)] = lambda E_q[N] + log Z, the smooth
  counterpart of ACT's tau (N + R).
* ``bernoulli``: z^l iid Bernoulli(rho) for l < L (z^L = 1), so the leftover mass sits on
  N = L: p(N = n) = rho (1 - rho)^(n-1) for n < L and p(N = L) = (1 - rho)^(L-1). With
  rho = 1 - exp(-lambda) (the first reconstruction) "never halt" was the prior's mode for every
  lambda <= 0.1 at L = 3, 5 and 18: such a prior does not prefer less computation. So
  rho = 1 - (1 - rho*_L) exp(-lambda), where rho*_L solves rho = (1 - rho)^(L-1) (the
  smallest rho whose N = 1 is at least as likely as N = L): at lambda = 0 the two tie, and at
  every lambda > 0 the mode is N = 1, as the truncated geometric's is. Per unit run, -log p(N)
  grows by lambda - log(1 - rho*_L): lambda plus a floor that depends on L only (needs
  lambda > 0).

Shapes: ``h`` is ``[B, L-1]`` (per image) or ``[B, L-1, H, W]`` (per position).
"""

from __future__ import annotations

import math

import torch

from harness.errors import ConfigError

PRIORS = ("truncated_geometric", "bernoulli")


def _full(h: torch.Tensor) -> torch.Tensor:
    if h.dim() not in (2, 4):
        raise ValueError(f"halting_proba must be [B, L-1] or [B, L-1, H, W], got {tuple(h.shape)}")
    batch, _, *rest = h.shape
    return torch.cat([h, h.new_ones((batch, 1, *rest))], dim=1)


def halting_distribution(halting_proba: torch.Tensor) -> torch.Tensor:
    """q(N = n) for n = 1..L, shape ``[B, L, ...]`` (sums to 1 over dim 1)."""
    h_full = _full(halting_proba)
    survive = torch.cumprod(1.0 - h_full, dim=1)  # q(N > n)
    survive_before = torch.cat([torch.ones_like(survive[:, :1]), survive[:, :-1]], dim=1)
    return h_full * survive_before


def expected_units(halting_proba: torch.Tensor) -> torch.Tensor:
    """E_q[N] = 1 + sum_{n=1}^{L-1} prod_{j<=n} (1 - h^j); ``[B]`` or ``[B, H, W]``."""
    if halting_proba.dim() not in (2, 4):
        raise ValueError(
            f"halting_proba must be [B, L-1] or [B, L-1, H, W], got {tuple(halting_proba.shape)}"
        )
    survive = torch.cumprod(1.0 - halting_proba, dim=1)
    return 1.0 + survive.sum(dim=1)


def check_prior(prior: str, lambda_: float) -> None:
    """Known prior, lambda >= 0 (> 0 for the Bernoulli prior)."""
    if prior not in PRIORS:
        raise ConfigError(
            f"method.prior={prior!r} is not allowed; allowed values: {', '.join(PRIORS)}"
        )
    if lambda_ < 0 or (prior == "bernoulli" and lambda_ == 0):
        bound = "> 0 for the bernoulli prior" if prior == "bernoulli" else ">= 0"
        raise ConfigError(f"method.lambda={lambda_} must be {bound}")


def bernoulli_floor(num_units: int) -> float:
    """rho*_L: the root of rho = (1 - rho)^(L-1) in (0, 1] (bisection to float precision);
    1 for L = 1 (one unit: it always runs)."""
    if num_units <= 1:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(200):
        middle = (low + high) / 2
        if middle < (1.0 - middle) ** (num_units - 1):
            low = middle
        else:
            high = middle
    return (low + high) / 2


def bernoulli_rate(num_units: int, lambda_: float) -> float:
    """The Bernoulli prior's per-unit halting probability rho = 1 - (1 - rho*_L) e^-lambda."""
    return 1.0 - (1.0 - bernoulli_floor(num_units)) * math.exp(-lambda_)


def log_prior_table(
    num_units: int,
    lambda_: float,
    prior: str = "truncated_geometric",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """log p(N = n) for n = 1..L as a float64 tensor ``[L]`` on ``device`` (made there: no
    host-to-device copy, which would sync the host with CUDA at every training step)."""
    check_prior(prior, lambda_)
    n = torch.arange(1, num_units + 1, dtype=torch.float64, device=device)
    if prior == "truncated_geometric":
        log_z = torch.logsumexp(-lambda_ * n, dim=0)
        return -lambda_ * n - log_z
    rho = bernoulli_rate(num_units, lambda_)
    log_stay = math.log1p(-rho) if rho < 1.0 else -math.inf
    table = math.log(rho) + (n - 1) * log_stay
    table[-1] = (num_units - 1) * log_stay if num_units > 1 else 0.0
    return table


def log_prior(n: torch.Tensor, num_units: int, lambda_: float, prior: str = "truncated_geometric"):
    """log p(N) for integer ``n`` in 1..L (any shape), float64."""
    table = log_prior_table(num_units, lambda_, prior, device=n.device)
    return table[n.long() - 1]


def expected_log_prior(
    halting_proba: torch.Tensor, lambda_: float, prior: str = "truncated_geometric"
) -> torch.Tensor:
    """E_q[log p(N)] = sum_n q(N = n) log p(n), ``[B]`` or ``[B, H, W]``, differentiable in h."""
    q = halting_distribution(halting_proba)
    table = log_prior_table(q.shape[1], lambda_, prior, device=q.device).to(q.dtype)
    table = table.view(1, -1, *([1] * (q.dim() - 2)))
    return (q * table).sum(dim=1)
