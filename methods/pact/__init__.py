"""PACT (Figurnov, Sobolev, Vetrov 2017) and its spatial variant; see README.md."""

from harness.contract import MethodSpec
from methods.pact.config import SEARCH_SPACE, PACTConfig
from methods.pact.model import PACTResNet, SpatialPACTResNet, build_pact, build_spatial_pact
from methods.pact.prior import (
    PRIORS,
    expected_log_prior,
    expected_units,
    halting_distribution,
    log_prior,
    log_prior_table,
)

#: Shown under every report table with PACT rows.
PACT_NOTE = "PACT rows are our reconstruction of the method, not the paper's code."

PACT_SPEC = MethodSpec(
    name="pact",
    config_cls=PACTConfig,
    model_cls=PACTResNet,
    build=build_pact,
    search_space=SEARCH_SPACE,
    time_penalty_field="lambda_",
    description="Probabilistic ACT: discrete halting variables, prior on N, Concrete training.",
    label="PACT (reconstruction)",
    train_cost=1.1,
    table_note=PACT_NOTE,
)

SPATIAL_PACT_SPEC = MethodSpec(
    name="spatial_pact",
    config_cls=PACTConfig,
    model_cls=SpatialPACTResNet,
    build=build_spatial_pact,
    search_space=SEARCH_SPACE,
    time_penalty_field="lambda_",
    description="Spatial PACT: PACT per position with the SACT halting branch and masking.",
    label="spatial PACT (reconstruction)",
    train_cost=1.7,
    table_note=PACT_NOTE,
)

__all__ = [
    "PACT_SPEC",
    "PRIORS",
    "PACTConfig",
    "PACTResNet",
    "SPATIAL_PACT_SPEC",
    "SpatialPACTResNet",
    "expected_log_prior",
    "expected_units",
    "halting_distribution",
    "log_prior",
    "log_prior_table",
]
