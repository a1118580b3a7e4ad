"""Errors a user can fix: every command prints one as a single ``error:`` line and exits with 2.

Library code raises these (they are ``ValueError`` subclasses, so callers that catch
``ValueError`` keep working); the message names the field or file and says what is valid.
"""

from __future__ import annotations

__all__ = ["USER_ERRORS", "ConfigError", "InputFileError", "UserError"]


class UserError(ValueError):
    """Bad input: a config value, a file, a dataset or a checkpoint."""


class ConfigError(UserError):
    """A configuration value is invalid; the message names the key and the allowed values."""


class InputFileError(UserError):
    """An input file or directory is empty or malformed; the message names it."""


#: What the commands report as ``error: ...`` with exit code 2 (missing models and datasets
#: are ``FileNotFoundError`` subclasses).
USER_ERRORS: tuple[type[Exception], ...] = (UserError, FileNotFoundError)
