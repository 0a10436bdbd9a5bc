"""Errors the harness raises for bad input, and the one helper that checks a closed choice.

Every error here is meant to reach the user as one line: the CLI prints ``str(err)`` and exits
non-zero, before any run directory is written. Name the offending field and the allowed values.
"""


class HarnessError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(HarnessError, ValueError):
    """A configuration field holds a value that is not allowed."""


class DataError(HarnessError):
    """A dataset cannot be found, read or understood."""


class ContractError(HarnessError):
    """A method's output or declaration breaks the contract of ``harness.contract``."""


class CheckpointError(HarnessError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


class DivergenceError(HarnessError):
    """Training produced a non-finite loss; ``epoch`` and ``step`` (1-based) say where."""

    def __init__(self, message: str, epoch: int = 0, step: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step

    def __reduce__(self):  # picklable with its fields (Ray ships errors between processes)
        return (type(self), (str(self), self.epoch, self.step))


class LockedError(HarnessError):
    """A folder is locked by another process (a run directory, a study folder)."""


class StorageError(HarnessError):
    """A file could not be written (disk full, permissions)."""


def check_choice(name: str, value: object, allowed: tuple | list) -> None:
    """Raise ``ConfigError`` unless ``value`` is one of ``allowed`` (the one wording for it)."""
    if value not in allowed:
        shown = ", ".join(str(a) for a in allowed)
        raise ConfigError(f"{name}={value!r} is not allowed; allowed values: {shown}")
