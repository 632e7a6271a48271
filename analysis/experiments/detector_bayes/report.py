"""The detector-versus-Bayes study's report: the first seed's blocks in full, one line per seed and rule,
the score table and the verdicts (``report.md``, ``scores.csv``, ``verdicts.csv``), from the run
directories of :func:`analysis.experiments.detector_bayes.sweep.grids` and their measurements.
"""

from __future__ import annotations

import json
import time

import numpy as np

from analysis.experiments import FAMILY_TEXT, StudyRun, report_head, write_report
from analysis.experiments.detector_bayes import analysis, scoring, sweep
from analysis.plots import markdown_table, text_table


def _ratio(a: float, b: float) -> str:
    if np.isnan(a) or np.isnan(b):
        return "n/a"
    if b == 0:
        return "1.00" if a == 0 else "inf"
    r = a / b
    return f"{r:.2f}" if r < 1000 else ">999"


def _p(x: float) -> str:
    if np.isnan(x):
        return "n/a"
    return f"{x:.4f}" if x == 0 or x >= 1e-3 else f"{x:.1e}"


def format_report(rep: scoring.Report, draws: int = scoring.RANDOM_DRAWS) -> str:
    """One seed's measurement: settings, then one block per stop rule against its matched detectors."""
    m = rep.meta
    norm = m.get("normalizer") or {}
    lines = [
        f"{m['env_id']}, ESPO-trained toy policy ({m['steps']} steps x {m['batch_size']} rows, seed {m['run_seed']}), "
        f"{rep.rows} rows from the frozen policy",
        f"training: {m['train']}",
        f"stop config: {m['stop']}; trained regret normaliser: mean {norm.get('mean', float('nan')):.3f}, "
        f"var {norm.get('var', float('nan')):.3f}",
        f"frozen policy: success {rep.success_rate:.3f} (training, last 10 steps: {m.get('train_success', float('nan')):.3f}), "
        f"doomed {rep.doomed_rate:.3f} ({rep.stoppable_doomed} rows stoppable at or after the fatal token); "
        f"exact P(success) at the prompt per problem {[round(p, 3) for p in m['p_start']]}; "
        f"{rep.drop_share:.1%} of rows lose > 0.3 of P(success) at one token",
        "",
    ]
    head = (f"{'detector':<18} {'stops':>6} {'mean P@stop':>11} {'x bayes':>7} {'precision':>9} "
            f"{'E[lost]':>8} {'tok saved':>9} {'x bayes':>7} {'lost/100tok':>11}  note")
    for blk in rep.blocks:
        bayes = blk.scores[2]
        lines += [f"[{blk.rule}]", head]
        for x in blk.scores:
            lines.append(
                f"{x.name:<18} {x.stops:>6} {_p(x.mean_p):>11} {_ratio(x.mean_p, bayes.mean_p):>7} "
                f"{'n/a' if np.isnan(x.precision) else f'{x.precision:.3f}':>9} {x.lost:>8.2f} {x.saved:>9.0f} "
                f"{_ratio(x.saved, bayes.saved):>7} "
                f"{'n/a' if np.isnan(x.lost_per_100) else f'{x.lost_per_100:.2f}':>11}"
                f"  {x.note}".rstrip())
        own, rand = blk.scores[0], blk.scores[1]
        tail = (f"mean P@stop {own.mean_p:.4f} vs random {rand.mean_p:.4f}; p = {blk.p_value:.3f} (share of "
                f"{draws} random draws as low)")
        if own.stops == 0:
            lines += [f"{blk.rule} never fires on these rows: nothing to score.", ""]
        else:
            word = "beats" if blk.p_value <= 0.05 else "is NO better than"
            lines += [f"{blk.rule} {word} random at matched count and positions: {tail}.", ""]
    lines.append(f"MC check: {rep.mc_checked} prefixes visited >= {scoring.MC_MIN_VISITS} times; exact P vs the "
                 f"sampled rows' success rate differs by at most {rep.mc_max_z:.2f} standard errors")
    lines.append(f"critic: value-gate p_t vs exact P(success | s_t) over visited states: mean |diff| "
                 f"{rep.critic_mae:.3f}, correlation {rep.critic_corr:.3f}")
    return "\n".join(lines)


def format_summary(reports: list[scoring.Report]) -> str:
    """One line per seed and rule: the key numbers, to see how much they move with the seed."""
    lines = [f"{'seed':>4} {'success':>7} {'drop>.3':>7} {'rule':<12} {'stops':>5} {'P rule':>7} {'P random':>8} "
             f"{'P bayes':>7} {'p':>6} {'saved rule':>10} {'saved bayes@same lost':>21}"]
    for rep in reports:
        for blk in rep.blocks:
            own, rand, bayes, _, same = blk.scores
            lines.append(f"{rep.meta['seed']:>4} {rep.success_rate:>7.3f} {rep.drop_share:>7.3f} {blk.rule:<12} "
                         f"{own.stops:>5} {_p(own.mean_p):>7} {_p(rand.mean_p):>8} {_p(bayes.mean_p):>7} "
                         f"{'n/a' if np.isnan(blk.p_value) else f'{blk.p_value:.3f}':>6} {own.saved:>10.0f} "
                         f"{same.saved:>21.0f}")
    return "\n".join(lines)


def write(run: StudyRun) -> None:
    """Print the tables and write the report into ``run.root``."""
    reports = analysis.score_runs(run.run_dirs)
    ps = analysis.per_seed(reports)
    table = analysis.score(ps)
    verdicts = analysis.verdicts(ps)
    first, summary = format_report(reports[0]), format_summary(reports)
    print(first, "", summary, "", *verdicts, sep="\n")
    elapsed = time.time() - run.started
    shown = table[["rule", "detector", "seeds", "stops", "mean_p", "precision", "saved", "saved_share"]]
    lines = [
        *report_head("# ESPO's stops against the exact Bayes-optimal detector", quick=run.quick, workers=run.workers, command=run.command, elapsed=elapsed),
        "## The question", "",
        "How good are ESPO's early-stop decisions *as a failure detector*, next to what an ideal detector does "
        "with the same number of stops? On the tiny env the exact P(success | prefix) of every prefix under the "
        "frozen policy is computable, so the Bayes-optimal detector is known, not estimated.", "",
        "## Settings", "",
        "- `configs/espo.yaml` with "
        f"`{json.dumps(run.spec['overrides'])}`; seeds {sorted(r.meta['seed'] for r in reports)}; "
        f"measurement `{json.dumps(sweep.measurements(run.quick))}` per run; runs: `{run.root / 'runs'}`", "",
        "## The first seed in full", "", "```", first, "```", "",
        "## Every seed", "", "```", summary, "```", "",
        "## Scores (mean over seeds; the csv has 95% Student-t intervals)", "", markdown_table(shown), "",
        "## Verdicts", "", FAMILY_TEXT, "", *[f"- {v}" for v in verdicts], "",
    ]
    print(text_table(shown))
    write_report(run.root, lines, table=table, verdicts=verdicts, figs=[], errors=[], analysis_module=analysis,
                 elapsed=elapsed)
