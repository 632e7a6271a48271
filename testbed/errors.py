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


class RunFileError(UserError, ValueError):
    """A run directory's file (metrics, checkpoint) is unreadable; the message names it and what to do."""


class Interrupted(Exception):
    """Ctrl-C (KeyboardInterrupt) during a run: the CLI prints ``message`` as one line and exits 130.

    Not a :class:`UserError`: nothing was wrong with the input, and the exit status differs.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def check_output_folder(path, flag: str) -> None:
    """Refuse an output folder that cannot be one (``path`` or a parent is an existing file), before any
    work is done; a missing folder is fine (it is created when the results are written)."""
    from pathlib import Path

    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is a file" if q == p else f"is under {q}, which is a file"
                raise UserError(f"{flag}: {p} {what}, not a folder; give a folder path (it is created if missing)")
            return
