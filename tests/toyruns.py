"""Small simulated runs for trainer tests: a 4-step config and metrics without their wall-clock keys."""

from __future__ import annotations

from testbed import config as C

VOLATILE = ("time/", "pool/age")
"""Metric prefixes that differ between otherwise identical runs (wall-clock)."""


def small(out, *extra, name="r"):
    """A 4-step run of 16 rows of up to 16 tokens in ``out/name``, checkpointed every 2 steps."""
    return C.from_dict({}, [
        f"run.out_dir={out}", f"run.name={name}", "run.steps=4", "run.progress=false", "run.checkpoint_every=2",
        "rollout.batch_size=16", "rollout.max_len=16", "algo.minibatch_size=8",
        "task.env_kwargs={max_len: 16, target_len: 8}", *extra])


def stable(recs):
    """Metric records without the :data:`VOLATILE` keys."""
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in recs]
