"""The long-chain LLM study's report (``report.md``, ``scores.csv``, ``verdicts.csv``), from the run
directories of :func:`analysis.experiments.llm_long.sweep.grids` (``testbed demo --study llm_long``)."""

from __future__ import annotations

import math

import time
from pathlib import Path

from analysis.experiments import FAMILY_TEXT, StudyRun, report_head, write_report
from analysis.experiments.llm_detection.report import with_ci
from analysis.experiments.llm_long import analysis, sweep
from analysis.plots import markdown_table, text_table
from analysis.runs import load_runs

SHOWN = [("method", None), ("n", None), ("heldout", 3), ("tokens", 0), ("tokens_saved_pct", 1), ("wall_min", 1),
         ("stop_rate", 3), ("precision", 3), ("recall", 3), ("false_stop_rate", 3), ("delay", 1), ("failure_rank", 3)]
PLANT = [("method", None), ("plant_stop_rate", 3), ("plant_delay", 1), ("stop_rate_unplanted", 3)]


def write(run: StudyRun) -> None:
    df = load_runs(run.run_dirs, axes=sweep.AXES)
    runs = analysis.per_run(df)
    table = analysis.score(runs)
    lines = analysis.verdicts(df, runs)
    shown = with_ci(table, SHOWN)
    plant = with_ci(table[table["method"] == "espo_paper_planted"], PLANT)
    det = analysis.detectors(run.run_dirs)
    print(text_table(shown), "", *lines, sep="\n")
    first = df.iloc[0]
    elapsed = time.time() - run.started
    report = [
        *report_head("# Long-chain LLM study", quick=run.quick, workers=run.workers, command=run.command, elapsed=elapsed),
        "## Settings", "",
        f"- base `{Path(sweep.BASE_CONFIG).relative_to(sweep.REPO)}`; each method the keys of its preset "
        f"(`configs/llm/long_chain_*.yaml`); every run's overrides `{run.specs[0].get('overrides')}`",
        f"- task `{first.get('config/task.source')}` {first.get('config/task.source_kwargs')}; "
        f"{int(df['step'].max()) + 1} steps of {first.get('config/rollout.batch_size')} rows, max length "
        f"{first.get('config/rollout.max_len')}",
        f"- methods: {', '.join(sweep.MAIN)} at seeds {sweep.MAIN_SEEDS}; {', '.join(sweep.SIDE)} at seeds "
        f"{sweep.SIDE_SEEDS}",
        f"- runs read: {df['run'].nunique()} of {sum(math.prod(len(v) for v in g['axes'].values()) for g in run.specs)}"
        f" ({', '.join(sorted(df['run'].unique()))})", "",
        "## Scores (mean [95% Student-t interval] over seeds; tokens saved paired with PPO's run of the seed)", "",
        markdown_table(shown), "",
        "## Planted wrong steps (the paper's ESPO)", "", markdown_table(plant) if len(plant) else "(no planted run)", "",
        "## Detectors on the policy's own rollouts (final policies, verifier labels)", "",
        markdown_table(det) if len(det) else "(no measurement)", "",
        "## Verdicts", "", FAMILY_TEXT, "", *[f"- {x}" for x in lines], "",
    ]
    write_report(run.root, report, table=table, verdicts=lines, figs=[], errors=[], analysis_module=analysis,
                 elapsed=elapsed)
