"""Early exit that pays: how a batch sheds halted samples (ACT, PACT).

Removing halted samples from the batch saves their compute but costs an index copy of the
state, a host synchronisation to learn how many remain, and ever smaller batches, which run at a
lower throughput per image. Measured on CPU (``pact-harness bench``, ``torch.profiler``), the
early exit lost its saving to these, fixed here and in the methods:

- **a scatter per unit** (the largest): ACT accumulated sum_l p^l x^l into the full batch with
  ``index_add_`` after every unit, which is a slow scatter on CPU (2.2 s of an 8.6 s ResNet-110
  pass, batch 128, against 5.9 s for the vanilla network). The accumulator now follows the
  compacted batch (a dense in-place add) and is written back with ``index_copy_`` only when
  the batch is compacted; PACT assembles its output with ``index_copy_`` (not ``index_put_``).
- **memory format**: an accumulator made with ``new_zeros``/``new_empty`` is NCHW even when the
  state is channels-last, so every block after the first handed its units an NCHW tensor (a
  format conversion per conv). Buffers now come from the state itself or keep its format
  (boolean indexing keeps it; ``index_select`` does not).
- **copies that remove nothing**: ACT copied the state (``x[keep]``) and gathered its running
  sums after every unit, even when no sample halted there; PACT drew logistic noise in the
  deterministic mode, which needs none.
- **host syncs**: one per unit is needed to size the next batch (:func:`count`); everything else
  (halting, N, ponder cost) stays on the device.
- **tiny batches**: :func:`should_compact` / :func:`compaction_keep` can compact only once a
  fraction of the batch has halted and never below ``min_rows`` rows (halted rows pad the batch;
  their results are ignored, so the logits stay exactly those of the masked execution). The
  defaults are exact (compact at every halt, down to one row) so that the early exit runs
  exactly the FLOPs the accounting charges; the knobs are per model (``compact_fraction``,
  ``min_rows``).
"""

from __future__ import annotations

import torch

#: ACT: compact once this fraction of the running batch has halted (0: at every halt). The
#: default is exact: the early exit then runs exactly the FLOPs the accounting charges (the
#: ``FlopCounterMode`` cross-check of the design holds). A larger fraction trades wasted rows for
#: fewer copies and syncs (a GPU knob: ``model.compact_fraction``).
ACT_COMPACT_FRACTION = 0.0
#: PACT: compact at every halt. PACT's point is its memory: a halted sample's state is set
#: aside at once, so keeping its row in the running batch would hold it twice.
PACT_COMPACT_FRACTION = 0.0


def count(mask: torch.Tensor) -> int:
    """Number of True entries: the one host synchronisation per unit of an early exit."""
    return int(mask.sum())


def should_compact(alive: int, rows: int, fraction: float, min_rows: int | None = None) -> bool:
    """Compact a batch of ``rows`` rows of which ``alive`` still run? Once at least ``fraction``
    of them have halted, and only if the batch would shrink (see :data:`MIN_ROWS`)."""
    dead = rows - alive
    after = max(alive, min(MIN_ROWS if min_rows is None else min_rows, rows))
    return dead > 0 and after < rows and dead >= fraction * rows


#: Default smallest batch a compaction leaves (``model.min_rows``): 1, exact (see above). On CPU a
#: batch of one image leaves oneDNN for the slow reference convolution
#: (``aten::_slow_conv2d_forward``, about 4% of a ResNet-110 PACT early exit measured here), so a
#: model may set ``min_rows`` to pad tiny batches with halted rows (they run with weight 0 / are
#: ignored: logits unchanged, FLOPs above the accounted ones).
MIN_ROWS = 1


def compaction_keep(alive: torch.Tensor, running: int, min_rows: int = MIN_ROWS) -> torch.Tensor:
    """Rows to keep when compacting: every running row, padded with the first halted rows up to
    ``min_rows`` (bucketing: a batch never shrinks below ``min_rows`` rows)."""
    need = min(min_rows, len(alive)) - running
    if need <= 0:
        return alive
    halted = ~alive
    return alive | (halted & (torch.cumsum(halted, 0) <= need))
