"""Settings of the ESPO difficulty study (settings only; ``spec`` assembles them).

Around the default planted-failure env, one knob at a time takes values below and above its default
(bsuite style); every other setting is the headline's (the PPO and ESPO presets, matched random,
oracle). The env axis names each point ``<knob><value>`` (``crit6``) or ``default``; the default point
belongs to every knob's curve, so it is run once. Run names: ``<method>-<point>-s<seed>``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.espo_headline import sweep as headline

BASE_CONFIG = headline.BASE_CONFIG
METHODS: dict[str, dict] = {m: headline.METHODS[m] for m in ("ppo", "espo", "random", "oracle")}
"""PPO, ESPO (current), its matched random and the oracle, exactly as in the headline."""

DEFAULTS: dict[str, float] = {"critical": 2, "length": 12, "acceptable": 8}
"""Each knob's value in the default env (testbed/PlantedFailure-v0: L = 12, critical_frac 0.2 -> 2, 8 of 16)."""

KNOBS: dict[str, dict] = {
    # critical positions per problem: round(critical_frac * L) with L = 12
    "critical": {1: {"task.env_kwargs.critical_frac": 1 / 12}, 5: {"task.env_kwargs.critical_frac": 5 / 12}},
    # target length L (max_len stays 24): fewer or more tokens per answer, critical share fixed
    "length": {6: {"task.env_kwargs.target_len": 6}, 18: {"task.env_kwargs.target_len": 18}},
    # acceptable content tokens of 16 at every position: fewer means more errors, recoverable and fatal
    "acceptable": {4: {"task.env_kwargs.num_acceptable": 4}, 12: {"task.env_kwargs.num_acceptable": 12}},
}
"""Knob -> value -> overrides (values other than the default)."""

HARDER: dict[str, list] = {"critical": [5], "length": [18], "acceptable": [4]}
"""The values the default study runs: the harder side of each knob (more fatal positions, longer answers,
more errors), where early stopping has the most to save. ``--full`` runs every value of :data:`KNOBS`
(both sides) on :data:`FULL_SEEDS`. The default study has 10 seeds: with 8, the
exact test's smallest p-value (2/256) cannot survive Holm over the study's 12 claims."""

LABELS = {"critical": "critical positions per problem", "length": "target length L",
          "acceptable": "acceptable tokens of 16 per position"}


def point_name(knob: str, value) -> str:
    return f"{knob}{value:g}"


def envs(full: bool = False) -> dict[str, dict]:
    """Env point -> overrides (the default point once): :data:`HARDER` values, or every value with ``full``."""
    return {"default": {}, **{point_name(k, v): ov for k, vals in KNOBS.items() for v, ov in vals.items()
                              if full or v in HARDER[k]}}


ENVS: dict[str, dict] = envs(full=True)
"""Every env point the study knows (the default study runs :func:`envs` ``(False)``)."""

SEEDS = list(range(10))
FULL_SEEDS = list(range(10))
QUICK: dict = {"steps": 12, "seeds": [0], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
AXES = ("method", "env", "seed")


def knob_points(knob: str) -> list[tuple[float, str]]:
    """``(value, env point)`` along one knob, the default point included, by value (points without runs
    are skipped by the analysis)."""
    pts = [(DEFAULTS[knob], "default")] + [(v, point_name(knob, v)) for v in KNOBS[knob]]
    return sorted(pts)


def spec(out_dir: str | Path, quick: bool = False, full: bool = False) -> dict:
    q = QUICK if quick else {}
    seeds = q.get("seeds", FULL_SEEDS if full else SEEDS)
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {"run.steps": q["steps"], **q["overrides"]} if quick else {},
        "axes": {"method": METHODS, "env": envs(full), "seed": list(seeds)},
    }


FULL_FOLDER = "full"
"""``--full`` has its own folder."""


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    """The study's one grid, its runs under ``root / "runs"``."""
    return [spec(Path(root) / "runs", quick=quick, full=full)]
