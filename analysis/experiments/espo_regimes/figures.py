"""Figures of the ESPO phase diagram: heatmaps over (derailment R x recovery rate) and lines over failure
position, apart from its scores
(:mod:`analysis.experiments.espo_regimes.analysis`). ``table`` is the score table with the verdict words
the report adds (``verdict_saves``, ``verdict_vs_ppo``, ``verdict_vs_random``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.espo_regimes import sweep

METHODS = [m for m in sweep.METHODS if m != "ppo"]
MARK = {"yes": "+", "no": "-"}
"""Verdict word -> the mark drawn in a cell (``?`` for undecided or missing)."""


def _mark(word) -> str:
    return MARK.get(str(word).split(" ")[0], "?") if isinstance(word, str) and word else ""


def plot_heatmaps(table: pd.DataFrame, key: str, title: str, verdict: str | None, cmap: str, center: float | None) -> Figure:
    import matplotlib.pyplot as plt

    if "position" in table:
        table = table[table["position"] == sweep.ANYWHERE]
    ds = sorted(table["derail"].unique())
    rs = sorted(table["recovery"].unique())
    methods = [m for m in METHODS if m in set(table["method"])]
    fig, axes = plt.subplots(1, len(methods), figsize=(2.9 * len(methods) + 0.8, 3.2), squeeze=False)
    vals = table[table["method"].isin(methods)][key].to_numpy(dtype=float)
    lim = np.nanmax(np.abs(vals)) if np.isfinite(vals).any() else 1.0
    vmin, vmax = (-lim, lim) if center is not None else (np.nanmin(vals), np.nanmax(vals))
    for ax, m in zip(axes[0], methods):
        grid = np.full((len(ds), len(rs)), np.nan)
        text = [["" for _ in rs] for _ in ds]
        for i, d in enumerate(ds):
            for j, r in enumerate(rs):
                row = table[(table["method"] == m) & (table["derail"] == d) & (table["recovery"] == r)]
                if len(row):
                    row = row.iloc[0]
                    grid[i, j] = row[key]
                    mk = _mark(row.get(f"verdict_{verdict}")) if verdict else ""
                    text[i][j] = f"{row[key]:.2f}\n[{row[f'{key}_lo']:.2f}, {row[f'{key}_hi']:.2f}] {mk}"
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        for i in range(len(ds)):
            for j in range(len(rs)):
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(rs)), [f"{r:g}" for r in rs])
        ax.set_yticks(range(len(ds)), [f"{d:g}" for d in ds])
        ax.set(title=m, xlabel="recovery rate", ylabel="derailment R" if ax is axes[0][0] else "")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title + (" (mark: + yes, - no, ? undecided after Holm over the diagram)" if verdict else ""), fontsize=9)
    return fig


def plot_tokens_saved(table: pd.DataFrame) -> Figure:
    """Rollout tokens saved against PPO (%, paired by seed; mean and 95% t-interval) in each cell; marks: the >20% claim."""
    return plot_heatmaps(table, "tokens_saved_pct", "tokens saved vs PPO (%)", "saves", "viridis", None)


def plot_success_vs_ppo(table: pd.DataFrame) -> Figure:
    """Final policy's no-stop success minus PPO's (paired by seed; mean and 95% t-interval); marks: better than PPO."""
    return plot_heatmaps(table, "nostop_vs_ppo", "no-stop success minus PPO's", "vs_ppo", "RdBu", 0.0)


def plot_by_position(table: pd.DataFrame) -> Figure:
    """Over failure position in the paper-like cell: tokens saved vs PPO (%) and no-stop success minus PPO's,
    mean and 95% t-interval per method, with the verdict marks."""
    import matplotlib.pyplot as plt

    order = list(sweep.POSITIONS)
    t = table[table["position"].isin(order)] if "position" in table else table.iloc[:0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(order))
    for ax, (key, verdict, label) in zip(axes, (("tokens_saved_pct", "saves", "tokens saved vs PPO (%)"),
                                                ("nostop_vs_ppo", "vs_ppo", "no-stop success minus PPO's"))):
        for k, m in enumerate(mm for mm in METHODS if mm in set(t["method"])):
            rows = t[t["method"] == m].set_index("position").reindex(order)
            y, lo, hi = (rows[c].to_numpy(dtype=float) for c in (key, f"{key}_lo", f"{key}_hi"))
            xs = x + 0.06 * (k - 2)
            ax.errorbar(xs, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=m)
            for xi, yi, w in zip(xs, y, rows.get(f"verdict_{verdict}", pd.Series([""] * len(order)))):
                if np.isfinite(yi) and _mark(w):
                    ax.annotate(_mark(w), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, order)
        ax.set(xlabel=f"failure position (cell {sweep.cell_name(*sweep.PAPER_LIKE)})", title=label)
    axes[0].legend(fontsize=7)
    fig.suptitle("over failure position (mark: + yes, - no, ? undecided after Holm over the diagram)", fontsize=9)
    return fig


PLOTS = {"tokens_saved": plot_tokens_saved, "success_vs_ppo": plot_success_vs_ppo, "by_position": plot_by_position}
"""Figure name -> ``fn(table) -> Figure``."""
