"""Scores, verdicts and figures of the T-PPO speed-up study, from the long run table only.

``df`` is :func:`analysis.runs.load_runs` of the study's run directories (labels ``label/method``,
``label/env``, ``label/seed``). Definitions (per run, then mean ± std over seeds, one row per env and method):

- ``final_success``: mean ``success/rate`` (over rows that finished that step) over the last 10% of steps.
- ``level``: the success level every method must reach: ``LEVEL_FRAC`` (0.5) times PPO's mean final
  success in that env, or the ``level`` given to :func:`score`.
- ``compute_to_level``, ``wall_to_level``, ``tokens_to_level``: cumulative compute time
  (``time/gen + time/actor + time/critic``), ``time/wall`` and ``tokens/cumulative`` at the first step
  whose trailing moving average of ``success/rate`` (window: 10% of the run) is ``>= level``; NaN if
  never (``reached`` counts the seeds that did).
- ``speedup_compute`` and ``speedup_wall``: PPO's time to the level divided by the method's, paired
  by seed (> 1: faster than PPO). ``tokens_saved_at_level_pct``: ``100 * (1 - tokens / PPO's tokens)`` to
  the level, paired by seed.
- ``compute_s``, ``wall_s``: whole-run totals; ``gen_s``, ``actor_s``, ``critic_s``: the time breakdown
  (sums over steps). ``idle_fraction``: mean ``gen/idle_fraction`` (decoding slots left idle while the
  longest rows finish). ``age_mean`` and ``stale_token_frac``: T-PPO pool statistics (means over steps).
- ``final_length``: mean response length of finished rows over the last 10% of steps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments import table_row
from analysis.experiments.tppo_speedup import sweep
from analysis.plots import colors_for, fmt_ms, line_band, ordered, yes_no
from analysis.runs import final_mean, first_reach, mean_std, run_mean

LEVEL_FRAC = 0.5
"""The success level is this fraction of PPO's final success (unless ``score(df, level=...)``)."""
NO_WORSE_MARGIN = 0.02
"""Final success within this absolute margin counts as "no worse"."""
CLAIMED_SPEEDUP = 2.5
"""The paper's claim: up to this speed-up over PPO."""

BASELINE = "ppo"
METRICS = ["final_success", "level", "compute_to_level", "wall_to_level", "tokens_to_level", "speedup_compute",
           "speedup_wall", "tokens_saved_at_level_pct", "tokens", "compute_s", "wall_s", "gen_s", "actor_s",
           "critic_s", "idle_fraction", "age_mean", "stale_token_frac", "final_length"]
SPEED_COLUMNS = ["env", "method", "n", "reached", "final_success", "level", "compute_to_level", "wall_to_level",
                 "tokens_to_level", "speedup_compute", "speedup_wall", "tokens_saved_at_level_pct"]
COST_COLUMNS = ["env", "method", "tokens", "compute_s", "wall_s", "gen_s", "actor_s", "critic_s", "idle_fraction",
                "age_mean", "stale_token_frac", "final_length"]
LABELS = ("label/method", "label/env", "label/seed")


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in LABELS if c not in df]
    if missing:
        raise ValueError(f"the run table lacks {missing}: load it with load_runs(..., axes={sweep.AXES})")


def _sum(r: pd.DataFrame, key: str) -> float:
    return float(r[key].fillna(0.0).sum()) if key in r else math.nan


