"""The ESPO phase diagram's report: scores per cell, verdicts, heatmaps, ``report.md``, ``scores.csv`` and
``verdicts.csv``, from the run directories of :func:`analysis.experiments.espo_regimes.sweep.grids`
(``testbed demo --study espo_regimes``)."""

from __future__ import annotations

import time

from analysis import cost_model
from analysis.experiments import FAMILY_TEXT, StudyRun, report_head, write_report
from analysis.experiments.espo_regimes import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_many_rows, load_runs


def write(run: StudyRun) -> None:
    root, run_dirs = run.root, run.run_dirs
    df = load_runs(run_dirs, axes=sweep.AXES)
    pr = analysis.per_run(df, load_many_rows(run_dirs), analysis.stop_values(run_dirs))
    table = analysis.score(pr)
    lines_read = analysis.verdicts(pr)
    items = lines_read.claims
    for kind in ("saves", "vs_ppo", "vs_random"):
        words = {m: analysis.word_grid(pr, items, m, kind) for m in analysis.ESPOS}
        table[f"verdict_{kind}"] = [words.get(m, {}).get(e, "") for e, m in zip(table["env"], table["method"])]
    shown = table[[c for c in table.columns if c in analysis.COLUMNS
                   or c.rsplit("_", 1)[0] in analysis.COLUMNS and not c.endswith(("_p", "_std"))]]
    print(text_table(shown), "", *lines_read, sep="\n")
    sens = []
    paper_cell = sweep.cell_name(*sweep.PAPER_LIKE)
    for label, units in (("H200 projection", cost_model.gpu_projection()), ("this CPU, measured", cost_model.measured())):
        if units is None:
            sens += [f"- {label}: no `docs/cost_units.json` (run `PYTHONPATH=. python bench/cost_units.py` alone)", ""]
            continue
        t = analysis.cost_sensitivity(df, pr, paper_cell, "oracle", units)
        if len(t):
            sens += [f"{label} ({units.source}); constants: "
                     + ", ".join(f"{k.removesuffix('_ms')} {v:.3g} ms" for k, v in cost_model.describe(units).items() if k != "source"), "",
                     markdown_table(t.rename(columns={"base": "oracle's cost saved (%)"})), ""]
    errors: list[str] = []
    figs = save_figures(build_figures(figures.PLOTS, table, errors), root)
    elapsed = time.time() - run.started
    seeds = sorted(df["label/seed"].unique().tolist())
    lines = [
        *report_head("# ESPO phase diagram: derailment x recovery, and failure position", quick=run.quick, workers=run.workers,
                     command=run.command, elapsed=elapsed),
        "## Settings", "",
        f"- env `{sweep.ENV_ID}` (16 problems, L = 12, 2 critical positions), `rollout.max_len` {sweep.MAX_LEN}; cells: "
        + ", ".join(f"`{e}`" for e in analysis.cells(pr)) + f" (R: a doomed row runs on to an expected R x "
        f"(L + 1) tokens; recovery: the chance a fatal step can be repaired by REVISE at a {sweep.REPAIR_COST}-token cost; "
        "a `_<position>` suffix: the critical positions only in that third of the response, "
        + ", ".join(f"{k} [{lo:.2f}, {hi:.2f}) x L" for k, (lo, hi) in sweep.POSITIONS.items()) + ")",
        f"- methods: {', '.join(sweep.METHODS)} (the ESPO headline's presets as they are); seeds {seeds}", "",
        "## Scores (mean [95% Student-t interval] over seeds; differences paired by seed)", "",
        markdown_table(shown), "",
        "## Reading", "",
        FAMILY_TEXT, "",
        *[f"- {x}" for x in lines_read], "",
        f"## What the tokens are worth: the oracle's cost saved in the paper-like cell `{paper_cell}`", "",
        "The cost model (`analysis/cost_model.py`) prices each run's logged counts; each row halves or doubles one "
        "unit cost (the projection's assumptions are stated in its source line).", "",
        *sens,
    ]
    write_report(root, lines, table=table, verdicts=lines_read, figs=figs, errors=errors, analysis_module=analysis,
                 plots=figures.PLOTS, elapsed=elapsed)
