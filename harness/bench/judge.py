"""Verdicts on measured values: does a figure meet its target, given the spread of its rounds?

A timed figure is measured once per interleaved round (:mod:`harness.bench.measure` keeps one
ratio per round), so it comes as a small sample, not one number. Its value is the sample's
median; its spread is a distribution-free confidence interval for that median
(:func:`spread_of`): the order statistics ``[x_(k), x_(n+1-k)]`` of the ``n`` sorted rounds
with the largest ``k`` whose coverage ``1 - 2 P(Binomial(n, 1/2) <= k - 1)`` is at least
:data:`CONFIDENCE` (5 rounds: the range, 93.75%; 10 rounds: 2nd to 9th, 97.9%).

The rule (:func:`judge`, :data:`RULE`): a target is **met** when the whole interval meets it (for
``>= 0.8``: the lower end is at least 0.8), **missed** when none of it does (the upper end is
below 0.8), else **too noisy** to judge. Fewer than :data:`MIN_ROUNDS` rounds are **too few**
to judge: below 5 rounds even the range covers the median less than 90% of the time
(4 rounds: 87.5%). An exact figure (peak memory counted byte by byte) has no spread and is
judged on its value. Pure functions of the plan's :class:`~harness.bench.plan.Target` and the
measured samples; nothing here measures or formats.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.bench.plan import Target

#: What each comparison of a target means (``"<="``: the value is at most the bound); one entry
#: per :data:`harness.bench.plan.COMPARISONS`.
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}

#: The coverage the interval of a figure's median must reach.
CONFIDENCE = 0.9
#: The fewest rounds whose range covers the median with :data:`CONFIDENCE` (1 - 2 / 2**n).
MIN_ROUNDS = 5
#: How the interval is made (the JSON and the table state it).
INTERVAL = (
    f"median of the per-round values; interval: distribution-free confidence interval of the "
    f"median (order statistics of the rounds, binomial coverage >= {CONFIDENCE:.0%})"
)
#: The verdicts, as the JSON writes them.
MET, MISSED, TOO_NOISY, TOO_FEW, SKIPPED = "met", "missed", "too noisy", "too few rounds", "skipped"
#: The rule, in words (printed under the table, written in the JSON).
RULE = (
    f"met? judges the interval: yes when all of it meets the target, NO when none of it does, "
    f"else too noisy; at least {MIN_ROUNDS} rounds to judge; exact figures on their value"
)


@dataclass(frozen=True)
class Spread:
    """A figure's value (``median``) and the interval ``[low, high]`` that covers its true
    median with probability ``confidence``, from ``n`` rounds (``rounds``, in measured order).
    ``exact``: counted, not timed (no noise; ``low == high == median``). ``source`` says where
    a combined interval came from (the worse of several depths)."""

    median: float
    low: float
    high: float
    n: int
    confidence: float
    rounds: tuple[float, ...] = ()
    exact: bool = False
    source: str = "rounds"

    def as_dict(self) -> dict[str, Any]:
        """The JSON's ``spread`` entry of a figure."""
        return {
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "confidence": self.confidence,
            "rounds": list(self.rounds),
            "exact": self.exact,
            "source": self.source,
        }


def coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) for ``n`` independent draws of a continuous variable:
    ``1 - 2 P(Binomial(n, 1/2) <= k - 1)``."""
    if n < 1 or not 1 <= k <= (n + 1) // 2:
        raise ValueError(f"order statistic k={k} of n={n} rounds")
    tail = sum(math.comb(n, i) for i in range(k)) / 2**n
    return max(0.0, 1.0 - 2.0 * tail)


def spread_of(rounds: Sequence[float]) -> Spread:
    """The median of ``rounds`` and its order-statistic interval: the largest ``k`` whose
    coverage reaches :data:`CONFIDENCE`, or the range (``k = 1``) when none does (fewer than
    :data:`MIN_ROUNDS` rounds; its lower coverage is reported)."""
    if not rounds:
        raise ValueError("no rounds")
    ordered = sorted(float(v) for v in rounds)
    n = len(ordered)
    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(n, k + 1) >= CONFIDENCE:
        k += 1
    return Spread(
        median=statistics.median(ordered),
        low=ordered[k - 1],
        high=ordered[n - k],
        n=n,
        confidence=coverage(n, k),
        rounds=tuple(float(v) for v in rounds),
    )


def exact(value: float) -> Spread:
    """The spread of a counted figure: none."""
    return Spread(value, value, value, n=1, confidence=1.0, exact=True, source="exact")


def worst(spreads: Mapping[str, Spread], target: Target) -> Spread:
    """The spread of a figure that holds the worse of several (per depth) for ``target``: for
    ``>=``/``>`` the minimum of each median and end, for ``<=``/``<`` the maximum. If each
    interval covers its depth's median, this one covers the worse median; its confidence is the
    Bonferroni bound ``1 - sum(1 - c)``."""
    if not spreads:
        raise ValueError("no spreads to combine")
    pick = min if target.comparison in (">=", ">") else max
    values = list(spreads.values())
    return Spread(
        median=pick(s.median for s in values),
        low=pick(s.low for s in values),
        high=pick(s.high for s in values),
        n=min(s.n for s in values),
        confidence=max(0.0, 1.0 - sum(1.0 - s.confidence for s in values)),
        exact=all(s.exact for s in values),
        source="worse of " + ", ".join(spreads),
    )


def met(target: Target, value: float | None) -> bool | None:
    """Whether ``value`` meets ``target`` (None if it was not measured)."""
    if value is None:
        return None
    return bool(_OPERATORS[target.comparison](value, target.bound))


def judge(target: Target, spread: Spread | None) -> str:
    """:data:`MET`, :data:`MISSED`, :data:`TOO_NOISY`, :data:`TOO_FEW` or :data:`SKIPPED`
    (not measured): the rule of :data:`RULE`."""
    if spread is None:
        return SKIPPED
    if not spread.exact and spread.n < MIN_ROUNDS:
        return TOO_FEW
    at_low, at_high = met(target, spread.low), met(target, spread.high)
    if at_low and at_high:
        return MET
    if not at_low and not at_high:
        return MISSED
    return TOO_NOISY


def verdicts(
    targets: Mapping[str, Target],
    ratios: Mapping[str, float | None],
    spreads: Mapping[str, Spread | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per figure of ``ratios``: its target as text, its goal, its ``verdict`` (:func:`judge`)
    and ``met`` (True / False when met / missed; None when too noisy, too few rounds or not
    measured). Without ``spreads`` a value is judged as exact."""
    out = {}
    for key, value in ratios.items():
        if spreads is not None:
            spread = spreads.get(key)
        else:
            spread = None if value is None else exact(value)
        verdict = judge(targets[key], spread)
        out[key] = {
            "target": targets[key].text,
            "goal": targets[key].goal,
            "verdict": verdict,
            "met": {MET: True, MISSED: False}.get(verdict),
        }
    return out
