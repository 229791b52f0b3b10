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
