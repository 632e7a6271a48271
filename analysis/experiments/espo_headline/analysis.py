"""Scores, verdicts and figures of the ESPO headline study, from the run table and the per-row table.

``df`` is :func:`analysis.runs.load_runs` of the study's run directories, with the labels
``label/method``, ``label/env``, ``label/seed``; ``rows`` (optional everywhere) is
:func:`analysis.runs.load_many_rows` of the same directories: one row per finished row, from the runs'
``rows.jsonl`` (simulated runs only). Definitions (each per run, then the mean over seeds with its
95% Student-t interval over seeds, ``analysis.stats``; quantities defined against the PPO
run of the same env and seed are paired by seed):

- ``final_success``: mean ``success/rate`` over the last 10% of training steps. ``reliable``: seeds
  whose ``final_success`` is at least ``RELIABLE_SUCCESS`` (0.5).
- ``success_vs_ppo``: ``final_success`` minus that of the PPO run of the same env and seed.
- ``nostop_success``: success of the final policy on ``run.final_eval_rows`` fresh prompts, whole
  responses sampled without any stop rule (``final_eval_nostop.json``): the policy, not the metric.
  ``nostop_vs_ppo``: minus PPO's, paired by seed. ``final_entropy``: mean ``actor/entropy`` over the
  last 10% of steps.
- ``tokens``: ``tokens/cumulative`` at the run's last step (rollout tokens generated in training).
- ``tokens_saved_pct``: ``100 * (1 - tokens_method / tokens_ppo)`` at the same training step (the
  last step both runs logged), paired with the PPO run of the same env and seed.
- ``level``: the success level of an env, ``LEVEL_FRAC`` (0.5) times PPO's mean ``final_success``
  there. ``tokens_to_level``: ``tokens/cumulative`` at the first step whose trailing moving average of
  ``success/rate`` (window: 10% of the run's steps) is at least ``level``; NaN if never (``reached``
  counts the seeds that did). ``saved_at_level_pct``: ``100 * (1 - tokens_to_level / PPO's)``, paired
  by seed, where both reached it: tokens saved at equal success. ``level90``, ``tokens_to_level90``,
  ``reached90``, ``saved_at_level90_pct``: the same at ``LEVEL90_FRAC`` (0.9) of PPO's final success.
- ``critic_decode_tokens``: tokens at which the critic was evaluated while rows were generated
  (``tokens/critic_decode`` summed over steps): the per-token critic passes a value gate needs. In
  this testbed PPO's GAE values come from the same passes, so PPO pays them too; an implementation
  that computes PPO's values in one pass after decoding would not.
- ``stop_rate``: mean ``stop/rate`` over all steps. ``failure_rank``: mean ``credit/failure_rank``
  over all steps.
- A finished row is *doomed* when its planted fatal token is among its tokens
  (``0 <= failure_step <= length - 1``); a *stop* is a row that ended ``EARLY_STOP`` at position
  ``length - 1``; a *hit* is a stop of a doomed row; a doomed row is *stoppable* when it was stopped or
  its fatal token came before its last token (a row whose fatal token was its last token could not
  have been stopped any earlier). A row stopped before its fatal token was generated is not doomed:
  whether it would have failed is unknown, so it counts as a false stop.
- ``precision`` (hits / stops), ``recall`` (hits / stoppable doomed rows), ``false_stop_rate``
  (stops of not-doomed rows / not-doomed rows; a false-positive rate, not 1 − precision) and
  ``delay`` (mean ``stop position − failure_step`` over hits; 0 = stopped at the fatal token), over
  training steps ``>= stop.warmup_steps``. ``detector_from`` says how: ``rows`` (the run has a
  ``rows.jsonl``): the counts are pooled over all finished rows of those steps, so each row weighs the
  same and a step with few stops weighs little; ``metrics`` (no ``rows.jsonl``, e.g. LLM runs): the
  unweighted mean over those steps of the logged per-step ratios ``stop/precision``, ``stop/recall``,
  ``stop/false_stop_rate``, ``stop/delay`` (steps where a ratio is undefined are skipped).
- ``waste_tokens`` (needs ``rows``): tokens generated after the fatal token, summed over the doomed
  finished rows of the run's steps ``>= stop.warmup_steps`` (no rule may stop before; counting the
  warm-up would add about the same waste to every method): ``sum(length - 1 - failure_step)``; the tokens
  early stopping is meant to remove. ``waste_share_pct``: ``100 * waste_tokens / sum(length)`` over
  all finished rows of those steps. ``waste_removed_pct``: ``100 * (1 - waste_method / waste_ppo)``,
  both summed over the post-warm-up steps both runs logged, paired with the PPO run of the same env
  and seed (near 100% for the oracle; below it only where ``stop.min_tokens`` forbids stopping at an
  early fatal token). It counts what a
  method's stops cut and also what its policy no longer generates (fewer doomed rows once it learns),
  so it is an outcome, not a pure detector score.
- ``saving_vs_oracle``: ``tokens_saved_pct / oracle's tokens_saved_pct`` (paired by seed; 1 = as much
  saving as stopping exactly at every planted failure). ``precision_vs_oracle`` and
  ``recall_vs_oracle``: the same ratios of precision and recall.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.experiments.espo_headline import sweep
from analysis.plots import ordered
from analysis.runs import final_mean, first_reach, mean_std, run_mean, value_at_step
from analysis.stats import Claim, Interval, Verdicts, decide_family, family_note, mean_ci, paired_by_seed
from testbed.metrics import detector_metrics

LEVEL_FRAC = 0.5
"""The success level of "tokens to reach a level" is this fraction of PPO's final success."""
LEVEL90_FRAC = 0.9
"""The second, demanding level: near PPO's final success."""
SAVING_CLAIM_PCT = 20.0
"""The paper's claim: more than this percentage of rollout tokens saved."""
RELIABLE_SUCCESS = 0.5
"""The baseline counts as having learned on a seed when its final success reaches this."""

