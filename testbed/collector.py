"""Rollout collection: drive any Backend on any Task, consult the stop rule each step.

:class:`SamplePool` holds B slots. Each training step it refills finished slots with new prompts,
decodes at most ``budget`` new tokens per row (``max_len`` for PPO, the window for T-PPO), and
carries unfinished rows to the next step. Plain PPO is the pool whose budget covers ``max_len``:
every row finishes in one segment, so PPO and T-PPO share this one loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from testbed.config import Config
from testbed.protocols import Backend, Task
from testbed.rollout import Ending, Rollout, table_bootstrap
from testbed.sampling import Sample, sample_tokens
from testbed.stopping import StopContext, StopRule


@dataclass
class Segment:
    """What one decoding pass produced for B rows, right-padded to W new tokens."""

    tokens: Tensor  # (B, W) long
    logprobs: Tensor  # (B, W)
    regret: Tensor  # (B, W)
    values: Tensor  # (B, W), NaN where the critic was skipped
    mask: Tensor  # (B, W) bool
    ending: Tensor  # (B,) long Ending
    failure_step: Tensor  # (B,) long, ground truth known by the segment's end
    steps: int  # decoding steps taken
    idle_fraction: float  # share of the decoding batch's row-steps spent on rows already ended
    sampled: Tensor | None = None  # (B, W) bool, False where the task forced the token; None if it never does
    next_values: Tensor | None = None  # (B,) V(s_{l+1}) of WINDOW_CUT rows (NaN elsewhere), if asked
    value_steps: int = 0  # extra decoding steps taken only for next_values


def decode_segment(
    backend: Backend,
    task: Task,
    rule: StopRule,
    *,
    slots: np.ndarray,
    contexts: list[list[int]],
    start: Tensor,
    budget: Tensor,
    max_len: int,
    cfg: Config,
    train_step: int,
    generator: torch.Generator | None,
    greedy: bool = False,
    with_values: bool = True,
    next_value: bool = False,
) -> Segment:
    """Decode up to ``budget[i]`` tokens for each row ``i``, whose response already has ``start[i]`` tokens.

    A row ends at EOS, when the stop rule fires, when its response reaches ``max_len`` (LENGTH_CAP)
    or when its budget runs out first (WINDOW_CUT). Ended rows leave the backend's batch at once.
    ``with_values=False`` (nothing uses values: GRPO without a value-gated stop rule) never asks the
    critic: the segment's values are 0.
    With ``next_value``, rows cut by the budget stay one more step, for the critic's V(s_{l+1}) of
    the state after their last token (``Segment.next_values``); that needs every cut row to be cut at
    the segment's last step (the pool's equal budgets guarantee it).
    """
    B = len(contexts)
    W = int(budget.max()) if B else 0
    r = cfg.rollout
    every = cfg.model.stop_check_every
    tokens = torch.zeros(B, W, dtype=torch.long)
    logprobs = torch.zeros(B, W)
    regret = torch.zeros(B, W)
    values = torch.full((B, W), float("nan")) if with_values else torch.zeros(B, W)
    mask = torch.zeros(B, W, dtype=torch.bool)
    ending = torch.full((B,), -1, dtype=torch.long)
    failure = torch.full((B,), -1, dtype=torch.long)
    forced_tokens = getattr(task, "forced_tokens", None)  # planted wrong steps (llm_backend.chain)
    sampled = torch.ones(B, W, dtype=torch.bool) if forced_tokens is not None else None
    next_values = torch.full((B,), float("nan")) if next_value else None
    value_steps = 0
    active = torch.arange(B)
    slots_t = torch.as_tensor(slots, dtype=torch.long)
    busy_row_steps = 0
    steps = 0
    if B:
        backend.begin(contexts)
    for k in range(W):
        if len(active) == 0:
            break
        steps += 1
        busy_row_steps += len(active)
        check = with_values and ((k % every == 0) or k == W - 1)
        out = backend.step(with_values=check)
        s = sample_tokens(out.logits, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                          generator=generator, greedy=greedy)
        forced = None
        if forced_tokens is not None:
            f = torch.as_tensor(forced_tokens(slots[active.numpy()]), dtype=torch.long)
            forced = f >= 0
            if forced.any():
                s = _force(s, out.logits, f, r.temperature)
                sampled[active[forced], k] = False
        tok = s.tokens.cpu()
        tokens[active, k] = tok
        logprobs[active, k] = s.logprobs.cpu()
        regret[active, k] = s.regret.cpu()
        mask[active, k] = True
        vals = None if out.values is None else out.values.float().cpu()
        if vals is not None:
            values[active, k] = vals
            # A backend whose critic caught up over the skipped steps in one chunk (stop_check_every > 1)
            # returns those values too; using them saves a teacher-forced critic pass after decoding.
            chunk = out.chunk_values
            if chunk is not None and chunk.shape[1] > 1:
                n = min(chunk.shape[1], k + 1)
                values[active.unsqueeze(1), torch.arange(k - n + 1, k + 1)] = chunk[:, -n:].float().cpu()
        fs = torch.as_tensor(task.observe(slots[active.numpy()], tok.numpy()), dtype=torch.long)
        failure[active] = fs
        pos = start[active] + k
        eos = tok == task.eos_token_id
        ctx = StopContext(slots=slots_t[active], positions=pos, logits=out.logits, tokens=tok,
                          regret=s.regret.cpu(), values=vals, failure_step=fs, train_step=train_step,
                          ends_anyway=eos, sampled=None if forced is None else ~forced)
        stop = rule(ctx).cpu()
        cap = ((pos + 1) >= max_len) & ~eos & ~stop
        cut = ((k + 1) >= budget[active]) & ~eos & ~stop & ~cap
        ended = eos | stop | cap | cut
        code = torch.full_like(pos, -1)
        code[eos], code[stop], code[cap], code[cut] = Ending.EOS, Ending.EARLY_STOP, Ending.LENGTH_CAP, Ending.WINDOW_CUT
        ending[active[ended]] = code[ended]
        if next_values is not None and cut.any():
            if (~ended).any():
                raise RuntimeError("tppo.bootstrap=next: rows were cut while others decode on; cut rows must share the last step")
            # One more step for the cut rows only: the critic's value of the state after the last token.
            backend.advance(s.tokens, keep=cut.to(s.tokens.device))
            next_values[active[cut]] = backend.step(with_values=True).values.float().cpu()
            value_steps += 1
            backend.advance(s.tokens[cut], keep=torch.zeros(int(cut.sum()), dtype=torch.bool, device=s.tokens.device))
        else:
            backend.advance(s.tokens, keep=(~ended).to(s.tokens.device))
        active = active[~ended]
    if (ending < 0).any():  # only possible with a zero budget
        raise RuntimeError("a row ended the segment without an ending; budgets must be >= 1")
    idle = 1.0 - busy_row_steps / (B * steps) if steps else 0.0
    return Segment(tokens, logprobs, regret, values, mask, ending, failure, steps, idle, sampled, next_values, value_steps)


def _force(s: Sample, logits: Tensor, forced: Tensor, temperature: float) -> Sample:
    """``s`` with the tokens of rows where ``forced`` (b,) >= 0 replaced by those tokens, their log-prob
    and regret read from the same temperature-scaled distribution the sampled tokens come from."""
    f = forced.to(s.tokens.device)
    tokens = torch.where(f >= 0, f, s.tokens)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return Sample(tokens=tokens, logprobs=chosen, regret=(logp.amax(-1) - chosen).clamp(min=0.0))


@dataclass
class _Slot:
    """A row in the pool: its prompt and the response generated so far (across windows)."""

    prompt: list[int]
    group: int
    tokens: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # sampling log-probs, for T-PPO's deferred credit
    born_step: int = 0


@dataclass
class StepBatch:
    """One training step's data from the pool."""

    rollout: Rollout
    """This segment's rows (prompts = the context before the segment's tokens) for the policy loss."""
    finished: Rollout | None
    """Rows that finished this step, whole responses from their prompt (for T-PPO's Monte-Carlo critic)."""
    stats: dict[str, float]


