"""Errors a user can fix; the entry points print them as one line instead of a traceback."""

from __future__ import annotations


class LabkitError(Exception):
    """Base class of user-facing errors; ``exit_code`` is what the command exits with."""

    exit_code = 1


class ConfigError(LabkitError):
    """A configuration value is out of range or inconsistent."""

    exit_code = 2


class DataError(LabkitError):
    """Dataset files are missing, corrupt or cannot be downloaded."""

    exit_code = 2


class NonFiniteLossError(LabkitError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""

    exit_code = 3


class CheckpointError(LabkitError):
    """A checkpoint file is missing, truncated, foreign, or built for another architecture."""

    exit_code = 2


class OutputError(LabkitError):
    """Results could not be written (full disk, unwritable folder); earlier files are intact."""

    exit_code = 1


class RunInterrupted(LabkitError):
    """SIGTERM / SIGINT stopped the run after writing a checkpoint it can resume from.

    The exit status is the shell's convention for a signal: 128 + its number (143, 130).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
