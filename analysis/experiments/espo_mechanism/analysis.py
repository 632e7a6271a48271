"""Scores, verdicts and figures of the gate-or-detector study.

``df`` is :func:`analysis.runs.load_runs` of the study's runs (labels ``label/variant``,
``label/warmup``, ``label/method``, ``label/seed``); ``rows`` the per-row table. A *cell* is one
(variant, warm-up); ESPO and its matched random truncation share a cell's seeds. Per run, the
quantities are the headline's (:func:`analysis.experiments.espo_headline.analysis.per_run`), and:

- ``nostop_success``: the final policy on ``run.final_eval_rows`` fresh prompts, whole responses, no
  stop rule (``final_eval_nostop.json``); the study's score: what the policy learned, not what the
  stop rule let it finish.
- ``final_entropy``: mean ``actor/entropy`` over the last 10% of steps.
- ``stop_rate_2nd``: mean ``stop/rate`` over the second half of training.
- ``warmup_end`` (ESPO runs): the first step whose ``stop/active`` is 1; ``value_at_warmup``: the
  critic's mean value (``critic/value_mean``) at that step: what the gate sees when it first decides.

Claims (one family, Holm-corrected, exact paired sign-flip tests over seeds):

- per cell, ESPO - random on no-stop success and on final entropy (> 0: ESPO better);
- per variant, the change of the no-stop gap with the warm-up: ``(ESPO - random)`` under the paper's
  warm-up (and under 30 steps) minus under the preset's 5 steps, paired by seed (> 0: the gap
  closes as the gate starts later, on a better-trained critic).

Reading: a later warm-up tests the gate only if the critic the gate then sees is informative (its mean
value at least the paper's ε = 0.2; below it the value does not move either gate). If the gap stays
significantly below 0 under such a warm-up, the regret detector's own selection is the cause; if it
closes (the change is significantly positive and the gap no longer significant), the early gate was.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.experiments.espo_headline import analysis as headline
from analysis.experiments.espo_mechanism import sweep
from analysis.runs import run_mean
from analysis.stats import Claim, Verdicts, decide_family, family_note, mean_ci, paired_diff_ci

LABELS = tuple(f"label/{a}" for a in sweep.AXES)
METRICS = ["nostop_success", "final_success", "final_entropy", "stop_rate", "stop_rate_2nd", "precision",
           "false_stop_rate", "tokens", "warmup_end", "value_at_warmup"]
COLUMNS = ["variant", "warmup", "method", "n", *METRICS]


def cells(pr: pd.DataFrame) -> list[tuple[str, str]]:
    """The (variant, warm-up) cells present in ``pr``, in the sweep's order."""
    have = set(zip(pr["variant"], pr["warmup"]))
    return [(v, w) for v in sweep.VARIANTS for w in sweep.WARMUPS if (v, w) in have]


