"""The ESPO difficulty study's report: score table, reading, one figure per knob, ``report.md``,
``scores.csv`` and ``verdicts.csv``, from the run directories of
:func:`analysis.experiments.espo_difficulty.sweep.grids` (run by ``testbed demo --study espo_difficulty``).
"""

from __future__ import annotations

import json
import time

from analysis.experiments import FAMILY_TEXT, StudyRun, report_head, write_report
from analysis.experiments.espo_difficulty import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_many_rows, load_runs


def write(run: StudyRun) -> None:
    """Print the score table and write the report into ``run.root``."""
    root, run_dirs = run.root, run.run_dirs
    df = load_runs(run_dirs, axes=sweep.AXES)
    pr = analysis.per_run(df, load_many_rows(run_dirs))
    table = analysis.score(pr)
    lines_read = analysis.verdicts(table)
    # the p-values stay in scores.csv; the table shows means and intervals
    shown = table[[c for c in table.columns if not c.endswith("_p")
                   and (c.rsplit("_", 1)[0] in analysis.COLUMNS or c in analysis.COLUMNS)]]
    print(text_table(shown), "", *lines_read, sep="\n")
    errors: list[str] = []
    figs = save_figures(build_figures(figures.PLOTS, table, errors), root)
    elapsed = time.time() - run.started
    lines = [
        *report_head("# ESPO difficulty study", quick=run.quick, workers=run.workers, command=run.command, elapsed=elapsed),
        "## Settings", "",
        "- base: the headline's presets (`configs/ppo.yaml`, ESPO = `configs/espo.yaml`), env "
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
    write_report(root, lines, table=table, verdicts=lines_read, figs=figs, errors=errors, analysis_module=analysis, plots=figures.PLOTS,
                 elapsed=elapsed)
