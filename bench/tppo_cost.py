"""Unit costs for the T-PPO study's cost model: a decoding step at batch 1 and 32, and a training token.

The study (``analysis.experiments.tppo_speedup``) prices each run's CPU-insensitive counts (decoding
steps, row-steps, trained tokens) with these numbers; only this script measures time, so run it
alone on an idle machine::

    PYTHONPATH=. python bench/tppo_cost.py [--config configs/tppo.yaml] [--threads 1] \
        [--out docs/tppo_speedup/cost_calibration.json]

Measured with the backend and task of ``--config`` (the toy GRU by default; ``configs/llm/tppo.yaml``
for the language model): the median time of one decoding step (policy logits + critic value + one
token fed back, every row kept) at batch 1 and batch 32, best of ``--repeats``; and one training step
(policy and critic forward + backward + Adam) on 32 rows x 16 tokens, per token. The line
``t(B) = a + b*B`` through the two decoding points gives ``a`` (per-step cost) and ``b`` (per-row cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from testbed import config as config_mod
from testbed.ops.build import build_backend, build_task


def _build(cfg, batch: int):
    task = build_task(cfg, num_slots=batch, seed=0)
    backend = build_backend(cfg, task, seed=0)
    prompts = task.reset(np.arange(batch), split="train", group_size=1)
    return task, backend, [list(p) for p in prompts]


def decode_step_s(backend, prompts, steps: int, repeats: int) -> float:
    """Median seconds of one decoding step over ``steps`` steps, best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        backend.begin(prompts)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            out = backend.step(with_values=True)
            tok = out.logits.argmax(-1)
            backend.advance(tok, keep=torch.ones_like(tok, dtype=torch.bool))
            times.append(time.perf_counter() - t0)
        best = min(best, statistics.median(times[2:]))
    return best


def train_token_s(backend, prompts, tokens: int, repeats: int) -> float:
    """Seconds per response token of one actor + critic training step (forward, backward, Adam)."""
    B = len(prompts)
    toks = torch.randint(0, backend.vocab_size, (B, tokens))
    mask = torch.ones(B, tokens, dtype=torch.bool)
    params = list(backend.policy_parameters()) + list(backend.critic_parameters())
    opt = torch.optim.Adam(params, lr=1e-6)
    dev = backend.device
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms allocators up
        t0 = time.perf_counter()
        logp, _ = backend.policy_forward(prompts, toks.to(dev), mask.to(dev), temperature=1.0)
        v = backend.critic_forward(prompts, toks.to(dev), mask.to(dev))
        loss = -logp.float().mean() + v.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best / (B * tokens)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tppo.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=24, help="decoding steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="docs/tppo_speedup/cost_calibration.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = config_mod.load(args.config)
    _, backend, prompts = _build(cfg, 32)
    with torch.no_grad():
        t1 = decode_step_s(backend, prompts[:1], args.steps, args.repeats)
        t32 = decode_step_s(backend, prompts, args.steps, args.repeats)
    c = train_token_s(backend, prompts, 16, args.repeats)
    b = (t32 - t1) / 31
    out = {
        "config": args.config, "model": f"{cfg.model.kind}:{cfg.model.path if cfg.model.kind == 'hf' else cfg.model.hidden_size}",
        "threads": args.threads, "load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
        "decode_step_b1_s": t1, "decode_step_b32_s": t32, "a_s": t1 - b, "b_s": b,
        "train_token_s": c,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
