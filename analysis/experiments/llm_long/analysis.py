"""Scores and verdicts of the long-chain LLM study, read from run directories only.

Summary. Per run, the LLM detection study's quantities (:func:`analysis.experiments.llm_detection.analysis.per_run`),
plus the run's wall-clock; per method the mean over seeds with its Student-t interval; paired claims over
seeds as one Holm family; and exact McNemar tests on the held-out problems pooled over seeds.

Definitions. Every finished row's fate comes from the chain verifier (``failure_step``: the token of the
first wrong number, -1 none); over a run's judged rows (checkable, or stopped):

- ``heldout``: greedy held-out pass@1 after the last step (``final_eval.json``); ``train_success``;
- ``tokens``: generated training tokens; ``tokens_saved_pct``: 100 (1 - tokens / PPO's of the same seed);
- ``wall_min``: the run's own wall-clock (``time/wall`` at its last step, minutes; two workers share the
  machine, so it is a measurement of the study's setting, not of a method alone);
- ``stop_rate``, ``precision`` (stops at or after the first wrong number / stops), ``recall`` (hits /
  stoppable doomed rows), ``false_stop_rate``, ``delay`` (tokens from the wrong number to the stop);
- ``failure_rank``: the run's mean of ``credit/failure_rank`` (credit at the failure step: how often the
  first wrong number's token carries its row's most negative advantage);
- ``plant_stop_rate`` / ``plant_delay`` / ``stop_rate_unplanted``: the planted-step reaction (rows with a
  wrong result forced at their third equation).

Detectors on the policy's own rollouts (``policy_detect.json`` of each run, :mod:`testbed.ops.policy_detect`):
per score, the mean over runs of its AUROC for "the row fails", of its AUROC minus length's (paired within a
run's rows) and the share of runs where the logistic fit on score + log(length) gives the score p < 0.05.

McNemar: for a method against PPO, each held-out problem of each seed is one pair (the same problems for
both runs of a seed: ``final_eval.json``'s ``eval/correct``), pooled over the seeds both ran; the exact
binomial test on the discordant pairs (:func:`analysis.stats.mcnemar`), Holm-corrected over the methods.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.experiments.llm_detection import analysis as detection
from analysis.experiments.llm_long import sweep
from analysis.stats import (
    MIN_SEEDS,
    Claim,
    Verdicts,
    decide_family,
    family_note,
    holm,
    mcnemar,
    mean_ci,
    paired_diff_ci,
)

BASELINE = sweep.BASELINE
SAVING_CLAIM_PCT = 20.0
"""The paper's claim: more than 20% fewer rollout tokens."""
METRICS = ["heldout", "train_success", "tokens", "tokens_saved_pct", "wall_min", "stop_rate", "precision", "recall",
           "false_stop_rate", "delay", "failure_rank", "plant_stop_rate", "plant_delay", "stop_rate_unplanted"]


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the detection study's per-run table plus ``wall_min``."""
    runs = detection.per_run(df)
    wall = {run: float(r["time/wall"].max()) / 60 if "time/wall" in r else math.nan for run, r in df.groupby("run", sort=False)}
    runs["wall_min"] = [wall.get(r, math.nan) for r in runs["run"]]
    return runs


