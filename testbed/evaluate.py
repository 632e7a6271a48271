"""Evaluate a backend on a task's held-out split: pass@1, avg@k, pass@k, response length."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from testbed.collector import decode_segment
from testbed.config import Config, StopSection
from testbed.stopping import StopRule


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def evaluate(backend, task, cfg: Config, *, n: int, k: int = 1, greedy: bool = False, batch_size: int = 32,
             split: str = "test", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Decode ``k`` responses for each of ``n`` problems (no early stopping) and score them; ``correct``:
    each problem's count of correct responses, in the task's order (the same problems at every call
    when the task's held-out problems have an order it can ``rewind`` to: the LLM tasks, and a simulated
    task with ``task.eval_problems=each``; paired items for a McNemar test between runs of one seed).

    ``task`` must have at least ``min(batch_size, n*k)`` slots; rows are decoded in chunks of whole groups.
    """
    from tqdm.auto import tqdm

    if greedy and k != 1:
        raise ValueError("greedy evaluation samples one response per problem: use k=1")
    rule = StopRule(StopSection(), num_slots=task.num_slots)
    per_chunk = max(1, min(batch_size, task.num_slots) // k)
    gen = torch.Generator().manual_seed(seed)
    correct: list[int] = []
    lengths: list[int] = []
    rewards: list[float] = []
    t0 = time.perf_counter()
    tokens = 0
    if hasattr(task, "rewind"):  # same held-out problems at every evaluation
        task.rewind(split)
    bar = tqdm(total=n, desc="eval", disable=not progress, leave=False)
    done = 0
    while done < n:
        m = min(per_chunk, n - done)
        slots = np.arange(m * k)
        prompts = task.reset(slots, split=split, group_size=k)
        L = cfg.rollout.max_len
        seg = decode_segment(backend, task, rule, slots=slots, contexts=[list(p) for p in prompts],
                             start=torch.zeros(m * k, dtype=torch.long), budget=torch.full((m * k,), L),
                             max_len=L, cfg=cfg, train_step=0, generator=gen, greedy=greedy, with_values=False)
        responses = [seg.tokens[i, : int(seg.mask[i].sum())].tolist() for i in range(m * k)]
        res = task.finish(slots, responses)
        ok = np.asarray(res.success, dtype=bool).reshape(m, k)
        correct += ok.sum(1).tolist()
        rewards += np.asarray(res.reward, dtype=float).tolist()
        lengths += [len(r) for r in responses]
        tokens += int(seg.mask.sum())
        done += m
        bar.update(m)
    bar.close()
    elapsed = time.perf_counter() - t0
    correct_arr = np.asarray(correct)
    return {
        "problems": n,
        "samples_per_problem": k,
        "greedy": greedy,
        "pass@1": float(np.mean([pass_at_k(k, c, 1) for c in correct])),
        f"pass@{k}": float(np.mean([pass_at_k(k, c, k) for c in correct])),
        f"avg@{k}": float(correct_arr.sum() / (n * k)),
        "reward/mean": float(np.mean(rewards)),
        "length/mean": float(np.mean(lengths)),
        "tokens/per_second": tokens / elapsed if elapsed > 0 else float("nan"),
        "time/total": elapsed,
        "correct": correct,
    }
