"""The one study runner: execute a registered study's grids, then hand the run directories to its report.

``testbed demo [--study NAME] [--quick] [--full] [--fresh]`` is :func:`run_study`. A study is data and a
reader (:mod:`analysis.experiments`): its ``sweep.grids`` say what to run, its ``report.write`` reads
what ran. Complete runs are reused; a run whose settings changed (its ``config.yaml`` against the grid)
is deleted and re-run, and so is a random run matched to a re-run reference. A study may also ask for a
measurement of each finished run (:data:`MEASUREMENTS`), made before its report reads the runs.

A study too costly for one sitting names an ``ARCHIVE`` folder in its ``sweep`` module (committed with the
project): each run, once finished and measured, has its records (everything but its checkpoints) copied
there, and a later sitting, on any machine, restores them instead of re-running (:func:`restore_runs`).
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
                "policy_detect": "testbed.ops.policy_detect:measure_run",
                "sampled_success": "testbed.ops.evaluate:measure_sampled"}
"""Measurements a study's ``sweep.measurements(quick)`` may ask for on each finished run, by name ->
``measure(run_dir, **kwargs, log=...)`` writing its files into the run directory (kept when present)."""

IGNORED_CONFIG_KEYS = {("run", "progress"), ("run", "threads"), ("run", "out_dir"), ("run", "sft_cache")}
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


ARCHIVE_LEFT_OUT = ("checkpoints", "run.lock")
"""What a run's archived copy leaves out: the weights (hundreds of MB a run) and the lock."""


def archive_run(run_dir: str | Path, archive: str | Path) -> Path:
    """Copy a finished run's records to ``archive/<run name>``, replacing an older copy whole (the new
    copy is written beside it and renamed in). Returns the copy's folder."""
    run_dir, archive = Path(run_dir), Path(archive)
    if not sweep.is_complete(run_dir):
        raise UserError(f"{run_dir}: not a finished run (summary.json says it is not complete); nothing archived")
    dest = archive / run_dir.name
    if dest.resolve() == run_dir.resolve():  # the study's run folder is its archive (``--out`` of the docs)
        return dest
    tmp = archive / f".{run_dir.name}.tmp"
    archive.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run_dir, tmp, ignore=lambda folder, names: [n for n in names if n in ARCHIVE_LEFT_OUT])
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def restore_runs(archive: str | Path, out_dir: str | Path, names, *, log=print) -> list[str]:
    """Copy the archived finished runs among ``names`` into ``out_dir`` where ``out_dir`` has no folder of
    that name; returns the names restored. Paths inside a copy's ``config.yaml`` (``run.out_dir``, and a
    ``stop.reference_run`` inside the old run folder) are moved to ``out_dir``, so the stale check compares
    settings, not where the runs were made."""
    archive, out_dir = Path(archive), Path(out_dir)
    restored = []
    for name in names:
        src, dest = archive / name, out_dir / name
        if dest.exists() or not sweep.is_complete(src):
            continue
        shutil.copytree(src, dest)
        cfg_path = dest / "config.yaml"
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{cfg_path}: cannot read the archived run's config: {e}") from None
        old = str((cfg.get("run") or {}).get("out_dir") or "")
        stop = cfg.get("stop") or {}
        ref = str(stop.get("reference_run") or "")
        if old and ref and Path(ref).parent == Path(old):
            stop["reference_run"] = str(out_dir / Path(ref).name)
        cfg.setdefault("run", {})["out_dir"] = str(out_dir)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        restored.append(name)
    if restored:
        log(f"restored {len(restored)} finished runs from {archive}")
    return restored


