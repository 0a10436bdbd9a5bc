"""Progress bars that stay quiet when the output is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def want_progress(setting: str) -> bool:
    """Resolve the ``progress`` config value (auto/on/off) for the current stderr."""
    if setting == "auto":
        return sys.stderr.isatty()
    return setting == "on"


def progress_bar(iterable: Iterable, enabled: bool, desc: str = "", **kwargs) -> Iterable:
    """``tqdm`` around ``iterable`` when enabled, else the iterable itself."""
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kwargs)
