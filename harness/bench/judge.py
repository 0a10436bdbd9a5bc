"""Verdicts on measured values: does a figure meet its target?

Pure functions of the plan's :class:`~harness.bench.plan.Target` and a measured value; nothing
here measures (:mod:`harness.bench.measure`) or formats (:mod:`harness.bench.render`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
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


def met(target: Target, value: float | None) -> bool | None:
    """Whether ``value`` meets ``target`` (None if it was not measured)."""
    if value is None:
        return None
    return bool(_OPERATORS[target.comparison](value, target.bound))


def verdicts(
    targets: Mapping[str, Target], ratios: Mapping[str, float | None]
) -> dict[str, dict[str, Any]]:
    """Per figure of ``ratios``: its target as text, its goal and whether it was met."""
    return {
        key: {
            "target": targets[key].text,
            "goal": targets[key].goal,
            "met": met(targets[key], value),
        }
        for key, value in ratios.items()
    }
