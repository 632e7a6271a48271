"""Metric names, per-step metric computation, and the append-only JSONL logger.

Torch-free at import time so that ``analysis`` can import the names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

# Keys every training step logs (DESIGN.md); analysis reads these names from here.
REQUIRED_KEYS = (
    "step", "tokens/generated", "tokens/cumulative", "reward/mean", "success/rate", "stop/rate",
    "length/mean", "time/gen", "time/actor", "time/critic", "loss/policy", "loss/value",
    "critic/explained_variance",
)
SIM_KEYS = ("stop/precision", "stop/recall", "stop/false_stop_rate", "stop/delay", "credit/failure_rank")


# The one definition lives with the other detector metrics (testbed.scoring, torch- and numpy-free at
# import time); it stays importable from here, the module analysis may import.
from testbed.scoring import detector_metrics  # noqa: E402,F401


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
        """Drop records of steps > ``step`` (a resumed run re-does them); see :meth:`kept_lines`."""
        self.write_lines(self.kept_lines(step))

    def kept_lines(self, step: int) -> list[str] | None:
        """The lines :meth:`truncate_after` keeps (None: no file); reads only, so a resume can check every
        file before it changes any.

        Records are appended in step order, so reading stops at the first record of a step > ``step``. A
        damaged line after the last kept record (the line an interruption cut short, or anything later) is
        dropped with the records it sits among; a damaged line before it raises
        :class:`testbed.errors.RunFileError` naming the file and line (nothing else can have written it).
        """
        from testbed.errors import RunFileError

        if not self.path.exists():
            return None
        keep: list[str] = []
        last = -1  # step of the last record kept
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                    raise ValueError("a JSON object with an integer step")
            except ValueError as e:  # JSONDecodeError is a ValueError
                if last >= step:  # every record from here on is re-done by the resumed run
                    break
                why = f"not a JSON object ({e})" if isinstance(e, json.JSONDecodeError) else f"expected {e}"
                raise RunFileError(
                    f"{self.path}:{n}: {why}, before the records the run resumes after (step {step}); "
                    "repair or delete that line (its step's record is then lost) and run again, "
                    "or start a new run with another run.name") from None
            if rec["step"] > step:
                break
            keep.append(line)
            last = rec["step"]
        return keep

    def write_lines(self, lines: list[str] | None) -> None:
        """Replace the file's content with ``lines`` (atomically; None: leave it as it is)."""
        if lines is None:
            return
        from testbed.runfiles import atomic_write

        atomic_write(self.path, "".join(ln + "\n" for ln in lines))

    def log(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()


class TensorBoardLogger:
    """The numeric scalars of each metrics record as TensorBoard events in ``log_dir`` (``run.tensorboard``).

    Needs the ``tensorboard`` package (``pip install -e '.[tensorboard]'``), not torch. ``step`` is the
    event step; lists (histograms such as ``stop/step_hist``), strings and missing values are left out.
    A resumed run writes its re-done steps again; TensorBoard shows the later events.
    """

    def __init__(self, log_dir: str | Path):
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ModuleNotFoundError:
            from testbed.errors import UserError

            raise UserError("run.tensorboard: needs the tensorboard package (pip install -e '.[tensorboard]')") from None
        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        import time

        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]
        self._writer.add_event(self._event(wall_time=time.time(), step=int(record["step"]),
                                           summary=self._summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def iter_jsonl(path: str | Path, lines: list[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for every non-blank line of a JSONL file (or of ``lines`` read from it).

    A line that is not a JSON object raises ``ValueError`` naming ``path:line``.
    """
    path = Path(path)
    numbered = enumerate(path.read_text().splitlines() if lines is None else lines, 1)
    for n, line in numbered:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        yield n, rec


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl; a malformed line raises naming the file and line."""
    return [rec for _, rec in iter_jsonl(path)]