BASELINE = "ppo"
STOPPING = [m for m in sweep.METHODS if m != BASELINE]
METRICS = ["final_success", "success_vs_ppo", "nostop_success", "nostop_vs_ppo", "final_entropy", "tokens",
           "tokens_saved_pct", "level", "tokens_to_level", "saved_at_level_pct",
           "level90", "tokens_to_level90", "saved_at_level90_pct", "critic_decode_tokens",
           "stop_rate", "precision", "recall", "false_stop_rate", "delay", "failure_rank",
           "saving_vs_oracle", "precision_vs_oracle", "recall_vs_oracle",
           "waste_tokens", "waste_share_pct", "waste_removed_pct"]
OUTCOME_COLUMNS = ["env", "method", "n", "reliable", "final_success", "success_vs_ppo", "nostop_success", "nostop_vs_ppo",
                   "final_entropy", "tokens", "tokens_saved_pct", "level", "tokens_to_level", "reached",
                   "saved_at_level_pct", "tokens_to_level90", "reached90", "saved_at_level90_pct",
                   "critic_decode_tokens"]
DETECTOR_COLUMNS = ["env", "method", "detector_from", "stop_rate", "precision", "recall", "false_stop_rate",
                    "delay", "failure_rank", "saving_vs_oracle", "precision_vs_oracle", "recall_vs_oracle"]
WASTE_COLUMNS = ["env", "method", "waste_tokens", "waste_share_pct", "waste_removed_pct"]
DETECTOR_KEYS = {"precision": "stop/precision", "recall": "stop/recall",
                 "false_stop_rate": "stop/false_stop_rate", "delay": "stop/delay"}
"""Detector quantity -> the per-step metric it falls back to when a run has no ``rows.jsonl``."""
LABELS = ("label/method", "label/env", "label/seed")


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in LABELS if c not in df]
    if missing:
        raise ValueError(f"the run table lacks {missing}: load it with load_runs(..., axes={sweep.AXES})")


def _ratio(a: float, b: float) -> float:
    return a / b if np.isfinite(a) and np.isfinite(b) and b > 0 else math.nan


def _pct_saved(m: float, ref: float) -> float:
    return 100.0 * (1.0 - m / ref) if np.isfinite(m) and np.isfinite(ref) and ref > 0 else math.nan


