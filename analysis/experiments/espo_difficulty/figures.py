"""Figures of the espo_difficulty study: ``plot_*(df, ...) -> Figure`` functions and :data:`PLOTS`, apart from
its scores (:mod:`analysis.experiments.espo_difficulty.analysis`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.espo_difficulty import sweep
from analysis.experiments.espo_headline import analysis as headline
from analysis.plots import colors_for


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
    fig.suptitle(f"ESPO difficulty sweep: {sweep.LABELS[knob]} (mean, 95% t-interval over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


PLOTS = {f"knob_{k}": (lambda table, k=k: plot_knob(table, k)) for k in sweep.KNOBS}
"""Figure name -> ``fn(table) -> Figure`` (``run.py`` saves each as ``<name>.png``)."""
for _k, _f in PLOTS.items():
    _f.__doc__ = f"Tokens saved and success difference from PPO against {sweep.LABELS[_k.removeprefix('knob_')]}, with 95% intervals."
