"""How much memory a run may use, checked before a batch is built (a batch too large for the machine
is refused with its size, instead of failing deep inside numpy or being killed by the kernel)."""

from __future__ import annotations

import os
from pathlib import Path

GIB = 2**30

BYTES_PER_TOKEN = 64
"""Lower bound on one step's batch tensors per response position: the rollout's (B, T) fields
(tokens and policy versions int64; log-probs, regret, values, rewards float32; masks), the collector's
working copies, and the advantages and returns computed from them."""


def available_bytes() -> int | None:
    """Memory this process may still allocate: ``MemAvailable``, capped by a cgroup v2 limit (None: unknown)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def batch_bytes(batch_size: int, max_len: int) -> int:
    """Bytes of one training step's batch tensors (see :data:`BYTES_PER_TOKEN`)."""
    return batch_size * max_len * BYTES_PER_TOKEN


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB // 10 else f"{n / 2**20:.1f} MiB"


def check_batch_fits(batch_size: int, max_len: int) -> None:
    """Raise :class:`testbed.errors.UserError` naming the size when one step's batch cannot fit in memory."""
    from testbed.errors import UserError

    need, avail = batch_bytes(batch_size, max_len), available_bytes()
    if avail is not None and need > avail:
        raise UserError(f"rollout.batch_size: {batch_size} rows x {max_len} tokens (rollout.max_len) need at least "
                        f"{_size(need)} for one step's batch tensors, more than the {_size(avail)} of memory "
                        "available; lower rollout.batch_size or rollout.max_len")
