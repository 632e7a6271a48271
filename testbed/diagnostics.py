"""Per-step diagnostics of stops and credit assignment against simulated ground truth."""

from __future__ import annotations

import torch
from torch import Tensor

from testbed.metrics import detector_metrics
from testbed.rollout import Ending, Rollout, last_valid_index


def _ratio(num: Tensor, den: Tensor) -> float:
    return float(num) / float(den) if float(den) > 0 else float("nan")


def stop_metrics(rollout: Rollout, max_len: int) -> dict[str, float | list[int]]:
    """Stop rate and the stop-position histogram over rows that finished this step.

    A stop's position is the response index of the stopped row's last token
    (``extras['start']`` + segment length - 1, so T-PPO rows count from their first window).
    """
    fin = rollout.finished
    stopped = (rollout.ending == Ending.EARLY_STOP) & fin
    pos = _stop_positions(rollout)
    hist = torch.bincount(pos[stopped].clamp(0, max_len - 1), minlength=max_len)
    return {"stop/rate": _ratio(stopped.sum(), fin.sum()), "stop/step_hist": hist.tolist()}


def _stop_positions(rollout: Rollout) -> Tensor:
    start = rollout.extras.get("start", torch.zeros_like(rollout.ending))
    return start + last_valid_index(rollout.mask)


def detection_metrics(rollout: Rollout) -> dict[str, float]:
    """Precision, recall, false-stop rate and delay of this step's stops against the planted failures,
    over the rows that finished (definitions: :func:`testbed.metrics.detector_metrics`)."""
    fin = rollout.finished
    m = detector_metrics((rollout.ending == Ending.EARLY_STOP)[fin], rollout.failure_step[fin],
                         _stop_positions(rollout)[fin])
    out = {f"stop/{k}": m[k] for k in ("precision", "recall", "count", "doomed_count", "false_stop_rate", "delay")}
    out["stats/doomed_rate"] = m["doomed_rate"]
    return out


def failure_rank(rollout: Rollout, advantages: Tensor) -> float:
    """How often the fatal token carries its row's most negative advantage (rows whose fatal token is in this segment)."""
    start = rollout.extras.get("start", torch.zeros_like(rollout.ending))
    local = rollout.failure_step - start
    lengths = rollout.mask.sum(-1)
    rows = (rollout.failure_step >= 0) & (local >= 0) & (local < lengths)
    if not rows.any():
        return float("nan")
    adv = advantages.masked_fill(~rollout.mask, float("inf"))
    worst = adv.argmin(-1)
    return float((worst[rows] == local[rows]).float().mean())


def row_records(rollout: Rollout) -> dict[str, list[int]]:
    """Per finished row: response length, ending code, stop flag and planted failure step (for scatter plots)."""
    fin = rollout.finished
    pos = _stop_positions(rollout)
    return {
        "length": (pos + 1)[fin].tolist(),
        "ending": rollout.ending[fin].tolist(),
        "failure_step": rollout.failure_step[fin].tolist(),
        "success": rollout.success[fin].int().tolist() if rollout.success is not None else [],
    }