def execute(spec: dict, *, workers: int, fresh: bool, log=print, after_run=None) -> list[dict]:
    """Run one grid of a study with :mod:`testbed.ops.sweep`.

    ``fresh`` deletes the sweep's output folder first; otherwise complete runs are kept, except those
    whose settings changed (:func:`stale_runs`), which are deleted and re-run. Prints one line per
    finished run, and calls ``after_run(run_dir)`` on each run that finished here. Returns ``run_sweep``'s
    rows (one per run, with ``run_dir``).
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
        if after_run is not None and s.get("complete"):
            after_run(r.run_dir)

    return sweep.run_sweep(spec, workers=workers, threads_per_run=1, on_done=on_done, progress=True)


def study_root(out: str | Path, *, quick: bool, full: bool, full_folder: str | None) -> Path:
    """The folder of this version of a study: ``out/quick``, ``out/<full_folder>`` or ``out``."""
    out = Path(out)
    return out / "quick" if quick else out / full_folder if full and full_folder else out


def command(name: str, out: str | Path, *, workers: int, quick: bool, full: bool, fresh: bool,
            report_only: bool = False) -> str:
    """The shell command that regenerates a study's report (written at the top of the report)."""
    return " ".join(["testbed", "demo"] + (["--study", name] if name != DEFAULT_STUDY else [])
                    + ["--out", shlex.quote(str(out)), "--workers", str(workers)]
                    + (["--quick"] if quick else []) + (["--full"] if full else []) + (["--fresh"] if fresh else [])
                    + (["--report-only"] if report_only else []))


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
              fresh: bool = False, full: bool = False, extra: dict | None = None, archive: str | Path | None = None,
              report_only: bool = False, log=print) -> int:
    """Run (or resume) study ``name``'s grids under ``out`` (default ``out/<name>``), then write its report.

    ``quick``: the study's smoke-test settings in ``out/quick`` (never mixed with the real runs);
    ``full``: its full version (more seeds or methods), where it has one; ``fresh``: delete the grids'
    run folders first; ``extra``: overrides added to every run (tests use a tiny model); ``archive``: the
    folder of finished runs' records to restore from and add to (default: the study's ``ARCHIVE`` for its
    real runs; never for ``quick`` or ``extra`` runs unless given); ``report_only``: run nothing, write the
    report from the runs finished so far (a study completed over several sittings). Returns 0.
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
    if fresh and report_only:
        raise UserError("--fresh with --report-only would delete the runs the report is to read")
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
    if archive is None and not (quick or extra):
        archive = getattr(grid, "ARCHIVE", None)
    if archive is not None:
        for s in specs:
            restore_runs(archive, s["out_dir"], [r.name for r in sweep.expand(s)[1]], log=log)
    wanted = getattr(grid, "measurements", lambda quick: {})(quick)

    def after_run(run_dir: Path) -> None:  # measured and archived at once: a later sitting has no checkpoints
        measure(wanted, [str(run_dir)], log=log)
        if archive is not None:
            archive_run(run_dir, archive)

    if archive is not None:  # runs finished here by an earlier, interrupted sitting: kept before anything runs
        for s in specs:
            for r in sweep.expand(s)[1]:
                if sweep.is_complete(r.run_dir) and not (Path(archive) / r.name).exists():
                    after_run(r.run_dir)
    if report_only:  # the runs finished so far, as they are
        found = [{"run_dir": str(r.run_dir)} for s in specs for r in sweep.expand(s)[1] if sweep.is_complete(r.run_dir)]
        log(f"--report-only: {len(found)} finished runs of {sum(len(sweep.expand(s)[1]) for s in specs)}")
        if not found:
            raise UserError(f"--report-only: no finished run of study {name} in {root}")
        rows = found
    else:
        rows = [r for s in specs for r in execute(s, workers=workers, fresh=False, log=log, after_run=after_run)]
    measure(wanted, [r["run_dir"] for r in rows], log=log)
    # by name, not in the order runs finished: a report's float sums then come out the same in every sitting
    run_dirs = sorted(dict.fromkeys(r["run_dir"] for r in rows), key=lambda d: Path(d).name)
    run = experiments.StudyRun(name=name, root=root, specs=specs, run_dirs=run_dirs,
                               command=command(name, out, workers=workers, quick=quick, full=full, fresh=fresh,
                                               report_only=report_only),
                               workers=workers, started=started, quick=quick, full=full)
    root.mkdir(parents=True, exist_ok=True)
    experiments.load(name, "report").write(run)
    return 0
