"""Scores and verdicts of the ESPO phase diagram, from the run table and the per-row table.

Every per-run quantity is the ESPO headline's (:func:`analysis.experiments.espo_headline.analysis.per_run`:
the same definitions, paired with the PPO run of the same cell and seed), with the cell's axis values
(``derail`` R, ``recovery`` rate) beside it, and one measured regime statistic:

- ``measured_R`` (PPO runs only, from ``rows.jsonl``): the mean length of doomed finished rows divided by
  the mean length of successful ones, over the second half of training: the knob's ``R`` as the trained
  policy realises it (the cap ``rollout.max_len`` and the policy's own EOS make it differ from the knob).
- ``gen_share`` and ``cost_saved_pct`` (from the cost model, :mod:`analysis.cost_model`, priced with its
  GPU projection, Qwen2.5-7B on one H200): generation's share of a run's projected cost, and
  ``100 * (1 - cost / PPO's cost)`` paired by seed: what the tokens saved are worth once training's cost
  (which a stop barely changes) is counted (Amdahl's law for ESPO).
- ``p_thrown`` and ``final_precision`` (runs with a stop rule, from ``stop_value.json``,
  :mod:`testbed.ops.stop_value`): at the final policy, the mean success probability of a stopped row
  (each stopped row continued without stopping) and the share of stops on already doomed rows. With
  recovery a doomed-looking stop may be a row that would have been repaired; ``p_thrown`` counts it.

Verdicts, for each cell and each ESPO variant (current, paper): it saves more than 20% of PPO's rollout
tokens; its final policy (no-stop evaluation) succeeds more often than PPO's; random truncation matched to
its stop rate ends with a worse policy than it. Context lines (not tested): PPO's reliability, the
oracle's saving (the room any detector has) and ``measured_R``. The whole diagram is one family
(Holm over every cell's claims, :mod:`analysis.stats`), so a cell's "yes" is corrected for the others.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import cost_model
from analysis.experiments.espo_headline import analysis as headline
from analysis.experiments.espo_regimes import sweep
from analysis.plots import ordered
from analysis.stats import Claim, Verdicts, decide_family, mean_ci, paired_by_seed

BASELINE = headline.BASELINE
SAVING_CLAIM_PCT = headline.SAVING_CLAIM_PCT
ROOM_PCT = 40.0
"""The issue's bar for a regime with room for a detector: the oracle saves at least this much of PPO's tokens."""
ESPOS = headline.ESPOS
NAMES = headline.NAMES
COLUMNS = ["env", "derail", "recovery", "position", "method", "n", "reliable", "nostop_success", "nostop_vs_ppo",
           "tokens_saved_pct", "cost_saved_pct", "gen_share", "stop_rate", "precision", "saving_vs_oracle",
           "measured_R", "p_thrown", "final_precision"]
EXTRA = ("measured_R", "gen_share", "cost_saved_pct", "p_thrown", "final_precision")
"""Per-run quantities of this study beside the headline's."""


def measured_R(rows: pd.DataFrame, frac: float = 0.5) -> float:
    """Mean doomed length / mean successful length over the last ``frac`` of a run's steps (NaN if either is empty)."""
    if rows is None or not len(rows):
        return math.nan
    late = rows[rows["step"] >= rows["step"].max() * (1 - frac)]
    doomed, ok = late[late["doomed"]], late[late["success"].astype(bool)]
    if not len(doomed) or not len(ok):
        return math.nan
    return float(doomed["length"].mean() / ok["length"].mean())


STOP_VALUE_FILE = "stop_value.json"


def stop_values(run_dirs) -> dict[str, dict]:
    """Run name -> its ``stop_value.json`` (runs without one left out)."""
    out = {}
    for d in run_dirs:
        p = Path(d) / STOP_VALUE_FILE
        if p.is_file():
            out[Path(d).name] = json.loads(p.read_text())
    return out


