"""The T-PPO phase diagram's report (``testbed demo --study tppo_regimes``): regime checks first (PPO's
reliability, the longest row against the mean, generation's share of the projected cost and the Amdahl
bound), then speed-ups priced by the cost model, ``report.md``, ``scores.csv``, ``verdicts.csv``."""

from __future__ import annotations

import time

from analysis import cost_model
from analysis.experiments import FAMILY_TEXT, StudyRun, report_head, write_report
from analysis.experiments.tppo_regimes import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_runs


def write(run: StudyRun) -> None:
    df = load_runs(run.run_dirs, axes=sweep.AXES)
    pr = analysis.per_run(df)
    table = analysis.score(pr)
    lines_read = analysis.verdicts(pr)
    words = {(c.tags["env"], c.tags["method"]): c.word for c in lines_read.claims if "projected cost" in c.text}
    table["verdict"] = [words.get((e, m), "") for e, m in zip(table["env"], table["method"])]
    shown = table[[c for c in table.columns if c in analysis.COLUMNS or c.rsplit("_", 1)[0] in analysis.COLUMNS]]
    print(text_table(shown), "", *lines_read, sep="\n")
    errors: list[str] = []
    figs = save_figures(build_figures(figures.PLOTS, table, errors), run.root)
    elapsed = time.time() - run.started
    units = [cost_model.gpu_projection(), cost_model.measured()]
    lines = [
        *report_head("# T-PPO phase diagram: length tail x window", quick=run.quick, workers=run.workers,
                     command=run.command, elapsed=elapsed),
        "## Settings", "",
        f"- env overrides `{sweep.ENV}`; cells (p99 / p50 of target lengths): {', '.join(sweep.ENVS)}; windows "
        f"{', '.join(map(str, sweep.WINDOWS))}; PPO {sweep.STEPS} steps, T-PPO {sweep.TPPO_STEPS}; greedy evaluation of "
        f"{sweep.EVAL_SIZE} held-out prompts every {sweep.EVAL_EVERY} steps for every method",
        f"- seeds {sorted(df['label/seed'].unique().tolist())}",
        *[f"- unit costs: {u.source}: " + ", ".join(f"{k.removesuffix('_ms')} {v:.3g} ms"
                                                   for k, v in cost_model.describe(u).items() if k != "source")
          for u in units if u is not None], "",
        "## Reading (regime checks first)", "",
        FAMILY_TEXT, "",
        *[f"- {x}" for x in lines_read], "",
        "## Scores (mean [95% Student-t interval]; speed-ups: geometric mean, paired by seed)", "",
        markdown_table(shown), "",
    ]
    write_report(run.root, lines, table=table, verdicts=lines_read, figs=figs, errors=errors, analysis_module=analysis,
                 plots=figures.PLOTS, elapsed=elapsed)
