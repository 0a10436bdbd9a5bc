"""Peak memory of one evaluation pass: exact live tensor storage on CPU, allocator peak on CUDA.

The figure is split in three parts, the same on both devices::

    peak_bytes = parameter_bytes + input_bytes + activation_bytes

``parameter_bytes`` are the model's parameters and buffers, ``input_bytes`` the image batch, and
``activation_bytes`` the largest number of bytes that the forward pass itself held at any moment
on top of them (intermediate states, accumulators, halting scores, the logits).

- **CPU** (:class:`LiveTensorTracker`): a ``TorchDispatchMode`` sees every tensor an operator
  returns. A storage that no input of the operator owns is new: its bytes count as live until a
  weak reference on the storage fires (CPython frees it the moment the last tensor using it
  dies). Views and in-place results alias an input and are skipped. The peak of that running sum
  is exact and identical run to run (the cyclic garbage collector is paused during the pass so
  that nothing is freed at an arbitrary moment). It counts tensor storage only: scratch buffers
  inside a kernel (oneDNN workspaces) and allocator caching are not tensors and are not counted.
- **CUDA**: ``torch.cuda.reset_peak_memory_stats`` before the pass, ``max_memory_allocated``
  after, minus what was allocated before. Allocator blocks are rounded (512 B) and include cuDNN
  and cuBLAS workspaces, so the CUDA figure is at least the CPU one. ``torch.cuda`` statistics are
  never read on a machine without CUDA (they silently return 0 there).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: The measurement technique of each device's figure (the ``peak_memory_technique`` column).
TECHNIQUES = {"cpu": "live tensor storage (exact)", "cuda": "CUDA caching-allocator peak"}


@dataclass(frozen=True)
class LiveTensor:
    """A tensor storage alive at the peak: the operator that made it, its shape and bytes."""

    op: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class MemoryReport:
    """Peak memory of one pass, split into parameters, input and activations (bytes)."""

    device: str
    parameter_bytes: int
    input_bytes: int
    activation_bytes: int
    peak_op: str | None = None
    live_at_peak: tuple[LiveTensor, ...] = field(default=(), repr=False)

    @property
    def peak_bytes(self) -> int:
        """Parameters + input + the pass's own peak."""
        return self.parameter_bytes + self.input_bytes + self.activation_bytes

    @property
    def technique(self) -> str:
        """How the figure was measured (:data:`TECHNIQUES`)."""
        return TECHNIQUES[self.device]


class LiveTensorTracker(TorchDispatchMode):
    """Exact running sum and peak of the bytes of tensor storages created while active.

    Storages that exist before the mode is entered (parameters, the input) are never counted:
    create them outside. ``live_at_peak`` describes the storages alive at the peak (from the
    tracker's own bookkeeping, so it costs nothing but a copy per new peak).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_op: str | None = None
        self._live: dict[int, tuple[weakref.ref, LiveTensor]] = {}
        self._at_peak: tuple[LiveTensor, ...] = ()

    @property
    def live_at_peak(self) -> tuple[LiveTensor, ...]:
        """The storages alive when the peak was reached, largest first."""
        return tuple(sorted(self._at_peak, key=lambda t: -t.nbytes))

    def _freed(self, key: int, ref: weakref.ref) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] is ref:
            del self._live[key]
            self.live_bytes -= entry[1].nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            a.untyped_storage().data_ptr()
            for a in tree_flatten((args, kwargs))[0]
            if isinstance(a, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in inputs or key in self._live:
                continue  # a view or in-place result, or a storage already counted
            ref = weakref.ref(storage, lambda r, key=key: self._freed(key, r))
            info = LiveTensor(str(func), tuple(tensor.shape), str(tensor.dtype), nbytes)
            self._live[key] = (ref, info)
            self.live_bytes += nbytes
            if self.live_bytes > self.peak_bytes:
                self.peak_bytes, self.peak_op = self.live_bytes, str(func)
                self._at_peak = tuple(entry[1] for entry in self._live.values())
        return out


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def measure_peak_memory(
    run: Callable[[], Any], model: nn.Module, inputs: torch.Tensor
) -> tuple[MemoryReport, Any]:
    """Peak memory of ``run()`` (one forward of ``model`` on ``inputs``); returns its result too.

    ``inputs`` must already exist (it is counted as ``input_bytes``, not as activation). The
    device is that of ``inputs``. On CUDA, warm the model up first (cuDNN/cuBLAS set-up
    allocations otherwise land in the first pass).
    """
    device = inputs.device
    parameter_bytes, input_bytes = model_bytes(model), storage_bytes([inputs])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = run()
        torch.cuda.synchronize(device)
        activation = torch.cuda.max_memory_allocated(device) - before
        report = MemoryReport("cuda", parameter_bytes, input_bytes, activation)
        return report, result
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda, not {device.type}")
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection at an arbitrary moment would make the peak vary run to run
    try:
        with LiveTensorTracker() as tracker:
            result = run()
    finally:
        if was_enabled:
            gc.enable()
    report = MemoryReport(
        "cpu",
        parameter_bytes,
        input_bytes,
        tracker.peak_bytes,
        tracker.peak_op,
        tracker.live_at_peak,
    )
    return report, result
