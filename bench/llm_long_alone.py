"""The long-chain study's methods timed alone: one ``testbed run`` at a time, each the method's cell of the
study (its preset ``configs/llm/long_chain_*.yaml``, see :data:`METHODS`) at one seed, nothing else on the machine.

The study (``testbed demo --study llm_long``) runs two workers side by side, so its ``wall_min`` is the
study's setting, not a method's cost. Here every run has the machine to itself. The warm-start
(``model.sft``) is trained once, by a first run's stage, and loaded by the others from ``OUT/sft_cache``,
so the compared figure is the training loop: the per-step generation, actor and critic time summed over
the run (the held-out evaluations, the same work for every method, are reported apart). Ratios are to
PPO's run of this invocation. A run already finished in ``--out`` is read, not re-run (its wall-clock
then comes from its ``bench.json``, written when it ran here). Usage, alone on the machine::

    PYTHONPATH=. python bench/llm_long_alone.py [--methods ppo espo_paper tppo tppo_deferred] [--seed 0] [--out runs/llm_long_alone]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from timed import timed_run  # bench/timed.py, beside this script

REPO = Path(__file__).resolve().parents[1]
METHODS = {"ppo": ("ppo", []), "espo_paper": ("espo_paper", []), "espo": ("espo", []), "tppo": ("tppo", []),
           "tppo_deferred": ("tppo", ["tppo.credit=deferred"])}
"""Method -> (its preset ``configs/llm/long_chain_<preset>.yaml``, overrides): the study's cells
(``tppo_deferred``, a side method, is the T-PPO preset with deferred credit)."""
PHASES = ("time/gen", "time/actor", "time/critic")


def preset(method: str) -> Path:
    return REPO / "configs" / "llm" / f"long_chain_{METHODS[method][0]}.yaml"


def run_one(method: str, seed: int, out: Path) -> dict:
    name = f"{method}-s{seed}"
    cmd = [str(Path(sys.executable).parent / "testbed"), "run", str(preset(method)), f"run.seed={seed}",
           f"run.name={name}", f"run.out_dir={out}", f"run.sft_cache={out / 'sft_cache'}", "run.progress=false",
           *METHODS[method][1]]
    return timed_run(out / name, cmd, {"method": method, "seed": seed})


def read_run(run_dir: Path) -> dict:
    """Phase seconds summed over the steps, generated tokens, the run's total and its held-out pass@1."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "time/gen" in r]
    phases = {k: sum(r[k] for r in steps) for k in PHASES}
    summary = json.loads((run_dir / "summary.json").read_text())
    final = json.loads((run_dir / "final_eval.json").read_text())
    evals = [(r["eval/step"], r["eval/pass@1"]) for r in rows if "eval/pass@1" in r] + [(final["eval/step"], final["eval/pass@1"])]
    # the evaluation at step k follows steps 0 .. k-1: its training-loop time is theirs
    curve = [(sum(sum(r[k] for k in PHASES) for r in steps if r["step"] < k), p) for k, p in evals]
    return {**phases, "train_s": sum(phases.values()), "curve": curve,
            "tokens": summary["tokens/cumulative"], "heldout": final["eval/pass@1"],
            "rl_wall_s": steps[-1]["time/wall"],
            "sft": json.loads((run_dir / "sft.json").read_text()).get("cache", "trained").split()[0]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["ppo", "espo_paper", "tppo"], choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/llm_long_alone")
    a = ap.parse_args(argv)
    if "ppo" not in a.methods:
        raise SystemExit("--methods must include ppo: every ratio is to PPO's run")
    out = Path(a.out)
    got = {}
    for m in a.methods:
        rec = run_one(m, a.seed, out)
        got[m] = {**rec, **read_run(out / f"{m}-s{a.seed}")}
    ppo = got["ppo"]
    lines = [f"# llm_long_alone: seed {a.seed}, methods {' '.join(a.methods)} (one run at a time, alone)",
             "method        | training loop s (gen / actor / critic) | x PPO | tokens | x PPO | s per 1k tokens | "
             "RL wall s (evaluations included) | process wall s (warm-start: trained, stored or loaded) | held-out pass@1"]
    for m, g in got.items():
        lines.append(f"{m:13s} | {g['train_s']:7.1f} ({g['time/gen']:.1f} / {g['time/actor']:.1f} / {g['time/critic']:.1f}) "
                     f"| {g['train_s'] / ppo['train_s']:.3f} | {g['tokens']} | {g['tokens'] / ppo['tokens']:.3f} "
                     f"| {1000 * g['train_s'] / g['tokens']:.2f} | {g['rl_wall_s']:.0f} | {g['wall_s']:.0f} ({g['sft']}) | {g['heldout']:.3f}")
    lines.append("held-out pass@1 against training-loop seconds (each evaluation, the final one last):")
    lines += [f"{m:13s} " + "  ".join(f"{t:.0f}s:{p:.3f}" for t, p in g["curve"]) for m, g in got.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
