"""Settings of the T-PPO speed-up study (settings only; ``spec`` assembles them).

PPO, T-PPO and T-PPO with ESPO's stop rule on the long-tailed planted-failure env; run names are
``<method>-<env>-s<seed>``. T-PPO's base is ``configs/tppo.yaml``; PPO is the same config with
``tppo.enabled=false`` and the GAE estimator.
"""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.espo_headline.sweep import ESPO_CONSTANTS, OVERRIDES as STOP_OVERRIDES

REPO = Path(__file__).resolve().parents[3]
BASE_CONFIG = str(REPO / "configs" / "tppo.yaml")

WINDOW = 8
"""T-PPO: tokens generated per row per training step."""
STEPS = 300
"""Training steps per run (a T-PPO step generates at most WINDOW tokens per row)."""

OVERRIDES: dict = {**STOP_OVERRIDES}
"""Applied to every run on top of the base config."""

TPPO_STEPS = 600
"""T-PPO runs get twice PPO's steps: a window of 8 generates about half of PPO's tokens per step
(median length 12), so both get a similar token budget; the study compares time and tokens to a level."""

METHODS: dict[str, dict] = {
    "ppo": {"tppo.enabled": False, "algo.estimator": "gae", "stop.rule": "none"},
    "tppo": {"tppo.enabled": True, "tppo.window": WINDOW, "algo.estimator": "egae", "stop.rule": "none",
             "run.steps": TPPO_STEPS},
    "tppo_w16": {"tppo.enabled": True, "tppo.window": 16, "algo.estimator": "egae", "stop.rule": "none",
                 "run.steps": TPPO_STEPS},
    "tppo_espo": {"tppo.enabled": True, "tppo.window": WINDOW, "algo.estimator": "egae", "stop.rule": "espo",
                  **ESPO_CONSTANTS, "run.steps": TPPO_STEPS},
}
"""Method label -> overrides (order of tables and legends). A method may also set ``run.steps``."""

ENVS: dict[str, dict] = {"longtail": {"task.env_id": "testbed/PlantedFailureLongTail-v0"}}

SEEDS = [0, 1, 2]

QUICK: dict = {"steps": 15, "seeds": [0], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
"""``--quick``: a smoke test of the pipeline, not evidence."""

AXES = ("method", "env", "seed")


def spec(out_dir: str | Path, quick: bool = False) -> dict:
    """The study's sweep in the ``testbed.sweep`` format."""
    q = QUICK if quick else {}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**OVERRIDES, "run.steps": q.get("steps", STEPS), **q.get("overrides", {})},
        "axes": {"method": _methods(quick), "env": ENVS, "seed": list(q.get("seeds", SEEDS))},
    }


def _methods(quick: bool) -> dict[str, dict]:
    """:data:`METHODS`, without their own step counts in a quick run (every quick run is short)."""
    if not quick:
        return METHODS
    return {m: {k: v for k, v in ov.items() if k != "run.steps"} for m, ov in METHODS.items()}
