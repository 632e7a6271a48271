"""Figures of the llm_detection study: ``plot_*(df, ...) -> Figure`` functions and :data:`PLOTS`, apart from
its scores (:mod:`analysis.experiments.llm_detection.analysis`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.llm_detection.analysis import per_run, score


def plot_detector(df: pd.DataFrame) -> Figure:
    """Precision, recall and false-stop rate of each method's stops against the verifier (95% intervals)."""
    import matplotlib.pyplot as plt

    table = score(df)
    keys = ["precision", "recall", "false_stop_rate"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    w = 0.8 / len(keys)
    x = np.arange(len(table))
    for j, k in enumerate(keys):
        m = table[k].to_numpy(dtype=float)
        err = np.vstack([m - table[f"{k}_lo"].to_numpy(dtype=float), table[f"{k}_hi"].to_numpy(dtype=float) - m])
        ax.bar(x + (j - 1) * w, np.nan_to_num(m), w, yerr=np.nan_to_num(err), label=k, capsize=3)
    ax.set_xticks(x, table["method"].tolist())
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("stops against the verifier's first wrong number")
    fig.tight_layout()
    return fig


def plot_tokens_vs_heldout(df: pd.DataFrame) -> Figure:
    """Training tokens against held-out pass@1 after the last step, one point per run."""
    import matplotlib.pyplot as plt

    runs = per_run(df)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for method, r in runs.groupby("method", sort=False):
        ax.scatter(r["tokens"], r["heldout"], label=method)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out pass@1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


PLOTS = {"detector": plot_detector, "tokens_vs_heldout": plot_tokens_vs_heldout}
"""Figure name -> plot function (each returns a Figure and saves nothing)."""
