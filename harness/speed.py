"""The fast training path: what ``speed.*`` (:class:`~harness.config.SpeedConfig`) resolves to
on a device, and the pieces the training loop uses.

``auto`` turns each fast path on for CUDA and off on CPU (where it does not pay: autocast to
bf16 is slower on most CPUs, the data are on the CPU already and a host sync costs nothing).
``on`` forces it on any device, which is how the tests check each one for equivalence on CPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from harness.config import SpeedConfig


@dataclass(frozen=True)
class Speed:
    """Resolved fast-path settings for one device."""

    device_data: bool = False
    amp: torch.dtype | None = None
    sync_every_step: bool = True
    compile: bool = False
    compile_backend: str = "inductor"

    def autocast(self, device: torch.device):
        """The autocast context of the forward pass and loss (a no-op without ``amp``)."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp)


def _switch(value: str, device: torch.device) -> bool:
    return value == "on" or (value == "auto" and device.type == "cuda")


def resolve_speed(cfg: SpeedConfig, device: torch.device) -> Speed:
    """``speed.*`` on ``device``: ``auto`` means on for CUDA, off elsewhere."""
    device = torch.device(device)
    sync = cfg.host_sync
    if sync == "auto":
        sync = "epoch" if device.type == "cuda" else "step"
    return Speed(
        device_data=_switch(cfg.device_data, device),
        amp=torch.bfloat16 if _switch(cfg.amp, device) else None,
        sync_every_step=sync == "step",
        compile=cfg.compile == "on",
        compile_backend=cfg.compile_backend,
    )


def compiled(model: nn.Module, speed: Speed) -> nn.Module:
    """The callable that runs the model's forward: ``torch.compile`` of it, or the model.

    The compiled wrapper shares the model's parameters, so the optimizer, checkpoints and
    evaluation keep using ``model`` itself.
    """
    if not speed.compile:
        return model
    return torch.compile(model, backend=speed.compile_backend, dynamic=True)
