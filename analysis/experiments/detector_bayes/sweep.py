"""Settings of the detector-versus-Bayes study (settings only).

ESPO trained on ``testbed/PlantedFailureTiny-v0``, the one registered variant small enough for the exact
DP over every prefix of a policy that depends on the whole prefix (3 problems, 3 content tokens, at
most 6 response tokens: a few hundred prefixes), so P(success | prefix) is exact, not estimated, while
it still has critical positions, recoverable errors and the length rule.

configs/espo.yaml with :data:`OVERRIDES`: ``algo.lr_actor=0.001`` and ``algo.entropy_coef=0.02``
keep the policy partly trained. With espo.yaml's own lr 0.003 and no entropy bonus, most seeds
collapse within 30 steps to outcomes fixed by the prompt (exact P at the prompt about 0 or 1 per
problem), which leaves nothing to detect within a row. Each finished run is then measured
(:data:`MEASURE`, by the runner): ``rows`` rows from its frozen policy with the exact P of every prefix.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BASE_CONFIG = str(REPO / "configs" / "espo.yaml")
ENV_ID = "testbed/PlantedFailureTiny-v0"
STEPS = 60
SEEDS = list(range(16))
"""Sixteen seeds (a run and its measurement take about 2 s): twice the fewest with which a paired claim can
be decided (``analysis.stats.MIN_SEEDS``), since a rule that never fires on a seed drops out of its claims."""
QUICK_SEEDS = [0, 1]
ROWS, QUICK_ROWS = 4000, 1000
OVERRIDES = {
    "task.env_id": ENV_ID, "rollout.max_len": 6, "rollout.batch_size": 32, "algo.minibatch_size": 32,
    "stop.warmup_steps": 3, "algo.lr_actor": 0.001, "algo.entropy_coef": 0.02,
    "run.steps": STEPS, "run.checkpoint_every": STEPS, "run.progress": False,
}
AXES = ("seed",)


def measurements(quick: bool = False) -> dict[str, dict]:
    """What the runner measures on each finished run: ``testbed.ops.exact_posterior`` with these arguments."""
    return {"exact_posterior": {"rows": QUICK_ROWS if quick else ROWS}}


def grids(root, quick: bool = False, full: bool = False) -> list[dict]:
    """One grid: ESPO per seed under ``root / "runs"`` (no full version)."""
    return [{"base": BASE_CONFIG, "out_dir": str(Path(root) / "runs"), "overrides": dict(OVERRIDES),
             "axes": {"seed": QUICK_SEEDS if quick else SEEDS}}]
