"""Scores, verdicts, the cost model and figures of the T-PPO speed-up study, from the run table only.

``df`` is :func:`analysis.runs.load_runs` of the study's run directories (labels ``label/method``,
``label/env``, ``label/seed``). Definitions (per run; tables give mean ± std over seeds, one row per
env and method; comparisons with PPO are paired by seed: differences with Student-t intervals, speed-up
ratios as geometric means with t-intervals on their logs, each with an exact sign-flip test, from
:mod:`analysis.stats`):

- ``final_success``: mean ``success/rate`` (over rows that finished that step) over the last 10% of steps.
- ``level``: the success level every method must reach: ``LEVEL_FRAC`` (0.5) times PPO's mean final
  success in that env, or the ``level`` given to :func:`score`.
- ``X_to_level``: the cumulative quantity X at the first step whose trailing moving average of
  ``success/rate`` (window: 10% of the run) is ``>= level``; NaN if never (``reached`` counts the seeds
  that did). X is ``tokens`` (generated), ``compute`` (measured ``time/gen + time/actor + time/critic``),
  ``wall`` (measured ``time/wall``), ``decode_steps`` and ``gpu`` (projected, below).
- ``speedup_X``: PPO's X to the level divided by the method's, per seed (> 1: faster than PPO); the
  table shows its arithmetic mean, the paired table and the verdicts its geometric mean and interval. ``d_final_success``: the method's final success
  minus PPO's, per seed.
- ``final_length``: mean response length of finished rows over the last 10% of steps;
  ``finished_per_step``: mean ``pool/finished`` (rows that end per step, of the batch).

Cost model. Per training step k, from counts that do not depend on the machine's load:
``S_k`` decoding steps (``gen/decode_steps + gen/value_steps``), ``R_k`` row-steps (``tokens/generated``:
one per decoded token) and ``N_k`` training token-passes ``epochs * (tokens/actor_forward + tokens/critic) / 2``
(+ ``tokens/critic / 6`` for T-PPO's forward that re-values finished rows), in units of one token
through the actor and the critic, forward and backward. Unit costs come from ``bench/tppo_cost.py``
(run alone): ``t(1)`` and ``t(32)``, a decoding step at batch 1 and 32, give ``t(B) = a + b*B``;
``c`` is the measured training cost per token-pass.

- ``cpu_model_s`` = sum of ``a*S + b*R + c*N``: this machine's costs (a check against ``compute_s``).
- ``gpu_s`` = sum of ``a*S + 3b*N``: the GPU regime, where a decoding step is memory-bound and costs
  ``a`` whatever the batch size, and training is compute-bound, proportional to tokens, each
  token-pass costing three row-forwards (forward + backward) at the per-row cost ``b``.
- ``speedup_rho<r>``: the speed-up at a stated ratio ``r`` = (cost of a decoding step) / (cost of a
  token-pass), i.e. time ``r*S + N``: ``r`` large is a regime where decoding dominates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.experiments import table_row
from analysis.experiments.tppo_speedup import sweep
from analysis.plots import ordered
from analysis.runs import final_mean, first_reach, mean_std, run_mean
from analysis.stats import Claim, Interval, Verdicts, decide_family, family_note, paired_diff_ci, ratio_ci

LEVEL_FRAC = 0.5
"""The success level is this fraction of PPO's final success (unless ``score(df, level=...)``)."""
GOAL_SPEEDUP = 1.5
"""The study's goal: PPO's level in this many times less wall-clock (measured or projected)."""
RHOS = (1.0, 10.0, 100.0, 1000.0)
"""Stated decode-step / training-token cost ratios of the sensitivity table."""

BASELINE = "ppo"
LABELS = ("label/method", "label/env", "label/seed")
TO_LEVEL = {"tokens": "tokens/cumulative", "compute": "time/compute_cumulative", "wall": "time/wall",
            "decode_steps": "cost/decode_steps", "gpu": "cost/gpu", **{f"rho{r:g}": f"cost/rho{r:g}" for r in RHOS}}
"""X -> the cumulative column whose value at the first step at the level is ``X_to_level``."""
METRICS = ["final_success", "d_final_success", "level", *[f"{x}_to_level" for x in TO_LEVEL],
           *[f"speedup_{x}" for x in TO_LEVEL], "tokens", "compute_s", "wall_s", "gen_s", "actor_s", "critic_s",
           "cpu_model_s", "gpu_s", "decode_steps", "train_passes", "idle_fraction", "age_mean", "stale_token_frac",
           "final_length", "finished_per_step"]
SPEED_COLUMNS = ["env", "method", "n", "reached", "final_success", "level", "tokens_to_level", "compute_to_level",
                 "wall_to_level", "gpu_to_level", "speedup_compute", "speedup_wall", "speedup_gpu"]
