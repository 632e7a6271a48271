"""Scores, reading and figures of the ESPO difficulty study.

``df`` is :func:`analysis.runs.load_runs` of the study's runs (labels ``label/method``, ``label/env``
= the env point, ``label/seed``); ``rows`` the per-row table. Per run, the quantities are the
headline's (:func:`analysis.experiments.espo_headline.analysis.per_run`). Per (knob, value, method):

- ``tokens_saved_pct``: rollout tokens saved against the PPO run of the same point and seed (%),
  mean over seeds with its 95% Student-t interval (``_lo``, ``_hi``) and its exact sign-flip p-value
  against the claim's 20% (``_p``).
- ``success_vs_ppo``: final success minus that of the PPO run of the same point and seed, paired by
  seed, with its interval.
- ``final_success``, ``precision``, ``recall``, ``false_stop_rate``, ``waste_removed_pct``: as in the
  headline, with intervals.
- ``nostop_success``, ``nostop_vs_ppo``: the final policy on fresh prompts without stopping (as in the
  headline), and minus PPO's, paired by seed.
- ``espo_minus_random``: ESPO's minus matched random's success, paired by seed (ESPO rows only), on
  ``success_basis``: the no-stop evaluation when every run of the point has one, else training success.
  The claim "final policy above PPO's" uses the same basis.

The three claims of every env point (saves >20%, final policy above PPO's, better than matched random)
form one family over the whole report (the default point counted once), Holm-corrected; a claim is
decided (``yes``/``no``) only when its Holm p-value is below 0.05 over at least 8 seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.experiments.espo_difficulty import sweep
from analysis.experiments.espo_headline import analysis as headline
from analysis.stats import Claim, Interval, Verdicts, decide_family, family_note, mean_ci, paired_by_seed

METRICS = ["final_success", "success_vs_ppo", "nostop_success", "nostop_vs_ppo", "tokens_saved_pct", "precision",
           "recall", "false_stop_rate", "waste_removed_pct"]
COLUMNS = ["knob", "value", "env", "method", "n", *METRICS, "espo_minus_random", "success_basis"]
"""Columns of the score table (each metric also has ``_lo`` and ``_hi``)."""


def _basis(pr: pd.DataFrame, env: str) -> str:
    """The success the claims compare: the final policy without stopping when every run of the point
    has it (``nostop_success``), else training success (``final_success``)."""
    g = pr[pr["env"] == env]["nostop_success"]
    return "nostop_success" if len(g) and np.isfinite(g.to_numpy(dtype=float)).all() else "final_success"


def per_run(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """The headline's per-run table (one row per run)."""
    return headline.per_run(df, rows)


def score(pr: pd.DataFrame) -> pd.DataFrame:
    """One row per (knob, value, method); the default point appears once under every knob."""
    out = []
    for knob in sweep.KNOBS:
        for value, env in sweep.knob_points(knob):
            for method in sweep.METHODS:
                g = pr[(pr["env"] == env) & (pr["method"] == method)]
                if not len(g):
                    continue
                row = {"knob": knob, "value": value, "env": env, "method": method, "n": len(g)}
                for k in METRICS:
                    iv = mean_ci(g[k].tolist(), null=NULLS.get(k, 0.0))
                    row[k], row[f"{k}_lo"], row[f"{k}_hi"], row[f"{k}_p"] = iv.mean, iv.low, iv.high, iv.p
                basis = _basis(pr, env)
                iv = (paired_by_seed(pr, basis, "random", "espo", where={"env": env})
                      if method == "espo" else None)
                row["success_basis"] = basis
                row["espo_minus_random"], row["espo_minus_random_lo"], row["espo_minus_random_hi"], \
                    row["espo_minus_random_p"] = ((iv.mean, iv.low, iv.high, iv.p) if iv is not None
                                                  else (np.nan, np.nan, np.nan, np.nan))
                row["n_random"] = iv.n if iv is not None else 0
                out.append(row)
    return pd.DataFrame(out)


NULLS = {"tokens_saved_pct": headline.SAVING_CLAIM_PCT}
"""Thresholds the score table's p-values test against (0 for the rest)."""


def _iv(row, key, n_key="n"):
    p = row.get(f"{key}_p", np.nan)
    return Interval(row[key], row[f"{key}_lo"], row[f"{key}_hi"], int(row[n_key]),
                    float(p) if p is not None else np.nan, NULLS.get(key, 0.0))


def verdicts(table: pd.DataFrame) -> Verdicts:
    """Per knob and value: where ESPO's three claims hold, fail or stay undecided. The claims of every
    env point are one family (the default point, shared by every knob, counted once); the family note last."""
    by_env: dict[str, list[Claim]] = {}
    for env in dict.fromkeys(env for knob in sweep.KNOBS for _, env in sweep.knob_points(knob)):
        e = table[(table["env"] == env) & (table["method"] == "espo")]
        if not len(e):
            continue
        e = e.iloc[0]
        n_rnd = "n_random" if "n_random" in e else "n"
        nostop = e.get("success_basis") == "nostop_success"
        saved, rnd = _iv(e, "tokens_saved_pct"), _iv(e, "espo_minus_random", n_rnd)
        succ = _iv(e, "nostop_vs_ppo" if nostop else "success_vs_ppo")
        o = table[(table["env"] == env) & (table["method"] == "oracle")]
        orc = f"; oracle saves {_iv(o.iloc[0], 'tokens_saved_pct').fmt(1)} %" if len(o) else ""
        by_env[env] = [Claim(f"saves >{headline.SAVING_CLAIM_PCT:g}% tokens", saved, f"{saved.fmt(1)} %{orc}"),
                       Claim("final policy above PPO's" + (" (no-stop evaluation)" if nostop else " (training success)"),
                             succ, succ.fmt()),
                       Claim("better than matched random", rnd, rnd.fmt())]
    family = [c for cs in by_env.values() for c in cs]
    decide_family(family)
    out = []
    for knob in sweep.KNOBS:
        for value, env in sweep.knob_points(knob):
            if env in by_env:
                out.append(f"[{sweep.LABELS[knob]} = {value:g}{' (default)' if env == 'default' else ''}] "
                           + "; ".join(c.line() for c in by_env[env]) + f"; n={by_env[env][0].iv.n}")
    for env, cs in by_env.items():  # name the point in each claim (the table beside the report)
        for c in cs:
            c.text = f"[{env}] ESPO {c.text}"
    return Verdicts(out + ([family_note(family)] if family else []), family)