def per_run(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: the headline's per-run quantities plus this study's (module docstring)."""
    missing = [c for c in LABELS if c not in df]
    if missing:
        raise ValueError(f"the run table lacks {missing}: load it with load_runs(..., axes={sweep.AXES})")
    d = df.copy()
    d["label/env"] = d["label/variant"].astype(str) + "/" + d["label/warmup"].astype(str)
    pr = headline.per_run(d, rows)
    pr[["variant", "warmup"]] = pr["env"].str.split("/", n=1, expand=True)
    extra = {}
    for name, r in d.groupby("run", sort=False):
        r = r.sort_values("step")
        half = r[r["step"] >= (int(r["step"].max()) + 1) // 2]
        active = r[r["stop/active"].fillna(0) > 0] if "stop/active" in r else r.iloc[:0]
        end = int(active["step"].iloc[0]) if len(active) else math.nan
        value = (float(active["critic/value_mean"].iloc[0]) if len(active) and "critic/value_mean" in r
                 else math.nan)
        extra[name] = {"stop_rate_2nd": run_mean(half, "stop/rate"), "warmup_end": end, "value_at_warmup": value}
    for k in ("stop_rate_2nd", "warmup_end", "value_at_warmup"):
        pr[k] = [extra[n][k] for n in pr["run"]]
    # only ESPO's warm-up is a decision of the rule (random follows its ESPO run's schedule)
    pr.loc[pr["method"] != "espo", ["warmup_end", "value_at_warmup"]] = math.nan
    return pr


def score(pr: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, warm-up, method), plus PPO: mean with its 95% t-interval over seeds."""
    out = []
    groups = [(v, w, m) for v, w in cells(pr) for m in sweep.METHODS] + [("none", "none", "ppo")]
    for v, w, m in groups:
        g = pr[(pr["variant"] == v) & (pr["warmup"] == w) & (pr["method"] == m)]
        if not len(g):
            continue
        row = {"variant": v, "warmup": w, "method": m, "n": len(g)}
        for k in METRICS:
            iv = mean_ci(g[k].tolist())
            row[k], row[f"{k}_lo"], row[f"{k}_hi"] = iv.mean, iv.low, iv.high
        out.append(row)
    return pd.DataFrame(out)


def _by_seed(pr: pd.DataFrame, v: str, w: str, m: str, key: str) -> pd.Series:
    g = pr[(pr["variant"] == v) & (pr["warmup"] == w) & (pr["method"] == m)]
    return g.set_index("seed")[key]


def gap(pr: pd.DataFrame, v: str, w: str, key: str = "nostop_success") -> pd.Series:
    """ESPO - random on ``key`` in one cell, per seed (seeds both ran)."""
    e, r = _by_seed(pr, v, w, "espo", key), _by_seed(pr, v, w, "random", key)
    seeds = sorted(set(e.index) & set(r.index))
    return (e.loc[seeds] - r.loc[seeds]).astype(float)


def claims(pr: pd.DataFrame) -> list[Claim]:
    """The study's family of claims (module docstring), decided together."""
    out: list[Claim] = []
    for v, w in cells(pr):
        for key, what in (("nostop_success", "no-stop success"), ("final_entropy", "final entropy")):
            d = gap(pr, v, w, key)
            iv = mean_ci(d.tolist())
            out.append(Claim(f"[{v} ESPO, {w} warm-up] ESPO's {what} is above its matched random's", iv,
                             f"ESPO - random {iv.fmt()}, n={iv.n}", tags={"variant": v, "warmup": w, "key": key}))
    for v in sweep.VARIANTS:
        base = gap(pr, v, "steps")
        for w in [w for w in sweep.WARMUPS if w != "steps" and (v, w) in cells(pr)]:
            later = gap(pr, v, w)
            seeds = sorted(set(base.index) & set(later.index))
            if not seeds:
                continue
            iv = paired_diff_ci(base.loc[seeds].tolist(), later.loc[seeds].tolist())
            out.append(Claim(f"[{v} ESPO] the no-stop gap to random closes with the {w} warm-up instead of 5 steps",
                             iv, f"(ESPO - random)[{w}] - (ESPO - random)[steps] {iv.fmt()}, n={iv.n}",
                             tags={"variant": v, "warmup": w, "key": "change"}))
    return decide_family(out)


VALUE_FLOOR = float(sweep.VARIANTS["paper"].get("stop.value_floor", 0.2))
"""The paper's ε: below it the critic's value does not move the gate (z > β·max(V, ε)); the current gate
τ·clip(V, 0, 1) + τ_min is also near its floor there. A warm-up separates the two readings only if the
critic's mean value when the rule starts is at least this."""


def answer(cs: list[Claim], pr: pd.DataFrame) -> list[str]:
    """The study's question answered per variant and later warm-up from the decided claims: a warm-up
    tests "the gate" only if the gate then sees an informative critic (mean value >= :data:`VALUE_FLOOR`)."""
    lines = []
    for v in sweep.VARIANTS:
        by = {(c.tags["warmup"], c.tags["key"]): c for c in cs if c.tags.get("variant") == v}
        if ("steps", "nostop_success") not in by:
            continue
        for w in [w for w in sweep.WARMUPS if w != "steps"]:
            g, ch = by.get((w, "nostop_success")), by.get((w, "change"))
            if g is None or ch is None:
                continue
            e = pr[(pr["variant"] == v) & (pr["warmup"] == w) & (pr["method"] == "espo")]
            ends, vals = e["warmup_end"].dropna(), e["value_at_warmup"].dropna()
            if not len(ends):
                lines.append(f"{v} ESPO, {w} warm-up: the rule never switched on")
                continue
            informed = bool(len(vals)) and vals.mean() >= VALUE_FLOOR
            when = (f"the rule starts at step {ends.mean():.1f} on average, the critic's mean value then "
                    f"{vals.mean():.3f}, {'above' if informed else 'below'} the gate's floor {VALUE_FLOOR:g}")
            if not informed:
                verdict = ("does not separate the readings: the gate starts near its floor, as with 5 steps"
                           + ("; the gap persists" if g.word == "no" else ""))
            elif g.word == "no":
                verdict = "the gap persists with an informative critic: the detector's selection costs the policy"
            elif ch.word == "yes":
                verdict = "the gap closes with an informative critic: the early gate was the cause"
            elif g.word == "yes":
                verdict = "ESPO's policy is better than random's here: no loss left to explain"
            else:
                verdict = "undecided: with an informative critic neither a persisting gap nor its closing is significant"
            lines.append(f"{v} ESPO, {w} warm-up ({when}): {verdict} (gap: {g.word}; change from 5 steps: {ch.word})")
        ent = [c for c in cs if c.tags.get("variant") == v and c.tags.get("key") == "final_entropy"]
        if ent:
            lower = sum(c.word == "no" for c in ent)
            lines.append(f"{v} ESPO: its final policy's entropy is significantly below its matched random's in "
                         f"{lower} of {len(ent)} warm-ups (same stop schedule: the detector's choice of rows, not "
                         "the stopping, sharpens the policy)" if lower else
                         f"{v} ESPO: no warm-up shows an entropy difference to its matched random")
    return lines


def verdicts(pr: pd.DataFrame) -> Verdicts:
    """The claims' lines, the answers, and the family note."""
    cs = claims(pr)
    return Verdicts([c.line() for c in cs] + answer(cs, pr) + ([family_note(cs)] if cs else []), cs)
