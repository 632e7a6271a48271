"""An OS file lock on a run directory, so two processes never train into one directory.

``RUN_DIR/run.lock`` is locked with ``fcntl.flock`` for as long as the run holds it. The kernel drops
the lock when the holder's file is closed, which includes every way a process can end (an exception,
Ctrl-C, ``kill -9``), so a crash never leaves a stale lock behind; the file itself stays (deleting it
would race with a process that has just opened it). The holder writes its pid into the file, only to
name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from testbed.errors import RunDirInUse, UserError

LOCK_NAME = "run.lock"


class RunLock:
    """Exclusive, non-blocking lock of one run directory (the directory must exist to acquire)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirInUse` naming the holder's pid; changes nothing then."""
        if self.held:
            return
        try:
            f = open(self.path, "a+")  # never truncates: a refused process must leave the holder's pid
        except OSError as e:  # a read-only run directory (or lock file): nothing can be written there
            raise UserError(f"{self.path}: cannot open the run lock ({e.strerror or e}); the run directory must be "
                            "writable: fix its permissions, or use another run.out_dir / run.name") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RunDirInUse(f"{self.run_dir} is in use by process {pid}") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: str | Path) -> str | None:
    """The pid (as text) of the live process holding ``run_dir``'s lock, or None if it is free.

    Probes with a shared lock and writes nothing.
    """
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "unknown"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None
