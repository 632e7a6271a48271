"""Metric names, per-step metric computation, and the append-only JSONL logger.

Torch-free at import time so that ``analysis`` can import the names.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# Keys every training step logs (DESIGN.md); analysis reads these names from here.
REQUIRED_KEYS = (
    "step", "tokens/generated", "tokens/cumulative", "reward/mean", "success/rate", "stop/rate",
    "length/mean", "time/gen", "time/actor", "time/critic", "loss/policy", "loss/value",
    "critic/explained_variance",
)
SIM_KEYS = ("stop/precision", "stop/recall", "stop/false_stop_rate", "stop/delay", "credit/failure_rank")
STOP_HIST_KEY = "stop/step_hist"


def _clean(v: Any) -> Any:
    """JSON-safe scalar: tensors to numbers, NaN/inf to None."""
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class MetricsLogger:
    """Appends one JSON object per line and flushes, so an interrupted run loses nothing logged."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps > ``step`` (a resumed run re-does them)."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl; a malformed line raises naming the file and line."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
    return out
