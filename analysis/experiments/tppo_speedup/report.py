"""The T-PPO speed-up study's report: tables, intervals, cost model, figures, ``report.md``,
``scores.csv``, ``verdicts.csv`` and ``runs.csv``, from the run directories of
:func:`analysis.experiments.tppo_speedup.sweep.grids` (run by ``testbed demo --study tppo_speedup``).

The cost model's unit costs are read from ``sweep.CALIBRATION`` (written by ``bench/tppo_cost.py``,
which must run alone); rerunning the study after a new calibration reuses the finished runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from analysis import experiments
from analysis.experiments import StudyRun, report_head, report_tail
from analysis.experiments.tppo_speedup import analysis, figures, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_runs


def _cols(table, names):
    return table[[c for c in table.columns if c.removesuffix("_std") in names]]


def _calibration_lines(cal: dict | None) -> list[str]:
    if cal is None:
        return [f"No calibration file ({sweep.CALIBRATION.name}): projected times are undefined. Run "
                "`PYTHONPATH=. python bench/tppo_cost.py` alone, then this study again.", ""]
    a, b, c = cal["a_s"], cal["b_s"], cal["train_token_s"]
    return [
        f"Unit costs from `{sweep.CALIBRATION.relative_to(sweep.REPO)}` (`bench/tppo_cost.py`, model {cal.get('model')}, "
        f"{cal.get('threads')} thread(s), 1-minute load average {cal.get('load_avg_1min', float('nan')):.1f} on "
        f"{cal.get('cpus')} CPUs when measured):", "",
        f"- decoding step at batch 1: t(1) = {cal['decode_step_b1_s'] * 1e6:.1f} µs; at batch 32: "
        f"t(32) = {cal['decode_step_b32_s'] * 1e6:.1f} µs (ratio {cal['decode_step_b32_s'] / cal['decode_step_b1_s']:.2f})",
        f"- so a = {a * 1e6:.1f} µs per decoding step and b = {b * 1e6:.2f} µs per row in it (t(B) = a + b·B)",
        f"- measured training cost c = {c * 1e6:.1f} µs per token-pass (actor and critic, forward, backward, Adam)",
        f"- GPU regime: a decoding step costs a = {a * 1e6:.1f} µs at any batch size; a token-pass costs "
        f"3b = {3 * b * 1e6:.2f} µs; their ratio a/(3b) = {a / (3 * b):.0f}. On this machine the measured "
        f"ratio a/c is {a / c:.2f}: training, not decoding, dominates here.", ""]


def write(run: StudyRun) -> None:
    """Print the tables; write figures, ``report.md``, ``scores.csv``, ``verdicts.csv`` and ``runs.csv`` into ``run.root``."""
    root, spec, workers = run.root, run.spec, run.workers
    df = load_runs(run.run_dirs, axes=sweep.AXES)
    cal = analysis.load_calibration()

    pr = analysis.per_run(df, cal=cal)
    table = analysis.score(df, cal=cal, pr=pr)
    attr = analysis.attribution(pr)
    iv = analysis.intervals(pr)
    verdicts = analysis.verdicts(table, iv)
    bound = analysis.amdahl(pr)
    speed, cost, rho = (_cols(table, c) for c in (analysis.SPEED_COLUMNS, analysis.COST_COLUMNS, analysis.RHO_COLUMNS))
    ivt = analysis.interval_table(iv)
    print(text_table(bound), text_table(speed), text_table(cost), text_table(ivt), "", *verdicts, sep="\n")
    root.mkdir(parents=True, exist_ok=True)
    pr.to_csv(root / "runs.csv", index=False)  # one row per run; scores.csv has one per env x method

    errors: list[str] = []
    figs = save_figures(build_figures(figures.PLOTS, df, errors), root)
    elapsed = time.time() - run.started
    first = df.iloc[0]
    lines = [
        *report_head("# T-PPO speed-up study", quick=run.quick, workers=run.workers, command=run.command, elapsed=elapsed),
        "## Settings", "",
        f"- base config: `{Path(sweep.BASE_CONFIG).relative_to(sweep.REPO)}` with the `algo`/`model` sections of "
        f"`{sweep.PPO_PRESET.relative_to(sweep.REPO)}`; every run: `{json.dumps(spec['overrides'])}`",
        "- steps per method (a T-PPO step generates at most one window per row): "
        + ", ".join(f"{m} {int(g['step'].max()) + 1}" for m, g in df.groupby("label/method", sort=False))
        + f"; {first.get('config/rollout.batch_size')} rows per step, max length {first.get('config/rollout.max_len')}",
        "- methods: " + "; ".join(f"**{m}** `{json.dumps(v)}`" for m, v in sweep.METHODS.items()),
        "- envs: " + "; ".join(f"**{e}** `{v.get('task.env_id', '')}`" for e, v in sweep.ENVS.items()),
        f"- seeds: {sorted(df['label/seed'].unique().tolist())}",
        f"- runs: `{spec['out_dir']}`; per-method table: `scores.csv`; per-run numbers: `runs.csv`",
        f"- timings: {workers} runs in parallel, one torch thread each, on a shared machine: measured times "
        "include contention with other processes; the cost model uses counts only.", "",
        "## Can the regime show a speed-up? (Amdahl check, before any verdict)", "",
        "PPO's share of its cost spent generating, and the largest speed-up a window could give if generation "
        "were free and nothing else changed (`1 / (1 - share)`), measured and projected (the cost model's GPU "
        f"regime); the study's goal is {analysis.GOAL_SPEEDUP:g}x. Where the bound is below the goal, no T-PPO "
        "variant can reach it in that env, whatever the verdicts say about it.", "",
        markdown_table(bound), "",
        "## Speed (mean ± std over seeds)", "", markdown_table(speed), "",
        "## Paired with PPO by seed (mean [95% interval] (seeds))", "",
        "Final-success difference (mean, Student-t interval) over all seeds; speed-ups (geometric mean, "
        "t-interval on the logs) over the seeds where both reached the level.", "",
        markdown_table(ivt), "",
        "## Where the speed-up comes from (paired by seed: reference's X to the level / method's)", "",
        markdown_table(analysis.interval_table(attr)) if len(attr) else "(pairs not run)", "",
        "## Cost model", "", *_calibration_lines(cal),
        "### Cost breakdown (mean ± std over seeds)", "", markdown_table(cost), "",
        "### Speed-up to the level at a stated decode-step / token-pass cost ratio", "",
        "Time `rho * decoding steps + token-passes` (rho large: decoding dominates).", "",
        markdown_table(rho), "",
        "## Verdicts", "", "Computed from the per-run numbers (`analysis.verdicts`): each claim is tested with an "
        "exact paired sign-flip test (on the logs for speed-ups) and the claims below with a Holm p-value are "
        "one family; yes/no only when the Holm p-value is below 0.05 over at least 8 seeds.", "",
        *[f"- {v}" for v in verdicts], "",
    ]
    lines += report_tail(figs, errors, analysis, figures.PLOTS)
    (root / "report.md").write_text("\n".join(lines))
    experiments.write_scores(table, root)  # scores.csv beside report.md (every study writes one)
    experiments.write_verdicts(verdicts.claims, root)
    print(f"\nwrote {root / 'report.md'}, {root / 'scores.csv'} and {len(figs)} figures ({elapsed:.0f}s)")
