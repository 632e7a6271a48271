"""Figures of the T-PPO phase diagram, apart from its scores (:mod:`analysis.experiments.tppo_regimes.analysis`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.tppo_regimes import sweep


def plot_speedup(table: pd.DataFrame) -> Figure:
    """Projected (H200) speed-up to 0.9 x PPO's final evaluation per tail heaviness and window (geometric mean, 95% interval)."""
    import matplotlib.pyplot as plt

    cells = [e for e in sweep.ENVS if e in set(table["env"])]
    methods = [m for m in sweep.METHODS if m != "ppo" and m in set(table["method"])]
    grid = np.full((len(cells), len(methods)), np.nan)
    fig, ax = plt.subplots(figsize=(1.8 * len(methods) + 2, 1.1 * len(cells) + 1.5))
    for i, e in enumerate(cells):
        for j, m in enumerate(methods):
            r = table[(table["env"] == e) & (table["method"] == m)]
            if len(r):
                r = r.iloc[0]
                grid[i, j] = r["speedup_gpu"]
                shown = (f"{r['speedup_gpu']:.2f}x\n[{r['speedup_gpu_lo']:.2f}, {r['speedup_gpu_hi']:.2f}]"
                         if np.isfinite(r["speedup_gpu"]) else "no seed where\nboth reached it")
                ax.text(j, i, f"{shown}\n{word(r.get('verdict'))}", ha="center", va="center", fontsize=7)
    im = ax.imshow(np.log2(grid), cmap="RdBu", vmin=-2, vmax=2, origin="lower", aspect="auto")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_yticks(range(len(cells)), cells)
    fig.colorbar(im, ax=ax, label="log2 speed-up")
    ax.set_title("T-PPO vs PPO: projected cost to 0.9 x PPO's final evaluation", fontsize=9)
    fig.tight_layout()
    return fig


def word(v) -> str:
    return str(v).split(" ")[0] if isinstance(v, str) and v else ""


PLOTS = {"speedup": plot_speedup}