COST_COLUMNS = ["env", "method", "tokens", "decode_steps", "train_passes", "compute_s", "cpu_model_s", "gpu_s",
                "gen_s", "actor_s", "critic_s", "idle_fraction", "final_length", "finished_per_step", "age_mean"]
RHO_COLUMNS = ["env", "method", *[f"speedup_rho{r:g}" for r in RHOS]]


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in LABELS if c not in df]
    if missing:
        raise ValueError(f"the run table lacks {missing}: load it with load_runs(..., axes={sweep.AXES})")


def load_calibration(path: str | Path = sweep.CALIBRATION) -> dict | None:
    """The unit costs written by ``bench/tppo_cost.py`` (None if the file is missing)."""
    p = Path(path)
    if not p.is_file():
        return None
    cal = json.loads(p.read_text())
    missing = [k for k in ("a_s", "b_s", "train_token_s", "decode_step_b1_s", "decode_step_b32_s") if k not in cal]
    if missing:
        raise ValueError(f"{p}: calibration lacks {missing}; rerun bench/tppo_cost.py")
    return cal


def _col(r: pd.DataFrame, key: str) -> np.ndarray:
    return r[key].fillna(0.0).to_numpy(dtype=float) if key in r else np.zeros(len(r))


def with_costs(run: pd.DataFrame, cal: dict | None) -> pd.DataFrame:
    """One run's steps with the cost model's cumulative columns (``cost/...``, see the module doc)."""
    r = run.sort_values("step").copy()
    S = _col(r, "gen/decode_steps") + _col(r, "gen/value_steps")
    R = _col(r, "tokens/generated")
    epochs = float(r["config/algo.epochs"].iloc[0]) if "config/algo.epochs" in r else 1.0
    tppo = bool(r["config/tppo.enabled"].iloc[0]) if "config/tppo.enabled" in r else False
    crit = _col(r, "tokens/critic")
    N = epochs * (_col(r, "tokens/actor_forward") + crit) / 2 + (crit / 6 if tppo else 0.0)
    r["cost/decode_steps"], r["cost/row_steps"], r["cost/train_passes"] = S.cumsum(), R.cumsum(), N.cumsum()
    for rho in RHOS:
        r[f"cost/rho{rho:g}"] = (rho * S + N).cumsum()
    nan = np.full(len(r), math.nan)
    if cal is None:
        r["cost/cpu"], r["cost/gpu"], r["cost/gpu_gen"] = nan, nan, nan
    else:
        a, b, c = cal["a_s"], cal["b_s"], cal["train_token_s"]
        r["cost/cpu"] = (a * S + b * R + c * N).cumsum()
        r["cost/gpu"] = (a * S + 3 * b * N).cumsum()
        r["cost/gpu_gen"] = (a * S).cumsum()  # its decoding part (the Amdahl check)
    return r


def per_run(df: pd.DataFrame, level: float | None = None, cal: dict | None = None) -> pd.DataFrame:
    """One row per run with every per-run quantity of the module docstring."""
    _check(df)
    runs = {k: with_costs(r, cal) for k, r in df.groupby(list(LABELS), sort=False)}
    rows = []
    for (method, env, seed), r in runs.items():
        last = r.iloc[-1]
        rows.append({
            "env": env, "method": method, "seed": seed, "run": r["run"].iloc[0],
            "final_success": final_mean(r, "success/rate"),
            "tokens": float(last["tokens/cumulative"]),
            "compute_s": float(r["time/compute"].fillna(0.0).sum()) if "time/compute" in r else math.nan,
            "wall_s": float(last["time/wall"]) if "time/wall" in r else math.nan,
            "gen_s": float(_col(r, "time/gen").sum()), "actor_s": float(_col(r, "time/actor").sum()),
            "critic_s": float(_col(r, "time/critic").sum()),
            "cpu_model_s": float(last["cost/cpu"]), "gpu_s": float(last["cost/gpu"]),
            "gpu_gen_s": float(last["cost/gpu_gen"]),
            "decode_steps": float(last["cost/decode_steps"]), "train_passes": float(last["cost/train_passes"]),
            "idle_fraction": run_mean(r, "gen/idle_fraction"),
            "age_mean": run_mean(r, "pool/age_mean"), "stale_token_frac": run_mean(r, "pool/stale_token_frac"),
            "final_length": final_mean(r, "length/mean") if "length/mean" in r else math.nan,
            "finished_per_step": run_mean(r, "pool/finished"),
        })
    out = pd.DataFrame(rows)
    if level is None:
        lv = {e: LEVEL_FRAC * mean_std(g["final_success"])[0] for e, g in out[out["method"] == BASELINE].groupby("env")}
        lv = {e: v if v > 0 else math.nan for e, v in lv.items()}
    else:
        lv = {e: float(level) for e in out["env"]}
    out["level"] = [lv.get(e, math.nan) for e in out["env"]]
    for x, col in TO_LEVEL.items():
        out[f"{x}_to_level"] = [first_reach(runs[(m, e, s)], v, x=col) if np.isfinite(v) and col in runs[(m, e, s)] else math.nan
                                for m, e, s, v in zip(out["method"], out["env"], out["seed"], out["level"])]
    ref = out[out["method"] == BASELINE].set_index(["env", "seed"])
    for x in TO_LEVEL:
        src, vals = f"{x}_to_level", []
        for e, s, v in zip(out["env"], out["seed"], out[src]):
            p = ref[src].get((e, s), math.nan) if len(ref) else math.nan
            vals.append(p / v if np.isfinite(p) and np.isfinite(v) and p > 0 and v > 0 else math.nan)
        out[f"speedup_{x}"] = vals
    out["d_final_success"] = [f - ref["final_success"].get((e, s), math.nan) if len(ref) else math.nan
                              for e, s, f in zip(out["env"], out["seed"], out["final_success"])]
    return out


