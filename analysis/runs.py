"""Load run directories into pandas, and the per-run reductions every study uses.

A run directory (``testbed run``) holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one JSON
object per training step) and ``summary.json``. :func:`load_runs` turns any number of them into one
long table, one row per (run, training step):

========================  ==============================================================
column                    meaning
========================  ==============================================================
``run``                   run name (``run.name``; the run directory's name)
``run_dir``               the directory it was read from
``group``                 the run name without its seed part (``espo-trap-s1`` -> ``espo-trap``)
``label/<axis>``          sweep labels: from the parent's ``sweep_summary.jsonl`` when it lists the
                          run, else from the name's ``-``-separated parts (see ``axes``)
``config/<sec>.<key>``    every resolved config value (dicts as JSON text)
``complete``              ``summary.json``'s flag (False when there is no summary yet)
``nostop/<key>``          ``final_eval_nostop.json``'s numbers (the final policy without stopping), if any
``final/<key>``           ``final_eval.json``'s numbers (held-out evaluation after the last step:
                          ``final/pass@1``, ``final/step``, ...), if any
``sampled/<key>``         ``final_eval_sampled.json``'s numbers (the final policy sampled, each problem k
                          times: ``sampled/success``; the ``sampled_success`` measurement), if any
every metric key          as logged (``success/rate``, ``stop/step_hist`` as a list, ...); null -> NaN
``time/compute``          ``time/gen + time/actor + time/critic`` of the step (derived)
``time/compute_cumulative``  its running sum over the run (derived)
========================  ==============================================================

Simulated runs also write ``rows.jsonl``: per training step, one entry per row that finished that
step (``{"step", "length", "ending", "failure_step", "success"}``, parallel lists). :func:`load_rows`
turns it into one row per finished row (columns :data:`ROW_COLUMNS`); a run without the file (LLM
runs) gives an empty table, a malformed line raises :class:`RunDirError` naming ``path:line``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from testbed.metrics import REQUIRED_KEYS, iter_jsonl, read_metrics

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
ROWS_FILE = "rows.jsonl"
"""Per-row outcomes of finished rows (simulated tasks only)."""
EOS, LENGTH_CAP, WINDOW_CUT, EARLY_STOP = 0, 1, 2, 3
"""``ending`` codes of ``rows.jsonl``: the values of ``testbed.rollout.Ending`` (not importable here:
it needs torch; tests/analysis checks the two agree)."""
ROW_LISTS = ("length", "ending", "failure_step", "success")
ROW_COLUMNS = ("run", "step", "length", "ending", "failure_step", "success", "stopped", "doomed")
"""Columns of :func:`load_rows`."""
SWEEP_SUMMARY = "sweep_summary.jsonl"
SEED_PART = re.compile(r"^s(-?\d+)$")
TIME_PARTS = ("time/gen", "time/actor", "time/critic")


class RunDirError(ValueError):
    """A run directory is missing a file or holds a malformed one; the message names the path."""


def _jsonl(path: Path):
    """:func:`testbed.metrics.iter_jsonl`, its ``path:line`` errors raised as :class:`RunDirError`."""
    try:
        yield from iter_jsonl(path)
    except ValueError as e:
        raise RunDirError(str(e)) from None


# --- one run ----------------------------------------------------------------------------------------
def load_run(run_dir: str | Path, *, require_summary: bool = True) -> dict[str, Any]:
    """Read one run directory.

    Returns ``{"name", "dir", "config": dict, "metrics": DataFrame (one row per step, sorted by step),
    "summary": dict, "nostop": dict, "final": dict, "sampled": dict}`` (the last three: ``final_eval_nostop.json``,
    ``final_eval.json`` and ``final_eval_sampled.json``, ``{}`` when absent). A missing or malformed file raises :class:`RunDirError` naming it (a bad
    ``metrics.jsonl`` line is named as ``path:line``). ``require_summary=False`` accepts a run that
    is still going (its summary is then ``{}``).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d}: not a run directory (no such folder)")
    cfg_path, met_path, sum_path = (d / f for f in RUN_FILES)
    for p in (cfg_path, met_path) + ((sum_path,) if require_summary else ()):
        if not p.is_file():
            raise RunDirError(f"{d}: missing {p.name} (expected {', '.join(RUN_FILES)})")

    try:
        config = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise RunDirError(f"{cfg_path}: not valid YAML ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("run"), dict):
        raise RunDirError(f"{cfg_path}: expected a mapping with a 'run' section")

    try:
        records = read_metrics(met_path)
    except ValueError as e:  # read_metrics names the file and line
        raise RunDirError(str(e)) from None
    if not records:
        raise RunDirError(f"{met_path}: no records")
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise RunDirError(f"{met_path}:{n}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in ("step", "tokens/cumulative", "success/rate") if k not in rec]
        if missing:
            raise RunDirError(f"{met_path}:{n}: record lacks {missing}")
    metrics = pd.DataFrame.from_records(records)
    for k in metrics.columns:  # JSON null -> NaN in numeric columns; lists (stop/step_hist) stay objects
        if metrics[k].dtype == object and all(v is None or isinstance(v, (int, float)) for v in metrics[k]):
            metrics[k] = pd.to_numeric(metrics[k], errors="coerce").astype(float)
    metrics = metrics.sort_values("step", kind="stable").reset_index(drop=True)
    if metrics["step"].duplicated().any():
        dup = metrics.loc[metrics["step"].duplicated(), "step"].iloc[0]
        raise RunDirError(f"{met_path}: step {dup} logged twice")
    if all(k in metrics for k in TIME_PARTS):
        metrics["time/compute"] = metrics[list(TIME_PARTS)].fillna(0.0).sum(axis=1)
        metrics["time/compute_cumulative"] = metrics["time/compute"].cumsum()

    summary = _optional_json(sum_path)
    # the final policy: without stopping (run.final_eval_rows), and held out after the last step (run.eval_every)
    nostop, final, sampled = (_optional_json(d / f) for f in ("final_eval_nostop.json", "final_eval.json",
                                                              "final_eval_sampled.json"))
    name = str(config["run"].get("name") or d.name)
    return {"name": name, "dir": d, "config": config, "metrics": metrics, "summary": summary, "nostop": nostop,
            "final": final, "sampled": sampled}


def _optional_json(path: Path) -> dict[str, Any]:
    """A run's optional JSON object (``{}`` when absent); malformed content raises naming the file."""
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return out


# --- per-row outcomes (rows.jsonl) ------------------------------------------------------------------
def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "run": pd.Series(dtype=object), "step": pd.Series(dtype=np.int64), "length": pd.Series(dtype=np.int64),
        "ending": pd.Series(dtype=np.int64), "failure_step": pd.Series(dtype=np.int64),
        "success": pd.Series(dtype=float), "stopped": pd.Series(dtype=bool), "doomed": pd.Series(dtype=bool),
    })