def per_run(df: pd.DataFrame, rows: pd.DataFrame | None = None, values: dict[str, dict] | None = None) -> pd.DataFrame:
    """The headline's per-run table for the diagram's runs, with ``derail``, ``recovery``, ``measured_R``
    and, from ``values`` (:func:`stop_values`), ``p_thrown`` and ``final_precision``."""
    pr = headline.per_run(df, rows)
    axes = [sweep.axis_values(e) for e in pr["env"]]
    pr.insert(1, "derail", [a[0] for a in axes])
    pr.insert(2, "recovery", [a[1] for a in axes])
    pr.insert(3, "position", [sweep.position(e) for e in pr["env"]])
    by_run = {str(k): g for k, g in rows.groupby("run", sort=False)} if rows is not None and len(rows) else {}
    pr["measured_R"] = [measured_R(by_run.get(r)) if m == BASELINE else math.nan for r, m in zip(pr["run"], pr["method"])]
    units = cost_model.gpu_projection()
    costs = {}
    for name, r in df.groupby("run", sort=False):
        try:
            p = cost_model.price(cost_model.counts(r), units)
            costs[str(name)] = (float(p["total"].sum()), float(p["gen"].sum()))
        except ValueError:  # a run from before the cost model's counters
            costs[str(name)] = (math.nan, math.nan)
    total = [costs.get(str(r), (math.nan, math.nan))[0] for r in pr["run"]]
    pr["gen_share"] = [costs.get(str(r), (math.nan, math.nan))[1] / t if t > 0 else math.nan
                       for r, t in zip(pr["run"], total)]
    pr["_cost"] = total
    ref = {(e, s): c for e, s, m, c in zip(pr["env"], pr["seed"], pr["method"], total) if m == BASELINE}
    pr["cost_saved_pct"] = [100 * (1 - c / ref[(e, s)]) if (e, s) in ref and ref[(e, s)] > 0 else math.nan
                            for e, s, c in zip(pr["env"], pr["seed"], total)]
    values = values or {}
    for key, src in (("p_thrown", "p_thrown"), ("final_precision", "precision")):
        pr[key] = [float(values.get(str(r), {}).get(src, math.nan)) if m != BASELINE else math.nan
                   for r, m in zip(pr["run"], pr["method"])]
    return pr.drop(columns=["_cost"])