def amdahl(pr: pd.DataFrame) -> pd.DataFrame:
    """Per env, PPO's share of its cost spent generating and the largest speed-up any window could then
    give (Amdahl's law: generation made free, everything else unchanged, ``1 / (1 - share)``), measured
    (``gen_s / compute_s``) and projected (the GPU regime's decoding part ``a*S`` of ``gpu_s``); mean
    over PPO's seeds. A T-PPO claim above the bound cannot be shown in that env."""
    def bound(f: float) -> float:
        return math.nan if not np.isfinite(f) else 1.0 / (1.0 - f) if f < 1 else math.inf

    rows = []
    for env, g in pr[pr["method"] == BASELINE].groupby("env", sort=False):
        share = float((g["gen_s"] / g["compute_s"]).mean())
        proj = float((g["gpu_gen_s"] / g["gpu_s"]).mean())
        rows.append({"env": env, "gen_share_measured": share, "max_speedup_measured": bound(share),
                     "gen_share_projected": proj, "max_speedup_projected": bound(proj), "goal": GOAL_SPEEDUP})
    return pd.DataFrame(rows)


def score(df: pd.DataFrame, level: float | None = None, cal: dict | None = None, *,
          pr: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (env, method): mean and ``<metric>_std`` over seeds of :data:`METRICS`, ``n`` and ``reached``
    (``pr``: :func:`per_run`'s table of ``df``, when the caller has it already)."""
    pr = per_run(df, level, cal) if pr is None else pr
    rows = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        for method in ordered(pr["method"], list(sweep.METHODS)):
            g = pr[(pr["env"] == env) & (pr["method"] == method)]
            if not len(g):
                continue
            row = {"env": env, "method": method, "n": len(g), "reached": int(np.isfinite(g["tokens_to_level"]).sum())}
            for k in METRICS:
                row[k], row[f"{k}_std"], _ = mean_std(g[k])
            rows.append(row)
    return pd.DataFrame(rows)


def intervals(pr: pd.DataFrame) -> pd.DataFrame:
    """Paired-by-seed comparisons with PPO, one row per (env, method): the difference in final success,
    and the speed-up to the level in tokens, measured compute and wall-clock, and projected GPU time
    (geometric means over the seeds where both reached the level; ``n`` says how many). ``goal_<x>``:
    the same speed-ups tested against :data:`GOAL_SPEEDUP` (the verdicts' claims; not shown in tables)."""
    rows = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        base = pr[(pr["env"] == env) & (pr["method"] == BASELINE)].set_index("seed")
        for method in ordered(pr["method"], list(sweep.METHODS)):
            if method == BASELINE:
                continue
            g = pr[(pr["env"] == env) & (pr["method"] == method)].set_index("seed")
            seeds = sorted(set(g.index) & set(base.index))
            if not seeds:
                continue
            row = {"env": env, "method": method,
                   "d_final_success": paired_diff_ci(base.loc[seeds, "final_success"].tolist(),
                                                     g.loc[seeds, "final_success"].tolist())}
            for x in ("tokens", "compute", "wall", "gpu"):
                ratios = g.loc[seeds, f"speedup_{x}"].tolist()
                row[f"speedup_{x}"] = ratio_ci(ratios)
                if x != "tokens":
                    row[f"goal_{x}"] = ratio_ci(ratios, null=GOAL_SPEEDUP)
            rows.append(row)
    return pd.DataFrame(rows)


ATTRIBUTION = [("tppo_nocritic", "ppo_nocritic", "the window (T-PPO vs PPO, both with the critic frozen at 0)"),
               ("ppo_nocritic", "ppo", "the frozen critic (PPO without vs with a trained critic)")]
"""(method, reference, what the pair isolates): where a speed-up over PPO comes from."""


def attribution(pr: pd.DataFrame) -> pd.DataFrame:
    """Per pair of :data:`ATTRIBUTION` (and env): the reference's X to the level over the method's,
    paired by seed (> 1: the method is faster), for tokens, decoding steps, the GPU projection and
    measured compute; intervals over the seeds where both reached the level."""
    rows = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        e = pr[pr["env"] == env]
        for method, ref, what in ATTRIBUTION:
            a, b = e[e["method"] == method].set_index("seed"), e[e["method"] == ref].set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            row = {"env": env, "method": method, "reference": ref, "isolates": what}
            for x in ("tokens", "decode_steps", "gpu", "compute"):
                ratios = [b.loc[s, f"{x}_to_level"] / a.loc[s, f"{x}_to_level"] for s in seeds]
                row[f"ratio_{x}"] = ratio_ci([r for r in ratios if np.isfinite(r)])
            rows.append(row)
    return pd.DataFrame(rows)


def interval_table(iv: pd.DataFrame) -> pd.DataFrame:
    """:func:`intervals` as text cells (``mean [low, high] (n seeds)``; the ``goal_`` tests left out)."""
    out = iv[[c for c in iv.columns if not isinstance(iv[c].iloc[0], Interval)]].copy()
    for c in iv.columns:
        if isinstance(iv[c].iloc[0], Interval) and not c.startswith("goal_"):
            out[c] = [f"{i.fmt()} ({i.n})" for i in iv[c]]
    return out


PRIMARY = "wall"
"""The declared time metric of the speed-up claims: measured wall-clock to the level (what "faster training"
means); measured compute and the projected GPU time are shown beside it, not tested."""
METRIC_NAMES = {"compute": "measured compute", "wall": "measured wall-clock", "gpu": "projected GPU time"}


def verdicts(table: pd.DataFrame, iv: pd.DataFrame) -> Verdicts:
    """Plain statements from ``table`` (:func:`score`) and ``iv`` (:func:`intervals`), the family note last.

    The family is declared before looking: for every variant, its final success against PPO's and its
    speed-up to the level in :data:`PRIMARY` time against :data:`GOAL_SPEEDUP`; all Holm-corrected
    together, so "a variant reaches the goal" is not an OR over screened (variant, metric) pairs."""
    items: list = []
    goals: list[tuple[str, Claim, dict]] = []
    for env in ordered(table["env"], list(sweep.ENVS)):
        ppo = table_row(table, env, BASELINE)
        p = f"[{env}]"
        if ppo is None:
            items.append(f"{p} no PPO runs: nothing to compare with")
            continue
        items.append(f"{p} PPO: final success {ppo['final_success']:.3g}; level {ppo['level']:.3g} reached in "
                     f"{ppo['reached']}/{ppo['n']} seeds")
        for _, r in iv[iv["env"] == env].iterrows():
            m, row = r["method"], table_row(table, env, r["method"])
            ds = r["d_final_success"]
            others = "; ".join(f"{name} {r[f'speedup_{x}'].fmt(2)}" for x, name in METRIC_NAMES.items()
                               if x != PRIMARY and r[f"speedup_{x}"].n)
            items.append(f"{p} {m}: reached the level in {row['reached']}/{row['n']} seeds; speed-ups not tested "
                         f"(geometric means): {others or 'n/a'}")
            items.append(Claim(f"{p} {m}'s final success is higher than PPO's", ds, f"{m} - PPO {ds.fmt()}, n={ds.n}"))
            s = r[f"goal_{PRIMARY}"]
            if s.n:
                c = Claim(f"{p} {m} reaches PPO's level >= {GOAL_SPEEDUP:g}x faster in {METRIC_NAMES[PRIMARY]}", s,
                          f"speed-up {s.fmt(2)} (geometric mean), n={s.n}")
                items.append(c)
                goals.append((env, c, {"method": m, "all": row["reached"] == row["n"]}))
    family = [c for c in items if isinstance(c, Claim)]
    decide_family(family)
    out = [c.line() if isinstance(c, Claim) else c for c in items]
    for env in ordered(table["env"], list(sweep.ENVS)):
        g = [(c, t) for e, c, t in goals if e == env]
        if not g:
            continue
        won = [f"{t['method']} ({c.iv.mean:.2f}x)" for c, t in g if c.word == "yes" and t["all"]]
        open_ = [c for c, _ in g if c.word.startswith("undecided")]
        word = ("yes: " + ", ".join(won) if won else
                f"undecided ({len(open_)} of {len(g)} claims undecided)" if open_ else "no")
        out.append(f"[{env}] a variant reaches PPO's level in every seed with >= {GOAL_SPEEDUP:g}x less "
                   f"{METRIC_NAMES[PRIMARY]} (its claim above significant in the family): {word}")
    return Verdicts(out + ([family_note(family)] if family else []), family)
