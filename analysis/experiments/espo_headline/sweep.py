"""Settings of the ESPO headline study (settings only; ``spec`` and ``tune_spec`` assemble them).

The grid is method x env x seed; run names are ``<method>-<env>-s<seed>`` (``testbed.sweep`` joins
axis labels with ``-``). The report uses :data:`REPORT_SEEDS` only; constants are tuned with
:func:`tune_spec` on the disjoint :data:`TUNE_SEEDS`.
"""

from __future__ import annotations

from pathlib import Path

# ESPO's detector constants (testbed.stopping, DESIGN.md "Stop rules"), tuned on TUNE_SEEDS. The
# regret_only and value_only ablations (and T-PPO + ESPO in tppo_speedup) use the same constants, so
# they differ from ESPO only in the signal. These override configs/espo.yaml; a test checks the two
# agree, so change both together.
ESPO_CONSTANTS: dict = {
    "stop.accumulate": "cusum",
    "stop.gate": "scaled",
    "stop.kappa": 2.0,
    "stop.tau": 8.0,
    "stop.tau_min": 1.0,
    "stop.ema_beta": 0.9,
}

REPO = Path(__file__).resolve().parents[3]
BASE_CONFIG = str(REPO / "configs" / "espo.yaml")
"""Base config of every run (absolute, so the study runs from any working directory)."""

STEPS = 200
"""Training steps per run."""

OVERRIDES: dict = {
    "stop.min_tokens": 2,     # every stop rule (oracle and random included) obeys these two
    "stop.warmup_steps": 5,
}
"""Applied to every run on top of the base config."""

METHODS: dict[str, dict] = {
    "ppo": {"stop.rule": "none"},
    "espo": {"stop.rule": "espo", **ESPO_CONSTANTS},
    "regret_only": {"stop.rule": "regret_only", **ESPO_CONSTANTS},
    "value_only": {"stop.rule": "value_only", **ESPO_CONSTANTS},
    # stops each row with ESPO's stop rate at step k, at a position drawn from ESPO's stop histogram
    "random": {"stop.rule": "random", "stop.reference_run": "{out_dir}/espo-{env}-s{seed}"},
    "oracle": {"stop.rule": "oracle", "stop.delay": 0},
}
"""Method label -> overrides. The order is the order of tables and legends."""

ENVS: dict[str, dict] = {
    "default": {"task.env_id": "testbed/PlantedFailure-v0"},
    "trap": {"task.env_id": "testbed/PlantedFailureTrap-v0"},
}

REPORT_SEEDS = [0, 1, 2]
TUNE_SEEDS = [100, 101, 102]
"""Seeds for tuning ESPO_CONSTANTS; disjoint from REPORT_SEEDS, never in the report's numbers."""

TUNE_GRID: dict[str, list] = {"stop.tau": [4.0, 8.0], "stop.kappa": [1.0, 2.0, 3.0]}
"""The tuning sweep: ESPO at every (tau, kappa), next to PPO, on TUNE_SEEDS."""

QUICK: dict = {"steps": 12, "seeds": [0], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
"""``--quick``: a smoke test of the whole pipeline, not evidence (one seed, few steps, half batches)."""

AXES = ("method", "env", "seed")
"""Axis order (names the parts of run names)."""


def spec(out_dir: str | Path, quick: bool = False) -> dict:
    """The report sweep in the ``testbed.sweep`` format."""
    q = QUICK if quick else {}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**OVERRIDES, "run.steps": q.get("steps", STEPS), **q.get("overrides", {})},
        "axes": {"method": METHODS, "env": ENVS, "seed": list(q.get("seeds", REPORT_SEEDS))},
    }


def tune_spec(out_dir: str | Path, quick: bool = False) -> dict:
    """The tuning sweep: PPO and ESPO over :data:`TUNE_GRID`, on :data:`TUNE_SEEDS` (names like
    ``espo_tau8_kappa0.5-default-s100``)."""
    q = QUICK if quick else {}
    grid = {
        f"espo_tau{tau:g}_kappa{kappa:g}": {"stop.rule": "espo", **ESPO_CONSTANTS, "stop.tau": tau, "stop.kappa": kappa}
        for tau in TUNE_GRID["stop.tau"] for kappa in TUNE_GRID["stop.kappa"]
    }
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**OVERRIDES, "run.steps": q.get("steps", STEPS), **q.get("overrides", {})},
        "axes": {"method": {"ppo": METHODS["ppo"], **grid}, "env": ENVS,
                 "seed": TUNE_SEEDS[:1] if quick else list(TUNE_SEEDS)},
    }
