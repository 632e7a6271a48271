"""The one study runner: execute a registered study's grids, then hand the run directories to its report.

``testbed demo [--study NAME] [--quick] [--full] [--fresh]`` is :func:`run_study`. A study is data and a
reader (:mod:`analysis.experiments`): its ``sweep.grids`` say what to run, its ``report.write`` reads
what ran. Complete runs are reused; a run whose settings changed (its ``config.yaml`` against the grid)
is deleted and re-run, and so is a random run matched to a re-run reference. A study may also ask for a
measurement of each finished run (:data:`MEASUREMENTS`), made before its report reads the runs.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import yaml

from testbed.errors import UserError
from testbed.ops import sweep

DEFAULT_STUDY = "espo_headline"
"""What ``testbed demo`` runs without ``--study``: the headline simulated study."""

MEASUREMENTS = {"exact_posterior": "testbed.ops.exact_posterior:measure_run",
                "stop_value": "testbed.ops.stop_value:measure_run",
                "policy_detect": "testbed.ops.policy_detect:measure_run"}
"""Measurements a study's ``sweep.measurements(quick)`` may ask for on each finished run, by name ->
``measure(run_dir, **kwargs, log=...)`` writing its files into the run directory (kept when present)."""

IGNORED_CONFIG_KEYS = {("run", "progress"), ("run", "threads"), ("run", "out_dir")}
"""Config keys that may differ between a finished run and its spec without making the run stale."""


def config_diff(wanted: dict, found: dict) -> list[str]:
    """``section.key: found -> wanted`` for every resolved config value that differs."""
    diffs = []
    for sec in sorted(set(wanted) | set(found)):
        w, f = wanted.get(sec) or {}, found.get(sec) or {}
        if not isinstance(w, dict) or not isinstance(f, dict):
            if w != f:
                diffs.append(f"{sec}: {f!r} -> {w!r}")
            continue
        for k in sorted(set(w) | set(f)):
            if (sec, k) in IGNORED_CONFIG_KEYS or w.get(k) == f.get(k):
                continue
            if k not in f:
                continue  # a field added since the run was made: it ran with the code's behaviour then
            diffs.append(f"{sec}.{k}: {f.get(k)!r} -> {w.get(k)!r}")
    return diffs


def stale_runs(run_specs) -> dict[str, str]:
    """Existing run directories whose ``config.yaml`` no longer matches the sweep's settings.

    ``run_specs`` are :class:`testbed.ops.sweep.RunSpec`-like objects (``name``, ``run_dir``, ``config``).
    Returns ``name -> reason``; a run whose ``stop.reference_run`` is stale is stale too (the random
    rule must be re-matched to a re-run ESPO run).
    """
    stale: dict[str, str] = {}
    by_dir = {str(Path(r.run_dir).resolve()): r.name for r in run_specs}
    for r in run_specs:
        p = Path(r.run_dir) / "config.yaml"
        if not p.is_file():
            continue
        try:
            found = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            stale[r.name] = f"unreadable {p}"
            continue
        diff = config_diff(r.config, found)
        if diff:
            stale[r.name] = "settings changed: " + ", ".join(diff[:4]) + (" ..." if len(diff) > 4 else "")
    changed = True
    while changed:  # propagate through reference runs
        changed = False
        for r in run_specs:
            ref = (r.config.get("stop") or {}).get("reference_run") or ""
            dep = by_dir.get(str(Path(ref).resolve())) if ref else None
            if dep in stale and r.name not in stale and (Path(r.run_dir) / "config.yaml").is_file():
                stale[r.name] = f"its reference run {dep} is re-run"
                changed = True
    return stale


def execute(spec: dict, *, workers: int, fresh: bool, log=print) -> list[dict]:
    """Run one grid of a study with :mod:`testbed.ops.sweep`.

    ``fresh`` deletes the sweep's output folder first; otherwise complete runs are kept, except those
    whose settings changed (:func:`stale_runs`), which are deleted and re-run. Prints one line per
    finished run. Returns ``run_sweep``'s rows (one per run, with ``run_dir``).
    """
    out_dir = Path(spec["out_dir"])
    if fresh and out_dir.exists():
        log(f"--fresh: deleting {out_dir}")
        shutil.rmtree(out_dir)
    _, specs = sweep.expand(spec)
    for name, why in stale_runs(specs).items():
        log(f"re-running {name}: {why}")
        shutil.rmtree(out_dir / name)
    todo = sum(not sweep.is_complete(r.run_dir) for r in specs)
    log(f"{len(specs)} runs in {out_dir} ({len(specs) - todo} already complete), {workers} workers")
    t0 = time.time()

    def on_done(r, s):
        succ = s.get("final/success_rate")
        log(f"  done {r.name}: final success {succ if succ is None else round(succ, 3)}, "
            f"tokens {s.get('tokens/cumulative')}, {time.time() - t0:.0f}s since start")

    return sweep.run_sweep(spec, workers=workers, threads_per_run=1, on_done=on_done, progress=True)


def study_root(out: str | Path, *, quick: bool, full: bool, full_folder: str | None) -> Path:
    """The folder of this version of a study: ``out/quick``, ``out/<full_folder>`` or ``out``."""
    out = Path(out)
    return out / "quick" if quick else out / full_folder if full and full_folder else out


def command(name: str, out: str | Path, *, workers: int, quick: bool, full: bool, fresh: bool) -> str:
    """The shell command that regenerates a study's report (written at the top of the report)."""
    return " ".join(["testbed", "demo"] + (["--study", name] if name != DEFAULT_STUDY else [])
                    + ["--out", shlex.quote(str(out)), "--workers", str(workers)]
                    + (["--quick"] if quick else []) + (["--full"] if full else []) + (["--fresh"] if fresh else []))


