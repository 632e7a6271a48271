"""Run the ESPO difficulty study end to end: sweep, score table, reading, one figure per knob,
``report.md`` and ``scores.csv``.

``testbed demo --study espo_difficulty`` calls :func:`main`; so does
``python -m analysis.experiments.espo_difficulty.run``.
"""

from __future__ import annotations

import importlib
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from analysis import experiments
from analysis.experiments import FAMILY_TEXT, study_cli, write_report
from analysis.experiments.espo_difficulty import analysis, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_many_rows, load_runs

STUDY = "espo_difficulty"


def main(out: str = "out/espo_difficulty", workers: int = 2, quick: bool = False, fresh: bool = False,
         full: bool = False) -> int:
    """Run (or resume) the sweep into ``out/runs`` and write the report (``quick``: ``out/quick``;
    ``full``: :data:`sweep.FULL_SEEDS` in ``out/full``). Returns 0."""
    t0 = time.time()
    root = Path(out) / "quick" if quick else Path(out) / "full" if full else Path(out)
    spec = sweep.spec(root / "runs", quick=quick, full=full)
    rows = experiments.execute(importlib.import_module("testbed.sweep"), spec, workers=workers, fresh=fresh)
    run_dirs = [r["run_dir"] for r in rows]
    df = load_runs(run_dirs, axes=sweep.AXES)
    pr = analysis.per_run(df, load_many_rows(run_dirs))
    table = analysis.score(pr)
    lines_read = analysis.verdicts(table)
    # the p-values stay in scores.csv; the table shows means and intervals
    shown = table[[c for c in table.columns if not c.endswith("_p")
                   and (c.rsplit("_", 1)[0] in analysis.COLUMNS or c in analysis.COLUMNS)]]
    print(text_table(shown), "", *lines_read, sep="\n")
    errors: list[str] = []
    figs = save_figures(build_figures(analysis.PLOTS, table, errors), root)
    elapsed = time.time() - t0
    cmd = " ".join(["testbed", "demo", "--study", STUDY, "--out", shlex.quote(str(out)), "--workers", str(workers)]
                   + (["--quick"] if quick else []) + (["--full"] if full else []) + (["--fresh"] if fresh else []))
    lines = [
        f"# ESPO difficulty study" + (" (QUICK smoke test: not evidence)" if quick else ""), "",
        f"Generated {datetime.now().isoformat(timespec='seconds')} in {elapsed:.0f} s with {workers} workers. "
        "Regenerate with:", "", "```", cmd, "```", "",
        "## Settings", "",
        f"- base: the headline's presets (`configs/ppo.yaml`, ESPO = `configs/espo.yaml`), env "
        "`testbed/PlantedFailure-v0`; one knob at a time:",
        *[f"  - {sweep.LABELS[k]}: default {sweep.DEFAULTS[k]:g}; "
          + "; ".join(f"{v:g} `{json.dumps(ov)}`" for v, ov in vals.items()) for k, vals in sweep.KNOBS.items()],
        f"- methods: {', '.join(sweep.METHODS)}; seeds {sorted(df['label/seed'].unique().tolist())}", "",
        "## Scores (mean [95% Student-t interval] over seeds; differences paired by seed)", "",
        markdown_table(shown), "",
        "## Reading", "",
        FAMILY_TEXT, "",
        *[f"- {x}" for x in lines_read], "",
    ]
    write_report(root, lines, table=table, verdicts=lines_read, figs=figs, errors=errors, analysis_module=analysis,
                 elapsed=elapsed)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return study_cli(STUDY, main, __doc__, argv, full=True)


if __name__ == "__main__":
    sys.exit(cli())
