"""Scores, regime checks and verdicts of the T-PPO phase diagram, from the run table only.

Per run (``df``: :func:`analysis.runs.load_runs` with labels ``label/method``, ``label/env``, ``label/seed``):

- ``final_eval``: the held-out evaluation of the final policy, after the last step (``final/pass@1``, from
  ``final_eval.json``; the last ``eval/pass@1`` for a run without it): greedy whole responses to fresh
  held-out prompts, the same measurement for every method. ``reliable`` counts PPO seeds with
  ``final_eval >= RELIABLE`` (0.8).
- ``final_sampled``: the final policy sampled at the rollout temperature, each problem k times
  (``sampled/success``, the study's ``sampled_success`` measurement; NaN where it was not made): the success
  of the policy as trained, where greedy decoding scores each problem 0 or 1 on one argmax decision.
  ``reliable_sampled`` counts PPO seeds with ``final_sampled >= RELIABLE``.
- ``level``: ``LEVEL_FRAC`` (0.9) x PPO's mean ``final_eval`` in the cell; ``<x>_to_level``: cumulative cost
  ``x`` at the first evaluation with ``eval/pass@1 >= level``, the final one (at the run's whole cost)
  included (NaN if never): ``gpu`` (the cost model's
  H200 projection of the run's counts, :mod:`analysis.cost_model`), ``cpu`` (the same counts at the
  LLM backend's measured CPU unit costs, when ``docs/cost_units.json`` exists) and ``wall`` (this run's
  measured ``time/wall``: the toy GRU on this CPU, under whatever else ran beside it).
- ``speedup_<x>``: PPO's ``x_to_level`` / the method's, paired by seed (> 1: faster than PPO).
- Regime checks (PPO runs): ``tail_ratio``: mean over steps of ``length/max / length/mean`` (the longest row
  of a batch against the mean); ``gen_share``: generation's share of PPO's projected cost, and
  ``amdahl``: ``1 / (1 - gen_share)``, the largest speed-up any change to generation could give.

Verdicts per cell and window: T-PPO reaches the level in less projected cost than PPO (geometric mean of
``speedup_gpu`` with a t-interval on its logs, against 1); T-PPO's final evaluation is not worse than PPO's
(paired difference against 0). The whole diagram is one Holm family (:mod:`analysis.stats`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import cost_model
from analysis.experiments.tppo_regimes import sweep
from analysis.plots import ordered
from analysis.stats import Claim, Verdicts, decide_family, mean_ci, paired_diff_ci, ratio_ci

BASELINE = "ppo"
LEVEL_FRAC = 0.9
RELIABLE = 0.8
GOAL_SPEEDUP = 1.5
LABELS = ("label/method", "label/env", "label/seed")
COSTS = ("gpu", "cpu", "wall")
COLUMNS = ["env", "method", "n", "reliable", "reliable_sampled", "final_eval", "final_sampled", "level", "gpu_to_level", "speedup_gpu", "speedup_cpu",
           "speedup_wall", "reached", "tail_ratio", "gen_share", "amdahl"]


def _cumulative(r: pd.DataFrame, units: dict) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The run's steps with cumulative ``cost/<x>`` columns, and its cost-model counts (None without them)."""
    r = r.sort_values("step").copy()
    try:
        c = cost_model.counts(r)
    except ValueError:
        c = None
    for name, u in units.items():
        r[f"cost/{name}"] = (cost_model.price(c, u)["total"].cumsum().to_numpy() if c is not None and u is not None
                             else math.nan)
    r["cost/wall"] = r["time/wall"] if "time/wall" in r else math.nan
    return r, c


def _final(r: pd.DataFrame) -> float:
    """The final policy's held-out pass@1 (module docstring): ``final/pass@1``, else the last ``eval/pass@1``."""
    if "final/pass@1" in r and np.isfinite(r["final/pass@1"].iloc[0]):
        return float(r["final/pass@1"].iloc[0])
    ev = r["eval/pass@1"].dropna() if "eval/pass@1" in r else pd.Series(dtype=float)
    return float(ev.iloc[-1]) if len(ev) else math.nan


def _to_level(r: pd.DataFrame, level: float, key: str) -> float:
    if not np.isfinite(level):
        return math.nan
    if "eval/pass@1" in r:
        hit = r[r["eval/pass@1"].notna() & (r["eval/pass@1"] >= level)]
        if len(hit):
            return float(hit[key].iloc[0])
    # the evaluation after the last step, at the run's whole cost
    final = r["final/pass@1"].iloc[0] if "final/pass@1" in r else math.nan
    return float(r[key].iloc[-1]) if np.isfinite(final) and final >= level else math.nan


