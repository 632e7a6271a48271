"""Settings of the T-PPO phase diagram (settings only; ``spec`` assembles them).

PPO and T-PPO at two windows on lognormal-length planted-failure problems of two tail heavinesses
(``length_tail`` = p99 / p50 of the target lengths). Every run starts from ``configs/tppo.yaml`` with the
PPO preset's ``algo`` and ``model`` sections (as the T-PPO speed-up study does), and every run is
evaluated the same way: greedy whole responses to fresh held-out prompts every ``EVAL_EVERY`` steps
(``eval/pass@1``), not the rows that happen to finish within a step. Run names: ``<method>-<cell>-s<seed>``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.tppo_speedup import sweep as speedup

BASE_CONFIG = speedup.BASE_CONFIG
STEPS = 150
TPPO_STEPS = 300
"""T-PPO generates at most a window per row per step; it gets more steps, and the study compares cost to a
level, not steps."""
EVAL_EVERY = 10
EVAL_SIZE = 64
MAX_LEN = 200
ENV: dict = {"task.env_id": "testbed/PlantedFailureTail-v0", "rollout.max_len": MAX_LEN,
             "task.env_kwargs.max_len": MAX_LEN + 1, "task.env_kwargs.num_problems": 8,
             "task.env_kwargs.target_len": 16, "task.env_kwargs.critical_frac": 0.02,
             "task.env_kwargs.recoverable_cost": 0.005}
"""The problems: 8 (each seen 8 times a batch), median length 16, few critical positions. Not yet shown to
be learnable to 0.8 by PPO (the report's regime check says whether it is)."""
TAILS = (2.0, 8.0)
WINDOWS = (8, 32)


def cell_name(tail: float) -> str:
    return f"tail{tail:g}"


def envs() -> dict[str, dict]:
    return {cell_name(t): {**ENV, "task.env_kwargs.length_tail": float(t)} for t in TAILS}


ENVS = envs()


def methods(quick: bool = False) -> dict[str, dict]:
    out = {"ppo": {"tppo.enabled": False, "algo.estimator": "gae", "stop.rule": "none"}}
    for w in WINDOWS:
        out[f"tppo_w{w}"] = {"tppo.enabled": True, "tppo.window": w, "algo.estimator": "egae", "stop.rule": "none",
                             **({} if quick else {"run.steps": TPPO_STEPS})}
    return out


METHODS = methods()
SEEDS = list(range(5))
FULL_SEEDS = list(range(10))
QUICK: dict = {"steps": 12, "seeds": [0], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32,
                                                          "run.eval_every": 6, "run.eval_size": 16}}
AXES = ("method", "env", "seed")


def spec(out_dir: str | Path, quick: bool = False, full: bool = False) -> dict:
    q = QUICK if quick else {}
    cells = envs()
    if quick:
        cells = {k: cells[k] for k in list(cells)[-1:]}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**speedup.ppo_settings(), "run.steps": q.get("steps", STEPS), "run.eval_every": EVAL_EVERY,
                      "run.eval_size": EVAL_SIZE, **q.get("overrides", {})},
        "axes": {"method": methods(quick), "env": cells, "seed": list(q.get("seeds", FULL_SEEDS if full else SEEDS))},
    }


FULL_FOLDER = "full"


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    return [spec(Path(root) / "runs", quick=quick, full=full)]