def score(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: n seeds and each metric's mean with its 95% Student-t interval over seeds."""
    rows = []
    for method in [m for m in sweep.METHODS if m in set(runs["method"])]:
        r = runs[runs["method"] == method]
        rec = {"method": method, "n": len(r)}
        for k in METRICS:
            ci = mean_ci(r[k].tolist())
            rec[k], rec[f"{k}_lo"], rec[f"{k}_hi"] = ci.mean, ci.low, ci.high
        rows.append(rec)
    return pd.DataFrame(rows)


def item_outcomes(run_dir: str | Path) -> list[int] | None:
    """A run's held-out outcomes, problem by problem (None without them)."""
    p = Path(run_dir) / "final_eval.json"
    return json.loads(p.read_text()).get("eval/correct") if p.is_file() else None


def pooled_mcnemar(df: pd.DataFrame, method: str, baseline: str = BASELINE):
    """``method`` against ``baseline`` over the held-out problems of every seed both have (None if none)."""
    dirs = {(m, s): d for (m, s), d in df.groupby(["label/method", "label/seed"])["run_dir"].first().items()}
    a, b = [], []
    for (m, s), d in sorted(dirs.items()):
        if m != method or (baseline, s) not in dirs:
            continue
        x, y = item_outcomes(dirs[(baseline, s)]), item_outcomes(d)
        if x is None or y is None or len(x) != len(y):
            continue
        a += [v > 0 for v in x]
        b += [v > 0 for v in y]
    return mcnemar(a, b) if a else None


def claims(runs: pd.DataFrame) -> list[Claim]:
    """The paired-by-seed claims the study rests on, decided as one Holm family."""
    out: list[Claim] = []

    def paired(a: str, b: str, key: str, text: str, null: float = 0.0) -> None:
        ra = runs[runs["method"] == a].set_index("seed")[key]
        rb = runs[runs["method"] == b].set_index("seed")[key]
        seeds = sorted(set(ra.index) & set(rb.index))
        if seeds:
            ci = paired_diff_ci([ra[s] for s in seeds], [rb[s] for s in seeds], null=null)
            out.append(Claim(text, ci, f"{b} - {a} = {ci.fmt()} over {ci.n} seed(s)"))

    e, r = "espo_paper", sweep.MATCHED["espo_paper"]
    if (runs["method"] == e).any():
        saved = mean_ci(runs[runs["method"] == e]["tokens_saved_pct"].tolist(), null=SAVING_CLAIM_PCT)
        out.append(Claim(f"ESPO (paper) saves >{SAVING_CLAIM_PCT:g}% of PPO's rollout tokens", saved,
                         f"saved {saved.fmt(1)} %, n={saved.n}"))
    paired(BASELINE, e, "heldout", "ESPO (paper)'s held-out pass@1 is higher than PPO's")
    paired(r, e, "heldout", "random truncation matched to ESPO (paper) ends with a lower held-out pass@1 than it")
    paired(r, e, "precision", "ESPO (paper)'s stops are more precise against the verifier than matched random's")
    paired(BASELINE, "oracle", "heldout", "the oracle's held-out pass@1 is higher than PPO's")
    decide_family(out)
    return out


def mcnemar_lines(df: pd.DataFrame) -> list[str]:
    """One line per method against PPO, Holm-corrected over the methods (a family of its own: items, not seeds)."""
    tests = [(m, pooled_mcnemar(df, m)) for m in sweep.METHODS if m != BASELINE]
    tests = [(m, t) for m, t in tests if t is not None]
    if not tests:
        return []
    adj = holm([t.p for _, t in tests])
    lines = [f"{m} - PPO held-out pass@1: {t.fmt()}, Holm {p:.3g} over {len(tests)} methods"
             + (": significant" if p < 0.05 else "") for (m, t), p in zip(tests, adj)]
    return lines + ["These pool the held-out problems of every seed: they test the item-level difference of "
                    "these particular runs, not a difference that would hold for another seed (the paired "
                    "claims over seeds do that)."]


def detectors(run_dirs) -> pd.DataFrame:
    """One row per score: runs measured, mean AUROC [t-interval over runs], mean AUROC - length's, and the
    share of runs where the score is informative once length is known (logistic p < 0.05)."""
    per: dict[str, list[dict]] = {}
    for d in run_dirs:
        p = Path(d) / "policy_detect.json"
        if p.is_file():
            for name, s in json.loads(p.read_text()).get("scores", {}).items():
                per.setdefault(name, []).append(s)
    rows = []
    for name, ss in per.items():
        au = mean_ci([s["auroc"] for s in ss])
        dl = mean_ci([s["minus_length"] for s in ss])
        gl = [s["given_length"]["p"] for s in ss if s.get("given_length") and s["given_length"].get("p") is not None]
        rows.append({"score": name, "runs": len(ss), "auroc": au.fmt(3), "auroc_minus_length": dl.fmt(3),
                     "informative_given_length": f"{sum(p < 0.05 for p in gl)} of {len(gl)}" if gl else "n/a"})
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame, runs: pd.DataFrame | None = None) -> Verdicts:
    """Context lines, the seed-level family, then the pooled McNemar tests (``runs``: :func:`per_run` of
    ``df``, when the caller has it)."""
    runs = per_run(df) if runs is None else runs
    fam = claims(runs)
    n = int(runs["seed"].nunique()) if len(runs) else 0
    ctx = [f"seeds: {sorted(runs['seed'].unique().tolist())}" + (f" (a decision needs {MIN_SEEDS} paired seeds; "
           "every seed-level claim below is undecided at this size)" if n < MIN_SEEDS else "")]
    lines = [*ctx, *[c.line() for c in fam]] + ([family_note(fam, "this study")] if fam else []) + mcnemar_lines(df)
    return Verdicts(lines, fam)
