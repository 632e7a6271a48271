"""Settings of the gate-or-detector study (settings only).

The grid is variant x warm-up x method x seed: ESPO as the presets set it (``current``,
``configs/espo.yaml``) and as the paper specifies it (``paper``, ``configs/espo_paper.yaml``), each
with three warm-ups, each beside its matched random truncation (same stop schedule, same stop reward);
PPO (``configs/ppo.yaml``) once per seed as the reference. Run names: ``<variant>-<warmup>-<method>-s<seed>``
(PPO: ``none-none-ppo-s<seed>``). Everything else is the headline's presets.

Warm-ups (when the rule may first stop):

- ``steps``: the preset's, a fixed 5 steps (``stop.warmup_steps``);
- ``critic``: the paper's: the critic's loss below 0.5 or changing by less than 0.1 for 3 steps, forced
  on at 10% of training;
- ``steps30``: 30 steps, a critic trained on 30 steps of outcomes (``docs/espo_paper.md``: the paper's
  criteria are met within a few steps here, so ``critic`` alone does not give the gate a trained critic).
"""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.espo_headline import sweep as headline

VARIANTS: dict[str, dict] = {"current": dict(headline.ESPO_PRESET), "paper": dict(headline.ESPO_PAPER_PRESET)}
"""ESPO variant -> its preset's keys (over the PPO preset)."""

PAPER_WARMUP = {k: v for k, v in headline.ESPO_PAPER_PRESET.items()
                if k.startswith("stop.warmup_loss") or k in ("stop.warmup_patience", "stop.warmup_cap")}
WARMUPS: dict[str, dict] = {
    "steps": {"stop.warmup": "steps", "stop.warmup_steps": 5},
    "critic": {"stop.warmup": "critic_loss", **PAPER_WARMUP},
    "steps30": {"stop.warmup": "steps", "stop.warmup_steps": 30},
}
METHODS: dict[str, dict] = {
    "espo": {},
    # the reference's schedule carries its warm-up (rate 0 until it stops), so random's own is off
    "random": {"stop.rule": "random", "stop.warmup": "steps", "stop.warmup_steps": 0,
               "stop.reference_run": "{out_dir}/{variant}-{warmup}-espo-s{seed}"},
}
SEEDS = list(range(24))
AXES = ("variant", "warmup", "method", "seed")
QUICK: dict = {"steps": 12, "seeds": [0, 1], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
"""``--quick``: a smoke test of the whole pipeline, not evidence."""


def _quick(quick: bool) -> dict:
    return {"run.steps": QUICK["steps"], **QUICK["overrides"]} if quick else {}


def spec(out_dir, quick: bool = False) -> dict:
    """The grid in the ``testbed.ops.sweep`` format."""
    seeds = QUICK["seeds"] if quick else SEEDS
    return {"base": headline.BASE_CONFIG, "out_dir": str(out_dir), "overrides": _quick(quick),
            "axes": {"variant": VARIANTS, "warmup": WARMUPS, "method": METHODS, "seed": list(seeds)}}


def ppo_spec(out_dir, quick: bool = False) -> dict:
    """PPO on the same seeds, in the same folder (the no-stop reference)."""
    seeds = QUICK["seeds"] if quick else SEEDS
    return {"base": headline.BASE_CONFIG, "out_dir": str(out_dir), "overrides": _quick(quick),
            "axes": {"variant": {"none": {}}, "warmup": {"none": {}}, "method": {"ppo": {}}, "seed": list(seeds)}}


def grids(root, quick: bool = False, full: bool = False) -> list[dict]:
    """The variant x warm-up x method grid, then PPO once per seed, both under ``root / "runs"`` (no full version)."""
    return [spec(Path(root) / "runs", quick), ppo_spec(Path(root) / "runs", quick)]
