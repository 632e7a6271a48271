"""The ESPO headline study's report: table, verdicts, figures, ``report.md``, ``scores.csv``, ``verdicts.csv``.

Reads the run directories the runner (``testbed demo``, :func:`testbed.ops.studies.run_study`) made from
:func:`analysis.experiments.espo_headline.sweep.grids`.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from analysis.experiments import StudyRun, report_head, report_tail, write_scores, write_verdicts
from analysis.experiments.espo_headline import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_many_rows, load_runs


def write(run: StudyRun) -> None:
    """Print the tables, write figures, ``report.md``, ``scores.csv`` and ``verdicts.csv`` into ``run.root``."""
    root, spec, quick = run.root, run.spec, run.quick
    run_dirs = run.run_dirs
    df = load_runs(run_dirs, axes=sweep.AXES)
    per_row = load_many_rows(run_dirs)  # rows.jsonl of the simulated runs (empty if none has one)

    pr = analysis.per_run(df, per_row)
    table = analysis.summarize(pr)
    verdicts = analysis.verdicts(pr)
    shown = lambda c: c.removesuffix("_lo").removesuffix("_hi") if c.endswith(("_lo", "_hi")) else c  # noqa: E731
    outcome, detector, waste = (table[[c for c in table.columns if shown(c) in cols]]
                                for cols in (analysis.OUTCOME_COLUMNS, analysis.DETECTOR_COLUMNS,
                                             analysis.WASTE_COLUMNS))
    print(text_table(outcome), text_table(detector), text_table(waste), "", *verdicts, sep="\n")

    errors: list[str] = []
    plots = {k: functools.partial(f, rows=per_row) for k, f in figures.PLOTS.items()}
    figs = save_figures(build_figures(plots, df, errors), root)
    elapsed = time.time() - run.started
    report = render_report(root=root, outcome=outcome, detector=detector, waste=waste, verdicts=verdicts,
                           figs=figs, errors=errors, cmd=run.command, quick=quick,
                           workers=run.workers, elapsed=elapsed, df=df, spec=spec, per_row=per_row)
    (root / "report.md").write_text(report)
    write_scores(table, root)
    write_verdicts(verdicts.claims, root)
    print(f"\nwrote {root / 'report.md'}, {root / 'scores.csv'} and {len(figs)} figures ({elapsed:.0f}s)")


def render_report(*, root, outcome, detector, waste, verdicts, figs, errors, cmd, quick, workers, elapsed, df, spec,
                  per_row) -> str:
    seeds = sorted(df["label/seed"].unique().tolist())
    first = df.iloc[0]
    lines = [
        *report_head("# ESPO headline study", quick=quick, workers=workers, command=cmd, elapsed=elapsed),
        "## Settings", "",
        f"- base config: `{Path(sweep.BASE_CONFIG).relative_to(sweep.REPO)}`; every run: "
        f"`{json.dumps(spec['overrides'])}`",
        f"- training: {int(df['step'].max()) + 1} steps of {first.get('config/rollout.batch_size')} rows, "
        f"max length {first.get('config/rollout.max_len')}",
        f"- ESPO constants (also used by regret_only and value_only): `{json.dumps(sweep.ESPO_CONSTANTS)}`; "
        f"as resolved in the espo runs' config.yaml: {resolved_stop(df)}",
        "- methods (overrides of the PPO preset; espo applies every key of `configs/espo.yaml`): "
        + "; ".join(f"**{m}** `{json.dumps(v)}`" for m, v in spec["axes"]["method"].items()),
        "- envs: " + "; ".join(f"**{e}** `{v.get('task.env_id', '')}`" for e, v in sweep.ENVS.items()),
        f"- seeds in this report: {seeds}; seeds reserved for tuning the ESPO constants: {sweep.TUNE_SEEDS} "
        f"(tuning grid `{json.dumps(sweep.TUNE_GRID)}`, `sweep.tune_spec`); no tuning seed is reported here",
        f"- runs: `{spec['out_dir']}` (complete runs are reused; runs whose settings changed are re-run)", "",
        "Every cell below is the mean over seeds with its 95% Student-t interval over seeds "
        "(`analysis.stats`); `tokens_saved_pct`, `success_vs_ppo`, `nostop_vs_ppo`, `saved_at_level_pct`, "
        "`saved_at_level90_pct` and `waste_removed_pct` are paired with the PPO run of the same seed. "
        "`nostop_success` is the final policy on fresh prompts with no stop rule (`run.final_eval_rows` rows). "
        "The same numbers, unformatted and with the std, are in `scores.csv`.", "",
        "## Outcome", "", markdown_table(outcome), "",
        "## Detector", "", detector_source(df, per_row), "", markdown_table(detector), "",
        "## Tokens after the fatal token", "",
        "The waste early stopping is meant to remove: tokens a row generated after its planted fatal token "
        "(see Definitions).", "", markdown_table(waste), "",
        "## Verdicts", "",
        "Computed from the per-run table (`analysis.verdicts`): each claim is a mean of paired-by-seed "
        "differences (or of a quantity already paired with PPO's run of the same seed) with its 95% "
        "Student-t interval and an exact paired sign-flip test against the claim's threshold. Every claim "
        "below with a Holm p-value is one family: a claim is answered yes or no only when its Holm-adjusted "
        "p-value is below 0.05 over at least 8 seeds, otherwise it is undecided.", "",
        *[f"- {v}" for v in verdicts], "",
    ]
    lines += report_tail(figs, errors, analysis, figures.PLOTS)
    lines += [
        "## Not in the logs", "",
        "- Per-row records (`rows.jsonl`) cover finished rows only, and only simulated runs write them; "
        "runs without them fall back to per-step metrics (`detector_from` = `metrics`) and have no waste numbers.",
        "- Times (`time/*`) depend on the machine's load; this study compares tokens, not seconds.",
        "- Reused runs are checked against the settings through their config.yaml only: after a change "
        "to code or to an env variant (`envs.VARIANTS`), regenerate with `--fresh`.", "",
    ]
    return "\n".join(lines)


def detector_source(df, per_row) -> str:
    """One sentence: how many runs' detector numbers come from pooled per-row records and how many from
    per-step metrics."""
    runs = sorted(df["run"].unique())
    have = set(per_row["run"].unique()) if len(per_row) else set()
    n_rows = sum(r in have for r in runs)
    n_met = len(runs) - n_rows
    text = (f"Precision, recall, false-stop rate and delay: pooled over the finished rows of all steps after "
            f"warm-up (from `rows.jsonl`) for {n_rows} of {len(runs)} runs")
    if n_met:
        text += (f"; the unweighted mean of the per-step metrics for the other {n_met} (no `rows.jsonl`: "
                 + ", ".join(f"`{r}`" for r in runs if r not in have)[:400] + ")")
    return text + ". Column `detector_from` says which, per env and method."


def resolved_stop(df) -> str:
    """The stop constants the espo runs actually ran with (from their config.yaml), or why not."""
    espo = df[df["label/method"] == "espo"]
    if espo.empty:
        return "no espo runs"
    wanted = {*sweep.ESPO_CONSTANTS, *(k for k in sweep.OVERRIDES if k.startswith("stop."))}
    keys = [f"config/{k}" for k in sorted(wanted) if f"config/{k}" in espo]
    vals = {c.removeprefix("config/"): espo[c].unique().tolist() for c in keys}
    return ", ".join(f"`{k}={v[0] if len(v) == 1 else v}`" for k, v in vals.items())