def _run_counts(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Run name -> its cost-model counts summed over steps (runs without the counters left out)."""
    out = {}
    for name, r in df.groupby("run", sort=False):
        try:
            out[str(name)] = cost_model.counts(r).drop(columns=["step"]).sum()
        except ValueError:
            continue
    return out


def cost_sensitivity(df: pd.DataFrame, pr: pd.DataFrame, env: str, method: str,
                     units: cost_model.UnitCosts | None = None) -> pd.DataFrame:
    """``method``'s cost saved against PPO (%, mean over the seeds of ``env`` where both have counts) at the
    given unit costs (default: the GPU projection) and with each constant halved and doubled."""
    counts = _run_counts(df)
    g = pr[pr["env"] == env]
    pairs = []
    for seed in sorted(set(g["seed"])):
        m = g[(g["method"] == method) & (g["seed"] == seed)]["run"]
        b = g[(g["method"] == BASELINE) & (g["seed"] == seed)]["run"]
        if len(m) and len(b) and str(m.iloc[0]) in counts and str(b.iloc[0]) in counts:
            pairs.append((counts[str(m.iloc[0])], counts[str(b.iloc[0])]))
    if not pairs:
        return pd.DataFrame()

    def total(c: pd.Series, u: cost_model.UnitCosts) -> float:
        return float(cost_model.price(pd.DataFrame([{"step": 0, **c.to_dict()}]), u)["total"].iloc[0])

    def saved(u: cost_model.UnitCosts) -> float:
        return float(np.mean([100 * (1 - total(cm, u) / total(cb, u)) for cm, cb in pairs]))

    return cost_model.sensitivity(saved, units or cost_model.gpu_projection())


def score(pr: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, method): the headline's summary plus ``measured_R`` and the cell's axis values."""
    table = headline.summarize(pr)
    for k in EXTRA:
        vals = {(e, m): mean_ci(g[k].tolist()) for (e, m), g in pr.groupby(["env", "method"])}
        table[k] = [vals[(e, m)].mean for e, m in zip(table["env"], table["method"])]
        table[f"{k}_lo"] = [vals[(e, m)].low for e, m in zip(table["env"], table["method"])]
        table[f"{k}_hi"] = [vals[(e, m)].high for e, m in zip(table["env"], table["method"])]
    axes = [sweep.axis_values(e) for e in table["env"]]
    table.insert(1, "derail", [a[0] for a in axes])
    table.insert(2, "recovery", [a[1] for a in axes])
    table.insert(3, "position", [sweep.position(e) for e in table["env"]])
    order = {e: i for i, e in enumerate(sweep.ENVS)}
    return table.sort_values(["env"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def cells(pr: pd.DataFrame) -> list[str]:
    return ordered(pr["env"], list(sweep.ENVS))


def claims(pr: pd.DataFrame) -> list:
    """Context lines and claims, cell by cell; every claim of the diagram decided as one family."""
    items: list = []
    for env in cells(pr):
        R, rep = sweep.axis_values(env)
        pos = sweep.position(env)
        p = f"[R={R:g}, recovery {rep:g}" + ("]" if pos == sweep.ANYWHERE else f", failures {pos}]")
        has = set(pr.loc[pr["env"] == env, "method"])
        ppo = pr[(pr["env"] == env) & (pr["method"] == BASELINE)]
        if len(ppo):
            ok = int((ppo["final_success"] >= headline.RELIABLE_SUCCESS).sum())
            items.append(f"{p} PPO's final success >= {headline.RELIABLE_SUCCESS:g} on {ok} of {len(ppo)} seeds "
                         f"(mean {mean_ci(ppo['final_success'].tolist()).fmt()}); measured R (doomed / successful "
                         f"length, second half) {mean_ci(ppo['measured_R'].tolist()).fmt()}")
        if "oracle" in has:
            o = headline.seed_mean(pr, env, "tokens_saved_pct", "oracle")
            room = "room for a detector" if o.mean >= ROOM_PCT else f"less than the {ROOM_PCT:g}% room the issue asks"
            oc = headline.seed_mean(pr, env, "cost_saved_pct", "oracle")
            share = mean_ci(pr[(pr["env"] == env) & (pr["method"] == BASELINE)]["gen_share"].tolist())
            items.append(f"{p} the oracle saves {o.fmt(1)} % of PPO's tokens ({room}); in projected cost "
                         f"(H200, 7B) {oc.fmt(1)} %, generation being {share.fmt(2)} of PPO's projected cost")
        if BASELINE not in has:
            continue
        for espo in [e for e in ESPOS if e in has]:
            n, tag = NAMES[espo], {"env": env, "method": espo}
            saved = headline.seed_mean(pr, env, "tokens_saved_pct", espo, null=SAVING_CLAIM_PCT)
            items.append(Claim(f"{p} {n} saves >{SAVING_CLAIM_PCT:g}% of PPO's rollout tokens", saved,
                               f"saved {saved.fmt(1)} %, n={saved.n}", tags=tag))
            items.append(headline.success_claim(pr, env, BASELINE, espo, f"{p} {n}'s final policy succeeds more "
                                                 "often than PPO's", tag))
            rnd = ESPOS[espo]
            thrown = headline.seed_mean(pr, env, "p_thrown", espo)
            if thrown.n:
                line = (f"{p} at its final policy {n}'s stops throw away P(success) {thrown.fmt(2)} a stop "
                        f"(continued without stopping; doomed share of stops "
                        f"{headline.seed_mean(pr, env, 'final_precision', espo).fmt(2)})")
                if rnd in has:
                    d = paired_by_seed(pr, "p_thrown", rnd, espo, where={"env": env})
                    line += (f"; matched random's {headline.seed_mean(pr, env, 'p_thrown', rnd).fmt(2)}, "
                             f"{n} - random {d.fmt(2)} (n={d.n}, not tested)")
                items.append(line)
            if rnd in has:
                items.append(headline.success_claim(pr, env, rnd, espo, f"{p} random truncation matched to {n} "
                                                     f"ends with a worse policy than {n}", tag))
    decide_family([c for c in items if isinstance(c, Claim)])
    return items


def verdicts(pr: pd.DataFrame) -> Verdicts:
    """The diagram's lines, decided as one family, the family note last."""
    return Verdicts.of(claims(pr), "this diagram")


def word_grid(pr: pd.DataFrame, items: list, method: str, kind: str) -> dict[str, str]:
    """Cell -> the verdict word of ``method``'s claim of ``kind`` (``saves``, ``vs_ppo``, ``vs_random``)."""
    key = {"saves": "saves >", "vs_ppo": "succeeds more often than PPO", "vs_random": "random truncation matched"}[kind]
    out = {}
    for c in items:
        if isinstance(c, Claim) and c.tags.get("method") == method and key in c.text:
            out[c.tags["env"]] = c.word
    return out
