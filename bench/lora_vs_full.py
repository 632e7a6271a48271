"""LoRA against full fine-tuning at the LLM PPO preset (``configs/llm/ppo.yaml``): wall-clock, seconds per
step (generation / actor / critic), peak memory and the held-out pass@1 curve, per seed.

Each (variant, seed) is one ``testbed run`` in its own process under ``/usr/bin/time -v`` (its peak RSS),
one after another, never two at once. A run already finished in ``--out`` is read, not re-run (its
wall-clock and memory then come from its ``bench.json``, written when it ran here). Usage, alone on the
machine::

    PYTHONPATH=. python bench/lora_vs_full.py [--seeds 0 1] [--variants full lora] [--out runs/lora_vs_full]

LoRA: ``model.lora`` = :data:`LORA` (rank 8 on the attention projections, peft) with ``algo.lr_actor`` =
:data:`LORA_LR` (10x the preset's 3e-5: adapters start at zero and move the model through a rank-8
update, so the full model's step size would leave them nearly still); the critic head and everything else
as the preset.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from timed import timed_run  # bench/timed.py, beside this script

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "llm" / "ppo.yaml"
LORA = "{r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj]}"
LORA_LR = 3.0e-4
VARIANTS = {"full": [], "lora": [f"model.lora={LORA}", f"algo.lr_actor={LORA_LR}"],
            "full_lr1e-4": ["algo.lr_actor=1e-4"]}
"""``full_lr1e-4``: full fine-tuning at a larger step size, to separate the method from the step size."""


def _peak_rss(stderr: str) -> dict:
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return {"peak_rss_gb": int(rss.group(1)) / 2**20 if rss else None}


def run_one(variant: str, seed: int, out: Path) -> dict:
    name = f"{variant}-s{seed}"
    cmd = ["/usr/bin/time", "-v", str(Path(sys.executable).parent / "testbed"), "run", str(PRESET),
           f"run.seed={seed}", f"run.name={name}", f"run.out_dir={out}", "run.progress=false", *VARIANTS[variant]]
    return timed_run(out / name, cmd, {"variant": variant, "seed": seed}, parse=_peak_rss)


def read_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [(r["eval/step"], r["eval/pass@1"]) for r in rows if "eval/pass@1" in r]
    final = run_dir / "final_eval.json"
    if final.is_file():  # the evaluation after the last step
        f = json.loads(final.read_text())
        evals.append((f["eval/step"], f["eval/pass@1"]))
    steps = [r for r in rows if "time/gen" in r]
    per = {k: float(np.mean([r[k] for r in steps])) for k in ("time/gen", "time/actor", "time/critic")}
    return {"evals": evals, **per}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="runs/lora_vs_full")
    a = ap.parse_args(argv)
    out = Path(a.out)
    lines = []
    for v in a.variants:
        for s in a.seeds:
            rec = run_one(v, s, out)
            m = read_metrics(out / f"{v}-s{s}")
            curve = " / ".join(f"{p:.3f}" for _, p in m["evals"])
            lines.append(f"{v:11s} seed {s}: wall {rec['wall_s'] / 60:5.1f} min, peak RSS {rec['peak_rss_gb']:.2f} GB, "
                         f"s/step gen {m['time/gen']:.2f} actor {m['time/actor']:.2f} critic {m['time/critic']:.2f}; "
                         f"held-out pass@1 at steps {' / '.join(str(k) for k, _ in m['evals'])}: {curve}")
            print(lines[-1], flush=True)
    print("\n".join(["", "# lora_vs_full: " + " ".join(sys.argv[1:]), *lines]))


if __name__ == "__main__":
    main()
