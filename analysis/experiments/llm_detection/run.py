"""Run the LLM detection study end to end: sweep, scores, ``scores.csv`` and ``report.md``.

``testbed demo --study llm_detection`` calls :func:`main`; so does
``python -m analysis.experiments.llm_detection.run``. The runner is reached by name at call time.
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
from analysis.experiments.llm_detection import analysis, sweep
from analysis.plots import build_figures, markdown_table, save_figures, text_table
from analysis.runs import load_runs
from analysis.stats import MIN_SEEDS

STUDY = "llm_detection"

SHOWN = [("method", None), ("n", None), ("heldout", 3), ("tokens", 0), ("tokens_saved_pct", 1), ("stop_rate", 3),
         ("precision", 3), ("recall", 3), ("false_stop_rate", 3), ("delay", 1), ("failure_rank", 3),
         ("judged_share", 3), ("doomed_share", 3)]
PLANT = [("method", None), ("plant_stop_rate", 3), ("plant_delay", 1), ("stop_rate_unplanted", 3)]


def command(out: str, workers: int, quick: bool, fresh: bool, full: bool = False) -> str:
    return " ".join(["testbed", "demo", "--study", STUDY, "--out", shlex.quote(str(out)), "--workers", str(workers)]
                    + (["--quick"] if quick else []) + (["--full"] if full else []) + (["--fresh"] if fresh else []))


def _with_ci(table, cols):
    out = table[[c for c, _ in cols]].copy()
    for c, digits in cols:
        if digits is None or f"{c}_lo" not in table:
            continue
        out[c] = [f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if m == m else "n/a"
                  for m, lo, hi in zip(table[c], table[f"{c}_lo"], table[f"{c}_hi"])]
    return out


def main(out: str = "out/llm_detection", workers: int = 2, quick: bool = False, fresh: bool = False,
         extra: dict | None = None, full: bool = False) -> int:
    """Run (or resume) the sweep into ``out/runs``; write ``out/scores.csv`` and ``out/report.md``.

    ``quick``: :data:`sweep.QUICK` in ``out/quick/``. ``full``: :data:`sweep.FULL_SEEDS` in the same
    ``out/runs`` (finished seeds are reused). ``extra``: overrides for every run (tests use a tiny model)."""
    t0 = time.time()
    root = Path(out) / "quick" if quick else Path(out)
    spec = sweep.spec(root / "runs", quick=quick, extra=extra, full=full)
    runner = importlib.import_module("testbed.sweep")
    rows = experiments.execute(runner, spec, workers=workers, fresh=fresh)
    df = load_runs([r["run_dir"] for r in rows], axes=sweep.AXES)
    table = analysis.score(df)
    family = analysis.comparisons(df)
    lines = analysis.verdicts(table) + family
    root.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    figs = save_figures(build_figures(analysis.PLOTS, df, errors), root)
    table.to_csv(root / "scores.csv", index=False)
    experiments.write_verdicts(family.claims, root)
    main_t, plant_t = _with_ci(table, SHOWN), _with_ci(table[table["method"] == "espo_planted"], PLANT)
    print(text_table(main_t), "", *lines, sep="\n")
    first = df.iloc[0]
    n_seeds = int(df["label/seed"].nunique())
    elapsed = time.time() - t0
    report = [
        f"# LLM detection study{' (QUICK smoke test: not evidence)' if quick else ''}", "",
        f"Generated {datetime.now().isoformat(timespec='seconds')} in {elapsed:.0f} s with {workers} workers. "
        "Regenerate with:", "", "```", command(out, workers, quick, fresh, full), "```", "",
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
        *report_tail(figs, errors, analysis),
    ]
    (root / "report.md").write_text("\n".join(report))
    print(f"\nwrote {root / 'report.md'} and {root / 'scores.csv'} ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(study_cli(STUDY, main, __doc__, full=True))
