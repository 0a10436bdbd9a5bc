"""SACT hyper-parameters (defaults: the SACT code)."""

from __future__ import annotations

from dataclasses import dataclass

from methods.act.config import ACTConfig


@dataclass(frozen=True)
class SACTConfig(ACTConfig):
    """Same knobs as ACT: ``tau``, ``eps``, ``halting_bias_init`` (3x3 halting kernel)."""


SEARCH_SPACE = {"tau": [0.001, 0.005, 0.01, 0.02, 0.05]}
