"""ACT hyper-parameters (defaults: the SACT code)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError
from methods.act.halting import check_eps


@dataclass(frozen=True)
class ACTConfig:
    """``tau``: ponder-cost weight; ``eps``: halting slack; ``halting_bias_init``: -3."""

    tau: float = 0.01
    eps: float = 0.01
    halting_bias_init: float = -3.0

    def validate(self) -> None:
        """tau >= 0 and eps in (0, 1)."""
        if self.tau < 0:
            raise ConfigError(f"method.tau={self.tau} must be >= 0 (the paper uses 0.005-0.1)")
        check_eps(self.eps)


SEARCH_SPACE = {"tau": [0.001, 0.005, 0.01, 0.02, 0.05]}
