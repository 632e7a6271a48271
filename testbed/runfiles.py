"""Run-directory persistence: the one atomic-write helper and the one place that knows where a run's
checkpoint lives.

Atomic writes: the content goes to a temporary file in the target's own directory (so the rename never
crosses a file system), is flushed and fsynced, then ``os.replace``-d over the target; a reader sees
the old file or the new one, never a part. A failed write removes its temporary file. Each write has
its own temporary name, so two processes writing one target never share a temporary file.

Checkpoint layout (``testbed.ops.rundir.save_checkpoint``): ``RUN/checkpoints/`` holds
``model.safetensors``, ``trainer_state.pt`` and, written last, the marker ``latest.json``.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHECKPOINTS = "checkpoints"
"""A run directory's checkpoint folder."""
WEIGHTS = "model.safetensors"
"""The weights file inside it."""
TRAINER_STATE = "trainer_state.pt"
"""Optimiser, loop and stop-rule state inside it."""
MARKER = "latest.json"
"""Written last: a checkpoint counts only once it exists (``{"step": K}``)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system without directory fds: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``torch.save``,
    safetensors' ``save_file``); on a clean exit it is fsynced and moved over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (module docstring)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN/checkpoints``: where a run's trainer writes its checkpoint."""
    return Path(run_dir) / CHECKPOINTS


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder a user names: a run directory (its ``checkpoints/``) or a checkpoint folder
    itself. Exists or not: the caller checks (and words the error for its option)."""
    path = Path(path)
    return checkpoint_dir(path) if checkpoint_dir(path).is_dir() else path


def find_weights(path: str | Path) -> Path:
    """The weights file a user names: a run directory, a checkpoint folder, or the file itself."""
    path = Path(path)
    return find_checkpoint(path) / WEIGHTS if path.is_dir() else path
