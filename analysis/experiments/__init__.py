"""The studies: one package each (bsuite layout: an experiment is a sweep plus an analysis), discovered
from :data:`REGISTRY` only.

Each study package ``analysis.experiments.<name>`` holds

- ``sweep.py``: data only: ``grids(root, quick, full) -> list[dict]``, the sweep specs in the
  ``testbed.ops.sweep`` format (and ``FULL_FOLDER`` where a ``--full`` version exists; and
  ``measurements(quick)`` where each finished run is to be measured, ``testbed.ops.studies.MEASUREMENTS``),
- ``analysis.py``: ``score``/``verdicts`` readers of run directories; ``figures.py`` (where it has
  figures): ``plot_*`` functions and ``PLOTS``, apart from the scores,
- ``report.py``: ``write(run: StudyRun)``: tables, figures, ``report.md``, ``scores.csv``, ``verdicts.csv``.

No study launches runs: the one runner, :func:`testbed.ops.studies.run_study` (``testbed demo``),
executes any registered study's grids and then calls its ``report.write``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REGISTRY: dict[str, str] = {
    "espo_headline": "analysis.experiments.espo_headline",
    "espo_difficulty": "analysis.experiments.espo_difficulty",
    "tppo_speedup": "analysis.experiments.tppo_speedup",
    "llm_detection": "analysis.experiments.llm_detection",
    "espo_mechanism": "analysis.experiments.espo_mechanism",
    "detector_bayes": "analysis.experiments.detector_bayes",
    "espo_regimes": "analysis.experiments.espo_regimes",
    "tppo_regimes": "analysis.experiments.tppo_regimes",
    "llm_long": "analysis.experiments.llm_long",
}
"""Study name -> package path. The one list of studies."""


def names() -> list[str]:
    """Registered study names."""
    return list(REGISTRY)


PARTS = ("sweep", "analysis", "figures", "report")


def load(name: str, part: str = "analysis") -> ModuleType:
    """Import one part (:data:`PARTS`) of a registered study."""
    if name not in REGISTRY:
        raise KeyError(f"unknown study {name!r}; registered: {', '.join(REGISTRY)}")
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    return importlib.import_module(f"{REGISTRY[name]}.{part}")


def has_part(name: str, part: str) -> bool:
    """Whether a registered study has ``part`` (``figures`` is optional)."""
    return importlib.util.find_spec(f"{REGISTRY[name]}.{part}") is not None


@dataclass(frozen=True)
class StudyRun:
    """What the runner hands a study's report: where to write, the grids it ran, their run directories."""

    name: str
    root: Path
    """Output folder of this version of the study (``out``, ``out/quick`` or ``out/<FULL_FOLDER>``)."""
    specs: list[dict]
    """The grids as run (``sweep.grids`` plus any extra overrides)."""
    run_dirs: list[str]
    command: str
    """The shell command that regenerates this report."""
    workers: int
    started: float
    """``time.time()`` when the runner started (reports state their wall-clock)."""
    quick: bool = False
    full: bool = False

    @property
    def spec(self) -> dict:
        """The first (for most studies the only) grid."""
        return self.specs[0]


def report_head(title: str, *, quick: bool, workers: int, command: str, elapsed: float) -> list[str]:
    """The top of every study's ``report.md``: its title (marked when quick), when and how fast it was made,
    and the command that regenerates it."""
    from datetime import datetime

    return [title + (" (QUICK smoke test: not evidence)" if quick else ""), "",
            f"Generated {datetime.now().isoformat(timespec='seconds')} in {elapsed:.0f} s with {workers} workers. "
            "Regenerate with:", "", "```", command, "```", ""]


def table_row(table, env: str, method: str):
    """The row of a score table for ``(env, method)``, or None when that method has no runs there."""
    r = table[(table["env"] == env) & (table["method"] == method)]
    return None if r.empty else r.iloc[0]


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
                 elapsed: float, plots: dict | None = None) -> None:
    """A study's outputs beside each other: ``report.md`` (``lines`` plus :func:`report_tail`),
    ``scores.csv`` and ``verdicts.csv`` (the decided family carried by ``verdicts``)."""
    root = Path(root)
    (root / "report.md").write_text("\n".join(lines + report_tail(figs, errors, analysis_module, plots)))
    write_scores(table, root)
    write_verdicts(getattr(verdicts, "claims", []), root)
    print(f"\nwrote {root / 'report.md'}, {root / 'scores.csv'}, {root / 'verdicts.csv'} and {len(figs)} figures "
          f"({elapsed:.0f}s)")


def report_tail(figs, errors: list[str], analysis_module, plots: dict | None = None) -> list[str]:
    """The end of a study's ``report.md``: each figure under its plot function's first doc line (``plots``:
    the study's ``figures.PLOTS``), any figures that failed, and the analysis module's definitions (its
    docstring after the first paragraph)."""
    lines = ["## Figures", ""] if figs or errors else []
    for p in figs:
        doc = ((plots or {})[p.stem].__doc__ or "").strip().splitlines()[0]
        lines += [f"### {p.stem}", "", doc, "", f"![{p.stem}]({p.name})", ""]
    if errors:
        lines += ["Figures that failed:", "", *[f"- {e}" for e in errors], ""]
    return lines + ["## Definitions", "", (analysis_module.__doc__ or "").split("\n\n", 1)[-1].strip(), ""]
