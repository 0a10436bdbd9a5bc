"""Cost accounting: FLOPs (fvcore + executed counts), peak memory and timing.

- :mod:`harness.costs.flops`: :class:`~harness.costs.flops.FlopAccountant` and the convention.
- :mod:`harness.costs.memory`: peak memory of one pass (exact on CPU, allocator peak on CUDA).
- :mod:`harness.costs.timing`: median wall-clock time per batch after warm-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode, then give every submodule back its own training flag.

    ``module.train(flag)`` afterwards would set all submodules alike (a frozen batch norm, or an
    eval-mode module inside a fresh wrapper, would come back in training mode).
    """
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes:
            sub.training = training
