"""Exceptions that carry a user-facing message.

Every error a user can cause (a bad file, a bad option, an impossible combination) is raised as an
``AekitError`` whose message says what was expected, what came in and how to fix it. The CLI prints
that message on one line and exits with status 2; Python callers can catch the specific subclass.
"""

from __future__ import annotations

__all__ = ["AekitError", "DataError", "ConfigError", "RunError", "TrainingDiverged"]


class AekitError(Exception):
    """Base class of every user-facing aekit error."""


class DataError(AekitError, ValueError):
    """A dataset could not be read or is not usable (missing, corrupt, NaN, ragged, empty...)."""


class ConfigError(AekitError, ValueError):
    """A model, training or command option is invalid or does not apply."""


class RunError(AekitError):
    """A run directory is missing, incomplete or inconsistent."""


class TrainingDiverged(AekitError):
    """The loss became NaN or infinite; the last good weights were kept."""