def pooled_detector(rows: pd.DataFrame) -> dict[str, float]:
    """Precision, recall, false-stop rate and delay (module docstring; one definition with the
    trainer's per-step metrics: ``testbed.metrics.detector_metrics``) pooled over the given per-row
    records (one run's, already restricted to the steps that count). NaN where a denominator is 0."""
    m = detector_metrics(rows["stopped"].to_numpy(dtype=bool), rows["failure_step"].to_numpy(),
                         rows["length"].to_numpy() - 1)
    return {k: m[k] for k in ("precision", "recall", "false_stop_rate", "delay")}


def waste_by_step(rows: pd.DataFrame) -> pd.Series:
    """Tokens after the fatal token (``length - 1 - failure_step`` of doomed rows) per training step,
    indexed by every step the rows cover (0 where no row was doomed)."""
    w = np.where(rows["doomed"], rows["length"] - 1 - rows["failure_step"], 0)
    return pd.Series(w, index=rows["step"].to_numpy()).groupby(level=0).sum().sort_index()


def _warmup(r: pd.DataFrame) -> int:
    if "config/stop.warmup_steps" in r and pd.notna(r["config/stop.warmup_steps"].iloc[0]):
        return int(r["config/stop.warmup_steps"].iloc[0])
    return 0


def _first(r: pd.DataFrame, key: str) -> float:
    """A per-run constant column (NaN when the run lacks it)."""
    return float(r[key].iloc[0]) if key in r and pd.notna(r[key].iloc[0]) else math.nan


