"""Figures of the tppo_speedup study: ``plot_*(df, ...) -> Figure`` functions and :data:`PLOTS`, apart from
its scores (:mod:`analysis.experiments.tppo_speedup.analysis`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.tppo_speedup import sweep
from analysis.experiments.tppo_speedup.analysis import LABELS, _check, score, with_costs
from analysis.plots import colors_for, line_band, ordered


def _setup(df: pd.DataFrame):
    _check(df)
    envs = ordered(df["label/env"].unique(), list(sweep.ENVS))
    methods = ordered(df["label/method"].unique(), list(sweep.METHODS))
    return envs, methods, colors_for(list(sweep.METHODS) + [m for m in methods if m not in sweep.METHODS])


def costed(df: pd.DataFrame, cal: dict | None = None) -> pd.DataFrame:
    """``df`` with the cost model's cumulative columns on every run (for plotting)."""
    _check(df)
    return pd.concat([with_costs(r, cal) for _, r in df.groupby(list(LABELS), sort=False)], ignore_index=True)


def _panels(df: pd.DataFrame, panels, title: str) -> Figure:
    import matplotlib.pyplot as plt

    envs, methods, col = _setup(df)
    fig, axes = plt.subplots(len(envs), len(panels), figsize=(5.2 * len(panels), 3.8 * len(envs)), squeeze=False)
    for row, env in zip(axes, envs):
        for ax, (x, y, xl, yl) in zip(row, panels):
            for m in methods:
                line_band(ax, df[(df["label/env"] == env) & (df["label/method"] == m)], x, y, label=m, color=col[m])
            ax.set(title=f"{env}: {yl}", xlabel=xl, ylabel=yl)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_success_vs_time(df: pd.DataFrame) -> Figure:
    """Success rate against generated tokens, measured compute time and the cost model's decoding steps."""
    return _panels(costed(df), [("tokens/cumulative", "success/rate", "cumulative generated tokens", "success rate"),
                                ("time/compute_cumulative", "success/rate", "compute time (s, measured)", "success rate"),
                                ("cost/decode_steps", "success/rate", "cumulative decoding steps", "success rate")],
                   "Success vs tokens, time and decoding steps")


def plot_time_breakdown(df: pd.DataFrame) -> Figure:
    """Where the time goes: measured generation, actor and critic seconds per method (mean over seeds)."""
    import matplotlib.pyplot as plt

    envs, methods, col = _setup(df)
    table = score(df)
    fig, axes = plt.subplots(len(envs), 2, figsize=(12, 3.8 * len(envs)), squeeze=False)
    parts = [("gen_s", "generation"), ("actor_s", "actor update"), ("critic_s", "critic update")]
    shades = ["#4c72b0", "#dd8452", "#55a868"]
    for (ax, ax_i), env in zip(axes, envs):
        t = table[table["env"] == env].set_index("method")
        ms = [m for m in methods if m in t.index]
        bottom = np.zeros(len(ms))
        for (k, name), c in zip(parts, shades):
            v = np.nan_to_num(np.array([t.loc[m, k] for m in ms], dtype=float))
            ax.bar(ms, v, bottom=bottom, color=c, label=name)
            bottom += v
        ax.set(title=f"{env}: measured time (whole run)", ylabel="seconds")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        v = np.array([t.loc[m, "idle_fraction"] for m in ms], dtype=float)
        e = np.nan_to_num(np.array([t.loc[m, "idle_fraction_std"] for m in ms], dtype=float))
        ax_i.bar(ms, np.nan_to_num(v), yerr=e, capsize=3, color=[col[m] for m in ms])
        ax_i.set(title=f"{env}: idle decoding slots", ylabel="gen/idle_fraction", ylim=(0, 1))
        ax_i.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax_i.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_length_dynamics(df: pd.DataFrame) -> Figure:
    """Response-length dynamics: mean length of finished rows, rows finishing per step, and tokens
    generated per step."""
    return _panels(df, [("step", "length/mean", "training step", "mean length (finished rows)"),
                        ("step", "pool/finished", "training step", "rows finished per step"),
                        ("step", "tokens/generated", "training step", "tokens generated per step")],
                   "Response length")


PLOTS = {
    "success_vs_time": plot_success_vs_time,
    "time_breakdown": plot_time_breakdown,
    "length_dynamics": plot_length_dynamics,
}
"""Figure name -> plot function (``run.py`` saves each as ``<name>.png``)."""
