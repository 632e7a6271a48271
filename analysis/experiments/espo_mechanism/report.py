"""The ESPO gate-or-detector study's report (``report.md``, ``scores.csv``, ``verdicts.csv``, figures), from
the run directories of :func:`analysis.experiments.espo_mechanism.sweep.grids`
(run by ``testbed demo --study espo_mechanism``).
"""

from __future__ import annotations

import functools
import json
import time

from analysis.experiments import FAMILY_TEXT, StudyRun, report_head, write_report
from analysis.experiments.espo_mechanism import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_many_rows, load_runs

def write(run: StudyRun) -> None:
    """Print the score table and write the report into ``run.root``."""
    root, run_dirs = run.root, run.run_dirs
    df = load_runs(run_dirs, axes=sweep.AXES)
    per_row = load_many_rows(run_dirs)
    pr = analysis.per_run(df, per_row)
    table = analysis.score(pr)
    verdicts = analysis.verdicts(pr)
    print(text_table(table), "", *verdicts, sep="\n")
    errors: list[str] = []
    plots = {k: functools.partial(f, rows=per_row) for k, f in figures.PLOTS.items()}
    figs = save_figures(build_figures(plots, df, errors), root)
    elapsed = time.time() - run.started
    seeds = sorted(df["label/seed"].unique().tolist())
    lines = [
        *report_head("# ESPO gate-or-detector study", quick=run.quick, workers=run.workers, command=run.command, elapsed=elapsed),
        "## The question", "",
        "ESPO's final policy is worse than matched random truncation's (the headline). Either its gate decides "
        "on an untrained critic in the first steps, or the regret detector itself selects: it stops rows "
        "that left the greedy path, so the rows that survive to be rewarded are the near-greedy ones, and the "
        "policy sharpens. Starting the rule later (a trained critic) separates the two: a gate effect closes "
        "the gap, a selection effect does not.", "",
        "## Settings", "",
        "- base: `configs/ppo.yaml`; variants (the stop section of `configs/espo.yaml` and `configs/espo_paper.yaml`; "
        "their other keys are the PPO preset's): "
        + "; ".join(f"**{v}** `{json.dumps({k: x for k, x in o.items() if k.startswith('stop.')})}`"
                    for v, o in sweep.VARIANTS.items()),
        "- warm-ups: " + "; ".join(f"**{w}** `{json.dumps(o)}`" for w, o in sweep.WARMUPS.items()),
        "- methods: " + "; ".join(f"**{m}** `{json.dumps(o)}`" for m, o in sweep.METHODS.items())
        + "; **ppo** (`configs/ppo.yaml`, once per seed)",
        f"- seeds {seeds}; every run: `{json.dumps(run.specs[0]['overrides'])}`; runs: `{root / 'runs'}`", "",
        "## Scores (mean [95% Student-t interval] over seeds)", "", markdown_table(table), "",
        "## Verdicts", "",
        FAMILY_TEXT, "",
        *[f"- {v}" for v in verdicts], "",
    ]
    write_report(root, lines, table=table, verdicts=verdicts, figs=figs, errors=errors, analysis_module=analysis, plots=figures.PLOTS,
                 elapsed=elapsed)
