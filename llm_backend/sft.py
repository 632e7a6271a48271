r"""Supervised warm-start: next-token cross-entropy on a task's canonical solutions, before RL.

The paper starts RL from a distilled reasoning model; SmolLM2-135M solves almost no long chain
problem (``task.source: chain`` with many steps), so a run can first fine-tune the policy on the
canonical solutions of the training split (:meth:`llm_backend.chain.ChainTask.solution`: one
equation per step, then the boxed answer). ``model.sft: {steps, lr, batch_size, eval_size}``
configures it (:data:`SFT_KEYS`); the trainer runs it when a run starts from scratch (never on a
resume), ``testbed sft CONFIG`` runs it alone.

- Data: each step draws ``batch_size`` training problems from the task's own generator, seeded with
  ``run.seed + SFT_SEED_OFFSET`` (deterministic, independent of the RL run's draws). The prompt is
  the task's (:meth:`llm_backend.task.MathTask.prompt_ids`, exactly what RL decodes from); the
  response is the solution's tokens plus the end-of-turn token the model must learn to emit.
- Loss: ``-mean log pi(y_t | prompt, y_<t)`` over response tokens only (token mean over the batch),
  from :meth:`llm_backend.backend.HFBackend.policy_forward`, which scores response positions only,
  so no prompt token ever carries loss. Only the policy trains (with ``model.lora``: its adapters);
  the critic and value head are left as they are.
- Optimiser: Adam; for a bf16 (or fp16) policy on fp32 master copies of the trained weights, written
  back rounded after every step (plain Adam on bf16 weights rounds most updates at SFT learning rates
  away); gradients clipped to ``algo.max_grad_norm``.
- Report (:func:`run_sft`): held-out greedy pass@1 before and after on ``eval_size`` test problems
  (default ``run.eval_size``), the mean response length, and the per-step losses; the caller writes
  it (the trainer: ``RUN_DIR/sft.json``).

A separate critic (``model.critic: separate``) and a KL reference (``model.reference``) are built
from the pre-SFT policy; the presets use the value head (``critic: head``) and no KL term.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from testbed.config import ConfigError

__all__ = ["SFT_KEYS", "SFT_SEED_OFFSET", "run_sft", "sft_batch", "sft_loss", "sft_settings",
           "supervised_finetune"]

SFT_KEYS: dict[str, Any] = {"steps": 0, "lr": 1.0e-4, "batch_size": 8, "eval_size": 0}
"""``model.sft`` keys and their defaults: optimiser steps (0: no stage), Adam learning rate, problems
per step, held-out problems for the before/after pass@1 (0: ``run.eval_size``)."""

SFT_SEED_OFFSET = 30_000
"""The SFT problems' generator seed is ``run.seed`` plus this (the held-out evaluations use +10_000)."""

def sft_settings(spec: dict | None) -> dict[str, Any]:
    """``model.sft`` with defaults filled in; a ConfigError names the bad key."""
    spec = dict(spec or {})
    unknown = set(spec) - set(SFT_KEYS)
    if unknown:
        raise ConfigError(f"model.sft: unknown key(s) {sorted(unknown)}; valid: {', '.join(SFT_KEYS)}")
    s = {**SFT_KEYS, **spec}
    for key in ("steps", "batch_size", "eval_size"):
        v = s[key]
        low = 1 if key == "batch_size" else 0
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"model.sft.{key}: must be an integer >= {low}, got {v!r}")
    lr = s["lr"]
    if isinstance(lr, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            lr = float(lr)
        except ValueError:
            pass
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"model.sft.lr: must be a finite number > 0, got {lr!r}")
    s["lr"] = float(lr)
    return s


