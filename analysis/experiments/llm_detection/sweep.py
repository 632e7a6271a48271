"""Settings of the LLM detection study (settings only; :func:`spec` assembles them).

PPO, ESPO, random truncation matched to ESPO's stop rate, the oracle (stops at the verifier's first
wrong number, once the number is complete) and ESPO with planted wrong steps, on checkable
two-step arithmetic (``task.source: chain``) with the embedded SmolLM2-135M-Instruct; run names
``<method>-s<seed>``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BASE_CONFIG = str(REPO / "configs" / "llm" / "chain_espo.yaml")
"""Base config of every run (absolute, so the study runs from any working directory)."""

STEPS = 40
"""Training steps per run, as the base preset (about 10 s a step alone on 2 cores with 16 rows of up to 64 tokens)."""

OVERRIDES: dict = {
    "run.eval_every": 10,
    "run.eval_size": 128,
    "run.checkpoint_every": 10,
    "stop.min_tokens": 8,
    "stop.warmup_steps": 1,
}
"""Applied to every run on top of the base config."""

METHODS: dict[str, dict] = {
    "ppo": {"stop.rule": "none"},
    "espo": {"stop.rule": "espo"},
    "random": {"stop.rule": "random", "stop.reference_run": "{out_dir}/espo-s{seed}"},
    "oracle": {"stop.rule": "oracle", "stop.delay": 0},
    # a wrong result forced into half the rows at their second equation (after stop.min_tokens): the fatal
    # token is known by construction
    "espo_planted": {"stop.rule": "espo", "task.source_kwargs.plant_fraction": 0.5,
                     "task.source_kwargs.plant_step": 2},
}
"""Method label -> overrides. The order is the order of tables."""

SEEDS = [0, 1]
FULL_SEEDS = list(range(8))
"""``--full``: enough seeds for a decision (``analysis.stats.MIN_SEEDS``); the runs of :data:`SEEDS` are reused."""

QUICK: dict = {"steps": 3, "seeds": [0], "overrides": {"rollout.batch_size": 8, "algo.minibatch_size": 8,
                                                         "run.eval_every": 3, "run.eval_size": 8}}
"""``--quick``: a smoke test of the pipeline, not evidence."""

AXES = ("method", "seed")


def spec(out_dir: str | Path, quick: bool = False, full: bool = False) -> dict:
    """The sweep in the ``testbed.ops.sweep`` format."""
    q = QUICK if quick else {"seeds": FULL_SEEDS} if full else {}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**OVERRIDES, "run.steps": q.get("steps", STEPS), **q.get("overrides", {})},
        "axes": {"method": METHODS, "seed": list(q.get("seeds", SEEDS))},
    }


FULL_FOLDER = ""
"""``--full`` (:data:`FULL_SEEDS`) shares the folder: the runs of :data:`SEEDS` are reused."""


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    """The study's one grid, its runs under ``root / "runs"``."""
    return [spec(Path(root) / "runs", quick=quick, full=full)]
