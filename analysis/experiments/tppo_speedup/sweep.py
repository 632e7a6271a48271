"""Settings of the T-PPO speed-up study (settings only; ``spec`` assembles them).

PPO and T-PPO variants on the long-tailed planted-failure env; run names are ``<method>-<env>-s<seed>``.
Every run starts from ``configs/tppo.yaml`` (env, model size, rollout shape) with the ``algo`` and
``model`` sections of the PPO preset ``configs/ppo.yaml`` on top (:func:`ppo_settings`), so the PPO
baseline and every T-PPO variant share the learning settings and follow the preset when it is
retuned. PPO is that config with ``tppo.enabled=false`` and the GAE estimator.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
BASE_CONFIG = str(REPO / "configs" / "tppo.yaml")
PPO_PRESET = REPO / "configs" / "ppo.yaml"
CALIBRATION = REPO / "docs" / "tppo_speedup" / "cost_calibration.json"
"""Unit costs of the cost model, written by ``bench/tppo_cost.py`` (run it alone, then the study again)."""

WINDOW = 8
"""T-PPO: tokens generated per row per training step."""
STEPS = 150
"""PPO's training steps per run."""
TPPO_STEPS = 200
"""T-PPO runs get more steps: a window generates at most WINDOW tokens per row per step (PPO's rows
start near 17 tokens), and the study compares tokens and time to a level, not steps."""

OVERRIDES: dict = {}
"""Applied to every run on top of the base config and the PPO preset."""

TPPO = {"tppo.enabled": True, "tppo.window": WINDOW, "algo.estimator": "egae", "stop.rule": "none",
        "run.steps": TPPO_STEPS}
FROZEN_CRITIC = {"algo.lr_critic": 0.0}
"""The review's control: the toy critic's head starts at zero, so a critic that never trains is V = 0."""

METHODS: dict[str, dict] = {
    "ppo": {"tppo.enabled": False, "algo.estimator": "gae", "stop.rule": "none"},
    "ppo_nocritic": {"tppo.enabled": False, "algo.estimator": "gae", "stop.rule": "none", **FROZEN_CRITIC},
    "tppo": {**TPPO},
    "tppo_next": {**TPPO, "tppo.bootstrap": "next"},
    "tppo_deferred": {**TPPO, "tppo.credit": "deferred"},
    "tppo_nocritic": {**TPPO, **FROZEN_CRITIC},
}
"""Method label -> overrides (order of tables and legends). A method may also set ``run.steps``.
``tppo.credit=both``, ``algo.critic_warmup_steps`` and ``model.critic_init`` were tried as single-seed
pilots (docs/tppo_speedup.md) and left out of the grid to keep it within about 20 CPU-minutes."""

ENVS: dict[str, dict] = {"longtail": {"task.env_id": "testbed/PlantedFailureLongTail-v0"}}

SEEDS = list(range(10))
"""10 seeds: the exact test's smallest p-value (2/1024) survives Holm over the study's 10 claims."""

QUICK: dict = {"steps": 12, "seeds": [0], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
"""``--quick``: a smoke test of the pipeline, not evidence."""

AXES = ("method", "env", "seed")


def ppo_settings(path: Path = PPO_PRESET) -> dict:
    """The PPO preset's ``algo`` and ``model`` sections as dotted overrides (the estimator is each method's)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the PPO preset: {e}") from None
    out = {}
    for section in ("algo", "model"):
        block = raw.get(section, {})
        if not isinstance(block, dict):
            raise ValueError(f"{path}: section {section!r} is not a mapping")
        out.update({f"{section}.{k}": v for k, v in block.items() if f"{section}.{k}" != "algo.estimator"})
    return out


def spec(out_dir: str | Path, quick: bool = False) -> dict:
    """The study's sweep in the ``testbed.ops.sweep`` format."""
    q = QUICK if quick else {}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**ppo_settings(), **OVERRIDES, "run.steps": q.get("steps", STEPS), **q.get("overrides", {})},
        "axes": {"method": _methods(quick), "env": ENVS, "seed": list(q.get("seeds", SEEDS))},
    }


def _methods(quick: bool) -> dict[str, dict]:
    """:data:`METHODS`, without their own step counts in a quick run (every quick run is short)."""
    if not quick:
        return METHODS
    return {m: {k: v for k, v in ov.items() if k != "run.steps"} for m, ov in METHODS.items()}


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    """The study's one grid, its runs under ``root / "runs"`` (no full version)."""
    return [spec(Path(root) / "runs", quick=quick)]
