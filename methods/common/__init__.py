"""Pieces shared by the halting methods: halting branches and the block-by-block model."""

from methods.common.branches import ImageHalting, SpatialHalting
from methods.common.model import BlockResult, HaltingResNet, logistic_noise, take

__all__ = [
    "BlockResult",
    "HaltingResNet",
    "ImageHalting",
    "SpatialHalting",
    "logistic_noise",
    "take",
]
