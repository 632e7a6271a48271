"""Scores, verdicts and figures of the ESPO headline study, from the long run table only.

``df`` is :func:`analysis.runs.load_runs` of the study's run directories, with the labels
``label/method``, ``label/env``, ``label/seed``. Definitions (each per run, then mean ± std over seeds):

- ``final_success``: mean ``success/rate`` over the last 10% of training steps.
- ``tokens``: ``tokens/cumulative`` at the run's last step (rollout tokens generated in training).
- ``tokens_saved_pct``: ``100 * (1 - tokens_method / tokens_ppo)`` at the same training step (the
  last step both runs logged), paired with the PPO run of the same env and seed.
- ``level``: the success level of an env, ``LEVEL_FRAC`` (0.5) times PPO's mean ``final_success``
  there. ``tokens_to_level``: ``tokens/cumulative`` at the first step whose trailing moving average of
  ``success/rate`` (window: 10% of the run's steps) is at least ``level``; NaN if never (``reached``
  counts the seeds that did). ``saved_at_level_pct``: ``100 * (1 - tokens_to_level / PPO's)``, paired
  by seed, where both reached it: tokens saved at equal success.
- ``stop_rate``: mean ``stop/rate`` over all steps. ``precision``, ``recall``, ``false_stop_rate``
  (stops of rows that were not doomed / not-doomed rows), ``delay`` (stop step − failure step of
  correct stops): means over steps ``>= stop.warmup_steps`` where defined. ``failure_rank``: mean
  ``credit/failure_rank`` over all steps.
- ``saving_vs_oracle``: ``tokens_saved_pct / oracle's tokens_saved_pct`` (paired by seed; 1 = as much
  saving as stopping exactly at every planted failure). ``precision_vs_oracle`` and
  ``recall_vs_oracle``: the same ratios of precision and recall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.experiments.espo_headline import sweep
from analysis.plots import colors_for, fmt_ms, line_band, ordered, yes_no
from analysis.runs import final_mean, first_reach, mean_std, run_mean, value_at_step

LEVEL_FRAC = 0.5
"""The success level of "tokens to reach a level" is this fraction of PPO's final success."""
NO_WORSE_MARGIN = 0.02
"""Final success within this absolute margin counts as "no worse" (and a drop beyond it as "worse")."""
SAVING_CLAIM_PCT = 20.0
"""The paper's claim: more than this percentage of rollout tokens saved."""
WEAK_BASELINE = 0.05
"""Below this final success PPO has barely learned; verdicts against it carry a caution."""

BASELINE = "ppo"
STOPPING = [m for m in sweep.METHODS if m != BASELINE]
METRICS = ["final_success", "tokens", "tokens_saved_pct", "level", "tokens_to_level", "saved_at_level_pct",
           "stop_rate", "precision", "recall", "false_stop_rate", "delay", "failure_rank",
           "saving_vs_oracle", "precision_vs_oracle", "recall_vs_oracle"]
OUTCOME_COLUMNS = ["env", "method", "n", "final_success", "tokens", "tokens_saved_pct", "level",
                   "tokens_to_level", "reached", "saved_at_level_pct"]
DETECTOR_COLUMNS = ["env", "method", "stop_rate", "precision", "recall", "false_stop_rate", "delay",
                    "failure_rank", "saving_vs_oracle", "precision_vs_oracle", "recall_vs_oracle"]
LABELS = ("label/method", "label/env", "label/seed")


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in LABELS if c not in df]
    if missing:
        raise ValueError(f"the run table lacks {missing}: load it with load_runs(..., axes={sweep.AXES})")


def _ratio(a: float, b: float) -> float:
    return a / b if np.isfinite(a) and np.isfinite(b) and b > 0 else math.nan