def sft_batch(task: Any, slots: Sequence[int]) -> tuple[list[list[int]], Tensor, Tensor]:
    """New training problems in ``slots``: ``(prompts, tokens (B, T) long, mask (B, T) bool)``, the
    responses being each problem's canonical solution plus the end-of-turn token, right-padded."""
    if not hasattr(task, "solution"):
        raise ConfigError("model.sft: the task has no canonical solutions to train on (task.source: chain has)")
    slots = np.asarray(slots)
    prompts = task.reset(slots, split="train")
    responses = [list(task.tokenizer(task.solution(int(s)), add_special_tokens=False)["input_ids"])
                 + [int(task.eos_token_id)] for s in slots]
    T = max(len(r) for r in responses)
    tokens = torch.full((len(responses), T), int(task.eos_token_id), dtype=torch.long)
    mask = torch.zeros((len(responses), T), dtype=torch.bool)
    for i, r in enumerate(responses):
        tokens[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = True
    return prompts, tokens, mask


def sft_loss(backend: Any, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor) -> Tensor:
    """Token-mean next-token cross-entropy of the response tokens (``mask``) given their prompts."""
    logprobs, _ = backend.policy_forward(prompts, tokens, mask, temperature=1.0)
    m = mask.to(logprobs.device)
    return -(logprobs * m).sum() / m.sum().clamp(min=1)


class _MasterAdam:
    """Adam on fp32 copies of low-precision parameters, written back after each step."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        self.params = params
        self.masters = [p.detach().float().clone().requires_grad_(True) if p.dtype != torch.float32 else p
                        for p in params]
        self.opt = torch.optim.Adam(self.masters, lr=lr)

    def step(self, max_norm: float) -> float:
        for p, m in zip(self.params, self.masters):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(self.masters, max_norm)
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    p.copy_(m)
        for p in self.params:
            p.grad = None
        for m in self.masters:
            m.grad = None
        return float(norm)


def supervised_finetune(backend: Any, task: Any, *, steps: int, lr: float, batch_size: int,
                        max_grad_norm: float = 1.0, progress: bool = False) -> list[float]:
    """``steps`` Adam steps of :func:`sft_loss` on ``batch_size`` fresh training problems each (the task
    needs ``batch_size`` slots); returns the loss of every step (before its update)."""
    from tqdm.auto import tqdm

    params = list(backend.policy_parameters())
    if not params:
        raise ConfigError("model.sft: the policy has no trainable parameters")
    opt = _MasterAdam(params, lr)
    losses = []
    for _ in tqdm(range(steps), desc="sft", disable=not progress, leave=False):
        prompts, tokens, mask = sft_batch(task, np.arange(batch_size))
        loss = sft_loss(backend, prompts, tokens, mask)
        loss.backward()
        opt.step(max_grad_norm)
        losses.append(float(loss.detach()))
    return losses


def run_sft(cfg: Any, backend: Any, *, evaluate_before: bool = True, evaluate_after: bool = True,
            progress: bool = False) -> dict[str, Any]:
    """The ``model.sft`` stage on ``backend`` for the task of ``cfg``: held-out greedy pass@1 before,
    :func:`supervised_finetune`, pass@1 after; returns the report (see the module docstring)."""
    from llm_backend.task import make_task
    from testbed.evaluate import evaluate

    s = sft_settings(cfg.model.sft)
    if s["steps"] < 1:
        raise ConfigError("model.sft.steps: the SFT stage needs steps >= 1")
    n_eval = s["eval_size"] or cfg.run.eval_size
    seed = cfg.run.seed + SFT_SEED_OFFSET
    report: dict[str, Any] = {"steps": s["steps"], "lr": s["lr"], "batch_size": s["batch_size"],
                              "eval_size": n_eval, "seed": seed}

    def held_out(when: str) -> None:
        task = make_task(cfg.task, cfg.model, num_slots=min(32, n_eval), seed=cfg.run.seed + 10_000)
        res = evaluate(backend, task, cfg, n=n_eval, greedy=True, batch_size=task.num_slots, seed=cfg.run.seed,
                       progress=False)
        report[f"pass@1/{when}"] = res["pass@1"]
        report[f"length/mean/{when}"] = res["length/mean"]

    if evaluate_before:
        held_out("before")
    train_task = make_task(cfg.task, cfg.model, num_slots=s["batch_size"], seed=seed)
    t0 = time.perf_counter()
    losses = supervised_finetune(backend, train_task, steps=s["steps"], lr=s["lr"], batch_size=s["batch_size"],
                                 max_grad_norm=cfg.algo.max_grad_norm, progress=progress)
    report["time/train"] = time.perf_counter() - t0
    report["loss/first"], report["loss/last"] = losses[0], losses[-1]
    report["losses"] = losses
    if evaluate_after:
        held_out("after")
    return report
