"""Figures of the espo_mechanism study: ``plot_*(df, ...) -> Figure`` functions and :data:`PLOTS`, apart from
its scores (:mod:`analysis.experiments.espo_mechanism.analysis`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.espo_mechanism import sweep
from analysis.experiments.espo_mechanism.analysis import _by_seed, cells, per_run
from analysis.plots import colors_for, line_band
from analysis.stats import mean_ci


def _curves(df: pd.DataFrame, y: str, ylabel: str, title: str) -> Figure:
    import matplotlib.pyplot as plt

    ws = [w for w in sweep.WARMUPS if w in set(df["label/warmup"])]
    vs = [v for v in sweep.VARIANTS if v in set(df["label/variant"])]
    col = colors_for(list(sweep.METHODS) + ["ppo"])
    fig, axes = plt.subplots(len(vs), len(ws), figsize=(4.6 * len(ws), 3.4 * len(vs)), squeeze=False, sharey=True)
    ppo = df[df["label/method"] == "ppo"]
    for i, v in enumerate(vs):
        for j, w in enumerate(ws):
            ax = axes[i, j]
            for m in sweep.METHODS:
                g = df[(df["label/variant"] == v) & (df["label/warmup"] == w) & (df["label/method"] == m)]
                if len(g) and y in g:
                    line_band(ax, g, "step", y, label=m, color=col[m])
            if len(ppo) and y in ppo and y != "stop/rate":
                line_band(ax, ppo, "step", y, label="ppo", color=col["ppo"])
            ax.set(title=f"{v} ESPO, {w} warm-up", xlabel="training step", ylabel=ylabel if j == 0 else "")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_entropy(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Policy entropy over training per cell: ESPO, its matched random and PPO (mean, 95% t-band)."""
    return _curves(df, "actor/entropy", "policy entropy", "Entropy: does ESPO's selection sharpen the policy?")


def plot_stop_rate(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Stop rate over training per cell: ESPO and its matched random (mean, 95% t-band)."""
    return _curves(df, "stop/rate", "stop rate", "Stop rate (random follows its ESPO run step by step)")


def plot_nostop(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """No-stop success of the final policy per cell: ESPO and matched random per seed, PPO's mean dashed."""
    import matplotlib.pyplot as plt

    pr = per_run(df, rows)
    cs = cells(pr)
    col = colors_for(list(sweep.METHODS) + ["ppo"])
    fig, ax = plt.subplots(figsize=(1.6 * len(cs) + 2.5, 3.8))
    for i, (v, w) in enumerate(cs):
        for k, m in enumerate(sweep.METHODS):
            y = _by_seed(pr, v, w, m, "nostop_success").to_numpy(dtype=float)
            x = np.full(len(y), i + (k - 0.5) * 0.3)
            ax.scatter(x, y, s=12, color=col[m], alpha=0.6, label=m if i == 0 else None)
            iv = mean_ci(y.tolist())
            if iv.n:
                ax.errorbar(x[0], iv.mean, yerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="o", ms=7,
                            color=col[m], capsize=3)
    ppo = pr[pr["method"] == "ppo"]["nostop_success"]
    if len(ppo):
        ax.axhline(float(ppo.mean()), ls="--", color=col["ppo"], lw=1, label="ppo (mean)")
    ax.set_xticks(range(len(cs)), [f"{v}\n{w}" for v, w in cs], fontsize=8)
    ax.set(ylabel="no-stop success (final policy)", title="Final policy without stopping")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


PLOTS = {"nostop": plot_nostop, "entropy": plot_entropy, "stop_rate": plot_stop_rate}
"""Figure name -> ``fn(df, rows=None) -> Figure`` (``run.py`` saves each as ``<name>.png``)."""