def per_run(df: pd.DataFrame, level: float | None = None) -> pd.DataFrame:
    """One row per run with every per-run quantity of the module docstring."""
    _check(df)
    runs = {k: r.sort_values("step") for k, r in df.groupby(list(LABELS), sort=False)}
    rows = []
    for (method, env, seed), r in runs.items():
        rows.append({
            "env": env, "method": method, "seed": seed, "run": r["run"].iloc[0],
            "final_success": final_mean(r, "success/rate"),
            "tokens": float(r["tokens/cumulative"].iloc[-1]),
            "compute_s": _sum(r, "time/compute"),
            "wall_s": float(r["time/wall"].iloc[-1]) if "time/wall" in r else math.nan,
            "gen_s": _sum(r, "time/gen"), "actor_s": _sum(r, "time/actor"), "critic_s": _sum(r, "time/critic"),
            "idle_fraction": run_mean(r, "gen/idle_fraction"),
            "age_mean": run_mean(r, "pool/age_mean"), "stale_token_frac": run_mean(r, "pool/stale_token_frac"),
            "final_length": final_mean(r, "length/mean") if "length/mean" in r else math.nan,
        })
    out = pd.DataFrame(rows)
    if level is None:
        lv = {e: LEVEL_FRAC * mean_std(g["final_success"])[0] for e, g in out[out["method"] == BASELINE].groupby("env")}
        lv = {e: v if v > 0 else math.nan for e, v in lv.items()}
    else:
        lv = {e: float(level) for e in out["env"]}
    out["level"] = [lv.get(e, math.nan) for e in out["env"]]
    for col, x in (("compute_to_level", "time/compute_cumulative"), ("wall_to_level", "time/wall"),
                   ("tokens_to_level", "tokens/cumulative")):
        out[col] = [first_reach(runs[(m, e, s)], v, x=x) if np.isfinite(v) and x in runs[(m, e, s)] else math.nan
                    for m, e, s, v in zip(out["method"], out["env"], out["seed"], out["level"])]
    ref = out[out["method"] == BASELINE].set_index(["env", "seed"])
    for col, src, fn in (("speedup_compute", "compute_to_level", lambda p, m: p / m),
                         ("speedup_wall", "wall_to_level", lambda p, m: p / m),
                         ("tokens_saved_at_level_pct", "tokens_to_level", lambda p, m: 100.0 * (1.0 - m / p))):
        vals = []
        for e, s, v in zip(out["env"], out["seed"], out[src]):
            p = ref[src].get((e, s), math.nan) if len(ref) else math.nan
            vals.append(fn(p, v) if np.isfinite(p) and np.isfinite(v) and p > 0 and v > 0 else math.nan)
        out[col] = vals
    return out


def score(df: pd.DataFrame, level: float | None = None) -> pd.DataFrame:
    """One row per (env, method): mean and ``<metric>_std`` over seeds of :data:`METRICS`, ``n`` and ``reached``."""
    pr = per_run(df, level)
    rows = []
    for env in ordered(pr["env"], list(sweep.ENVS)):
        for method in ordered(pr["method"], list(sweep.METHODS)):
            g = pr[(pr["env"] == env) & (pr["method"] == method)]
            if not len(g):
                continue
            row = {"env": env, "method": method, "n": len(g), "reached": int(np.isfinite(g["compute_to_level"]).sum())}
            for k in METRICS:
                row[k], row[f"{k}_std"], _ = mean_std(g[k])
            rows.append(row)
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame, margin: float = NO_WORSE_MARGIN) -> list[str]:
    """Plain statements checked against ``table`` (from :func:`score`), each with its numbers."""
    out = []
    for env in ordered(table["env"], list(sweep.ENVS)):
        ppo, tppo, te = (table_row(table, env, m) for m in (BASELINE, "tppo", "tppo_espo"))
        p = f"[{env}]"
        if ppo is None or tppo is None:
            out.append(f"{p} T-PPO vs PPO: not evaluated (needs both ppo and tppo runs)")
            continue
        lv = ppo["level"]
        lvt = f"success {lv:.3g}" if np.isfinite(lv) else "the success level (undefined: PPO's final success is 0)"
        for row, name in ((tppo, "T-PPO"), (te, "T-PPO + ESPO")):
            if row is None:
                continue
            sp = row["speedup_compute"]
            ans = ("no (it never reached the level; PPO did)" if row["reached"] == 0 and ppo["reached"] > 0
                   else yes_no(bool(sp > 1), sp))
            out.append(f"{p} {name} reaches {lvt} in less compute time than PPO: {ans} "
                       f"(speed-up {fmt_ms(row, 'speedup_compute')} in compute, {fmt_ms(row, 'speedup_wall')} in "
                       f"wall-clock; reached in {row['reached']}/{row['n']} seeds, PPO {ppo['reached']}/{ppo['n']})")
        sp = tppo["speedup_compute"]
        ans = ("no (T-PPO never reached the level)" if tppo["reached"] == 0 and ppo["reached"] > 0
               else yes_no(bool(sp >= CLAIMED_SPEEDUP), sp))
        out.append(f"{p} T-PPO's speed-up reaches the claimed {CLAIMED_SPEEDUP:g}x: "
                   f"{ans} (compute {fmt_ms(tppo, 'speedup_compute')})")
        fs_t, fs_p = tppo["final_success"], ppo["final_success"]
        out.append(f"{p} T-PPO's final success is no worse than PPO's (margin {margin:g}, each at the end of its own run): "
                   f"{yes_no(bool(fs_t >= fs_p - margin), fs_t, fs_p)} (T-PPO {fmt_ms(tppo, 'final_success')} vs "
                   f"PPO {fmt_ms(ppo, 'final_success')})")
        out.append(f"{p} T-PPO leaves fewer decoding slots idle than PPO: "
                   f"{yes_no(bool(tppo['idle_fraction'] < ppo['idle_fraction']), tppo['idle_fraction'], ppo['idle_fraction'])} "
                   f"(idle fraction T-PPO {fmt_ms(tppo, 'idle_fraction')} vs PPO {fmt_ms(ppo, 'idle_fraction')})")
        if te is not None:
            a, b = te["compute_to_level"], tppo["compute_to_level"]
            ans = ("no (T-PPO + ESPO never reached the level; T-PPO did)" if te["reached"] == 0 and tppo["reached"] > 0
                   else "yes (T-PPO never reached the level; T-PPO + ESPO did)" if tppo["reached"] == 0 and te["reached"] > 0
                   else yes_no(bool(a < b), a, b))
            out.append(f"{p} adding ESPO's stop rule makes T-PPO reach the level sooner (compute): "
                       f"{ans} (T-PPO + ESPO {fmt_ms(te, 'compute_to_level')} s vs T-PPO "
                       f"{fmt_ms(tppo, 'compute_to_level')} s)")
    return out


