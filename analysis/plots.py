"""Generic figures and tables from the long run table of :func:`analysis.runs.load_runs`.

Every ``plot_*`` function takes that DataFrame, returns a :class:`matplotlib.figure.Figure` and saves
nothing; :func:`save_figures` and :func:`plot_runs_cli` (``testbed plot``) are the only writers.
Curves are grouped by ``by`` (default ``group``: the run name without its seed part), drawn as the
mean over the group's runs with a 95% bootstrap band, after a short trailing moving average.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; a no-op if pyplot was already set up by the caller

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.runs import RunDirError, curve_stack, final_mean, load_runs, mean_std, run_mean  # noqa: E402

GROUP = "group"


# --- small helpers shared by the studies ----------------------------------------------------------
def colors_for(keys: Sequence[str]) -> dict[str, tuple]:
    """A stable colour per key (tab10 order)."""
    cmap = plt.get_cmap("tab10")
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def ordered(values: Iterable, order: Sequence | None = None) -> list:
    """Unique values, in ``order`` first, then the rest sorted."""
    vals = list(dict.fromkeys(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))))
    first = [o for o in (order or []) if o in vals]
    return first + sorted((v for v in vals if v not in first), key=str)


RANGES = {"success/rate": (0.0, 1.0), "stop/rate": (0.0, 1.0), "stop/false_stop_rate": (0.0, 1.0),
          "stop/precision": (0.0, 1.0), "stop/recall": (0.0, 1.0), "eval/pass@1": (0.0, 1.0)}
"""Metric -> the range its bands are clipped to (a success band never drawn below 0)."""


def line_band(ax, runs: pd.DataFrame, x: str, y: str, *, label: str, color=None, window: int | None = None,
              seeds: bool = False) -> None:
    """Mean over ``runs`` of smoothed ``y`` against ``x`` with a 95% bootstrap band over runs
    (:func:`analysis.stats.band`), clipped to the metric's range (:data:`RANGES`); ``seeds`` also draws
    each run as a thin line."""
    from analysis.stats import band

    if x not in runs or y not in runs:
        return
    grid, ys = curve_stack(runs, x, y, window=window)
    if not len(grid):
        return
    lo, hi = RANGES.get(y, (None, None))
    mean, low, high = band(ys, lo=lo, hi=hi)
    n = len(ys)
    if seeds:
        for c in ys:
            ax.plot(grid, c, color=color, lw=0.4, alpha=0.35)
    ax.plot(grid, mean, color=color, label=f"{label} (n={n})")
    if n > 1:
        ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)


def _by_group(df: pd.DataFrame, by: str, order: Sequence | None = None):
    keys = ordered(df[by].unique(), order)
    cols = colors_for(keys)
    return [(k, df[df[by] == k], cols[k]) for k in keys]


def _curves(df: pd.DataFrame, panels: Sequence[tuple[str, str, str, str]], *, by: str = GROUP,
            order: Sequence | None = None, title: str = "") -> Figure:
    """One axes per ``(x, y, xlabel, ylabel)`` panel, a mean ± std line per group in each."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (x, y, xl, yl) in zip(axes[0], panels):
        for key, runs, color in _by_group(df, by, order):
            line_band(ax, runs, x, y, label=str(key), color=color)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        if y not in df:
            ax.text(0.5, 0.5, f"{y} not logged", ha="center", va="center", transform=ax.transAxes)
    if axes[0][0].get_legend_handles_labels()[0]:  # nothing drawn (the metric not logged): no legend
        axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- generic figures ------------------------------------------------------------------------------