def measure(wanted: dict[str, dict], run_dirs: list[str], *, log=print) -> None:
    """Each measurement of ``wanted`` (name -> keyword arguments, :data:`MEASUREMENTS`) on every run."""
    from testbed.ops.build import load_entry_point

    for name, kwargs in wanted.items():
        if name not in MEASUREMENTS:
            raise UserError(f"measurements: unknown {name!r}; valid: {', '.join(MEASUREMENTS)}")
        fn = load_entry_point(MEASUREMENTS[name])
        for d in run_dirs:
            fn(d, **kwargs, log=log)


def run_study(name: str = DEFAULT_STUDY, out: str | Path = "", *, workers: int = 2, quick: bool = False,
              fresh: bool = False, full: bool = False, extra: dict | None = None, log=print) -> int:
    """Run (or resume) study ``name``'s grids under ``out`` (default ``out/<name>``), then write its report.

    ``quick``: the study's smoke-test settings in ``out/quick`` (never mixed with the real runs);
    ``full``: its full version (more seeds or methods), where it has one; ``fresh``: delete the grids'
    run folders first; ``extra``: overrides added to every run (tests use a tiny model). Returns 0.
    """
    from analysis import experiments  # the studies' data and readers, loaded when one is run

    try:
        grid = experiments.load(name, "sweep")
    except KeyError as e:
        raise UserError(f"--study: {e.args[0]}") from None
    full_folder = getattr(grid, "FULL_FOLDER", None)
    if full and full_folder is None:
        raise UserError(f"--full: study {name} has no full version")
    if workers < 1:
        raise UserError(f"--workers: must be >= 1, got {workers}")
    started = time.time()
    out = out or f"out/{name}"
    root = study_root(out, quick=quick, full=full, full_folder=full_folder)
    specs = grid.grids(root, quick=quick, full=full)
    if extra:
        specs = [{**s, "overrides": {**s.get("overrides", {}), **extra}} for s in specs]
    if fresh:  # each run folder once, before any grid runs (grids may share one)
        for d in dict.fromkeys(Path(s["out_dir"]) for s in specs):
            if d.exists():
                log(f"--fresh: deleting {d}")
                shutil.rmtree(d)
    rows = [r for s in specs for r in execute(s, workers=workers, fresh=False, log=log)]
    measure(getattr(grid, "measurements", lambda quick: {})(quick), [r["run_dir"] for r in rows], log=log)
    run = experiments.StudyRun(name=name, root=root, specs=specs, run_dirs=[r["run_dir"] for r in rows],
                               command=command(name, out, workers=workers, quick=quick, full=full, fresh=fresh),
                               workers=workers, started=started, quick=quick, full=full)
    root.mkdir(parents=True, exist_ok=True)
    experiments.load(name, "report").write(run)
    return 0