def _int_list(p: Path, n: int, key: str, vals) -> np.ndarray:
    if not isinstance(vals, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise RunDirError(f"{p}:{n}: {key!r} must be a list of integers")
    return np.asarray(vals, dtype=np.int64)


def load_rows(run_dir: str | Path, name: str | None = None) -> pd.DataFrame:
    """One row per finished row of a run, from its ``rows.jsonl`` (see the module docstring).

    Columns :data:`ROW_COLUMNS`: ``run`` (``name``, else ``config.yaml``'s ``run.name``, else the
    directory's name), ``step`` (training step the row finished in), ``length`` (response tokens; the
    last token's index is ``length - 1``, a stopped row's stop position), ``ending`` (code, see
    :data:`EARLY_STOP`), ``failure_step`` (planted fatal-token index, -1 none), ``success`` (1/0, NaN
    when not logged), and derived ``stopped`` (``ending == EARLY_STOP``) and ``doomed`` (``0 <=
    failure_step <= length - 1``: the row held its fatal token when it ended).

    A run without ``rows.jsonl`` gives an empty table with those columns. A line that is not a JSON
    object, lacks a key, holds lists of different lengths or non-integers, an unknown ending code, a
    length below 1 or a failure step below -1 raises :class:`RunDirError` naming ``path:line``.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d}: not a run directory (no such folder)")
    if name is None:
        name = d.name
        cfg_path = d / "config.yaml"
        if cfg_path.is_file():
            try:
                cfg = yaml.safe_load(cfg_path.read_text())
            except yaml.YAMLError as e:
                raise RunDirError(f"{cfg_path}: not valid YAML ({e})") from None
            if isinstance(cfg, dict) and isinstance(cfg.get("run"), dict) and cfg["run"].get("name"):
                name = str(cfg["run"]["name"])
    p = d / ROWS_FILE
    if not p.is_file():
        return _empty_rows()
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("step", *ROW_LISTS)}
    seen: dict[int, int] = {}
    for n, rec in _jsonl(p):
        missing = [k for k in ("step", "length", "ending", "failure_step") if k not in rec]
        if missing:
            raise RunDirError(f"{p}:{n}: record lacks {missing}")
        step = rec["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RunDirError(f"{p}:{n}: 'step' must be a non-negative integer, got {step!r}")
        if step in seen:
            raise RunDirError(f"{p}:{n}: step {step} already logged on line {seen[step]}")
        seen[step] = n
        length, ending, fail = (_int_list(p, n, k, rec[k]) for k in ("length", "ending", "failure_step"))
        succ = rec.get("success") or []  # [] when the task reports no success
        succ = _int_list(p, n, "success", succ).astype(float) if len(succ) else np.full(len(length), np.nan)
        sizes = {"length": len(length), "ending": len(ending), "failure_step": len(fail), "success": len(succ)}
        if len(set(sizes.values())) > 1:
            raise RunDirError(f"{p}:{n}: lists of different lengths {sizes}")
        if len(length) and length.min() < 1:
            raise RunDirError(f"{p}:{n}: 'length' must be >= 1, got {int(length.min())}")
        bad = sorted(set(ending.tolist()) - {EOS, LENGTH_CAP, WINDOW_CUT, EARLY_STOP})
        if bad:
            raise RunDirError(f"{p}:{n}: unknown 'ending' code(s) {bad} (expected 0 EOS, 1 LENGTH_CAP, "
                              "2 WINDOW_CUT, 3 EARLY_STOP)")
        if len(fail) and fail.min() < -1:
            raise RunDirError(f"{p}:{n}: 'failure_step' must be >= -1, got {int(fail.min())}")
        cols["step"].append(np.full(len(length), step, dtype=np.int64))
        for k, v in zip(ROW_LISTS, (length, ending, fail, succ)):
            cols[k].append(v)
    if not cols["step"]:
        return _empty_rows()
    out = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    out.insert(0, "run", name)
    out["stopped"] = out["ending"] == EARLY_STOP
    out["doomed"] = (out["failure_step"] >= 0) & (out["failure_step"] <= out["length"] - 1)
    return out.sort_values("step", kind="stable").reset_index(drop=True)


def load_many_rows(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """:func:`load_rows` of every run directory among ``paths`` (as :func:`load_runs` finds them),
    concatenated; runs without ``rows.jsonl`` contribute nothing (the result may be empty)."""
    frames = [f for f in (load_rows(d) for d in find_run_dirs(paths)) if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else _empty_rows()


# --- many runs --------------------------------------------------------------------------------------
def find_run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run directory or a folder of them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file() or (p / "metrics.jsonl").is_file():
            out.append(p)
        elif p.is_dir():
            kids = sorted(c for c in p.iterdir() if c.is_dir() and (c / "config.yaml").is_file())
            if not kids:
                raise RunDirError(f"{p}: neither a run directory (config.yaml, metrics.jsonl) nor a folder of them")
            out += kids
        else:
            raise RunDirError(f"{p}: no such run directory")
    return out


def _sweep_labels(folder: Path, cache: dict[Path, dict[str, dict]]) -> dict[str, dict]:
    """``name -> {label/<axis>: value}`` from ``folder/sweep_summary.jsonl`` (empty if there is none)."""
    if folder not in cache:
        rows: dict[str, dict] = {}
        p = folder / SWEEP_SUMMARY
        if p.is_file():
            for _, r in _jsonl(p):
                if "name" in r:
                    rows[str(r["name"])] = {k: v for k, v in r.items() if k.startswith("label/")}
        cache[folder] = rows
    return cache[folder]


def name_labels(name: str, axes: Sequence[str] | None = None) -> dict[str, Any]:
    """Labels from a run name built by joining axis labels with ``-`` (``espo-trap-s1``).

    With ``axes`` (e.g. ``("method", "env", "seed")``) and as many parts, the parts are those axes;
    otherwise a trailing ``s<int>`` part is the seed and the other parts are ``part0``, ``part1``, ...
    A seed part ``s<int>`` becomes the integer.
    """
    parts = name.split("-")
    if axes is not None and len(parts) == len(axes):
        keys = list(axes)
    else:
        keys = [f"part{i}" for i in range(len(parts))]
        if len(parts) > 1 and SEED_PART.match(parts[-1]):
            keys[-1] = "seed"
    out = {}
    for k, v in zip(keys, parts):
        m = SEED_PART.match(v)
        out[f"label/{k}"] = int(m.group(1)) if (k == "seed" and m) else v
    return out


def _group_name(name: str) -> str:
    parts = name.split("-")
    kept = [p for p in parts if not SEED_PART.match(p)]
    return "-".join(kept) if kept else name


def _flat_config(config: dict) -> dict[str, Any]:
    out = {}
    for sec, vals in config.items():
        if not isinstance(vals, dict):
            continue
        for k, v in vals.items():
            out[f"config/{sec}.{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return out


def load_runs(paths: str | Path | Iterable[str | Path], *, axes: Sequence[str] | None = None,
              require_summary: bool = False) -> pd.DataFrame:
    """One long DataFrame (one row per run and step) from run directories or folders of them.

    ``axes`` names the parts of run names when no ``sweep_summary.jsonl`` lists the run (see
    :func:`name_labels`). Runs without a summary yet are included (``complete`` False) unless
    ``require_summary``. Errors name the directory or file at fault.
    """
    dirs = find_run_dirs(paths)
    if not dirs:
        raise RunDirError(f"{paths}: no run directories")
    cache: dict[Path, dict[str, dict]] = {}
    frames = []
    for d in dirs:
        r = load_run(d, require_summary=require_summary)
        name = r["name"]
        labels = _sweep_labels(d.parent, cache).get(name) or _sweep_labels(d.parent, cache).get(d.name)
        if not labels:
            labels = name_labels(name, axes)
        m = r["metrics"].copy()
        const = {"run": name, "run_dir": str(d), "group": _group_name(name), **labels,
                 **_flat_config(r["config"]), "complete": bool(r["summary"].get("complete", False)),
                 **{f"nostop/{k}": v for k, v in r["nostop"].items() if isinstance(v, (int, float))},
                 **{f"final/{k.removeprefix('eval/')}": v for k, v in r["final"].items() if isinstance(v, (int, float))},
                 **{f"sampled/{k}": v for k, v in r["sampled"].items() if isinstance(v, (int, float))}}
        const_df = pd.DataFrame({k: [v] * len(m) for k, v in const.items()}, index=m.index)
        frames.append(pd.concat([const_df, m], axis=1))
    df = pd.concat(frames, ignore_index=True, sort=False)
    if df["run"].duplicated().any() and df.groupby("run")["run_dir"].nunique().max() > 1:
        dup = df.groupby("run")["run_dir"].nunique()
        raise RunDirError(f"two run directories share the run name {dup[dup > 1].index[0]!r}: "
                          f"{sorted(df.loc[df['run'] == dup[dup > 1].index[0], 'run_dir'].unique())}")
    return df


# --- per-run reductions (shared by the studies) -----------------------------------------------------
def tail_len(n_steps: int, frac: float = 0.1) -> int:
    """Number of final steps that make up "the last ``frac`` of training" (at least 1)."""
    return max(1, int(n_steps * frac))


def final_mean(run: pd.DataFrame, key: str, frac: float = 0.1) -> float:
    """Mean of ``key`` over the last ``frac`` of a run's steps (NaNs skipped), as ``summary.json`` does."""
    vals = run.sort_values("step")[key].to_numpy(dtype=float)
    tail = vals[-tail_len(len(vals), frac):]
    tail = tail[~np.isnan(tail)]
    return float(tail.mean()) if len(tail) else math.nan


def run_mean(run: pd.DataFrame, key: str) -> float:
    """Mean of ``key`` over every step where it is defined (NaN if never, or not logged)."""
    if key not in run:
        return math.nan
    vals = run[key].to_numpy(dtype=float)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if len(vals) else math.nan


def value_at_step(run: pd.DataFrame, key: str, step: int) -> float:
    """``key`` at the last logged step ``<= step``."""
    r = run[run["step"] <= step]
    return float(r.sort_values("step")[key].iloc[-1]) if len(r) else math.nan


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (NaNs skipped); the first points average what exists so far."""
    s = pd.Series(np.asarray(values, dtype=float))
    return s.rolling(max(1, int(window)), min_periods=1).mean().to_numpy()


def first_reach(run: pd.DataFrame, level: float, *, y: str = "success/rate", x: str = "tokens/cumulative",
                window: int | None = None) -> float:
    """``x`` at the first step whose smoothed ``y`` (trailing mean over ``window`` steps, default 10% of
    the run) is ``>= level``; NaN if it never is."""
    r = run.sort_values("step")
    w = tail_len(len(r)) if window is None else window
    ys = smooth(r[y].to_numpy(dtype=float), w)
    hit = np.nonzero(ys >= level)[0]
    return float(r[x].iloc[hit[0]]) if len(hit) else math.nan


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample std (NaN for fewer than two values) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def curve_stack(runs: pd.DataFrame, x: str, y: str, *, window: int | None = None,
                points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed ``y`` against ``x`` of every run, interpolated on a common grid: ``(grid, ys)`` with ys
    ``(runs, points)``.

    The grid spans 0 to the smallest final ``x`` among the runs (so every run covers it). Steps where
    ``y`` or ``x`` is NaN are dropped.
    """
    curves = []
    for _, r in runs.groupby("run", sort=False):
        r = r.sort_values("step")
        xs, ys = r[x].to_numpy(dtype=float), r[y].to_numpy(dtype=float)
        ok = ~np.isnan(xs) & ~np.isnan(ys)
        if ok.sum() == 0:
            continue
        w = tail_len(len(r), 0.05) if window is None else window
        curves.append((xs[ok], smooth(ys[ok], w)))
    if not curves:
        return np.array([]), np.zeros((0, 0))
    hi = min(c[0][-1] for c in curves)
    lo = max(min(c[0][0] for c in curves), 0.0) if hi > 0 else 0.0
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([hi])
    return grid, np.stack([np.interp(grid, cx, cy) for cx, cy in curves])


def curve_band(runs: pd.DataFrame, x: str, y: str, *, window: int | None = None,
               points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of :func:`curve_stack`'s curves (a single run gives std 0)."""
    grid, ys = curve_stack(runs, x, y, window=window, points=points)
    if not len(grid):
        return np.array([]), np.array([]), np.array([])
    return grid, ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(len(grid))


__all__ = [
    "RunDirError", "REQUIRED_KEYS", "load_run", "load_runs", "load_rows", "load_many_rows", "ROW_COLUMNS",
    "EOS", "LENGTH_CAP", "WINDOW_CUT", "EARLY_STOP", "find_run_dirs", "name_labels", "final_mean",
    "run_mean", "value_at_step", "smooth", "first_reach", "mean_std", "curve_band", "curve_stack", "tail_len",
]
