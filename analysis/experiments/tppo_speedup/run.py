"""Run the T-PPO speed-up study end to end: sweep, table, verdicts, figures, ``report.md``.

``python -m analysis.experiments.tppo_speedup.run [--out DIR] [--workers N] [--quick] [--fresh]``.
The runner is reached through the string ``"testbed.sweep"`` at call time, as in the headline study.
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
from analysis.experiments import report_tail, study_cli
from analysis.experiments.tppo_speedup import analysis, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_runs


def command(out: str, workers: int, quick: bool, fresh: bool) -> str:
    """The shell command that regenerates this report."""
    return " ".join(["testbed", "demo", "--study", "tppo_speedup", "--out", shlex.quote(str(out)),
                     "--workers", str(workers)] + (["--quick"] if quick else []) + (["--fresh"] if fresh else []))


def main(out: str = "out/tppo_speedup", workers: int = 2, quick: bool = False, fresh: bool = False) -> int:
    """Run (or resume) the sweep into ``out/runs`` (``out/quick/runs`` with ``quick``), print the
    table, write figures and ``report.md``. ``fresh`` deletes the runs folder first. Returns 0."""
    t0 = time.time()
    root = Path(out) / "quick" if quick else Path(out)
    spec = sweep.spec(root / "runs", quick=quick)
    runner = importlib.import_module("testbed.sweep")  # the runner, by name: analysis never imports it
    rows = experiments.execute(runner, spec, workers=workers, fresh=fresh)
    df = load_runs([r["run_dir"] for r in rows], axes=sweep.AXES)

    table = analysis.score(df)
    verdicts = analysis.verdicts(table)
    speed = table[[c for c in table.columns if c.removesuffix("_std") in analysis.SPEED_COLUMNS]]
    cost = table[[c for c in table.columns if c.removesuffix("_std") in analysis.COST_COLUMNS]]
    print(text_table(speed), text_table(cost), "", *verdicts, sep="\n")

    errors: list[str] = []
    figs = save_figures(build_figures(analysis.PLOTS, df, errors), root)
    elapsed = time.time() - t0
    first = df.iloc[0]
    lines = [
        "# T-PPO speed-up study" + (" (QUICK smoke test: not evidence)" if quick else ""), "",
        f"Generated {datetime.now().isoformat(timespec='seconds')} in {elapsed:.0f} s with {workers} workers. "
        "Regenerate with:", "", "```", command(out, workers, quick, fresh), "```", "",
        "## Settings", "",
        f"- base config: `{Path(sweep.BASE_CONFIG).relative_to(sweep.REPO)}`; every run: `{json.dumps(spec['overrides'])}`",
        "- steps per method (a T-PPO step generates at most one window per row): "
        + ", ".join(f"{m} {int(g['step'].max()) + 1}" for m, g in df.groupby("label/method", sort=False))
        + f"; {first.get('config/rollout.batch_size')} rows per step, max length {first.get('config/rollout.max_len')}",
        "- methods: " + "; ".join(f"**{m}** `{json.dumps(v)}`" for m, v in sweep.METHODS.items()),
        "- envs: " + "; ".join(f"**{e}** `{v.get('task.env_id', '')}`" for e, v in sweep.ENVS.items()),
        f"- seeds: {sorted(df['label/seed'].unique().tolist())}",
        f"- runs: `{spec['out_dir']}`",
        f"- timings: {workers} runs in parallel, one torch thread each, on a shared machine; compare "
        "methods by compute time (gen + actor + critic), which excludes waiting but not contention.", "",
        "## Speed (mean ± std over seeds)", "", markdown_table(speed), "",
        "## Cost breakdown (mean ± std over seeds)", "", markdown_table(cost), "",
        "## Verdicts", "", "Computed from the tables above (`analysis.verdicts`).", "",
        *[f"- {v}" for v in verdicts], "",
    ]
    lines += report_tail(figs, errors, analysis)
    (root / "report.md").write_text("\n".join(lines))
    experiments.write_scores(table, root)  # scores.csv beside report.md (every study writes one)
    print(f"\nwrote {root / 'report.md'} and {len(figs)} figures ({elapsed:.0f}s)")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return study_cli("tppo_speedup", main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(cli())
