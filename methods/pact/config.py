"""PACT hyper-parameters. Every reconstruction choice is a knob (see README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import ConfigError
from methods.pact.prior import PRIORS, check_prior

ANNEALING = ("none", "exponential", "linear")


@dataclass(frozen=True)
class PACTConfig:
    """``lambda``: prior time penalty; Concrete ``temperature`` (annealed to
    ``temperature_final`` over training by ``anneal``); ``straight_through`` hard samples in the
    training forward; ``prior`` on N; ``halting_bias_init``."""

    lambda_: float = 0.01
    prior: str = "truncated_geometric"
    temperature: float = 1.0
    temperature_final: float = 0.1
    anneal: str = "exponential"
    straight_through: bool = False
    halting_bias_init: float = -3.0

    def validate(self) -> None:
        """lambda >= 0, temperatures > 0, known prior and schedule."""
        check_prior(self.prior, self.lambda_)
        for name in ("temperature", "temperature_final"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"method.{name}={value} must be > 0")
        if self.anneal not in ANNEALING:
            raise ConfigError(
                f"method.anneal={self.anneal!r} is not allowed; allowed values: "
                + ", ".join(ANNEALING)
            )

    def temperature_at(self, epoch: int, num_epochs: int) -> float:
        """Concrete temperature of ``epoch`` (0-based) of ``num_epochs``."""
        if self.anneal == "none" or num_epochs <= 1:
            return (
                self.temperature
                if self.anneal == "none" or num_epochs < 1
                else (self.temperature_final)
            )
        frac = epoch / (num_epochs - 1)
        if self.anneal == "linear":
            return self.temperature + frac * (self.temperature_final - self.temperature)
        return self.temperature * (self.temperature_final / self.temperature) ** frac


SEARCH_SPACE = {"lambda_": [0.001, 0.005, 0.01, 0.02, 0.05]}

__all__ = ["ANNEALING", "PRIORS", "PACTConfig", "SEARCH_SPACE"]
