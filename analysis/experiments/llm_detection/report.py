"""The LLM detection study's report (``report.md``, ``scores.csv``, ``verdicts.csv``, figures), from the
run directories of :func:`analysis.experiments.llm_detection.sweep.grids`
(run by ``testbed demo --study llm_detection``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from analysis import experiments
from analysis.experiments import StudyRun, report_head, report_tail
from analysis.experiments.llm_detection import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_runs
from analysis.stats import MIN_SEEDS

SHOWN = [("method", None), ("n", None), ("heldout", 3), ("tokens", 0), ("tokens_saved_pct", 1), ("stop_rate", 3),
         ("precision", 3), ("recall", 3), ("false_stop_rate", 3), ("delay", 1), ("failure_rank", 3),
         ("judged_share", 3), ("doomed_share", 3)]
PLANT = [("method", None), ("plant_stop_rate", 3), ("plant_delay", 1), ("stop_rate_unplanted", 3)]


def with_ci(table, cols):
    """The ``cols`` of a score table, each ``(column, digits)`` with digits formatted as ``mean [lo, hi]``."""
    out = table[[c for c, _ in cols]].copy()
    for c, digits in cols:
        if digits is None or f"{c}_lo" not in table:
            continue
        out[c] = [f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if m == m else "n/a"
                  for m, lo, hi in zip(table[c], table[f"{c}_lo"], table[f"{c}_hi"])]
    return out


def write(run: StudyRun) -> None:
    """Write ``scores.csv``, ``verdicts.csv``, the figures and ``report.md`` into ``run.root``."""
    root, spec = run.root, run.spec
    df = load_runs(run.run_dirs, axes=sweep.AXES)
    table = analysis.score(df)
    family = analysis.comparisons(df)
    lines = analysis.verdicts(table) + family
    root.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    figs = save_figures(build_figures(figures.PLOTS, df, errors), root)
    table.to_csv(root / "scores.csv", index=False)
    experiments.write_verdicts(family.claims, root)
    main_t, plant_t = with_ci(table, SHOWN), with_ci(table[table["method"] == "espo_planted"], PLANT)
    print(text_table(main_t), "", *lines, sep="\n")
    first = df.iloc[0]
    n_seeds = int(df["label/seed"].nunique())
    elapsed = time.time() - run.started
    report = [
        *report_head("# LLM detection study", quick=run.quick, workers=run.workers, command=run.command, elapsed=elapsed),
        "## Settings", "",
        f"- base config `{Path(sweep.BASE_CONFIG).relative_to(sweep.REPO)}`, every run `{json.dumps(spec['overrides'])}`",
        f"- task: `{first.get('config/task.source')}` {first.get('config/task.source_kwargs')}; model "
        f"`{first.get('config/model.path')}`; {int(df['step'].max()) + 1} steps of {first.get('config/rollout.batch_size')} "
        f"rows, max length {first.get('config/rollout.max_len')}; seeds {sorted(df['label/seed'].unique().tolist())}",
        f"- methods: {', '.join(sweep.METHODS)}", "",
        "## Detector metrics against the verifier, tokens, held-out accuracy", "",
        "Mean [95% interval over seeds]."
        + (f" With {n_seeds} seeds (fewer than {MIN_SEEDS}) an interval is about the span of the seeds' values, "
           "not a confidence statement; `--full` runs 8." if n_seeds < MIN_SEEDS else ""),
        "", markdown_table(main_t), "",
        "## Planted wrong steps (ESPO)", "", markdown_table(plant_t) if len(plant_t) else "(no planted run)", "",
        "## Verdicts and paired comparisons", "", *(lines or ["(none)"]), "",
        *report_tail(figs, errors, analysis, figures.PLOTS),
    ]
    (root / "report.md").write_text("\n".join(report))
    print(f"\nwrote {root / 'report.md'} and {root / 'scores.csv'} ({elapsed:.0f}s)")
