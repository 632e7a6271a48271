"""Scores, reading and figures of the ESPO difficulty study.

``df`` is :func:`analysis.runs.load_runs` of the study's runs (labels ``label/method``, ``label/env``
= the env point, ``label/seed``); ``rows`` the per-row table. Per run, the quantities are the
headline's (:func:`analysis.experiments.espo_headline.analysis.per_run`). Per (knob, value, method):

- ``tokens_saved_pct``: rollout tokens saved against the PPO run of the same point and seed (%),
  mean over seeds with its 95% percentile-bootstrap interval (``_lo``, ``_hi``).
- ``success_vs_ppo``: final success minus that of the PPO run of the same point and seed, paired by
  seed, with its interval.
- ``final_success``, ``precision``, ``recall``, ``false_stop_rate``, ``waste_removed_pct``: as in the
  headline, with intervals.
- ``espo_minus_random``: ESPO's final success minus matched random's, paired by seed (ESPO rows only).

A statement is decided (``yes``/``no``) only when the interval excludes its threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.espo_difficulty import sweep
from analysis.experiments.espo_headline import analysis as headline
from analysis.plots import colors_for
from analysis.stats import mean_ci, paired_by_seed

METRICS = ["final_success", "success_vs_ppo", "tokens_saved_pct", "precision", "recall", "false_stop_rate",
           "waste_removed_pct"]
COLUMNS = ["knob", "value", "env", "method", "n", *METRICS, "espo_minus_random"]
"""Columns of the score table (each metric also has ``_lo`` and ``_hi``)."""


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
                    iv = mean_ci(g[k].tolist())
                    row[k], row[f"{k}_lo"], row[f"{k}_hi"] = iv.mean, iv.low, iv.high
                iv = (paired_by_seed(pr, "final_success", "random", "espo", where={"env": env})
                      if method == "espo" else None)
                row["espo_minus_random"], row["espo_minus_random_lo"], row["espo_minus_random_hi"] = (
                    (iv.mean, iv.low, iv.high) if iv is not None else (np.nan, np.nan, np.nan))
                out.append(row)
    return pd.DataFrame(out)


def _iv(row, key):
    from analysis.stats import Interval

    return Interval(row[key], row[f"{key}_lo"], row[f"{key}_hi"], int(row["n"]))


def verdicts(table: pd.DataFrame) -> list[str]:
    """Per knob and value: where ESPO's three claims hold, fail or stay undecided (from the intervals)."""
    out = []
    for knob in sweep.KNOBS:
        t = table[table["knob"] == knob]
        for value, env in sweep.knob_points(knob):
            e = t[(t["env"] == env) & (t["method"] == "espo")]
            if not len(e):
                continue
            e = e.iloc[0]
            saved = _iv(e, "tokens_saved_pct")
            succ = _iv(e, "success_vs_ppo")
            rnd = _iv(e, "espo_minus_random")
            o = t[(t["env"] == env) & (t["method"] == "oracle")]
            orc = f"; oracle saves {_iv(o.iloc[0], 'tokens_saved_pct').fmt(1)} %" if len(o) else ""
            out.append(
                f"[{sweep.LABELS[knob]} = {value:g}{' (default)' if env == 'default' else ''}] "
                f"saves >{headline.SAVING_CLAIM_PCT:g}% tokens: {headline.decide(saved, above=headline.SAVING_CLAIM_PCT)} "
                f"({saved.fmt(1)} %{orc}); success above PPO's: {headline.decide(succ)} ({succ.fmt()}); "
                f"better than matched random: {headline.decide(rnd)} ({rnd.fmt()}); n={saved.n}")
    return out


def plot_knob(table: pd.DataFrame, knob: str) -> Figure:
    """Tokens saved against PPO and success difference from PPO (paired by seed) against one knob, with
    95% intervals; ESPO, matched random and the oracle."""
    import matplotlib.pyplot as plt

    t = table[table["knob"] == knob]
    col = colors_for(list(sweep.METHODS))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    methods = [m for m in sweep.METHODS if m != headline.BASELINE]
    for ax, key, title in ((axes[0], "tokens_saved_pct", "rollout tokens saved vs PPO (%)"),
                           (axes[1], "success_vs_ppo", "final success minus PPO's (paired by seed)")):
        for i, m in enumerate(methods):
            g = t[t["method"] == m].sort_values("value")
            if not len(g):
                continue
            x = g["value"].to_numpy(dtype=float) + (i - (len(methods) - 1) / 2) * 0.08 * (t["value"].max() - t["value"].min() or 1)
            y = g[key].to_numpy(dtype=float)
            err = np.vstack([y - g[f"{key}_lo"].to_numpy(dtype=float), g[f"{key}_hi"].to_numpy(dtype=float) - y])
            ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o-", color=col[m], capsize=3, label=f"{m} (n={int(g['n'].min())})")
        ax.axhline(0, color="black", lw=0.8)
        if key == "tokens_saved_pct":
            ax.axhline(headline.SAVING_CLAIM_PCT, ls="--", color="gray", lw=1, label="claim: 20%")
        ax.axvline(sweep.DEFAULTS[knob], ls=":", color="gray", lw=1)
        ax.set(title=title, xlabel=sweep.LABELS[knob] + " (dotted: default)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"ESPO difficulty sweep: {sweep.LABELS[knob]} (mean, 95% bootstrap interval over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


PLOTS = {f"knob_{k}": (lambda table, k=k: plot_knob(table, k)) for k in sweep.KNOBS}
"""Figure name -> ``fn(table) -> Figure`` (``run.py`` saves each as ``<name>.png``)."""
for _k, _f in PLOTS.items():
    _f.__doc__ = f"Tokens saved and success difference from PPO against {sweep.LABELS[_k.removeprefix('knob_')]}, with 95% intervals."