def per_run(df: pd.DataFrame, units: dict | None = None) -> pd.DataFrame:
    """One row per run (module docstring). ``units``: name -> :class:`~analysis.cost_model.UnitCosts`
    (default: ``gpu`` = the projection, ``cpu`` = the measured units or None)."""
    missing = [c for c in LABELS if c not in df]
    if missing:
        raise ValueError(f"the run table lacks {missing}: load it with load_runs(..., axes={sweep.AXES})")
    units = units if units is not None else {"gpu": cost_model.gpu_projection(), "cpu": cost_model.measured()}
    priced = {k: _cumulative(r, units) for k, r in df.groupby(list(LABELS), sort=False)}
    runs = {k: r for k, (r, _) in priced.items()}
    rows = []
    for (method, env, seed), (r, counts) in priced.items():
        rec = {"env": env, "method": method, "seed": seed, "run": str(r["run"].iloc[0]), "final_eval": _final(r),
               "final_sampled": float(r["sampled/success"].iloc[0]) if "sampled/success" in r else math.nan}
        if method == BASELINE:
            ratio = (r["length/max"] / r["length/mean"]).replace([np.inf, -np.inf], np.nan) if "length/max" in r else None
            rec["tail_ratio"] = float(ratio.mean()) if ratio is not None else math.nan
            gpu = units.get("gpu")
            share = cost_model.generation_share(counts, gpu) if gpu is not None and counts is not None else math.nan
            rec["gen_share"], rec["amdahl"] = share, cost_model.amdahl_bound(share) if np.isfinite(share) else math.nan
        rows.append(rec)
    pr = pd.DataFrame(rows)
    for col in ("tail_ratio", "gen_share", "amdahl"):
        if col not in pr:
            pr[col] = math.nan
    ppo_final = {e: g["final_eval"].mean() for e, g in pr[pr["method"] == BASELINE].groupby("env")}
    pr["level"] = [LEVEL_FRAC * ppo_final[e] if e in ppo_final and ppo_final[e] > 0 else math.nan for e in pr["env"]]
    for x in COSTS:
        pr[f"{x}_to_level"] = [_to_level(runs[(m, e, s)], lv, f"cost/{x}")
                               for m, e, s, lv in zip(pr["method"], pr["env"], pr["seed"], pr["level"])]
    for x in COSTS:
        ref = {(e, s): v for e, s, m, v in zip(pr["env"], pr["seed"], pr["method"], pr[f"{x}_to_level"]) if m == BASELINE}
        pr[f"speedup_{x}"] = [ref.get((e, s), math.nan) / v if np.isfinite(v) and v > 0 else math.nan
                              for e, s, v in zip(pr["env"], pr["seed"], pr[f"{x}_to_level"])]
    return pr


def score(pr: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, method): means (speed-ups: geometric means) with 95% t-intervals."""
    out = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        for method in ordered(pr["method"], list(sweep.METHODS)):
            g = pr[(pr["env"] == env) & (pr["method"] == method)]
            if not len(g):
                continue
            row = {"env": env, "method": method, "n": len(g), "reliable": int((g["final_eval"] >= RELIABLE).sum()),
                   "reliable_sampled": int((g["final_sampled"] >= RELIABLE).sum()),
                   "reached": int(np.isfinite(g["gpu_to_level"]).sum())}
            for k in ("final_eval", "final_sampled", "level", "gpu_to_level", "tail_ratio", "gen_share", "amdahl"):
                iv = mean_ci(g[k].tolist())
                row[k], row[f"{k}_lo"], row[f"{k}_hi"] = iv.mean, iv.low, iv.high
            for x in COSTS:
                iv = ratio_ci(g[f"speedup_{x}"].tolist())
                row[f"speedup_{x}"], row[f"speedup_{x}_lo"], row[f"speedup_{x}_hi"] = iv.mean, iv.low, iv.high
            out.append(row)
    return pd.DataFrame(out)


def claims(pr: pd.DataFrame) -> list:
    items: list = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        g = pr[pr["env"] == env]
        ppo = g[g["method"] == BASELINE]
        if not len(ppo):
            items.append(f"[{env}] no PPO runs: nothing is compared")
            continue
        share = mean_ci(ppo["gen_share"].tolist())
        sampled = ppo["final_sampled"].dropna()
        read = (f"; sampled (each problem k times) >= {RELIABLE:g} on {int((sampled >= RELIABLE).sum())} of {len(sampled)} "
                f"(mean {mean_ci(sampled.tolist()).fmt()})" if len(sampled) else "")
        items.append(f"[{env}] regime check: PPO's final evaluation >= {RELIABLE:g} on {int((ppo['final_eval'] >= RELIABLE).sum())} "
                     f"of {len(ppo)} seeds (greedy, mean {mean_ci(ppo['final_eval'].tolist()).fmt()}{read}); longest / mean row "
                     f"{mean_ci(ppo['tail_ratio'].tolist()).fmt(2)}; generation {share.fmt(2)} of PPO's projected cost, "
                     f"so no window can give more than {cost_model.amdahl_bound(share.mean) if np.isfinite(share.mean) else math.nan:.2f}x "
                     "(Amdahl)")
        for method in [m for m in ordered(g["method"], list(sweep.METHODS)) if m != BASELINE]:
            tag = {"env": env, "method": method}
            sp = ratio_ci(g[g["method"] == method].sort_values("seed")["speedup_gpu"].tolist())
            shown = f"speed-up {sp.fmt(2)}x" if sp.n else "speed-up n/a"
            items.append(Claim(f"[{env}] {method} reaches {LEVEL_FRAC:g} x PPO's final evaluation in less projected "
                               "cost (H200) than PPO", sp, f"{shown}, n={sp.n} seeds where both reached it", tags=tag))
            a = ppo.set_index("seed")["final_eval"]
            b = g[g["method"] == method].set_index("seed")["final_eval"]
            seeds = sorted(set(a.index) & set(b.index))
            d = paired_diff_ci([a[s] for s in seeds], [b[s] for s in seeds])
            items.append(Claim(f"[{env}] {method}'s final evaluation is higher than PPO's", d,
                               f"{method} - PPO {d.fmt()}, n={d.n}", tags=tag))
    decide_family([c for c in items if isinstance(c, Claim)])
    return items


def verdicts(pr: pd.DataFrame) -> Verdicts:
    """The diagram's lines, decided as one family, the family note last."""
    return Verdicts.of(claims(pr), "this diagram")