# --- figures ----------------------------------------------------------------------------------------
def _setup(df: pd.DataFrame):
    _check(df)
    envs = ordered(df["label/env"].unique(), list(sweep.ENVS))
    methods = ordered(df["label/method"].unique(), list(sweep.METHODS))
    return envs, methods, colors_for(list(sweep.METHODS) + [m for m in methods if m not in sweep.METHODS])


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
    """Success rate against compute time (gen + actor + critic), wall-clock and generated tokens."""
    return _panels(df, [("time/compute_cumulative", "success/rate", "compute time (s)", "success rate"),
                        ("time/wall", "success/rate", "wall-clock (s)", "success rate"),
                        ("tokens/cumulative", "success/rate", "cumulative generated tokens", "success rate")],
                   "Success vs time and tokens")


def plot_time_breakdown(df: pd.DataFrame) -> Figure:
    """Where the time goes: total generation, actor and critic seconds per method (mean over seeds),
    and the share of decoding slots left idle."""
    import matplotlib.pyplot as plt

    envs, methods, col = _setup(df)
    table = score(df)
    fig, axes = plt.subplots(len(envs), 2, figsize=(11, 3.8 * len(envs)), squeeze=False)
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
        ax.set(title=f"{env}: time breakdown (whole run)", ylabel="seconds")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        v = np.array([t.loc[m, "idle_fraction"] for m in ms], dtype=float)
        e = np.nan_to_num(np.array([t.loc[m, "idle_fraction_std"] for m in ms], dtype=float))
        ax_i.bar(ms, np.nan_to_num(v), yerr=e, capsize=3, color=[col[m] for m in ms])
        ax_i.set(title=f"{env}: idle decoding slots", ylabel="gen/idle_fraction", ylim=(0, 1))
        ax_i.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_length_dynamics(df: pd.DataFrame) -> Figure:
    """Response-length dynamics: mean length of finished rows, tokens generated per step, and the
    age (steps) of carried T-PPO rows."""
    return _panels(df, [("step", "length/mean", "training step", "mean length (finished rows)"),
                        ("step", "tokens/generated", "training step", "tokens generated per step"),
                        ("step", "pool/age_mean", "training step", "mean age of pool rows (steps)")],
                   "Response length")


PLOTS = {
    "success_vs_time": plot_success_vs_time,
    "time_breakdown": plot_time_breakdown,
    "length_dynamics": plot_length_dynamics,
}
"""Figure name -> plot function (``run.py`` saves each as ``<name>.png``)."""
