"""ACT (Graves 2016) applied per image to ResNet blocks, as in the SACT code.

``act_halting`` is the pure halting function; ``SPEC`` is the registered method ``act``.
"""

from harness.contract import MethodSpec
from methods.act.config import SEARCH_SPACE, ACTConfig
from methods.act.halting import act_halting, act_step, check_eps
from methods.act.model import ACTResNet, build_act

SPEC = MethodSpec(
    name="act",
    config_cls=ACTConfig,
    model_cls=ACTResNet,
    build=build_act,
    search_space=SEARCH_SPACE,
    time_penalty_field="tau",
    description="Adaptive Computation Time per image (Graves 2016; Figurnov et al. 2017).",
    label="ACT",
    train_cost=1.0,
)

__all__ = ["ACTConfig", "ACTResNet", "SPEC", "act_halting", "act_step", "check_eps"]
