"""The ``testbed`` console script: run, sweep, eval, sft, plot, demo, detect.

Each subcommand is a ``cmd_NAME(args) -> exit status`` plus an ``add_NAME(subparsers)`` that declares
its arguments; :data:`COMMANDS` lists them, so a new subcommand is two functions and one entry.

Errors: a :class:`testbed.errors.UserError` (a bad config key or value, a missing or malformed file,
a missing model, a run directory in use) prints one ``error: ...`` line on stderr and exits with
status 2; any other exception is a bug and keeps its traceback. Ctrl-C prints one line (for a run:
the step it stopped at; run the command again to resume from the last checkpoint) and exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from testbed import config as config_mod
from testbed.errors import Interrupted, UserError, check_output_folder

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, the shell's convention)."""


def _config_help() -> str:
    lines = ["config keys (override with section.key=value):"]
    for f in dataclasses.fields(config_mod.Config):
        cls = type(getattr(config_mod.Config(), f.name))
        docs = config_mod.field_docs(cls)
        for sf in dataclasses.fields(cls):
            default = getattr(cls(), sf.name)
            lines.append(f"  {f.name}.{sf.name} = {default!r}\n      {docs.get(sf.name, '')}")
    return "\n".join(lines)


# --- run ---------------------------------------------------------------------------------------------
def add_run(sub) -> None:
    r = sub.add_parser("run", help="one training run (simulated or LLM, by the config)",
                       epilog=_config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", help="YAML config (e.g. configs/espo.yaml)")
    r.add_argument("overrides", nargs="*", help="section.key=value overrides")
    r.add_argument("--steps", type=int, default=None, help="shorthand for run.steps=N")
    r.set_defaults(fn=cmd_run)


def cmd_run(args) -> int:
    from testbed.ops.trainer import Trainer

    overrides = list(args.overrides) + ([f"run.steps={args.steps}"] if args.steps is not None else [])
    cfg = config_mod.load(args.config, overrides)
    trainer = Trainer(cfg)
    summary = trainer.train()
    print(json.dumps(summary, indent=2))
    print(f"run directory: {trainer.run_dir}")
    return 0


# --- sweep -------------------------------------------------------------------------------------------
def add_sweep(sub) -> None:
    s = sub.add_parser("sweep", help="a grid of runs in parallel processes, or on Ray")
    s.add_argument("sweep", help="sweep YAML (see testbed/ops/sweep.py)")
    s.add_argument("--workers", type=int, default=2, help="parallel processes (process executor)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: the sweep file's cpus_per_run, else 1)")
    s.add_argument("--executor", choices=("process", "ray"), default="process",
                   help="process: a local process pool (default); ray: Ray tasks, local or on a cluster")
    s.add_argument("--address", default=None,
                   help="ray: address of a running cluster (default: $RAY_ADDRESS, else a local Ray started now)")
    s.set_defaults(fn=cmd_sweep)


def cmd_sweep(args) -> int:
    from testbed.ops.sweep import run_sweep

    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("--workers and --threads: must be >= 1")
    rows = run_sweep(args.sweep, workers=args.workers, threads_per_run=args.threads, executor=args.executor,
                     address=args.address)
    keys = ["name", "status", "steps", "tokens/cumulative", "final/success_rate", "final/stop_rate"]
    print(" | ".join(keys))
    for r in sorted(rows, key=lambda r: r["name"]):
        print(" | ".join(f"{r.get(k):.3f}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys))
    skipped = [r for r in rows if r.get("status", "").startswith("skipped")]
    for r in skipped:
        print(f"{r['name']}: {r['status']}", file=sys.stderr)
    return 0


# --- eval --------------------------------------------------------------------------------------------
def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model or checkpoint on a task (pass@1, avg@k)")
    e.add_argument("config", help="YAML config naming the task and model")
    e.add_argument("overrides", nargs="*", help="section.key=value overrides")
    e.add_argument("--checkpoint", default="", help="run directory or checkpoints/model.safetensors to load")
    e.add_argument("--n", type=int, default=64, help="problems")
    e.add_argument("--k", type=int, default=1, help="samples per problem (avg@k, pass@k)")
    e.add_argument("--greedy", action="store_true", help="greedy decoding (k must be 1)")
    e.add_argument("--out", default="", help="write the result JSON here")
    e.set_defaults(fn=cmd_eval)


def cmd_eval(args) -> int:
    from testbed.ops.evaluate import evaluate_from_cli

    result = evaluate_from_cli(args.config, args.overrides, checkpoint=args.checkpoint, n=args.n, k=args.k,
                               greedy=args.greedy, out=args.out)
    # the per-problem outcomes stay in --out's file; the terminal gets the scores
    print(json.dumps({k: v for k, v in result.items() if k != "correct"}, indent=2))
    return 0


# --- plot --------------------------------------------------------------------------------------------
def add_plot(sub) -> None:
    pl = sub.add_parser("plot", help="figures and a markdown table from run directories")
    pl.add_argument("run_dirs", nargs="+", help="run directories")
    pl.add_argument("--out", required=True, help="output folder")
    pl.set_defaults(fn=cmd_plot)


def cmd_plot(args) -> int:
    from analysis.plots import plot_runs_cli

    check_output_folder(args.out, "--out")
    return plot_runs_cli(args.run_dirs, out=args.out)


# --- demo --------------------------------------------------------------------------------------------
def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the headline simulated ESPO study (or another registered study), end to end")
    d.add_argument("--study", default="espo_headline",
                   help="a study registered in analysis.experiments.REGISTRY (espo_headline, espo_difficulty, ...)")
    d.add_argument("--out", default="", help="output folder (runs, figures, report); default out/<study>")
    d.add_argument("--workers", type=int, default=2, help="parallel processes")
    d.add_argument("--quick", action="store_true", help="fewer seeds and steps (smoke test)")
    d.add_argument("--fresh", action="store_true", help="ignore completed runs in the output folder")
    d.add_argument("--full", action="store_true", help="the full study (headline: 30 seeds and the ablations)")
    d.add_argument("--report-only", action="store_true",
                   help="run nothing: the report from the runs finished so far (a study completed over several sittings)")
    d.set_defaults(fn=cmd_demo)


def cmd_demo(args) -> int:
    from testbed.ops.studies import run_study

    return run_study(args.study, args.out, workers=args.workers, quick=args.quick, fresh=args.fresh, full=args.full,
                     report_only=args.report_only)


def add_findings(sub) -> None:
    f = sub.add_parser("findings", help="the README's table of decided claims, from docs/*/verdicts.csv")
    f.add_argument("--readme", default="README.md")
    f.add_argument("--docs", default="docs", help="folder whose <study>/verdicts.csv are read")
    f.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README is out of date")
    f.set_defaults(fn=cmd_findings)


def cmd_findings(args) -> int:
    from analysis.findings import cli

    try:
        return cli(readme=args.readme, docs=args.docs, check=args.check)
    except (OSError, ValueError) as e:
        raise config_mod.ConfigError(f"findings: {e}") from None


def add_detect(sub) -> None:
    dt = sub.add_parser("detect", help="score a stop rule offline on step-labelled solutions (ProcessBench format)")
    dt.add_argument("--data", required=True, help="JSON list (or JSON Lines) of {id, problem, steps, label}")
    dt.add_argument("--checkpoint", default="", help="a finished run's directory (its policy, critic and normaliser)")
    dt.add_argument("--config", default="", help="YAML config (model, task, stop rule); default: the run's, else the default model with ESPO's settings")
    dt.add_argument("--limit", type=int, default=None, help="first N items only")
    dt.add_argument("--out", required=True, help="output folder for items.jsonl and detect.json")
    dt.add_argument("--no-progress", action="store_true", help="no progress bar")
    dt.set_defaults(fn=cmd_detect)


def cmd_detect(args) -> int:
    from testbed.ops.detect import detect

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: must be >= 1 (the number of items to score), got {args.limit}")
    check_output_folder(args.out, "--out")
    summary = detect(args.data, out=args.out, config=args.config or None, checkpoint=args.checkpoint or None,
                     limit=args.limit, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


# --- sft ---------------------------------------------------------------------------------------------
def add_sft(sub) -> None:
    f = sub.add_parser("sft", help="supervised warm-start on the task's canonical solutions (the model.sft stage alone)",
                       description="Fine-tune the config's policy on canonical solutions of the training split "
                       "(next-token cross-entropy on the response tokens, the prompt as RL sees it), with the "
                       "model.sft settings; print and write sft.json with held-out greedy pass@1 before and after.")
    f.add_argument("config", help="YAML config naming the task (task.source: chain) and model")
    f.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. model.sft.steps=40)")
    f.add_argument("--out", default="", help="output folder for sft.json (default: run.out_dir/run.name-sft)")
    f.add_argument("--save", action="store_true", help="also write the fine-tuned policy as a model directory "
                   "OUT/policy (usable as model.path)")
    f.set_defaults(fn=cmd_sft)


def cmd_sft(args) -> int:
    from pathlib import Path

    import torch

    from testbed.ops import build as build_mod
    from testbed.ops.rundir import write_json

    cfg = config_mod.load(args.config, args.overrides)
    s = build_mod.sft_settings(cfg)
    if s["steps"] < 1:
        raise UserError("model.sft.steps: the SFT stage needs steps >= 1 (set model.sft.steps=N)")
    out = Path(args.out or Path(cfg.run.out_dir) / f"{cfg.run.name}-sft")
    check_output_folder(str(out), "--out")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    task, backend = build_mod.build(cfg, num_slots=1)
    report = build_mod.run_sft(cfg, backend, progress=cfg.run.progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / build_mod.SFT_REPORT, report)
    if args.save:
        backend.save_pretrained(str(out / "policy"), tokenizer=getattr(task, "tokenizer", None))
    print(json.dumps({k: v for k, v in report.items() if k != "losses"}, indent=2))
    print(f"sft: held-out greedy pass@1 {report['pass@1/before']:.3f} -> {report['pass@1/after']:.3f} "
          f"on {report['eval_size']} problems; {out / build_mod.SFT_REPORT}")
    return 0


COMMANDS = [add_run, add_sweep, add_eval, add_sft, add_plot, add_demo, add_detect, add_findings]
"""Each adds one subcommand (its parser and ``fn``); the help lists them in this order."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="testbed", description="ESPO / T-PPO algorithm testbed")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, whatever the message
        return 2
    except Interrupted as e:  # a run stopped by Ctrl-C: its step and how to resume
        print(e.message, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # Ctrl-C anywhere else (building, a sweep, detect): no traceback
        print("interrupted; run the command again to resume (finished runs and checkpoints are kept)",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
