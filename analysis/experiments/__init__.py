"""The studies: one package each (bsuite layout), discovered from :data:`REGISTRY` only.

Each study package ``analysis.experiments.<name>`` holds

- ``sweep.py``: settings only (a ``spec(out_dir, quick=False)`` dict in the ``testbed.sweep`` format),
- ``analysis.py``: ``score(df)``, ``verdicts(table)`` and ``plot_*(df)`` functions returning figures,
- ``run.py``: ``main(out=..., workers=2, quick=False, fresh=False) -> int``, the one place that
  launches its runs, then writes ``report.md`` and the figures.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

REGISTRY: dict[str, str] = {
    "espo_headline": "analysis.experiments.espo_headline",
    "espo_difficulty": "analysis.experiments.espo_difficulty",
    "tppo_speedup": "analysis.experiments.tppo_speedup",
    "llm_detection": "analysis.experiments.llm_detection",
    "espo_mechanism": "analysis.experiments.espo_mechanism",
}
"""Study name -> package path. The one list of studies."""


def names() -> list[str]:
    """Registered study names."""
    return list(REGISTRY)


def load(name: str, part: str = "analysis") -> ModuleType:
    """Import one part (``sweep``, ``analysis`` or ``run``) of a registered study."""
    if name not in REGISTRY:
        raise KeyError(f"unknown study {name!r}; registered: {', '.join(REGISTRY)}")
    if part not in ("sweep", "analysis", "run"):
        raise ValueError(f"part must be 'sweep', 'analysis' or 'run', not {part!r}")
    return importlib.import_module(f"{REGISTRY[name]}.{part}")


def entry_point(name: str) -> str:
    """The string entry point of a study's ``main`` (for ``testbed.trainer.load_entry_point``)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown study {name!r}; registered: {', '.join(REGISTRY)}")
    return f"{REGISTRY[name]}.run:main"


# --- shared by the studies' run.py ------------------------------------------------------------------
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

    ``run_specs`` are ``testbed.sweep.RunSpec``-like objects (``name``, ``run_dir``, ``config``).
    Returns ``name -> reason``; a run whose ``stop.reference_run`` is stale is stale too (the random
    rule must be re-matched to a re-run ESPO run).
    """
    import yaml

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


def execute(runner: ModuleType, spec: dict, *, workers: int, fresh: bool, log=print) -> list[dict]:
    """Run a study's sweep with ``runner`` (the ``testbed.sweep`` module, imported by the caller).

    ``fresh`` deletes the sweep's output folder first; otherwise complete runs are kept, except those
    whose settings changed (:func:`stale_runs`), which are deleted and re-run. Prints one line per
    finished run. Returns ``run_sweep``'s rows (one per run, with ``run_dir``).
    """
    import shutil
    import time

    out_dir = Path(spec["out_dir"])
    if fresh and out_dir.exists():
        log(f"--fresh: deleting {out_dir}")
        shutil.rmtree(out_dir)
    _, specs = runner.expand(spec)
    for name, why in stale_runs(specs).items():
        log(f"re-running {name}: {why}")
        shutil.rmtree(out_dir / name)
    todo = sum(not runner.is_complete(r.run_dir) for r in specs)
    log(f"{len(specs)} runs in {out_dir} ({len(specs) - todo} already complete), {workers} workers")
    t0 = time.time()

    def on_done(r, s):
        succ = s.get("final/success_rate")
        log(f"  done {r.name}: final success {succ if succ is None else round(succ, 3)}, "
            f"tokens {s.get('tokens/cumulative')}, {time.time() - t0:.0f}s since start")

    return runner.run_sweep(spec, workers=workers, threads_per_run=1, on_done=on_done, progress=True)


def table_row(table, env: str, method: str):
    """The row of a score table for ``(env, method)``, or None when that method has no runs there."""
    r = table[(table["env"] == env) & (table["method"] == method)]
    return None if r.empty else r.iloc[0]


def study_cli(name: str, main, doc: str | None, argv: list[str] | None = None, *, full: bool = False) -> int:
    """``python -m analysis.experiments.<name>.run``: the same options as ``testbed demo --study <name>``
    (``full``: the study's ``main`` takes ``full=``, a larger version of the study)."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m analysis.experiments.{name}.run", description=doc)
    p.add_argument("--out", default=f"out/{name}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="few steps, one seed: a smoke test")
    p.add_argument("--fresh", action="store_true", help="delete the runs folder first")
    if full:
        p.add_argument("--full", action="store_true", help="more seeds (and methods): the full study")
    a = p.parse_args(argv)
    return main(out=a.out, workers=a.workers, quick=a.quick, fresh=a.fresh, **({"full": a.full} if full else {}))


def write_scores(table, root) -> Path:
    """Write a study's score table as ``root/scores.csv`` (one row per env x method, the columns of its
    report's tables, numbers unformatted) beside its ``report.md``; returns the path."""
    path = Path(root) / "scores.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


VERDICT_COLUMNS = ["claim", "verdict", "mean", "low", "high", "n", "p", "p_holm", "null", "detail"]


def write_verdicts(claims, root) -> Path:
    """Write a report's decided claims (``analysis.stats.Claim``, after ``decide_family``) as
    ``root/verdicts.csv`` beside its ``report.md``, one row per claim; ``analysis.findings`` reads them."""
    import csv

    path = Path(root) / "verdicts.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(VERDICT_COLUMNS)
        for c in claims:
            iv = c.iv
            w.writerow([c.text, c.word, iv.mean, iv.low, iv.high, iv.n, iv.p, c.p_holm, iv.null, c.detail])
    return path


FAMILY_TEXT = ("Each claim is tested with an exact paired sign-flip test over seeds against its threshold; the "
               "claims below with a Holm p-value are one family, Holm-corrected: yes/no only when the Holm p-value "
               "is below 0.05 over at least 8 seeds, otherwise undecided.")
"""How every report's verdicts are decided (``analysis.stats``), said once."""


def write_report(root, lines: list[str], *, table, verdicts, figs, errors: list[str], analysis_module,
                 elapsed: float) -> None:
    """A study's outputs beside each other: ``report.md`` (``lines`` plus :func:`report_tail`),
    ``scores.csv`` and ``verdicts.csv`` (the decided family carried by ``verdicts``)."""
    root = Path(root)
    (root / "report.md").write_text("\n".join(lines + report_tail(figs, errors, analysis_module)))
    write_scores(table, root)
    write_verdicts(getattr(verdicts, "claims", []), root)
    print(f"\nwrote {root / 'report.md'}, {root / 'scores.csv'}, {root / 'verdicts.csv'} and {len(figs)} figures "
          f"({elapsed:.0f}s)")


def report_tail(figs, errors: list[str], analysis_module) -> list[str]:
    """The end of a study's ``report.md``: each figure under its plot function's first doc line, any
    figures that failed, and the analysis module's definitions (its docstring after the first paragraph)."""
    lines = ["## Figures", ""]
    for p in figs:
        doc = (analysis_module.PLOTS[p.stem].__doc__ or "").strip().splitlines()[0]
        lines += [f"### {p.stem}", "", doc, "", f"![{p.stem}]({p.name})", ""]
    if errors:
        lines += ["Figures that failed:", "", *[f"- {e}" for e in errors], ""]
    return lines + ["## Definitions", "", (analysis_module.__doc__ or "").split("\n\n", 1)[-1].strip(), ""]