class SamplePool:
    """B slots of rows; refill finished ones, decode a segment, carry the unfinished (T-PPO)."""

    def __init__(self, task: Task, rule: StopRule, cfg: Config, *, seed: int, with_values: bool = True):
        self.task, self.rule, self.cfg = task, rule, cfg
        self.with_values = with_values  # False: nothing uses values, the critic is never asked
        self.B = cfg.rollout.batch_size
        task_max = getattr(task, "max_len", None)
        if task_max is not None and cfg.rollout.max_len > task_max:
            raise ValueError(f"rollout.max_len: {cfg.rollout.max_len} exceeds the task's own max_len {task_max}")
        self.slots: list[_Slot | None] = [None] * self.B
        self.generator = torch.Generator().manual_seed(seed)
        self._next_group = 0

    @property
    def budget(self) -> int:
        c = self.cfg
        return min(c.tppo.window, c.rollout.max_len) if c.tppo.enabled else c.rollout.max_len

    def refill(self, train_step: int, split: str = "train") -> np.ndarray:
        """Put new problems into empty slots; returns those slots."""
        empty = np.array([i for i, s in enumerate(self.slots) if s is None], dtype=np.int64)
        if len(empty) == 0:
            return empty
        g = self.cfg.rollout.group_size
        if len(empty) % g:
            raise RuntimeError("group_size must divide the number of free slots (T-PPO supports group_size=1)")
        prompts = self.task.reset(empty, split=split, group_size=g)
        for j, i in enumerate(empty):
            self.slots[i] = _Slot(prompt=list(prompts[j]), group=self._next_group + j // g, born_step=train_step)
        self._next_group += len(empty) // g
        self.rule.reset(torch.as_tensor(empty), train_step)
        return empty

    def collect(self, backend: Backend, train_step: int, *, greedy: bool = False, split: str = "train") -> StepBatch:
        c = self.cfg
        t0 = time.perf_counter()
        self.refill(train_step, split)
        slots = np.arange(self.B)
        rows = [self.slots[i] for i in slots]
        start = torch.tensor([len(s.tokens) for s in rows], dtype=torch.long)
        budget = torch.clamp(c.rollout.max_len - start, max=self.budget)
        contexts = [s.prompt + s.tokens for s in rows]
        seg = decode_segment(backend, self.task, self.rule, slots=slots, contexts=contexts, start=start,
                             budget=budget, max_len=c.rollout.max_len, cfg=c, train_step=train_step,
                             generator=self.generator, greedy=greedy, with_values=self.with_values,
                             next_value=c.tppo.enabled and c.tppo.bootstrap == "next")
        # the critic's per-token passes while rows were generated: what a value gate costs beside its tokens
        critic_decode = int((~torch.isnan(seg.values) & seg.mask).sum()) if self.with_values else 0
        # Values the critic never computed (rows that ended between two checks when
        # stop_check_every > 1): one teacher-forced pass over those rows only fills them.
        missing = (torch.isnan(seg.values) & seg.mask).any(-1).nonzero().squeeze(-1)
        if len(missing):
            with torch.no_grad():
                dev = backend.device
                v = backend.critic_forward([contexts[i] for i in missing.tolist()], seg.tokens[missing].to(dev),
                                           seg.mask[missing].to(dev)).float().cpu()
            seg.values[missing] = torch.where(torch.isnan(seg.values[missing]), v, seg.values[missing])
        seg.values = torch.where(seg.mask, seg.values, torch.zeros_like(seg.values))
        t_gen = time.perf_counter() - t0

        finished = seg.ending != Ending.WINDOW_CUT
        fin_idx = finished.nonzero().squeeze(-1).numpy()
        for i in slots:
            n = int(seg.mask[i].sum())
            rows[i].tokens.extend(seg.tokens[i, :n].tolist())
            rows[i].versions.extend([train_step] * n)
            rows[i].logprobs.extend(seg.logprobs[i, :n].tolist())
        # The task judges finished rows on their whole response.
        task_reward = torch.zeros(self.B)
        success = torch.zeros(self.B, dtype=torch.bool)
        fail = seg.failure_step.clone()
        checkable = None
        if len(fin_idx):
            res = self.task.finish(fin_idx, [rows[i].tokens for i in fin_idx])
            task_reward[fin_idx] = torch.as_tensor(res.reward, dtype=torch.float32)
            success[fin_idx] = torch.as_tensor(res.success, dtype=torch.bool)
            fail[fin_idx] = torch.as_tensor(res.failure_step, dtype=torch.long)
            if hasattr(res, "checkable"):  # tasks whose ground truth can be missing (llm_backend.chain)
                checkable = torch.ones(self.B, dtype=torch.bool)
                checkable[fin_idx] = torch.as_tensor(res.checkable, dtype=torch.bool)
        lengths_total = torch.tensor([len(s.tokens) for s in rows], dtype=torch.long)
        reward_last = self._row_rewards(seg.ending, task_reward, lengths_total)

        rollout = self._build(rows, contexts, seg, reward_last, task_reward, success, fail,
                              start=start, train_step=train_step)
        if checkable is not None:
            rollout.extras["checkable"] = checkable
        finished_rollout = None
        if c.tppo.enabled and len(fin_idx):
            finished_rollout = self._whole(rows, fin_idx, seg, reward_last, task_reward, success, fail)

        ages = [train_step - s.born_step for s in rows]
        # Counts for the cost model (analysis.cost_model): every row's context is encoded when the segment
        # begins (a carried row's tokens again, under the new weights), and its k-th new token attends
        # over context + k positions.
        ctx_len = torch.tensor([len(x) for x in contexts], dtype=torch.long)
        n_new = seg.mask.sum(-1)
        stats = {
            "time/gen": t_gen,
            "tokens/generated": int(seg.mask.sum()),
            "pool/carried": int((start > 0).sum()),
            "pool/finished": int(finished.sum()),
            "pool/occupancy": float(sum(s is not None for s in self.slots)) / self.B,
            "pool/age_mean": float(np.mean(ages)),
            "pool/age_max": float(np.max(ages)),
            # Tokens carried in from earlier steps were sampled by older policies.
            "pool/stale_token_frac": int(start.sum()) / max(int(lengths_total.sum()), 1),
            "gen/idle_fraction": seg.idle_fraction,
            "gen/decode_steps": seg.steps,
            "gen/value_steps": seg.value_steps,
            "gen/prefill_tokens": int(ctx_len.sum()),
            "gen/reprefill_tokens": int(start.sum()),
            "gen/kv_row_tokens": int((n_new * ctx_len + n_new * (n_new - 1) // 2).sum()),
            "tokens/critic_decode": critic_decode + (0 if seg.next_values is None
                                                     else int((~torch.isnan(seg.next_values)).sum())),
        }
        for i in fin_idx:
            self.slots[i] = None  # refilled at the next step
        return StepBatch(rollout=rollout, finished=finished_rollout, stats=stats)

    def _row_rewards(self, ending: Tensor, task_reward: Tensor, total_len: Tensor) -> Tensor:
        """Reward placed at each row's last token of this segment, per DESIGN.md's ending table."""
        c = self.cfg
        r = torch.zeros_like(task_reward)
        eos = ending == Ending.EOS
        r[eos] = task_reward[eos]
        r[ending == Ending.EARLY_STOP] = c.stop.failure_reward - c.stop.stop_penalty
        cap = ending == Ending.LENGTH_CAP
        if c.rollout.length_cap == "terminal":
            r[cap] = task_reward[cap]
        if c.algo.overlong_buffer > 0:
            # DAPO soft overlong punishment: linear ramp over the last `overlong_buffer` tokens.
            done = ending != Ending.WINDOW_CUT
            start = c.rollout.max_len - c.algo.overlong_buffer
            over = ((total_len - start).clamp(min=0).float() / c.algo.overlong_buffer).clamp(max=1.0)
            r = torch.where(done, r - c.algo.overlong_penalty * over, r)
        return r

    def _build(self, rows, contexts, seg: Segment, reward_last, task_reward, success, fail, *,
               start: Tensor, train_step: int) -> Rollout:
        B, W = seg.tokens.shape
        rewards = torch.zeros(B, W)
        lengths = seg.mask.sum(-1)
        has = lengths > 0
        idx = (lengths - 1).clamp(min=0)
        rewards[torch.arange(B)[has], idx[has]] = reward_last[has]
        pv = torch.where(seg.mask, train_step, 0)  # every token of the segment comes from this step's policy
        roll = Rollout(
            tokens=seg.tokens, logprobs=seg.logprobs, regret=seg.regret, values=seg.values, rewards=rewards,
            mask=seg.mask, ending=seg.ending, bootstrap=torch.zeros(B), failure_step=fail, policy_version=pv,
            prompts=contexts, group_ids=torch.tensor([s.group for s in rows], dtype=torch.long),
            task_reward=task_reward, success=success, sampled=seg.sampled,
            extras={"start": start} if seg.next_values is None else {"start": start, "next_value": seg.next_values},
            length_cap=self.cfg.rollout.length_cap,
        )
        # The ending table's bootstrap, once; every estimator reads it from here. Under
        # tppo.bootstrap=next a window-cut row bootstraps with the measured V(s_{l+1}) instead of V(s_l).
        roll.bootstrap = table_bootstrap(roll.treatment, seg.values, seg.mask)
        if seg.next_values is not None:
            cut = seg.ending == Ending.WINDOW_CUT
            roll.bootstrap = torch.where(cut, seg.next_values, roll.bootstrap)
        roll.validate()
        return roll

    def _whole(self, rows, fin_idx, seg, reward_last, task_reward, success, fail) -> Rollout:
        """Finished rows as whole responses from their prompts, with their sampling log-probs and versions
        (values to be recomputed by the trainer)."""
        n = len(fin_idx)
        L = max(len(rows[i].tokens) for i in fin_idx)
        tokens = torch.zeros(n, L, dtype=torch.long)
        logprobs = torch.zeros(n, L)
        mask = torch.zeros(n, L, dtype=torch.bool)
        rewards = torch.zeros(n, L)
        pv = torch.zeros(n, L, dtype=torch.long)
        for j, i in enumerate(fin_idx):
            t = rows[i].tokens
            tokens[j, : len(t)] = torch.as_tensor(t)
            mask[j, : len(t)] = True
            pv[j, : len(t)] = torch.as_tensor(rows[i].versions)
            logprobs[j, : len(t)] = torch.as_tensor(rows[i].logprobs)
            if t:
                rewards[j, len(t) - 1] = reward_last[i]
        zeros = torch.zeros(n, L)
        idx = torch.as_tensor(fin_idx)
        return Rollout(
            tokens=tokens, logprobs=logprobs, regret=zeros.clone(), values=zeros.clone(), rewards=rewards,
            mask=mask, ending=seg.ending[idx], bootstrap=torch.zeros(n), failure_step=fail[idx],
            policy_version=pv, prompts=[rows[i].prompt for i in fin_idx],
            task_reward=task_reward[idx], success=success[idx], length_cap=self.cfg.rollout.length_cap,
        )
