"""Statistics of a model's greedy responses on a chain task's held-out split (``task.source: chain``).

For ``--n`` problems of the test split (the fixed held-out order every run evaluates on), decoded
greedily with no stop rule up to ``rollout.max_len`` tokens, it prints:

- response length in tokens: mean, median, p90, max, and the share of rows cut at ``rollout.max_len``;
- greedy pass@1 (the task's reward: the boxed answer is the gold number);
- the first wrong step: the verifier's ``failure_step`` (:func:`llm_backend.verifier.verify_chain`,
  the response token holding the first wrong number) as a fraction of the row's length, median and
  quartiles over rows with a located error, and the verifier's reasons;
- the first departure from the canonical solution (``divergence/*``): the token holding the first
  character where the response differs from :func:`llm_backend.chain_problems.chain_solution`, over the
  rows that fail. The verifier judges arithmetic only, so a step with a wrong operator or a skipped
  operation but right arithmetic passes it; the departure catches those (and any change of wording,
  so it means "first wrong step" only for responses in the canonical format, as after SFT).

Usage::

    .venv/bin/python bench/long_chain_stats.py configs/llm/long_chain_ppo.yaml --n 128 run.threads=1
    .venv/bin/python bench/long_chain_stats.py CONFIG --checkpoint RUN_DIR --n 64 --out rows.jsonl
    .venv/bin/python bench/long_chain_stats.py CONFIG --sft --n 128   # after the config's model.sft stage

``--out`` writes one JSON line per row (question, gold, response text, length, failure step, reason)
to pick real outputs for tests; ``--json`` writes the statistics. Timings are not printed: on a shared
machine they mean nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

from testbed import config as config_mod
from testbed.collector import decode_segment
from testbed.config import StopSection
from testbed.ops.build import build
from testbed.stopping import StopRule


def response_stats(backend, task, cfg, *, n: int, batch: int = 32) -> tuple[dict, list[dict]]:
    """``(statistics, rows)`` of greedy responses to the first ``n`` held-out problems."""
    from llm_backend.chain_problems import chain_solution
    from llm_backend.verifier import char_offsets, token_of_char, verify_chain

    rule = StopRule(StopSection(), num_slots=task.num_slots)
    task.rewind("test")
    rows: list[dict] = []
    L = cfg.rollout.max_len
    while len(rows) < n:
        m = min(batch, task.num_slots, n - len(rows))
        slots = np.arange(m)
        prompts = task.reset(slots, split="test")
        with torch.no_grad():
            seg = decode_segment(backend, task, rule, slots=slots, contexts=[list(p) for p in prompts],
                                 start=torch.zeros(m, dtype=torch.long), budget=torch.full((m,), L), max_len=L,
                                 cfg=cfg, train_step=0, generator=torch.Generator().manual_seed(0), greedy=True,
                                 with_values=False)
        responses = [seg.tokens[i, : int(seg.mask[i].sum())].tolist() for i in range(m)]
        res = task.finish(slots, responses)
        for i, r in enumerate(responses):
            p = task._problems[i]
            text = task.tokenizer.decode(r, skip_special_tokens=True)
            v = verify_chain(text, int(p.answer), p.meta["operands"])
            ended = bool(r) and r[-1] == task.eos_token_id
            canon = chain_solution(p.question, p.meta["operands"])
            same = next((j for j, (a, b) in enumerate(zip(text, canon)) if a != b), min(len(text), len(canon)))
            departs = -1 if text == canon else token_of_char(char_offsets(task.tokenizer, r), same)
            rows.append({"question": p.question, "gold": int(p.answer), "operands": list(p.meta["operands"]),
                         "response": text, "length": len(r), "eos": ended, "success": bool(res.success[i]),
                         "failure_step": int(res.failure_step[i]), "reason": v.reason,
                         "departs": int(departs) if not res.success[i] else -1})
    lengths = np.array([r["length"] for r in rows], dtype=float)
    frac = np.array([r["failure_step"] / r["length"] for r in rows if r["failure_step"] >= 0 and r["length"]])
    dep = np.array([r["departs"] / r["length"] for r in rows if r["departs"] >= 0 and r["length"]])
    steps = [len(r["operands"]) - 1 for r in rows]
    stats = {
        "problems": len(rows),
        "steps/mean": float(np.mean(steps)),
        "length/mean": float(lengths.mean()),
        "length/median": float(np.median(lengths)),
        "length/p90": float(np.percentile(lengths, 90)),
        "length/max": int(lengths.max()),
        "length/capped_rate": float(np.mean([not r["eos"] for r in rows])),
        "pass@1": float(np.mean([r["success"] for r in rows])),
        "failure/located_rate": float(len(frac) / len(rows)),
        "failure/position_median": float(np.median(frac)) if len(frac) else float("nan"),
        "failure/position_q25": float(np.percentile(frac, 25)) if len(frac) else float("nan"),
        "failure/position_q75": float(np.percentile(frac, 75)) if len(frac) else float("nan"),
        "divergence/position_median": float(np.median(dep)) if len(dep) else float("nan"),
        "divergence/position_q25": float(np.percentile(dep, 25)) if len(dep) else float("nan"),
        "divergence/position_q75": float(np.percentile(dep, 75)) if len(dep) else float("nan"),
        "reasons": dict(collections.Counter(r["reason"] for r in rows)),
    }
    return stats, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="YAML config of a chain task (task.source: chain)")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides")
    ap.add_argument("--n", type=int, default=128, help="held-out problems")
    ap.add_argument("--checkpoint", default="", help="a run directory or weights file to load first")
    ap.add_argument("--sft", action="store_true", help="run the config's model.sft stage first")
    ap.add_argument("--out", default="", help="write the rows as JSON Lines here")
    ap.add_argument("--json", default="", help="write the statistics as JSON here")
    args = ap.parse_intermixed_args(argv)
    cfg = config_mod.load(args.config, args.overrides)
    if cfg.task.source != "chain":
        print(f"error: {args.config}: task.source is {cfg.task.source!r}, not 'chain'", file=sys.stderr)
        return 2
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    task, backend = build(cfg, num_slots=min(32, args.n))
    if args.checkpoint:
        from safetensors.torch import load_file

        from testbed.runfiles import find_weights

        backend.load_state_dict(load_file(str(find_weights(Path(args.checkpoint)))))
    if args.sft:
        from llm_backend.sft import run_sft

        report = run_sft(cfg, backend, evaluate_before=False, evaluate_after=False)
        print(json.dumps({k: v for k, v in report.items() if k != "losses"}), flush=True)
    stats, rows = response_stats(backend, task, cfg, n=args.n)
    print(json.dumps(stats, indent=2))
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
