"""Scores of the LLM detection study, read from run directories only.

Definitions (the same as on the simulated envs, testbed/diagnostics.py). Every finished row's fate
comes from the chain verifier: ``failure_step`` is the token index of the first wrong number the
response wrote (-1 none). A row is **judged** when the verifier could check it (``checkable``: at
least one equation, and a located error or a right answer) or when it was stopped (a stop is judged
on the prefix it cut). Over the judged rows of all training steps, pooled per run:

- a stopped row is a **hit** when its wrong number came at or before the stop (``0 <= failure_step <=
  stop position``); ``precision`` = hits / stops;
- ``recall`` = hits / stoppable doomed rows (doomed rows whose wrong number was not their last token);
- ``false_stop_rate`` = stops of rows without a wrong number by then / such rows;
- ``delay`` = mean (stop position - failure_step) over hits, in tokens;
- ``failure_rank`` = the run's mean of ``credit/failure_rank`` (how often the wrong number's first
  token carries its row's most negative advantage);
- ``tokens`` = generated training tokens; ``tokens_saved_pct`` = 100 (1 - tokens / PPO's tokens of the
  same seed); ``heldout`` = greedy held-out pass@1 after the last step (``final_eval.json``);
- ``plant_stop_rate`` / ``plant_delay``: the share of rows with a planted wrong step that were stopped,
  and the mean tokens from the planted number to the stop (``plant/*``), next to ``stop_rate_unplanted``.

Columns ``*_lo`` / ``*_hi`` are 95% Student-t intervals over seeds (``analysis.stats``). The paired
comparisons are one family: exact sign-flip tests, Holm-corrected, decided over at least 8 seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.experiments.llm_detection import sweep
from analysis.runs import run_mean
from testbed.metrics import detector_metrics
from analysis.stats import Claim, Verdicts, decide_family, family_note, mean_ci, paired_diff_ci

EARLY_STOP = 3
BASELINE = "ppo"
METRICS = ["heldout", "train_success", "tokens", "tokens_saved_pct", "stop_rate", "precision", "recall",
           "false_stop_rate", "delay", "failure_rank", "judged_share", "doomed_share", "plant_stop_rate",
           "plant_delay", "stop_rate_unplanted"]


def read_rows(run_dir: str | Path) -> pd.DataFrame:
    """``rows.jsonl`` with the LLM fields (``checkable``, ``planted_at``), one row per finished row."""
    p = Path(run_dir) / "rows.jsonl"
    recs = []
    if p.is_file():
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            n = len(r["length"])
            recs.append(pd.DataFrame({"step": [r["step"]] * n, "length": r["length"], "ending": r["ending"],
                                      "failure_step": r["failure_step"],
                                      "checkable": r.get("checkable", [1] * n),
                                      "planted_at": r.get("planted_at", [-1] * n)}))
    cols = ["step", "length", "ending", "failure_step", "checkable", "planted_at"]
    return pd.concat(recs, ignore_index=True) if recs else pd.DataFrame(columns=cols)


def pooled_detector(rows: pd.DataFrame) -> dict[str, float]:
    """Precision, recall, false-stop rate and delay over a run's judged rows (module docstring): the
    trainer's definitions (``testbed.metrics.detector_metrics``) applied to the judged rows (a stopped
    row is always judged), plus the stop rate over all rows and the judged and doomed shares."""
    if rows.empty:
        return {k: math.nan for k in ("stop_rate", "precision", "recall", "false_stop_rate", "delay",
                                      "judged_share", "doomed_share")}
    stopped = rows["ending"].to_numpy() == EARLY_STOP
    pos = rows["length"].to_numpy() - 1
    f = rows["failure_step"].to_numpy()
    judged = (rows["checkable"].to_numpy() == 1) | stopped
    m = detector_metrics(stopped[judged], f[judged], pos[judged])
    n_judged = int(judged.sum())
    return {
        "stop_rate": float(stopped.mean()),
        **{k: m[k] for k in ("precision", "recall", "false_stop_rate", "delay")},
        "judged_share": n_judged / len(rows),
        "doomed_share": m["doomed_count"] / n_judged if n_judged else math.nan,
    }


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: method, seed and the raw metrics of :data:`METRICS`."""
    out = []
    for run, r in df.groupby("run", sort=False):
        run_dir = r["run_dir"].iloc[0]
        final = Path(run_dir) / "final_eval.json"
        heldout = json.loads(final.read_text()).get("eval/pass@1", math.nan) if final.is_file() else math.nan
        rec = {"run": run, "method": r["label/method"].iloc[0], "seed": r["label/seed"].iloc[0],
               "heldout": heldout, "train_success": run_mean(r, "success/rate"),
               "tokens": float(r["tokens/cumulative"].max()),
               "failure_rank": run_mean(r, "credit/failure_rank"),
               "plant_stop_rate": run_mean(r, "plant/stop_rate"), "plant_delay": run_mean(r, "plant/delay"),
               "stop_rate_unplanted": run_mean(r, "plant/stop_rate_unplanted"),
               **pooled_detector(read_rows(run_dir))}
        out.append(rec)
    runs = pd.DataFrame(out)
    base = runs[runs["method"] == BASELINE].set_index("seed")["tokens"]
    runs["tokens_saved_pct"] = [100 * (1 - t / base[s]) if s in base.index else math.nan
                                for t, s in zip(runs["tokens"], runs["seed"])]
    return runs


