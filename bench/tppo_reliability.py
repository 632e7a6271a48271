"""PPO reliability pilots on one cell of the T-PPO phase diagram (the runner of
:mod:`analysis.experiments.tppo_regimes.pilot`, whose docstring says what a pilot is).

    PYTHONPATH=. python bench/tppo_reliability.py NAME [KEY=VALUE ...] [--cell tail16] [--seeds 0-9]
        [--methods ppo,tppo_w32] [--out out/tppo_pilots] [--workers 1] [--level 0.8] [--csv docs/tppo_regimes/ppo_reliability_pilots.csv]

Not a timing: it prints each seed's final held-out success, how many seeds reach ``--level`` and the diagram's
other two regime checks; run it beside anything. With ``--methods`` naming more than PPO the folder is a small
diagram (a confirmation on fresh seeds): its scores and verdicts, one Holm family, are printed and written to
``OUT/NAME/scores.csv`` and ``verdicts.csv``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from analysis.experiments import FAMILY_TEXT, write_scores, write_verdicts
from analysis.experiments.tppo_regimes import analysis, pilot, sweep
from analysis.plots import markdown_table, text_table
from analysis.runs import load_runs
from testbed.ops.evaluate import measure_sampled
from testbed.ops.sweep import run_sweep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="the pilot's folder under --out and its label")
    ap.add_argument("changes", nargs="*", help="KEY=VALUE settings over the diagram's run (YAML values)")
    ap.add_argument("--cell", default="tail16")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--methods", default="ppo", help="comma-separated methods of the diagram (PPO's rows are printed)")
    ap.add_argument("--out", default="out/tppo_pilots")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--level", type=float, default=0.8, help="the reliability bar on final held-out success")
    ap.add_argument("--csv", type=Path, help="append the finished runs to this pilots table")
    ap.add_argument("--sampled", type=int, default=0, metavar="K",
                    help="also read each finished PPO run's final policy sampled, each problem K times (0: off)")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        ap.error(f"name: {args.name!r} is a folder name: letters, digits, '_', '.' and '-' only")
    try:
        changes, seeds = pilot.parse_changes(args.changes), pilot.parse_seeds(args.seeds)
        methods = tuple(m for m in args.methods.split(",") if m)
        spec = pilot.pilot_spec(Path(args.out) / args.name / "runs", args.cell, seeds, changes, methods)
    except ValueError as e:
        ap.error(str(e))
    run_sweep(spec, workers=args.workers, threads_per_run=1)
    rows = [r for s in seeds if (r := pilot.read_run(Path(spec["out_dir"]) / f"ppo-{args.cell}-s{s}")) and r["finished"]]
    for r in rows:
        print(f"seed {r['seed']}: final policy {r['final_policy_eval']:.3f}, best periodic evaluation {r['peak_eval']:.3f}  {r['evals']}")
    hits = sum(r["final_policy_eval"] >= args.level for r in rows)
    print(f"{args.name}: final policy >= {args.level:g} on {hits} of {len(rows)} finished seeds (greedy)")
    if args.sampled:
        for r in rows:
            kept = measure_sampled(Path(spec["out_dir"]) / r["run"], k=args.sampled, log=lambda *a: None)
            r["final_sampled_eval"] = round(json.loads(kept.read_text())["success"], 4)
        print("sampled:", " ".join(f"{r['seed']}:{r['final_sampled_eval']:.3f}" for r in rows))
        hits = sum(r["final_sampled_eval"] >= args.level for r in rows)
        print(f"{args.name}: final policy >= {args.level:g} on {hits} of {len(rows)} finished seeds "
              f"(sampled, each problem {args.sampled} times)")
    if rows:
        checks = pilot.regime_checks(Path(spec["out_dir"]), [r["run"] for r in rows])
        for r in rows:
            r.update(checks[r["run"]])
        print(pilot.regime_line(checks))
    if len(methods) > 1:
        compare(Path(spec["out_dir"]), "PYTHONPATH=. python bench/tppo_reliability.py " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.csv:
        label = f"{args.name}: " + " ".join(args.changes) if args.changes else args.name
        pilot.append_csv(args.csv, label, rows)
    return 0


def compare(runs_dir: Path, command: str) -> None:
    """The diagram's scores and verdicts over the finished runs of ``runs_dir`` (one Holm family: this folder's
    claims), printed and written beside it as ``report.md``, ``scores.csv`` and ``verdicts.csv``."""
    done = sorted(d for d in runs_dir.iterdir() if (d / "summary.json").exists())
    pr = analysis.per_run(load_runs(done, axes=sweep.AXES))
    table, verdicts = analysis.score(pr), analysis.verdicts(pr)
    print(text_table(table), "", *verdicts, sep="\n")
    root = runs_dir.parent
    seeds = sorted(pr["seed"].unique().tolist())
    lines = [f"# T-PPO phase diagram, {len(seeds)} seeds of its own: {', '.join(sorted(pr['env'].unique()))}", "",
             f"Generated {time.strftime('%Y-%m-%dT%H:%M:%S')} from {len(done)} finished runs by:", "",
             "```", command, "```", "",
             f"Seeds {seeds[0]}-{seeds[-1]}; the diagram's settings (`analysis/experiments/tppo_regimes/sweep.py`). "
             "These claims are their own family, decided on these seeds alone.", "",
             "## Verdicts", "", FAMILY_TEXT + ".", "", *(f"- {v}" for v in verdicts), "",
             "## Scores (mean [95% Student-t interval]; speed-ups: geometric mean, paired by seed)", "",
             markdown_table(table), "", "Definitions: `analysis/experiments/tppo_regimes/analysis.py`.", ""]
    (root / "report.md").write_text("\n".join(lines))
    print(f"wrote {root / 'report.md'}, {write_scores(table, root)} and {write_verdicts(verdicts.claims, root)}")


if __name__ == "__main__":
    sys.exit(main())
