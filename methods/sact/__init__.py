"""SACT: spatially adaptive computation time (Figurnov et al., CVPR 2017)."""

from harness.contract import MethodSpec
from methods.sact.config import SEARCH_SPACE, SACTConfig
from methods.sact.model import SACTResNet, build_sact

SPEC = MethodSpec(
    name="sact",
    config_cls=SACTConfig,
    model_cls=SACTResNet,
    build=build_sact,
    search_space=SEARCH_SPACE,
    time_penalty_field="tau",
    description="Spatially Adaptive Computation Time: ACT per position (Figurnov et al. 2017).",
    label="SACT",
    train_cost=1.25,
)

__all__ = ["SACTConfig", "SACTResNet", "SPEC"]