def score(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: n seeds and each metric's mean with its 95% interval over seeds."""
    runs = per_run(df)
    rows = []
    for method, r in runs.groupby("method", sort=False):
        rec = {"method": method, "n": len(r)}
        for k in METRICS:
            ci = mean_ci(r[k].tolist())
            rec[k], rec[f"{k}_lo"], rec[f"{k}_hi"] = ci.mean, ci.low, ci.high
        rows.append(rec)
    order = {m: i for i, m in enumerate(sweep.METHODS)}
    return pd.DataFrame(rows).sort_values("method", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def comparisons(df: pd.DataFrame) -> list[str]:
    """The paired-by-seed claims the study rests on (one family, Holm-corrected), the family note last."""
    runs = per_run(df)
    claims: list[Claim] = []

    def paired(a: str, b: str, key: str, what: str) -> None:
        ra = runs[runs["method"] == a].set_index("seed")[key]
        rb = runs[runs["method"] == b].set_index("seed")[key]
        seeds = sorted(set(ra.index) & set(rb.index))
        if not seeds:
            return
        ci = paired_diff_ci([ra[s] for s in seeds], [rb[s] for s in seeds])
        claims.append(Claim(what, ci, f"{b} - {a} = {ci.fmt()} over {ci.n} seed(s)"))

    paired("random", "espo", "precision", "ESPO's stops are more precise against the verifier than matched random's")
    paired("random", "espo", "recall", "ESPO's recall is higher than matched random's")
    paired("ppo", "espo", "heldout", "ESPO's held-out pass@1 is higher than PPO's")
    paired("ppo", "random", "heldout", "matched random's held-out pass@1 is higher than PPO's")
    paired("ppo", "oracle", "heldout", "the oracle's held-out pass@1 is higher than PPO's")
    decide_family(claims)
    return Verdicts([f"- {c.line()}" for c in claims] + ([f"- {family_note(claims)}"] if claims else []), claims)


def verdicts(table: pd.DataFrame) -> list[str]:
    """Plain statements from the score table: ESPO's tokens saved, and its detector against random's."""
    t = table.set_index("method")
    out = []

    def ci(m, k, d=3):
        return f"{t.loc[m, k]:.{d}f} [{t.loc[m, f'{k}_lo']:.{d}f}, {t.loc[m, f'{k}_hi']:.{d}f}]"

    if "espo" in t.index:
        out.append(f"- ESPO saved {ci('espo', 'tokens_saved_pct', 1)}% of PPO's training tokens at stop rate "
                   f"{ci('espo', 'stop_rate')}; held-out pass@1 {ci('espo', 'heldout')} vs PPO's {ci('ppo', 'heldout')}"
                   if "ppo" in t.index else "- no PPO runs to compare with")
        out.append(f"- ESPO's stops: precision {ci('espo', 'precision')}, recall {ci('espo', 'recall')}, "
                   f"false-stop rate {ci('espo', 'false_stop_rate')}, delay {ci('espo', 'delay', 1)} tokens")
    if "random" in t.index:
        out.append(f"- matched random: precision {ci('random', 'precision')}, recall {ci('random', 'recall')}")
    if "oracle" in t.index:
        out.append(f"- oracle: precision {ci('oracle', 'precision')}, tokens saved {ci('oracle', 'tokens_saved_pct', 1)}%")
    if "espo_planted" in t.index:
        out.append(f"- planted wrong steps: ESPO stopped {ci('espo_planted', 'plant_stop_rate')} of planted rows, "
                   f"{ci('espo_planted', 'plant_delay', 1)} tokens after the planted number (unplanted rows: "
                   f"{ci('espo_planted', 'stop_rate_unplanted')})")
    return out