def plot_success_vs_tokens(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> Figure:
    """Success rate against cumulative generated tokens."""
    return _curves(df, [("tokens/cumulative", "success/rate", "cumulative generated tokens", "success rate")],
                   by=by, order=order, title="Success vs rollout tokens")


def plot_success_vs_time(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> Figure:
    """Success rate against compute time (sum of gen, actor and critic time) and against wall-clock."""
    return _curves(df, [("time/compute_cumulative", "success/rate", "compute time: gen+actor+critic (s)", "success rate"),
                        ("time/wall", "success/rate", "wall-clock since start (s)", "success rate")],
                   by=by, order=order, title="Success vs time")


def plot_stop_rate(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> Figure:
    """Share of finished rows stopped early, per training step."""
    return _curves(df, [("step", "stop/rate", "training step", "stop rate")], by=by, order=order,
                   title="Early-stop rate")


def plot_length(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> Figure:
    """Length dynamics: mean response length of finished rows, and tokens generated per step."""
    return _curves(df, [("step", "length/mean", "training step", "mean length (finished rows)"),
                        ("step", "tokens/generated", "training step", "tokens generated per step")],
                   by=by, order=order, title="Response length")


def plot_eval_vs_tokens(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> Figure:
    """Held-out greedy pass@1 against the rollout tokens generated before each evaluation (LLM runs)."""
    has = df[df["eval/pass@1"].notna()] if "eval/pass@1" in df else df.iloc[0:0]
    return _curves(has if len(has) else df, [("eval/tokens_cumulative", "eval/pass@1", "cumulative generated tokens",
                                              "held-out pass@1 (greedy)")], by=by, order=order,
                   title="Held-out accuracy vs rollout tokens")


def plot_eval_vs_time(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> Figure:
    """Held-out greedy pass@1 against the run's wall-clock at that step (``time/wall``, evaluations included)."""
    has = df[df["eval/pass@1"].notna()] if "eval/pass@1" in df else df.iloc[0:0]
    return _curves(has if len(has) else df, [("time/wall", "eval/pass@1", "wall-clock (s)", "held-out pass@1 (greedy)")],
                   by=by, order=order, title="Held-out accuracy vs wall-clock")


# --- tables ---------------------------------------------------------------------------------------
def summary_table(df: pd.DataFrame, by: str = GROUP, order: Sequence | None = None) -> pd.DataFrame:
    """Per group: runs, steps, and mean/std over runs of final success (last 10% of steps), final
    stop rate, final mean length, cumulative tokens and total compute time."""
    rows = []
    for key, runs, _ in _by_group(df, by, order):
        per = [r for _, r in runs.groupby("run", sort=False)]
        row = {by: key, "runs": len(per), "steps": int(min(len(r) for r in per))}
        stats = {
            "final_success": [final_mean(r, "success/rate") for r in per],
            "final_stop_rate": [final_mean(r, "stop/rate") if "stop/rate" in r else math.nan for r in per],
            "final_length": [final_mean(r, "length/mean") if "length/mean" in r else math.nan for r in per],
            "tokens": [float(r.sort_values("step")["tokens/cumulative"].iloc[-1]) for r in per],
            "compute_s": [float(r["time/compute"].sum()) if "time/compute" in r else math.nan for r in per],
            "precision": [run_mean(r, "stop/precision") for r in per],
            "recall": [run_mean(r, "stop/recall") for r in per],
        }
        for k, vals in stats.items():
            m, s, _ = mean_std(vals)
            row[k], row[f"{k}_std"] = m, s
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_number(v, digits: int = 3) -> str:
    """Compact text for a table cell: NaN -> '–', thousands with separators, else ``digits`` significant."""
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


def fmt_ms(row, key: str, pct: bool = False, digits: int = 3) -> str:
    """``row[key] ± row[key_std]`` as text for verdicts ("n/a" if undefined; no ± for one seed)."""
    m, s = row[key], row.get(f"{key}_std", math.nan)
    f = (lambda v: f"{v:.1f}%") if pct else (lambda v: f"{v:.{digits}g}")
    if m is None or not np.isfinite(m):
        return "n/a"
    return f"{f(m)} ± {f(s)}" if s is not None and np.isfinite(s) else f(m)


def yes_no(ok: bool, *numbers: float) -> str:
    """"yes"/"no", or "undetermined (missing numbers)" when a number the statement rests on is NaN."""
    if any(x is None or not np.isfinite(x) for x in numbers):
        return "undetermined (missing numbers)"
    return "yes" if ok else "no"


def mean_std_columns(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Merge each ``x`` / ``x_lo`` / ``x_hi`` column triple into one ``x`` text column ``"mean [lo, hi]"``
    (an interval), else each ``x`` / ``x_std`` pair into ``"mean ± std"``."""
    out = {}
    for c in table.columns:
        base = c.rsplit("_", 1)[0] if c.endswith(("_std", "_lo", "_hi")) else None
        if base is not None and base in table:
            continue
        if f"{c}_lo" in table and f"{c}_hi" in table:
            out[c] = [fmt_number(m, digits) if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(m)) else
                      f"{fmt_number(m, digits)} [{fmt_number(lo, digits)}, {fmt_number(hi, digits)}]"
                      for m, lo, hi in zip(table[c], table[f"{c}_lo"], table[f"{c}_hi"])]
        elif f"{c}_std" in table:
            out[c] = [fmt_number(m, digits) if not np.isfinite(s) or not np.isfinite(m) else
                      f"{fmt_number(m, digits)} ± {fmt_number(s, digits)}" for m, s in zip(table[c], table[f"{c}_std"])]
        else:
            out[c] = [fmt_number(v, digits) if isinstance(v, (float, int, np.number)) else str(v) for v in table[c]]
    return pd.DataFrame(out, index=table.index)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table; ``x``/``x_std`` column pairs are shown as ``mean ± std``."""
    t = mean_std_columns(table.reset_index(drop=True), digits)
    cols = list(t.columns)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines)


def text_table(table: pd.DataFrame, digits: int = 3) -> str:
    """The same table as aligned plain text (for stdout)."""
    return mean_std_columns(table.reset_index(drop=True), digits).to_string(index=False)


# --- writers ----------------------------------------------------------------------------------------
def save_figures(figs: dict[str, Figure], out: str | Path, dpi: int = 110) -> list[Path]:
    """Write each figure as ``out/<name>.png`` and close it; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        p = out / f"{name}.png"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def build_figures(plotters: dict[str, Callable[[pd.DataFrame], Figure]], df: pd.DataFrame,
                  errors: list[str] | None = None) -> dict[str, Figure]:
    """Call each plotter; a plotter that fails is reported in ``errors`` instead of stopping the report."""
    figs = {}
    for name, fn in plotters.items():
        try:
            figs[name] = fn(df)
        except Exception as e:  # a figure must not cost the whole report; the report lists the failure
            if errors is None:
                raise
            errors.append(f"{name}: {type(e).__name__}: {e}")
    return figs


GENERIC_PLOTS: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "success_vs_tokens": plot_success_vs_tokens,
    "success_vs_time": plot_success_vs_time,
    "stop_rate": plot_stop_rate,
    "length": plot_length,
    "eval_vs_tokens": plot_eval_vs_tokens,
    "eval_vs_time": plot_eval_vs_time,
}


def plot_runs_cli(run_dirs: list[str], out: str) -> int:
    """``testbed plot RUN_DIR ... --out DIR``: PNGs of :data:`GENERIC_PLOTS` and ``report.md`` in ``out``.

    Each argument may be a run directory or a folder of them. Returns 0, or 2 with a message naming
    the bad directory or file.
    """
    try:
        df = load_runs(run_dirs)
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_p = Path(out)
    errors: list[str] = []
    paths = save_figures(build_figures(GENERIC_PLOTS, df, errors), out_p)
    table = summary_table(df)
    lines = [
        "# Runs", "",
        f"{df['run'].nunique()} runs in {table.shape[0]} groups (a group is a run name without its "
        "`-s<seed>` part; values are mean ± std over its runs). Final values average the last 10% of steps; "
        "precision and recall average every step with a stop.", "",
        markdown_table(table), "",
        "## Runs read", "",
        *[f"- `{d}`" + ("" if c else " (incomplete)") for d, c in
          df.groupby("run_dir", sort=True)["complete"].first().items()], "",
        "## Figures", "",
        *[f"![{p.stem}]({p.name})" for p in paths],
    ]
    if errors:
        lines += ["", "## Figures that failed", "", *[f"- {e}" for e in errors]]
    (out_p / "report.md").write_text("\n".join(lines) + "\n")
    print(text_table(table))
    print(f"wrote {len(paths)} figures and {out_p / 'report.md'}")
    return 0
