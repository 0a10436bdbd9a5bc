"""Early exit that pays: how a batch sheds halted samples (ACT, PACT).

Removing halted samples from the batch saves their compute but costs an index copy of the
state, a host synchronisation to learn how many remain, and ever smaller batches, which run at a
lower throughput per image. Measured on CPU (``pact-harness bench``), today's early exit lost
its saving to three things, fixed here and in the methods:

- **memory format**: an accumulator made with ``new_zeros``/``new_empty`` is NCHW even when the
  state is channels-last, so every block after the first handed its units an NCHW tensor (a
  format conversion per conv). Buffers are made with ``*_like`` on the state, which keeps its
  format (boolean indexing keeps it too; ``index_select`` does not).
- **copies that remove nothing**: ACT copied the state (``x[keep]``) and gathered its running
  sums after every unit, even when no sample halted there.
- **host syncs**: one per unit is needed to size the next batch (:func:`count`); everything else
  (halting, N, ponder cost) stays on the device.

:class:`Compaction` decides when to compact: once at least ``fraction`` of the rows in the
batch have halted (0: at every halt). Rows that halted but are not removed yet keep running;
their results are ignored (weight 0), so the logits stay exactly those of the masked execution.
"""

from __future__ import annotations

import torch

#: ACT: compact once this fraction of the running batch has halted. Below it, copying the
#: state and shrinking the batch costs more than the rows it would save (a sync, an index copy
#: and a less efficient batch).
ACT_COMPACT_FRACTION = 0.125
#: PACT: compact at every halt. PACT's point is its memory: a halted sample's state is set
#: aside at once, so keeping its row in the running batch would hold it twice.
PACT_COMPACT_FRACTION = 0.0


def count(mask: torch.Tensor) -> int:
    """Number of True entries: the one host synchronisation per unit of an early exit."""
    return int(mask.sum())


def should_compact(alive: int, rows: int, fraction: float) -> bool:
    """Compact a batch of ``rows`` rows of which ``alive`` still run?"""
    dead = rows - alive
    return dead > 0 and dead >= fraction * rows