def _pct_saved(m: float, ref: float) -> float:
    return 100.0 * (1.0 - m / ref) if np.isfinite(m) and np.isfinite(ref) and ref > 0 else math.nan


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: env, method, seed and every per-run quantity of the module docstring."""
    _check(df)
    runs = {k: r.sort_values("step") for k, r in df.groupby(list(LABELS), sort=False)}
    rows = []
    for (method, env, seed), r in runs.items():
        warm = r["config/stop.warmup_steps"].iloc[0] if "config/stop.warmup_steps" in r else 0
        after = r[r["step"] >= warm]
        rows.append({
            "env": env, "method": method, "seed": seed, "run": r["run"].iloc[0], "steps": int(r["step"].max()),
            "final_success": final_mean(r, "success/rate"),
            "tokens": float(r["tokens/cumulative"].iloc[-1]),
            "stop_rate": run_mean(r, "stop/rate"),
            "precision": run_mean(after, "stop/precision"), "recall": run_mean(after, "stop/recall"),
            "false_stop_rate": run_mean(after, "stop/false_stop_rate"), "delay": run_mean(after, "stop/delay"),
            "failure_rank": run_mean(r, "credit/failure_rank"),
        })
    out = pd.DataFrame(rows)
    # success level per env, from PPO's final success
    levels = {e: LEVEL_FRAC * mean_std(g["final_success"])[0] for e, g in out[out["method"] == BASELINE].groupby("env")}
    levels = {e: lv if lv > 0 else math.nan for e, lv in levels.items()}  # no level when PPO never succeeds
    out["level"] = [levels.get(e, math.nan) for e in out["env"]]
    out["tokens_to_level"] = [
        first_reach(runs[(m, e, s)], lv) if np.isfinite(lv) and lv > 0 else math.nan
        for m, e, s, lv in zip(out["method"], out["env"], out["seed"], out["level"])
    ]
    # paired comparisons: the PPO run (and the oracle run) of the same env and seed
    saved, saved_lv, vs_or, p_or, r_or = [], [], [], [], []
    for row in out.itertuples():
        ppo = runs.get((BASELINE, row.env, row.seed))
        if ppo is not None:
            step = min(row.steps, int(ppo["step"].max()))
            saved.append(_pct_saved(value_at_step(runs[(row.method, row.env, row.seed)], "tokens/cumulative", step),
                                    value_at_step(ppo, "tokens/cumulative", step)))
            ref = out[(out["method"] == BASELINE) & (out["env"] == row.env) & (out["seed"] == row.seed)]
            saved_lv.append(_pct_saved(row.tokens_to_level, float(ref["tokens_to_level"].iloc[0])))
        else:
            saved.append(math.nan)
            saved_lv.append(math.nan)
    out["tokens_saved_pct"] = saved
    out["saved_at_level_pct"] = saved_lv
    for row in out.itertuples():
        o = out[(out["method"] == "oracle") & (out["env"] == row.env) & (out["seed"] == row.seed)]
        if len(o):
            o = o.iloc[0]
            vs_or.append(_ratio(row.tokens_saved_pct, o["tokens_saved_pct"]))
            p_or.append(_ratio(row.precision, o["precision"]))
            r_or.append(_ratio(row.recall, o["recall"]))
        else:
            vs_or.append(math.nan), p_or.append(math.nan), r_or.append(math.nan)
    out["saving_vs_oracle"], out["precision_vs_oracle"], out["recall_vs_oracle"] = vs_or, p_or, r_or
    return out


def score(df: pd.DataFrame) -> pd.DataFrame:
    """The study's table: one row per (env, method), mean and std (``<metric>_std``) over seeds of
    every metric in :data:`METRICS`, with ``n`` seeds and ``reached`` (seeds that reached ``level``)."""
    pr = per_run(df)
    envs = ordered(pr["env"], list(sweep.ENVS))
    methods = ordered(pr["method"], list(sweep.METHODS))
    rows = []
    for env in envs:
        for method in methods:
            g = pr[(pr["env"] == env) & (pr["method"] == method)]
            if not len(g):
                continue
            row = {"env": env, "method": method, "n": len(g), "reached": int(np.isfinite(g["tokens_to_level"]).sum())}
            for k in METRICS:
                row[k], row[f"{k}_std"], _ = mean_std(g[k])
            rows.append(row)
    return pd.DataFrame(rows)


# --- verdicts ---------------------------------------------------------------------------------------
def _get(table: pd.DataFrame, env: str, method: str):
    r = table[(table["env"] == env) & (table["method"] == method)]
    return None if r.empty else r.iloc[0]


def verdicts(table: pd.DataFrame, margin: float = NO_WORSE_MARGIN) -> list[str]:
    """Plain statements checked against ``table`` (from :func:`score`); each says yes/no and its numbers."""
    out = []
    for env in ordered(table["env"], list(sweep.ENVS)):
        ppo, espo = _get(table, env, BASELINE), _get(table, env, "espo")
        rnd, orc = _get(table, env, "random"), _get(table, env, "oracle")
        p = f"[{env}]"
        if ppo is None or espo is None:
            out.append(f"{p} ESPO vs PPO: not evaluated (needs both ppo and espo runs)")
            continue
        saved, fs_e, fs_p = espo["tokens_saved_pct"], espo["final_success"], ppo["final_success"]
        no_worse = np.isfinite(fs_e) and np.isfinite(fs_p) and fs_e >= fs_p - margin
        out.append(f"{p} ESPO saves >{SAVING_CLAIM_PCT:g}% of PPO's rollout tokens at equal steps with final success "
                   f"no worse than PPO (margin {margin:g}): {yes_no(bool(saved > SAVING_CLAIM_PCT and no_worse), saved, fs_e, fs_p)} "
                   f"(saved {fmt_ms(espo, 'tokens_saved_pct', pct=True)}; final success ESPO {fmt_ms(espo, 'final_success')} "
                   f"vs PPO {fmt_ms(ppo, 'final_success')})"
                   + (f"; caution: PPO's final success is below {WEAK_BASELINE:g}, so 'no worse' says little"
                      if np.isfinite(fs_p) and fs_p < WEAK_BASELINE else ""))
        d = fs_e - fs_p
        se = math.sqrt(sum((r["final_success_std"] if np.isfinite(r["final_success_std"]) else math.nan) ** 2 / r["n"]
                           for r in (espo, ppo)))
        sig = f"{yes_no(bool(d > 2 * se))} at 2 standard errors ({2 * se:.3g})" if np.isfinite(se) else "untested (one seed)"
        out.append(f"{p} ESPO's final success is higher than PPO's: {yes_no(bool(d > 0), d)} "
                   f"(difference {d:+.3g}; significant: {sig})")
        if np.isfinite(espo["level"]) and espo["level"] > 0:
            out.append(f"{p} ESPO needs fewer tokens than PPO to reach success {espo['level']:.3g} "
                       f"({LEVEL_FRAC:g} x PPO's final): "
                       + ("no (ESPO never reached it; PPO did) " if espo["reached"] == 0 and ppo["reached"] > 0
                          else f"{yes_no(bool(espo['saved_at_level_pct'] > 0), espo['saved_at_level_pct'])} ")
                       + f"(ESPO {fmt_ms(espo, 'tokens_to_level', digits=4)} in {espo['reached']}/{espo['n']} seeds, "
                       f"PPO {fmt_ms(ppo, 'tokens_to_level', digits=4)} in {ppo['reached']}/{ppo['n']}; "
                       f"saved {fmt_ms(espo, 'saved_at_level_pct', pct=True)})")
        else:
            out.append(f"{p} tokens to reach a success level: not evaluated (PPO's final success is 0)")
        if rnd is None:
            out.append(f"{p} random truncation: not evaluated (no random runs)")
        else:
            worse = np.isfinite(rnd["final_success"]) and rnd["final_success"] < fs_e - margin
            out.append(f"{p} random truncation matched to ESPO's stop rate does worse than ESPO (by more than {margin:g}): "
                       f"{yes_no(bool(worse), rnd['final_success'], fs_e)} (final success random {fmt_ms(rnd, 'final_success')} vs ESPO "
                       f"{fmt_ms(espo, 'final_success')}; stop rate random {fmt_ms(rnd, 'stop_rate')} vs ESPO "
                       f"{fmt_ms(espo, 'stop_rate')})")
            out.append(f"{p} ESPO's stops are more precise than random's: "
                       f"{yes_no(bool(espo['precision'] > rnd['precision']), espo['precision'], rnd['precision'])} (precision ESPO {fmt_ms(espo, 'precision')} "
                       f"vs random {fmt_ms(rnd, 'precision')})")
        abl = [a for a in ("regret_only", "value_only") if _get(table, env, a) is not None]
        if abl:
            rows = {a: _get(table, env, a) for a in abl}
            ok = all(fs_e >= rows[a]["final_success"] - margin for a in abl)
            out.append(f"{p} ESPO's final success is no worse than each single-signal ablation's (margin {margin:g}): "
                       f"{yes_no(bool(ok), fs_e, *[rows[a]['final_success'] for a in abl])} (" + "; ".join(f"{a} {fmt_ms(rows[a], 'final_success')}" for a in abl)
                       + f"; ESPO {fmt_ms(espo, 'final_success')})")
            if "regret_only" in rows:
                ro = rows["regret_only"]
                out.append(f"{p} the value gate cuts false stops (ESPO's false-stop rate below regret_only's): "
                           f"{yes_no(bool(espo['false_stop_rate'] < ro['false_stop_rate']), espo['false_stop_rate'], ro['false_stop_rate'])} "
                           f"(ESPO {fmt_ms(espo, 'false_stop_rate')} vs regret_only {fmt_ms(ro, 'false_stop_rate')})")
        if orc is None:
            out.append(f"{p} closeness to the oracle: not evaluated (no oracle runs)")
        else:
            out.append(f"{p} ESPO gets at least half of the oracle's token saving: "
                       f"{yes_no(bool(espo['saving_vs_oracle'] >= 0.5), espo['saving_vs_oracle'])} (ratio {fmt_ms(espo, 'saving_vs_oracle')}; oracle saves "
                       f"{fmt_ms(orc, 'tokens_saved_pct', pct=True)}; precision/recall relative to the oracle "
                       f"{fmt_ms(espo, 'precision_vs_oracle')} / {fmt_ms(espo, 'recall_vs_oracle')})")
    return out


# --- figures ----------------------------------------------------------------------------------------
def _env_axes(envs: Sequence[str], ncols: int = 1, size=(5.2, 3.8)):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(envs), ncols, figsize=(size[0] * ncols, size[1] * len(envs)), squeeze=False)
    return fig, axes


def _setup(df: pd.DataFrame):
    _check(df)
    envs = ordered(df["label/env"].unique(), list(sweep.ENVS))
    methods = ordered(df["label/method"].unique(), list(sweep.METHODS))
    return envs, methods, colors_for(list(sweep.METHODS) + [m for m in methods if m not in sweep.METHODS])


def plot_success_vs_tokens(df: pd.DataFrame) -> Figure:
    """Success rate against cumulative rollout tokens, one panel per env; dashed: the success level."""
    envs, methods, col = _setup(df)
    fig, axes = _env_axes(envs, 1, (6.5, 4.0))
    pr = per_run(df)
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


def plot_stop_vs_failure(df: pd.DataFrame) -> Figure:
    """Where stops land relative to planted failures, from per-step aggregates.

    Left: the distribution of stop positions (``stop/step_hist`` summed over steps after warm-up and
    over seeds). The oracle stops exactly at the failure step (delay 0), so its histogram is the
    distribution of planted failure positions of doomed rows: the reference the other rules are
    compared with. Right: ``stop/delay`` (stop step − failure step of correct stops) over training.
    Per-row (failure step, stop step) pairs are not logged, so a true joint scatter is not possible.
    """
    envs, methods, col = _setup(df)
    stoppers = [m for m in methods if m != BASELINE]
    fig, axes = _env_axes(envs, 2)
    for (ax_h, ax_d), env in zip(axes, envs):
        for m in stoppers:
            g = df[(df["label/env"] == env) & (df["label/method"] == m)]
            if "stop/step_hist" in g:
                warm = g["config/stop.warmup_steps"].max() if "config/stop.warmup_steps" in g and len(g) else 0
                hists = [np.asarray(h, dtype=float) for h in g.loc[g["step"] >= warm, "stop/step_hist"]
                         if isinstance(h, (list, np.ndarray)) and len(h)]
                if hists:
                    n = max(len(h) for h in hists)
                    total = sum(np.pad(h, (0, n - len(h))) for h in hists)
                    if total.sum() > 0:
                        ax_h.step(np.arange(n), total / total.sum(), where="mid", color=col[m],
                                  lw=2.5 if m == "oracle" else 1.3, ls="--" if m == "oracle" else "-",
                                  label=f"{m} ({int(total.sum())} stops)")
            if "stop/delay" in g and g["stop/delay"].notna().any():
                line_band(ax_d, g, "step", "stop/delay", label=m, color=col[m])
        ax_h.set(title=f"{env}: stop positions (oracle = planted failures)", xlabel="response position",
                 ylabel="share of stops")
        ax_d.set(title=f"{env}: delay of correct stops", xlabel="training step", ylabel="stop step − failure step")
        for ax in (ax_h, ax_d):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
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


def plot_tokens_saved(df: pd.DataFrame) -> Figure:
    """Tokens saved vs PPO (%), at equal training steps and at equal success level; mean ± std over seeds."""
    import matplotlib.pyplot as plt

    envs, methods, col = _setup(df)
    table = score(df)
    ms = [m for m in methods if m != BASELINE]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _bars(axes[0], table, envs, ms, "tokens_saved_pct", col)
    axes[0].axhline(SAVING_CLAIM_PCT, ls="--", color="gray", lw=1)
    axes[0].set(title="tokens saved vs PPO at equal steps (%)", ylabel="% of PPO's rollout tokens")
    _bars(axes[1], table, envs, ms, "saved_at_level_pct", col)
    axes[1].set(title=f"tokens saved to reach {LEVEL_FRAC:g} x PPO's final success (%)", ylabel="%")
    fig.tight_layout()
    return fig


def plot_precision_recall(df: pd.DataFrame) -> Figure:
    """Precision against recall of the stop rules (after warm-up); small dots: seeds, large: means."""
    envs, methods, col = _setup(df)
    pr = per_run(df)
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


def plot_false_stops(df: pd.DataFrame) -> Figure:
    """False-stop rate (stopped rows that were not doomed / not-doomed rows) over training, per env."""
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


PLOTS = {
    "success_vs_tokens": plot_success_vs_tokens,
    "stop_vs_failure": plot_stop_vs_failure,
    "tokens_saved": plot_tokens_saved,
    "precision_recall": plot_precision_recall,
    "false_stops": plot_false_stops,
}
"""Figure name -> plot function (``run.py`` saves each as ``<name>.png``)."""
