"""Errors a user can fix; the entry points print them as one line instead of a traceback."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


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


def print_error(exc: LabkitError) -> int:
    """Print a user error as the one line ``error: ...`` on stderr; returns its exit status."""
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


def exit_on(exc: BaseException) -> NoReturn:
    """End a command on ``exc``: a user error as one line and its exit status; any other exception,
    or any at all under ``HYDRA_FULL_ERROR=1``, raised again with its traceback."""
    if not isinstance(exc, LabkitError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    sys.exit(print_error(exc))
