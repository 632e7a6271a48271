"""Readers of the detector-versus-Bayes study: each run's exact-posterior measurement scored
(:mod:`.scoring`), a per-seed table, the score table over seeds and the verdicts.

Definitions (one block per stop rule; every number from one run's measurement, deterministic per seed)
    stops          rows stopped (matched within a block except the last row; the oracle may be short).
    mean P@stop    mean exact P(success | prefix at the stop), the stopped token included. Lower: the
                   stops hit rows more surely failing. Against ``random`` (same count, same positions)
                   lower is plainly better. Against ``bayes`` read it with tok saved: P is a martingale,
                   so waiting never raises the expected P at a stop, and a detector can buy a low mean P
                   by stopping late; the first-crossing rule stops as early as its threshold allows,
                   and is not guaranteed the lowest mean P at a matched count.
    x bayes        the column to its left over the count-matched Bayes detector's (``inf`` when the Bayes
                   detector only stops rows already at P = 0).
    precision      share of stops at an already doomed prefix (fatal token emitted, or P == 0).
    E[lost]        sum of P(success | prefix) over stopped rows: the expected successes thrown away.
    tok saved      response tokens after the stops, summed over stopped rows.
    lost/100tok    E[lost] per 100 tokens saved: the price of the savings (lower is better).
    p vs random    share of the random draws whose mean P@stop is at most the rule's (one seed's
                   one-sided permutation p-value; the verdicts pair seeds instead).
    saved share    the rule's tokens saved over those of ``bayes (same lost)``: the share of what the
                   exact posterior saves at the rule's own expected success cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.experiments.detector_bayes import scoring
from analysis.stats import (
    Claim,
    Verdicts,
    decide_family,
    family_note,
    mean_ci,
    paired_diff_ci,
)

ARRAYS, META = "exact_posterior.npz", "exact_posterior.json"
"""The measurement's files in a run directory (``testbed.ops.exact_posterior`` writes them)."""
DETECTORS = ("rule", "random (matched)", "bayes (exact P)", "oracle (matched)", "bayes (same lost)")


def read(run_dir: str | Path) -> tuple[scoring.Rows, dict]:
    """One run's measurement: its rows and settings."""
    run_dir = Path(run_dir)
    if not (run_dir / META).is_file():
        raise FileNotFoundError(f"{run_dir}: no {META} (the runner measures each finished run)")
    with np.load(run_dir / ARRAYS) as z:
        arrays = {k: z[k] for k in z.files}
    return scoring.Rows.from_arrays(arrays), json.loads((run_dir / META).read_text())


def score_runs(run_dirs, *, draws: int = scoring.RANDOM_DRAWS) -> list[scoring.Report]:
    """Every run's measurement scored, in seed order."""
    reports = []
    for d in run_dirs:
        rows, meta = read(d)
        reports.append(scoring.score(rows, seed=int(meta["seed"]), rules=tuple(meta["rules"]), draws=draws, meta=meta))
    return sorted(reports, key=lambda r: r.meta["seed"])


def per_seed(reports: list[scoring.Report]) -> pd.DataFrame:
    """One row per seed x rule x detector (``detector`` ``rule`` is the rule itself)."""
    out = []
    for rep in reports:
        for blk in rep.blocks:
            same = blk.scores[4].saved
            for det, s in zip(DETECTORS, blk.scores):
                out.append(dict(seed=rep.meta["seed"], rule=blk.rule, detector=det, stops=s.stops, mean_p=s.mean_p,
                                precision=s.precision, lost=s.lost, saved=s.saved, lost_per_100=s.lost_per_100,
                                saved_share=s.saved / same if same > 0 else np.nan,
                                p_vs_random=blk.p_value if det == "rule" else np.nan,
                                success=rep.success_rate, doomed=rep.doomed_rate, critic_corr=rep.critic_corr))
    return pd.DataFrame(out)


def _pivot(ps: pd.DataFrame, rule: str, det: str, col: str) -> np.ndarray:
    r = ps[(ps["rule"] == rule) & (ps["detector"] == det)].sort_values("seed")
    return r[col].to_numpy(dtype=float)


def score(ps: pd.DataFrame) -> pd.DataFrame:
    """The score table: per rule x detector, means over seeds with 95% Student-t intervals."""
    out = []
    for (rule, det), g in ps.groupby(["rule", "detector"], sort=False):
        row = {"rule": rule, "detector": det, "seeds": int(g["seed"].nunique())}
        for col in ("stops", "mean_p", "precision", "saved", "lost_per_100", "saved_share"):
            iv = mean_ci(g[col].to_numpy(dtype=float))
            row.update({col: iv.mean, f"{col}_low": iv.low, f"{col}_high": iv.high})
        out.append(row)
    return pd.DataFrame(out)


def claims(ps: pd.DataFrame) -> list[Claim]:
    """Per rule: its stops are surer failures than matched random's; it saves at least half of what the
    exact posterior saves at the same expected success cost. Seeds where the rule never fires drop out."""
    out = []
    for rule in ps["rule"].unique():
        own, rand = _pivot(ps, rule, "rule", "mean_p"), _pivot(ps, rule, "random (matched)", "mean_p")
        iv = paired_diff_ci(own, rand)
        out.append(Claim(f"{rule}'s stops are surer failures than matched random's (random - {rule} mean P@stop > 0)",
                         iv, f"{iv.fmt()} over {iv.n} seeds where it fired"))
        share = _pivot(ps, rule, "rule", "saved_share")
        iv = mean_ci(share, null=0.5)
        out.append(Claim(f"{rule} saves at least half the tokens the exact posterior saves at {rule}'s success cost",
                         iv, f"share {iv.fmt()} over {iv.n} seeds"))
    return out


def verdicts(ps: pd.DataFrame) -> Verdicts:
    """The claims decided as one family (Holm over this report)."""
    cs = decide_family(claims(ps))
    return Verdicts([c.line() for c in cs] + [family_note(cs)], cs)
