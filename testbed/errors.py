"""The one exception type for mistakes in what the user gave us (a config, a file, a path).

The CLI prints a :class:`UserError` as one ``error: ...`` line on stderr and exits with status 2,
without a traceback; every other exception is an internal error and keeps its traceback. Raise it
(or a subclass: :class:`testbed.config.ConfigError`, ``llm_backend.datasets.DatasetError``,
``llm_backend.models.ModelNotFoundError``) only where the message alone tells the user what to fix:
it names the config key, or the file and line.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad user input; the message names the key, file or line to fix."""


class RunDirInUse(UserError):
    """Another live process holds the run directory's lock."""
