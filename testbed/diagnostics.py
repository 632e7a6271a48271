"""Per-step diagnostics of stops and credit assignment against ground truth.

Ground truth comes from simulated envs (planted failure points) or from LLM tasks that verify their
steps (``llm_backend.chain``: the first wrong number of a response). An LLM task may be unable to
judge a row (``extras['checkable']`` False: no equations, or an error it cannot place); such rows
are left out, except stopped rows, which are always judged on the prefix they wrote, as on the sim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from testbed.metrics import detector_metrics
from testbed.rollout import Ending, Rollout, last_valid_index


def _ratio(num: Tensor, den: Tensor) -> float:
    return float(num) / float(den) if float(den) > 0 else float("nan")


def stop_rate_metrics(rollout: Rollout, max_len: int) -> dict[str, float | list[int]]:
    """Stop rate and the stop-position histogram over rows that finished this step.

    A stop's position is the response index of the stopped row's last token
    (``extras['start']`` + segment length - 1, so T-PPO rows count from their first window).
    """
    fin = rollout.finished
    stopped = (rollout.ending == Ending.EARLY_STOP) & fin
    pos = _stop_positions(rollout)
    hist = torch.bincount(pos[stopped].clamp(0, max_len - 1), minlength=max_len)
    return {"stop/rate": _ratio(stopped.sum(), fin.sum()), "stop/step_hist": hist.tolist()}


stop_metrics = stop_rate_metrics
"""The old name (not :func:`testbed.scoring.first_stop_metrics`, ``testbed detect``'s metrics)."""


def _stop_positions(rollout: Rollout) -> Tensor:
    start = rollout.extras.get("start", torch.zeros_like(rollout.ending))
    return start + last_valid_index(rollout.mask)


def detection_metrics(rollout: Rollout) -> dict[str, float]:
    """Precision, recall, false-stop rate and delay of this step's stops against the ground-truth
    failures, over the finished rows whose ground truth is known (definitions:
    :func:`testbed.metrics.detector_metrics`). An LLM task that verifies its steps marks rows it could
    not check (``extras["checkable"]`` False); a stopped row always counts, since a stop is judged on
    the tokens before it."""
    fin = rollout.finished
    stopped = rollout.ending == Ending.EARLY_STOP
    judged = fin & (rollout.extras.get("checkable", torch.ones_like(stopped)) | stopped)
    m = detector_metrics(stopped[judged], rollout.failure_step[judged], _stop_positions(rollout)[judged])
    out = {f"stop/{k}": m[k] for k in ("precision", "recall", "count", "doomed_count", "false_stop_rate", "delay")}
    out["stats/doomed_rate"] = m["doomed_rate"]
    out["stats/judged_rate"] = _ratio(judged.sum(), fin.sum())
    return out


def planted_metrics(rollout: Rollout) -> dict[str, float]:
    """Rows with a planted wrong step (tokens the task forced, ``rollout.sampled`` False): how many
    finished rows carry one, the share of them stopped, the mean delay from the first forced token to
    the stop, and the stop rate of the other finished rows for comparison. Empty without planting."""
    if rollout.sampled is None:
        return {}
    fin = rollout.finished
    forced = ~rollout.sampled & rollout.mask
    planted = forced.any(-1) & fin
    stopped = (rollout.ending == Ending.EARLY_STOP) & fin
    start = rollout.extras.get("start", torch.zeros_like(rollout.ending))
    at = start + forced.float().argmax(-1)
    delay = (_stop_positions(rollout) - at)[planted & stopped].float()
    return {
        "plant/rows": float(planted.sum()),
        "plant/stop_rate": _ratio((planted & stopped).sum(), planted.sum()),
        "plant/delay": float(delay.mean()) if len(delay) else float("nan"),
        "plant/stop_rate_unplanted": _ratio((~planted & fin & stopped).sum(), (~planted & fin).sum()),
    }


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
    out = {
        "length": (pos + 1)[fin].tolist(),
        "ending": rollout.ending[fin].tolist(),
        "failure_step": rollout.failure_step[fin].tolist(),
        "success": rollout.success[fin].int().tolist() if rollout.success is not None else [],
    }
    if "checkable" in rollout.extras:  # LLM tasks: rows the verifier could judge
        out["checkable"] = rollout.extras["checkable"][fin].int().tolist()
    if rollout.sampled is not None:  # first forced (planted) token of the row, -1 none
        forced = ~rollout.sampled & rollout.mask
        start = rollout.extras.get("start", torch.zeros_like(rollout.ending))
        at = torch.where(forced.any(-1), start + forced.float().argmax(-1), torch.full_like(start, -1))
        out["planted_at"] = at[fin].tolist()
    return out
