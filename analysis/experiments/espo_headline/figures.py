"""Figures of the espo_headline study: ``plot_*(df, ...) -> Figure`` functions and :data:`PLOTS`, apart from
its scores (:mod:`analysis.experiments.espo_headline.analysis`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.espo_headline import sweep
from analysis.experiments.espo_headline.analysis import (
    BASELINE,
    LEVEL_FRAC,
    SAVING_CLAIM_PCT,
    _check,
    _rows_by_run,
    _warmup,
    per_run,
    score,
)
from analysis.plots import colors_for, line_band, ordered
from analysis.runs import mean_std


def _env_axes(envs: Sequence[str], ncols: int = 1, size=(5.2, 3.8)):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(envs), ncols, figsize=(size[0] * ncols, size[1] * len(envs)), squeeze=False)
    return fig, axes


def _setup(df: pd.DataFrame):
    _check(df)
    envs = ordered(df["label/env"].unique(), list(sweep.ENVS))
    methods = ordered(df["label/method"].unique(), list(sweep.METHODS))
    return envs, methods, colors_for(list(sweep.METHODS) + [m for m in methods if m not in sweep.METHODS])


def plot_success_vs_tokens(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Success rate against cumulative rollout tokens, one panel per env; dashed: the success level."""
    envs, methods, col = _setup(df)
    fig, axes = _env_axes(envs, 1, (6.5, 4.0))
    pr = per_run(df, rows)
    for ax, env in zip(axes[:, 0], envs):
        for m in methods:
            line_band(ax, df[(df["label/env"] == env) & (df["label/method"] == m)], "tokens/cumulative",
                      "success/rate", label=m, color=col[m])
        lv = pr.loc[pr["env"] == env, "level"]
        if len(lv) and np.isfinite(lv.iloc[0]):
            ax.axhline(lv.iloc[0], ls="--", color="gray", lw=1, label=f"level ({LEVEL_FRAC:g} x PPO final)")
        ax.set(title=f"{env}: success vs rollout tokens", xlabel="cumulative generated tokens", ylabel="success rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def stop_failure_grid(rows: pd.DataFrame, max_len: int) -> tuple[np.ndarray, int, int]:
    """Counts of stopped rows on the (planted failure step, stop position) grid.

    Returns ``(counts, n_stops, n_false)``: ``counts[y + 1, x]`` is the number of stopped rows whose
    last token (stop position) is ``x`` and whose fatal token is ``y``; row 0 (``y = -1``) holds the
    stops of rows that were not doomed at their end (false stops: no fatal token by the stop).
    Positions beyond ``max_len - 1`` are clipped into the last column and row.
    """
    s = rows[rows["stopped"].to_numpy(dtype=bool)]
    x = np.clip(s["length"].to_numpy() - 1, 0, max_len - 1)
    y = np.where(s["doomed"].to_numpy(dtype=bool), np.clip(s["failure_step"].to_numpy(), 0, max_len - 1), -1)
    counts = np.zeros((max_len + 1, max_len), dtype=np.int64)
    np.add.at(counts, (y + 1, x), 1)
    return counts, len(s), int((y < 0).sum())


def _max_len(df: pd.DataFrame, rows: pd.DataFrame | None) -> int:
    if "config/rollout.max_len" in df and df["config/rollout.max_len"].notna().any():
        return int(df["config/rollout.max_len"].max())
    return int(rows["length"].max()) if rows is not None and len(rows) else 1


def plot_stop_vs_failure(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Stop position against planted failure step of every stopped row (after warm-up, seeds pooled).

    One panel per env and stop rule: a 2-D histogram (colour: share of that rule's stops in the cell,
    log scale) of the stop position (index of the row's last token, x) against the planted fatal-token
    index (y). On the dashed diagonal a row was stopped at its fatal token; a cell d below it, d tokens
    after. The bottom strip, y = "none", holds false stops: rows stopped before any fatal token. Needs
    the per-row log (``rows.jsonl``); a panel without it says so.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    envs, methods, col = _setup(df)
    stoppers = [m for m in methods if m != BASELINE] or methods
    max_len = _max_len(df, rows)
    by_run = _rows_by_run(rows)
    fig, axes = plt.subplots(len(envs), len(stoppers), figsize=(3.0 * len(stoppers) + 1.2, 3.3 * len(envs) + 0.4),
                             squeeze=False, layout="constrained")
    norm = LogNorm(vmin=1e-3, vmax=1.0)
    mesh = None
    edges_x, edges_y = np.arange(max_len + 1) - 0.5, np.arange(max_len + 2) - 1.5
    for i, env in enumerate(envs):
        for j, m in enumerate(stoppers):
            ax = axes[i, j]
            runs = df[(df["label/env"] == env) & (df["label/method"] == m)]
            parts = []
            for name, r in runs.groupby("run", sort=False):
                rr = by_run.get(str(name))
                if rr is not None:
                    parts.append(rr[rr["step"] >= _warmup(r)])
            ax.set_title(f"{env}: {m}", fontsize=9, color=col[m])
            ax.set_xlim(edges_x[0], edges_x[-1])
            ax.set_ylim(edges_y[0], edges_y[-1])
            ax.set_aspect("equal")
            ax.plot([-0.5, max_len - 0.5], [-0.5, max_len - 0.5], ls="--", color="red", lw=0.8)
            ax.axhline(-0.5, color="black", lw=0.8)
            ax.set_yticks([-1] + list(range(0, max_len, max(1, max_len // 6))),
                          ["none"] + [str(t) for t in range(0, max_len, max(1, max_len // 6))])
            ax.tick_params(labelsize=7)
            if i == len(envs) - 1:
                ax.set_xlabel("stop position (last token index)", fontsize=8)
            if j == 0:
                ax.set_ylabel("planted fatal-token index", fontsize=8)
            if not parts:
                ax.text(0.5, 0.5, "no per-row log\n(rows.jsonl)", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
                continue
            counts, n, n_false = stop_failure_grid(pd.concat(parts), max_len)
            if n == 0:
                ax.text(0.5, 0.5, "no stops after warm-up", ha="center", va="center", transform=ax.transAxes,
                        fontsize=8)
                continue
            share = np.ma.masked_equal(counts / n, 0.0)
            mesh = ax.pcolormesh(edges_x, edges_y, np.ma.clip(share, norm.vmin, norm.vmax), norm=norm,
                                 cmap="viridis")
            sel = pd.concat(parts)
            hit = sel["stopped"] & sel["doomed"]
            delay = (sel["length"] - 1 - sel["failure_step"])[hit]
            ax.text(0.02, 0.98, f"{n} stops, {runs['run'].nunique()} run(s)\nfalse: {n_false} ({100 * n_false / n:.0f}%)"
                    + (f"\nmedian delay {delay.median():g}" if len(delay) else ""),
                    ha="left", va="top", transform=ax.transAxes, fontsize=7,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    if mesh is not None:
        fig.colorbar(mesh, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01, label="share of the rule's stops (log)")
    fig.suptitle("Stops against planted failures (after warm-up; dashed: stopped at the fatal token; "
                 "'none': false stops)", fontsize=10)
    return fig


def _bars(ax, table: pd.DataFrame, envs, methods, key: str, col) -> None:
    width = 0.8 / max(1, len(envs))
    hatches = ["", "//", "..", "xx"]
    for i, env in enumerate(envs):
        t = table[table["env"] == env].set_index("method")
        ms = [m for m in methods if m in t.index]
        xs = np.array([methods.index(m) for m in ms]) + (i - (len(envs) - 1) / 2) * width
        vals = np.array([t.loc[m, key] for m in ms], dtype=float)
        errs = np.nan_to_num(np.array([t.loc[m, f"{key}_std"] for m in ms], dtype=float))
        ok = np.isfinite(vals)
        ax.bar(xs[ok], vals[ok], width, yerr=errs[ok], capsize=3, color=[col[m] for m, o in zip(ms, ok) if o],
               hatch=hatches[i % len(hatches)], edgecolor="black", linewidth=0.5, label=env)
        for x in xs[~ok]:  # undefined (e.g. the level was never reached): say so instead of drawing 0
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="env (hatch)")


def plot_tokens_saved(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Tokens saved vs PPO (%), at equal training steps and at equal success level, and (with ``rows``) the
    share of PPO's tokens after the fatal token that each method removed; mean ± std over seeds."""
    import matplotlib.pyplot as plt

    envs, methods, col = _setup(df)
    table = score(df, rows)
    ms = [m for m in methods if m != BASELINE]
    waste = bool(np.isfinite(table["waste_removed_pct"]).any())
    fig, axes = plt.subplots(1, 3 if waste else 2, figsize=(18 if waste else 12, 4.2))
    _bars(axes[0], table, envs, ms, "tokens_saved_pct", col)
    axes[0].axhline(SAVING_CLAIM_PCT, ls="--", color="gray", lw=1)
    axes[0].set(title="tokens saved vs PPO at equal steps (%)", ylabel="% of PPO's rollout tokens")
    _bars(axes[1], table, envs, ms, "saved_at_level_pct", col)
    axes[1].set(title=f"tokens saved to reach {LEVEL_FRAC:g} x PPO's final success (%)", ylabel="%")
    if waste:
        _bars(axes[2], table, envs, ms, "waste_removed_pct", col)
        axes[2].set(title="PPO's tokens after the fatal token removed (%)", ylabel="% of PPO's waste")
    fig.tight_layout()
    return fig


def plot_precision_recall(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Precision against recall of the stop rules (after warm-up); small dots: seeds, large: means."""
    envs, methods, col = _setup(df)
    pr = per_run(df, rows)
    fig, axes = _env_axes(envs, 1, (5.5, 4.2))
    for ax, env in zip(axes[:, 0], envs):
        for m in [m for m in methods if m != BASELINE]:
            g = pr[(pr["env"] == env) & (pr["method"] == m)]
            ax.scatter(g["recall"], g["precision"], s=14, color=col[m], alpha=0.5)
            rm, rs, _ = mean_std(g["recall"])
            pm, ps, _ = mean_std(g["precision"])
            if np.isfinite(rm) and np.isfinite(pm):
                ax.errorbar(rm, pm, xerr=np.nan_to_num(rs), yerr=np.nan_to_num(ps), fmt="o", ms=8, color=col[m],
                            capsize=3, label=m)
        ax.set(title=f"{env}: stop precision vs recall", xlabel="recall (doomed rows stopped)",
               ylabel="precision (stops of doomed rows)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_false_stops(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """False-stop rate (stopped rows that were not doomed / not-doomed rows) over training, per env
    (per-step metric ``stop/false_stop_rate``; ``rows`` is accepted for a uniform signature, not used)."""
    envs, methods, col = _setup(df)
    fig, axes = _env_axes(envs, 1, (6.5, 3.8))
    for ax, env in zip(axes[:, 0], envs):
        for m in [m for m in methods if m != BASELINE]:
            g = df[(df["label/env"] == env) & (df["label/method"] == m)]
            if "stop/false_stop_rate" in g and g["stop/false_stop_rate"].notna().any():
                line_band(ax, g, "step", "stop/false_stop_rate", label=m, color=col[m])
        ax.set(title=f"{env}: false stops", xlabel="training step", ylabel="false-stop rate")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def stop_position_hist(runs: pd.DataFrame, warmup: int = 0) -> np.ndarray:
    """Stop positions of ``runs`` (their per-step ``stop/step_hist`` lists) summed over the steps
    ``>= warmup`` and the runs: counts per response index."""
    total = np.zeros(0)
    for _, r in runs.iterrows():
        h = r.get("stop/step_hist")
        if r["step"] < warmup or not isinstance(h, (list, tuple, np.ndarray)) or not len(h):
            continue
        h = np.asarray(h, dtype=float)
        if len(h) > len(total):
            total = np.pad(total, (0, len(h) - len(total)))
        total[: len(h)] += h
    return total


def plot_stop_positions(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> Figure:
    """Realised stop positions of matched random truncation against its reference, ESPO (after warm-up,
    seeds pooled; share of each rule's stops per response index): random matches ESPO's rate and draws
    positions from ESPO's histogram, so the two should agree where rows live long enough to be cut."""
    envs, methods, col = _setup(df)
    fig, axes = _env_axes(envs, 1, (6.5, 3.4))
    for ax, env in zip(axes[:, 0], envs):
        for m in [m for m in ("espo", "random") if m in methods]:
            runs = df[(df["label/env"] == env) & (df["label/method"] == m)]
            h = stop_position_hist(runs, _warmup(runs) if len(runs) else 0)
            if h.sum() > 0:
                ax.step(np.arange(len(h)), h / h.sum(), where="mid", color=col[m],
                        label=f"{m} ({int(h.sum())} stops)" + (" (reference)" if m == "espo" else ""))
        ax.set(title=f"{env}: stop positions, random vs its ESPO reference", xlabel="stop position (response index)",
               ylabel="share of the rule's stops")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


PLOTS = {
    "success_vs_tokens": plot_success_vs_tokens,
    "stop_vs_failure": plot_stop_vs_failure,
    "tokens_saved": plot_tokens_saved,
    "precision_recall": plot_precision_recall,
    "false_stops": plot_false_stops,
    "stop_positions": plot_stop_positions,
}
"""Figure name -> plot function ``fn(df, rows=None) -> Figure`` (``run.py`` passes the per-row table
and saves each as ``<name>.png``)."""
