"""Settings of the ESPO headline study (settings only; ``spec`` and ``tune_spec`` assemble them).

The presets are the study's settings: PPO runs are ``configs/ppo.yaml`` as it is, ESPO runs are
``configs/espo.yaml`` as it is (every key of it applied over the PPO preset, which holds no key ESPO
lacks), so ``testbed run configs/espo.yaml run.seed=3`` reproduces the cell ``espo-default-s3``
exactly (a test checks the resolved configs agree). Nothing here restates a constant of the presets.

The grid is method x env x seed; run names are ``<method>-<env>-s<seed>`` (``testbed.ops.sweep`` joins
axis labels with ``-``). The report uses :data:`REPORT_SEEDS` (:data:`FULL_SEEDS` with ``--full``);
the ESPO constants are tuned with :func:`tune_spec` on the disjoint :data:`TUNE_SEEDS`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
PPO_CONFIG = REPO / "configs" / "ppo.yaml"
ESPO_CONFIG = REPO / "configs" / "espo.yaml"
ESPO_PAPER_CONFIG = REPO / "configs" / "espo_paper.yaml"
BASE_CONFIG = str(PPO_CONFIG)
"""Base config of every run (absolute, so the study runs from any working directory)."""


def _flat(path: Path) -> dict:
    """A preset's keys as ``section.key -> value`` (``run.name`` left out: the sweep names runs)."""
    raw = yaml.safe_load(path.read_text()) or {}
    return {f"{sec}.{k}": v for sec, body in raw.items() for k, v in (body or {}).items() if f"{sec}.{k}" != "run.name"}


ESPO_PRESET: dict = {k: v for k, v in _flat(ESPO_CONFIG).items() if not k.startswith("run.")}
"""Every key of configs/espo.yaml but the run section: applied over the PPO preset, it gives ESPO."""
ESPO_PAPER_PRESET: dict = {k: v for k, v in _flat(ESPO_PAPER_CONFIG).items() if not k.startswith("run.")}
"""Every key of configs/espo_paper.yaml but the run section: the paper's ESPO over the PPO preset."""
PAPER_STOP_REWARD: dict = {k: v for k, v in ESPO_PAPER_PRESET.items() if k in ("stop.failure_reward", "stop.stop_penalty")}
"""The paper preset's stop reward: its matched random runs get the same (same schedule, same penalty)."""
ESPO_CONSTANTS: dict = {k: v for k, v in ESPO_PRESET.items()
                        if k in ("stop.accumulate", "stop.gate", "stop.kappa", "stop.tau", "stop.tau_min", "stop.ema_beta")}
"""ESPO's detector constants, read from configs/espo.yaml (tuned on TUNE_SEEDS). The regret_only and
value_only ablations (and T-PPO + ESPO in tppo_speedup) use them, so they differ only in the signal."""
OVERRIDES: dict = {k: v for k, v in ESPO_PRESET.items() if k in ("stop.min_tokens", "stop.warmup_steps")}
"""Rules every stop rule obeys (oracle and random included), as configs/espo.yaml sets them; the PPO
preset sets the same values (a test checks)."""

STEPS = int(_flat(PPO_CONFIG)["run.steps"])
"""Training steps per run: the presets' ``run.steps``."""

METHODS: dict[str, dict] = {
    "ppo": {},
    "espo": dict(ESPO_PRESET),
    # stops each row with ESPO's stop rate at step k, at a position drawn from ESPO's stop histogram
    "random": {"stop.rule": "random", "stop.reference_run": "{out_dir}/espo-{env}-s{seed}"},
    "espo_paper": dict(ESPO_PAPER_PRESET),
    # the paper's warm-up ends when the critic's loss settles, not at a step: the reference's schedule
    # (rate 0 until its warm-up ends) carries it, so this rule's own warm-up is off
    "random_paper": {"stop.rule": "random", "stop.reference_run": "{out_dir}/espo_paper-{env}-s{seed}",
                     "stop.warmup": "steps", "stop.warmup_steps": 0, **PAPER_STOP_REWARD},
    "oracle": {"stop.rule": "oracle", "stop.delay": 0},
}
"""Method label -> overrides of the PPO preset. The order is the order of tables and legends."""

ABLATIONS: dict[str, dict] = {
    "regret_only": {**ESPO_PRESET, "stop.rule": "regret_only"},
    "value_only": {**ESPO_PRESET, "stop.rule": "value_only"},
}
"""ESPO's single-signal ablations: run with ``--full`` only (they would double the default study's time)."""

ENVS: dict[str, dict] = {
    "default": {},  # the presets' env, testbed/PlantedFailure-v0
    "trap": {"task.env_id": "testbed/PlantedFailureTrap-v0"},
}
DEMO_ENVS = ["default"]
"""Envs of ``make demo`` (six methods x 10 seeds fit its 10 minutes on 2 cores); ``--full`` runs all of :data:`ENVS`."""

REPORT_SEEDS = list(range(10))
FULL_SEEDS = list(range(30))
TUNE_SEEDS = [100, 101, 102]
"""Seeds for tuning ESPO_CONSTANTS; disjoint from the report's seeds, never in the report's numbers."""

TUNE_GRID: dict[str, list] = {"stop.tau": [4.0, 8.0], "stop.kappa": [1.0, 2.0, 3.0]}
"""The tuning sweep: ESPO at every (tau, kappa), next to PPO, on TUNE_SEEDS."""

QUICK: dict = {"steps": 12, "seeds": [0, 1], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
"""``--quick``: a smoke test of the whole pipeline, not evidence (two seeds, few steps, half batches)."""

AXES = ("method", "env", "seed")
"""Axis order (names the parts of run names)."""


def spec(out_dir: str | Path, quick: bool = False, full: bool = False) -> dict:
    """The report sweep in the ``testbed.ops.sweep`` format (``full``: :data:`FULL_SEEDS` and the ablations)."""
    q = QUICK if quick else {}
    seeds = q.get("seeds", FULL_SEEDS if full else REPORT_SEEDS)
    overrides = {"run.steps": q["steps"], **q["overrides"]} if quick else {}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": overrides,
        "axes": {"method": {**METHODS, **(ABLATIONS if full else {})},
                 "env": ENVS if full else {e: ENVS[e] for e in DEMO_ENVS}, "seed": list(seeds)},
    }


def tune_spec(out_dir: str | Path, quick: bool = False) -> dict:
    """The tuning sweep: PPO and ESPO over :data:`TUNE_GRID`, on :data:`TUNE_SEEDS` (names like
    ``espo_tau8_kappa0.5-default-s100``)."""
    q = QUICK if quick else {}
    grid = {
        f"espo_tau{tau:g}_kappa{kappa:g}": {**ESPO_PRESET, "stop.tau": tau, "stop.kappa": kappa}
        for tau in TUNE_GRID["stop.tau"] for kappa in TUNE_GRID["stop.kappa"]
    }
    overrides = {"run.steps": q["steps"], **q["overrides"]} if quick else {}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": overrides,
        "axes": {"method": {"ppo": METHODS["ppo"], **grid}, "env": ENVS,
                 "seed": TUNE_SEEDS[:1] if quick else list(TUNE_SEEDS)},
    }


FULL_FOLDER = "full"
"""``--full`` (:data:`FULL_SEEDS` and the ablations) has its own folder."""


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    """The study's one grid, its runs under ``root / "runs"``."""
    return [spec(Path(root) / "runs", quick=quick, full=full)]