def _rows_by_run(rows: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    if rows is None or not len(rows):
        return {}
    return {str(k): g for k, g in rows.groupby("run", sort=False)}


def per_run(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: env, method, seed and every per-run quantity of the module docstring.

    ``rows`` (per-row records, :func:`analysis.runs.load_many_rows`) gives the pooled detector
    quantities and the waste; runs it does not cover fall back to the per-step metrics (waste NaN).
    """
    _check(df)
    runs = {k: r.sort_values("step") for k, r in df.groupby(list(LABELS), sort=False)}
    by_run = _rows_by_run(rows)
    out_rows, waste = [], {}
    for (method, env, seed), r in runs.items():
        name = str(r["run"].iloc[0])
        warm = _warmup(r)
        rr = by_run.get(name)
        rec = {
            "env": env, "method": method, "seed": seed, "run": name, "steps": int(r["step"].max()),
            "final_success": final_mean(r, "success/rate"),
            "nostop_success": _first(r, "nostop/success"),
            "final_entropy": final_mean(r, "actor/entropy") if "actor/entropy" in r else math.nan,
            "tokens": float(r["tokens/cumulative"].iloc[-1]),
            "critic_decode_tokens": (float(r["tokens/critic_decode"].sum()) if "tokens/critic_decode" in r
                                     and r["tokens/critic_decode"].notna().any() else math.nan),
            "stop_rate": run_mean(r, "stop/rate"),
            "failure_rank": run_mean(r, "credit/failure_rank"),
        }
        if rr is not None:
            rec["detector_from"] = "rows"
            after = rr[rr["step"] >= warm]
            rec.update(pooled_detector(after))
            waste[(method, env, seed)] = waste_by_step(after)
            rec["waste_tokens"] = float(waste[(method, env, seed)].sum()) if len(after) else math.nan
            total = float(after["length"].sum())
            rec["waste_share_pct"] = 100.0 * rec["waste_tokens"] / total if total > 0 else math.nan
        else:
            after = r[r["step"] >= warm]
            rec["detector_from"] = "metrics"
            rec.update({k: run_mean(after, key) for k, key in DETECTOR_KEYS.items()})
            rec["waste_tokens"] = rec["waste_share_pct"] = math.nan
        out_rows.append(rec)
    out = pd.DataFrame(out_rows)
    # success level per env, from PPO's final success
    ppo_final = {e: mean_std(g["final_success"])[0] for e, g in out[out["method"] == BASELINE].groupby("env")}
    for suffix, frac in (("", LEVEL_FRAC), ("90", LEVEL90_FRAC)):
        levels = {e: frac * f if f > 0 else math.nan for e, f in ppo_final.items()}  # none when PPO never succeeds
        out[f"level{suffix}"] = [levels.get(e, math.nan) for e in out["env"]]
        out[f"tokens_to_level{suffix}"] = [
            first_reach(runs[(m, e, s)], lv) if np.isfinite(lv) and lv > 0 else math.nan
            for m, e, s, lv in zip(out["method"], out["env"], out["seed"], out[f"level{suffix}"])
        ]
    # paired comparisons: the PPO run (and the oracle run) of the same env and seed
    saved, saved_lv, saved_lv90, waste_rm, vs_or, p_or, r_or, dsucc, dnostop = ([] for _ in range(9))
    for row in out.itertuples():
        ppo = runs.get((BASELINE, row.env, row.seed))
        ref = out[(out["method"] == BASELINE) & (out["env"] == row.env) & (out["seed"] == row.seed)]
        dsucc.append(row.final_success - float(ref["final_success"].iloc[0]) if len(ref) else math.nan)
        dnostop.append(row.nostop_success - float(ref["nostop_success"].iloc[0]) if len(ref) else math.nan)
        if ppo is not None:
            step = min(row.steps, int(ppo["step"].max()))
            saved.append(_pct_saved(value_at_step(runs[(row.method, row.env, row.seed)], "tokens/cumulative", step),
                                    value_at_step(ppo, "tokens/cumulative", step)))
            saved_lv.append(_pct_saved(row.tokens_to_level, float(ref["tokens_to_level"].iloc[0])))
            saved_lv90.append(_pct_saved(row.tokens_to_level90, float(ref["tokens_to_level90"].iloc[0])))
        else:
            saved.append(math.nan)
            saved_lv.append(math.nan)
            saved_lv90.append(math.nan)
        wm, wp = waste.get((row.method, row.env, row.seed)), waste.get((BASELINE, row.env, row.seed))
        if wm is not None and wp is not None and len(wm) and len(wp):
            lo, hi = max(wm.index.min(), wp.index.min()), min(wm.index.max(), wp.index.max())
            both = lambda w: float(w[(w.index >= lo) & (w.index <= hi)].sum())  # noqa: E731
            waste_rm.append(_pct_saved(both(wm), both(wp)))
        else:
            waste_rm.append(math.nan)
    out["tokens_saved_pct"] = saved
    out["success_vs_ppo"] = dsucc
    out["nostop_vs_ppo"] = dnostop
    out["saved_at_level_pct"] = saved_lv
    out["saved_at_level90_pct"] = saved_lv90
    out["waste_removed_pct"] = waste_rm
    for row in out.itertuples():
        o = out[(out["method"] == "oracle") & (out["env"] == row.env) & (out["seed"] == row.seed)]
        if len(o):
            o = o.iloc[0]
            vs_or.append(_ratio(row.tokens_saved_pct, o["tokens_saved_pct"]))
            p_or.append(_ratio(row.precision, o["precision"]))
            r_or.append(_ratio(row.recall, o["recall"]))
        else:
            vs_or.append(math.nan), p_or.append(math.nan), r_or.append(math.nan)
    out["saving_vs_oracle"], out["precision_vs_oracle"], out["recall_vs_oracle"] = vs_or, p_or, r_or
    return out


def score(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The study's table from the run table: :func:`summarize` of :func:`per_run`."""
    return summarize(per_run(df, rows))


def summarize(pr: pd.DataFrame) -> pd.DataFrame:
    """One row per (env, method) of the per-run table: for every metric in :data:`METRICS` the mean over
    seeds, its 95% Student-t interval (``<metric>_lo``, ``<metric>_hi``; paired by seed
    where the metric is a difference from the PPO run of the same seed) and the std (``<metric>_std``);
    ``n`` seeds, ``reliable`` (seeds with final success >= :data:`RELIABLE_SUCCESS`), ``reached`` (seeds
    that reached ``level``) and ``detector_from`` (``rows``, ``metrics``, or both joined by ``+``)."""
    envs = ordered(pr["env"], list(sweep.ENVS))
    methods = ordered(pr["method"], list(sweep.METHODS))
    out = []
    for env in envs:
        for method in methods:
            g = pr[(pr["env"] == env) & (pr["method"] == method)]
            if not len(g):
                continue
            row = {"env": env, "method": method, "n": len(g), "reached": int(np.isfinite(g["tokens_to_level"]).sum()),
                   "reached90": int(np.isfinite(g["tokens_to_level90"]).sum()),
                   "reliable": int((g["final_success"] >= RELIABLE_SUCCESS).sum()),
                   "detector_from": "+".join(sorted(g["detector_from"].unique()))}
            for k in METRICS:
                iv = mean_ci(g[k].tolist())
                row[k], row[f"{k}_lo"], row[f"{k}_hi"] = iv.mean, iv.low, iv.high
                row[f"{k}_std"] = mean_std(g[k])[1]
            out.append(row)
    return pd.DataFrame(out)


# --- verdicts ---------------------------------------------------------------------------------------
ESPOS = {"espo": "random", "espo_paper": "random_paper"}
"""Each ESPO variant -> its matched random truncation (same stop schedule, same stop reward)."""
NAMES = {"espo": "ESPO", "espo_paper": "ESPO (paper)"}


def _pair(pr: pd.DataFrame, env: str, metric: str, a: str, b: str) -> Interval:
    """Paired-by-seed mean of ``b - a`` on ``metric`` in ``env``: t-interval and sign-flip p-value."""
    return paired_by_seed(pr, metric, a, b, where={"env": env})


def seed_mean(pr: pd.DataFrame, env: str, metric: str, method: str, null: float = 0.0) -> Interval:
    """Mean of a per-run (already paired) quantity over the seeds of one method, tested against ``null``."""
    return mean_ci(pr[(pr["env"] == env) & (pr["method"] == method)][metric].tolist(), null=null)


def success_claim(pr: pd.DataFrame, env: str, a: str, b: str, text: str, tag: dict) -> Claim:
    """``b`` - ``a`` on the final policy's success: the no-stop evaluation (the policy, whatever the stop
    rule lets finish) when the runs have it, else training success; training success shown beside it."""
    train = _pair(pr, env, "final_success", a, b)
    nostop = _pair(pr, env, "nostop_success", a, b)
    if nostop.n:
        return Claim(f"{text} (no-stop evaluation)", nostop, f"{b} - {a} no-stop success {nostop.fmt()}, "
                     f"n={nostop.n}; training success {train.fmt()}", tags=tag)
    return Claim(f"{text} (training success; the runs have no no-stop evaluation)", train,
                 f"{b} - {a} {train.fmt()}, n={train.n}", tags=tag)


def _espo_claims(pr: pd.DataFrame, env: str, espo: str, has: set) -> list:
    """The claims about one ESPO variant in one env (strings: lines that are not claims)."""
    p, n = f"[{env}]", NAMES.get(espo, espo)
    tag = {"env": env, "method": espo}
    saved = seed_mean(pr, env, "tokens_saved_pct", espo, null=SAVING_CLAIM_PCT)
    out = [Claim(f"{p} {n} saves >{SAVING_CLAIM_PCT:g}% of PPO's rollout tokens at equal steps", saved,
                 f"saved {saved.fmt(1)} %, n={saved.n}", tags=tag)]
    out.append(success_claim(pr, env, BASELINE, espo, f"{p} {n}'s final policy succeeds more often than PPO's",
                              tag))
    for suffix, frac in (("", LEVEL_FRAC), ("90", LEVEL90_FRAC)):
        lv = _pair(pr, env, f"tokens_to_level{suffix}", espo, BASELINE)  # PPO - ESPO: > 0 is fewer tokens
        g = pr[(pr["env"] == env) & pr["method"].isin([BASELINE, espo])].groupby("method")[f"tokens_to_level{suffix}"]
        reached = {m: int(np.isfinite(x).sum()) for m, x in g}
        out.append(Claim(f"{p} {n} needs fewer tokens than PPO to reach {frac:g} x PPO's final success", lv,
                         f"PPO - {n} tokens {lv.fmt(0)} over the {lv.n} seeds where both reached it; reached: "
                         f"{n} {reached.get(espo, 0)}, PPO {reached.get(BASELINE, 0)}", tags=tag))
    rnd = ESPOS[espo]
    if rnd in has:
        rate = _pair(pr, env, "stop_rate", espo, rnd)
        c = success_claim(pr, env, rnd, espo, f"{p} random truncation matched to {n}'s stop rate ends with a worse "
                           f"policy than {n}", tag)
        c.detail += f"; stop rate {rnd} - {n} {rate.fmt()}"
        out.append(c)
        d = _pair(pr, env, "precision", rnd, espo)
        out.append(Claim(f"{p} {n}'s stops are more precise than {rnd}'s", d,
                         f"{n} - {rnd} precision {d.fmt()}, n={d.n}", tags=tag))
        d = _pair(pr, env, "waste_removed_pct", rnd, espo)
        if d.n:
            out.append(Claim(f"{p} {n} removes more of PPO's tokens after the fatal token than {rnd}", d,
                             f"{n} - {rnd}, percentage points {d.fmt(1)}, n={d.n}; removed: {n} "
                             f"{seed_mean(pr, env, 'waste_removed_pct', espo).fmt(1)} %, {rnd} "
                             f"{seed_mean(pr, env, 'waste_removed_pct', rnd).fmt(1)} %", tags=tag))
        else:
            out.append(f"{p} {n} vs {rnd} on tokens after the fatal token: not evaluated (needs per-row logs, "
                       "rows.jsonl)")
    else:
        out.append(f"{p} random truncation matched to {n}: not evaluated (no {rnd} runs)")
    if espo == "espo":
        for abl in [a for a in ("regret_only", "value_only") if a in has]:
            d = _pair(pr, env, "final_success", abl, espo)
            out.append(Claim(f"{p} ESPO's final success is higher than {abl}'s", d, f"ESPO - {abl} {d.fmt()}, n={d.n}",
                             tags=tag))
        if "regret_only" in has:
            d = _pair(pr, env, "false_stop_rate", espo, "regret_only")
            out.append(Claim(f"{p} the value gate cuts false stops (regret_only - ESPO false-stop rate > 0)", d,
                             f"difference {d.fmt()}, n={d.n}", tags=tag))
    if "oracle" in has:
        r = seed_mean(pr, env, "saving_vs_oracle", espo, null=0.5)
        o = seed_mean(pr, env, "tokens_saved_pct", "oracle")
        out.append(Claim(f"{p} {n} gets at least half of the oracle's token saving", r,
                         f"ratio {r.fmt()}, n={r.n}; oracle saves {o.fmt(1)} %", tags=tag))
        out.append(success_claim(pr, env, "oracle", espo, f"{p} {n}'s final policy succeeds more often than the "
                                  "oracle's", tag))
    else:
        out.append(f"{p} closeness to the oracle: not evaluated (no oracle runs)")
    return out


def claims(pr: pd.DataFrame, success_bar: float = RELIABLE_SUCCESS) -> list:
    """The report's items, in order: strings (context lines, not tested) and :class:`Claim` s, decided
    together as one family (:func:`analysis.stats.decide_family`)."""
    items: list = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        has = set(pr.loc[pr["env"] == env, "method"])
        ppo_fs = pr[(pr["env"] == env) & (pr["method"] == BASELINE)]["final_success"]
        if len(ppo_fs):
            ok = int((ppo_fs >= success_bar).sum())
            items.append(f"[{env}] baseline reliability: PPO's final success is >= {success_bar:g} on {ok} of "
                         f"{len(ppo_fs)} seeds (mean {mean_ci(ppo_fs.tolist()).fmt()})")
        variants = [e for e in ESPOS if e in has]
        if BASELINE not in has or not variants:
            items.append(f"[{env}] ESPO vs PPO: not evaluated (needs ppo and an ESPO variant's runs)")
            continue
        for espo in variants:
            items += _espo_claims(pr, env, espo, has)
    decide_family([c for c in items if isinstance(c, Claim)])
    return items


def verdicts(pr: pd.DataFrame, success_bar: float = RELIABLE_SUCCESS) -> Verdicts:
    """Plain statements decided from the per-run table ``pr`` (:func:`per_run`), the family's note last.

    Every claim is a mean over seeds of a paired-by-seed difference (or of a quantity already paired,
    such as tokens saved against the PPO run of the same seed) with its Student-t interval and exact
    sign-flip p-value; the report's claims are one family, Holm-corrected (:mod:`analysis.stats`)."""
    items = claims(pr, success_bar)
    cs = [c for c in items if isinstance(c, Claim)]
    return Verdicts([c.line() if isinstance(c, Claim) else c for c in items] + ([family_note(cs)] if cs else []), cs)
