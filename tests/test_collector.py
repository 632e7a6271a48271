"""testbed.collector: decode_segment and SamplePool on a scripted backend and task.

The backend's logits and values are fixed per (row, response position), so every ending, mask, window
cut, forced token and skipped value below is known by hand. Also: ESPO's decisions online (in the
decode loop) and offline (``testbed detect``'s ``run_rule``) agree on the same regrets and values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed import config as config_mod
from testbed.collector import SamplePool, decode_segment
from testbed.ops.detect import run_rule
from testbed.protocols import StepOutput, TaskResult
from testbed.rollout import Ending
from testbed.stopping import StopContext, StopRule, make_stop_rule

V, EOS, PAD = 5, 4, 0
BIG = 50.0  # a logit this far above the rest makes a token certain (p > 1 - 1e-20 in float32)


class Scripted:
    """A backend whose state is (row id, response position): a context is ``[row id, *response so far]``.

    ``logits[row, pos]`` (V,) and ``values[row, pos]`` are the step outputs at that state. Records the
    positions at which values were asked.
    """

    def __init__(self, logits: torch.Tensor, values: torch.Tensor):
        self.logits, self.values = logits, values
        self.asked: list[list[int]] = []

    def begin(self, contexts):
        self.rows = torch.tensor([c[0] for c in contexts])
        self.pos = torch.tensor([len(c) - 1 for c in contexts])

    def step(self, *, with_values: bool = True) -> StepOutput:
        logits = self.logits[self.rows, self.pos]
        if not with_values:
            return StepOutput(logits, None)
        self.asked.append(self.pos.tolist())
        v = self.values[self.rows, self.pos]
        return StepOutput(logits, v, v[:, None])

    def advance(self, tokens, keep):
        self.pos = (self.pos + 1)[keep]
        self.rows = self.rows[keep]


class Task:
    """``failure`` (R,): the position at which a row's failure is known (-1 none); ``forced``: {(row, pos): token}."""

    eos_token_id = EOS

    def __init__(self, failure=None, forced=None):
        self.failure, self.forced = failure, forced
        self.pos: dict[int, int] = {}
        if forced is None:
            self.forced_tokens = None  # the collector then records no ``sampled`` mask

    def observe(self, slots, tokens):
        out = []
        for s in slots:
            p = self.pos.get(int(s), 0)
            self.pos[int(s)] = p + 1
            f = -1 if self.failure is None else int(self.failure[int(s)])
            out.append(f if 0 <= f <= p else -1)
        return np.array(out)

    def forced_tokens(self, slots):
        return np.array([self.forced.get((int(s), self.pos.get(int(s), 0)), -1) for s in slots])


def certain(tokens: list[list[int]], T: int, R: int | None = None) -> torch.Tensor:
    """Logits making ``tokens[row][pos]`` certain (PAD after a row's script)."""
    R = len(tokens) if R is None else R
    logits = torch.zeros(R, T, V)
    for r, row in enumerate(tokens):
        for p in range(T):
            logits[r, p, row[p] if p < len(row) else PAD] = BIG
    return logits


def cfg(**stop):
    c = config_mod.from_dict({"rollout": {"temperature": 1.0, "max_len": 6, "batch_size": 4},
                              "stop": {"rule": "none", **stop}})
    return c


def decode(backend, task, rule, *, R, T, start=None, budget=None, max_len=6, c=None, contexts=None, seed=0, **kw):
    c = cfg() if c is None else c
    start = torch.zeros(R, dtype=torch.long) if start is None else torch.as_tensor(start)
    return decode_segment(backend, task, rule, slots=np.arange(R),
                          contexts=[[r] for r in range(R)] if contexts is None else contexts, start=start,
                          budget=torch.full((R,), T) if budget is None else torch.as_tensor(budget), max_len=max_len,
                          cfg=c, train_step=10, generator=torch.Generator().manual_seed(seed), **kw)


class StopAt(StopRule):
    """Fires at response position ``at[slot]`` (-1 never)."""

    def __init__(self, at):
        super().__init__(config_mod.StopSection(min_tokens=1), num_slots=len(at))
        self.at = torch.as_tensor(at)

    def decide(self, ctx: StopContext):
        return self.at[ctx.slots] == ctx.positions


def test_endings_masks_and_padding():
    # row 0: EOS at position 2; row 1: stopped at 1; row 2: runs to max_len 6; row 3: EOS at 0
    scripts = [[1, 2, EOS], [3, 3, 3, 3, 3, 3], [1, 1, 1, 1, 1, 1], [EOS]]
    seg = decode(Scripted(certain(scripts, 8), torch.zeros(4, 8)), Task(), StopAt([-1, 1, -1, -1]), R=4, T=8)
    assert seg.ending.tolist() == [Ending.EOS, Ending.EARLY_STOP, Ending.LENGTH_CAP, Ending.EOS]
    assert seg.mask.sum(-1).tolist() == [3, 2, 6, 1]
    assert seg.tokens[0, :3].tolist() == [1, 2, EOS] and seg.tokens[1, :2].tolist() == [3, 3]  # the stopped token is kept
    assert (seg.tokens[~seg.mask] == 0).all() and (seg.regret[~seg.mask] == 0).all()
    assert seg.steps == 6 and seg.sampled is None  # the longest row ends at max_len


def test_a_stop_rule_never_ends_a_row_on_its_eos_token():
    scripts = [[1, EOS], [1, 1, EOS]]
    seg = decode(Scripted(certain(scripts, 6), torch.zeros(2, 6)), Task(), StopAt([1, 1]), R=2, T=6)
    assert seg.ending.tolist() == [Ending.EOS, Ending.EARLY_STOP]
    assert seg.mask.sum(-1).tolist() == [2, 2]


def test_window_cut_and_the_total_length_cap_across_windows():
    # budget 3: row 0 (fresh) is cut after 3 tokens; row 1 already has 4 response tokens, so max_len 6
    # caps it after 2 (a carried row never gets a fresh budget); row 2 ends at EOS inside the window
    scripts = [[1] * 8, [2] * 8, [1, EOS]]
    contexts = [[0], [1, 2, 2, 2, 2], [2]]
    seg = decode(Scripted(certain(scripts, 8), torch.zeros(3, 8)), Task(), StopRule(config_mod.StopSection(),
                 num_slots=3), R=3, T=3, start=[0, 4, 0], contexts=contexts, max_len=6)
    assert seg.ending.tolist() == [Ending.WINDOW_CUT, Ending.LENGTH_CAP, Ending.EOS]
    assert seg.mask.sum(-1).tolist() == [3, 2, 2]


def test_forced_tokens_are_marked_and_scored_under_the_sampling_distribution():
    logits = certain([[1] * 4, [2] * 4], 4)
    logits[1, 1] = torch.tensor([0.0, 1.0, 2.0, 0.5, -BIG])  # a real distribution where row 1 is forced
    task = Task(forced={(1, 1): 3})
    seg = decode(Scripted(logits, torch.zeros(2, 4)), task, StopRule(config_mod.StopSection(), num_slots=2),
                 R=2, T=4, max_len=4)
    assert seg.tokens.tolist() == [[1, 1, 1, 1], [2, 3, 2, 2]]
    assert seg.sampled.tolist() == [[True] * 4, [True, False, True, True]]
    logp = torch.log_softmax(logits[1, 1], -1)
    torch.testing.assert_close(seg.logprobs[1, 1], logp[3], rtol=0, atol=1e-6)
    torch.testing.assert_close(seg.regret[1, 1], logp.max() - logp[3], rtol=0, atol=1e-6)


def test_values_are_skipped_between_stop_checks():
    R, T = 2, 6
    values = torch.arange(R * 8, dtype=torch.float32).reshape(R, 8)
    backend = Scripted(certain([[1] * 8, [1] * 8], 8), values)
    c = cfg()
    c.model.stop_check_every = 3

    class Seen(StopRule):
        def __init__(self):
            super().__init__(config_mod.StopSection(), num_slots=R)
            self.with_values = []

        def decide(self, ctx):
            self.with_values.append(ctx.values is not None)
            return super().decide(ctx)

    rule = Seen()
    seg = decode(backend, Task(), rule, R=R, T=T, max_len=T, c=c)
    # asked at k % 3 == 0 and at the last step; the chunk returned only the current state here
    assert rule.with_values == [True, False, False, True, False, True]
    asked = [k for k in range(T) if k % 3 == 0 or k == T - 1]
    for k in range(T):
        if k in asked:
            torch.testing.assert_close(seg.values[:, k], values[:, k], rtol=0, atol=0)
        else:
            assert torch.isnan(seg.values[:, k]).all()
    # without values at all: never asked, zeros
    backend.asked.clear()
    seg = decode(backend, Task(), rule, R=R, T=T, max_len=T, c=c, with_values=False)
    assert backend.asked == [] and (seg.values == 0).all()


def test_failure_steps_come_from_the_task():
    seg = decode(Scripted(certain([[1] * 6, [1] * 6], 6), torch.zeros(2, 6)), Task(failure=np.array([2, -1])),
                 StopRule(config_mod.StopSection(), num_slots=2), R=2, T=6)
    assert seg.failure_step.tolist() == [2, -1]


# --- ESPO online (the decode loop) and offline (testbed detect) decide the same ---------------------


def _espo(c, R):
    rule = make_stop_rule(c.stop, num_slots=R)
    g = torch.Generator().manual_seed(3)
    reg = torch.rand(4, 16, generator=g) * 2
    rule.update(reg, torch.ones(4, 16, dtype=torch.bool))  # normaliser statistics, before decoding
    return rule


@pytest.mark.parametrize("stop", [
    {"rule": "espo", "accumulate": "cusum", "gate": "scaled", "kappa": 0.5, "tau": 3.0, "tau_min": 0.5, "min_tokens": 2},
    {"rule": "espo", "accumulate": "ema", "gate": "and", "alpha": 0.5, "tau": 0.8, "rho": 0.6, "min_tokens": 1},
    {"rule": "regret_only", "accumulate": "sum", "kappa": 0.3, "tau": 2.0, "tau_min": 0.0, "min_tokens": 3},
    {"rule": "value_only", "rho": 0.05, "min_tokens": 1},
])
def test_espo_online_and_offline_decisions_agree(stop):
    R, T = 24, 10
    c = cfg(warmup_steps=0, **stop)
    c.rollout.max_len = T
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(R, T, V, generator=g) * 1.5
    logits[..., EOS] = -BIG  # no EOS: online, a rule may not stop on an EOS token; offline has none
    values = torch.rand(R, T, generator=g)
    online = _espo(c, R)
    offline = _espo(c, R)
    seg = decode(Scripted(logits, values), Task(), online, R=R, T=T, max_len=T, c=c)
    stopped = seg.ending == Ending.EARLY_STOP
    assert 0 < int(stopped.sum()) < R  # the comparison means something: some rows stop, some do not
    lengths = seg.mask.sum(-1)
    regrets = [seg.regret[i, :int(lengths[i])] for i in range(R)]
    vals = [seg.values[i, :int(lengths[i])] for i in range(R)]
    first, best = run_rule(offline, c, regrets, vals)
    expect = torch.where(stopped, lengths - 1, torch.full_like(lengths, -1))
    assert first == expect.tolist()
    # the offline score is the rule's own margin: > 0 somewhere past min_tokens exactly where it fired
    # (min_tokens may hide an earlier positive margin, so only "fired => margin > 0" holds in general)
    assert all(b > 0 for f, b in zip(first, best) if f >= 0)


# --- SamplePool -------------------------------------------------------------------------------------


class PoolTask(Task):
    """A task for the pool: prompt ``[slot's next row id]``; rows are drawn 0, 1, 2, ... in order."""

    def __init__(self, R):
        super().__init__()
        self.next = 0
        self.R = R
        self.rows: dict[int, int] = {}

    def reset(self, slots, split="train", group_size=1):
        out = []
        for s in slots:
            self.rows[int(s)] = self.next % self.R
            self.pos[int(s)] = 0
            out.append([self.next % self.R])
            self.next += 1
        return out

    def finish(self, slots, responses):
        n = len(slots)
        return TaskResult(reward=np.ones(n), success=np.ones(n, dtype=bool), failure_step=np.full(n, -1),
                          doomed=np.zeros(n, dtype=bool))


def test_pool_carries_unfinished_rows_without_a_fresh_budget():
    # row scripts: 0 ends at EOS after 2 tokens; 1 never ends (capped at max_len 6); window 4
    scripts = [[1, EOS], [2] * 8, [1, 1, EOS], [2] * 8]
    c = cfg()
    c.rollout.batch_size = 2
    c.rollout.max_len = 6
    c.tppo.enabled = True
    c.tppo.window = 4
    task = PoolTask(R=4)
    pool = SamplePool(task, StopRule(c.stop, num_slots=2), c, seed=0)
    backend = Scripted(certain(scripts, 8), torch.zeros(4, 8))
    b1 = pool.collect(backend, train_step=0)
    r1 = b1.rollout
    assert r1.ending.tolist() == [Ending.EOS, Ending.WINDOW_CUT]
    assert r1.mask.sum(-1).tolist() == [2, 4]
    b2 = pool.collect(backend, train_step=1)
    r2 = b2.rollout
    # slot 0 refilled with row 2 (a fresh prompt); slot 1 carried: 2 more tokens reach max_len 6
    assert r2.ending.tolist() == [Ending.EOS, Ending.LENGTH_CAP]
    assert r2.mask.sum(-1).tolist() == [3, 2]
    assert b2.finished is not None and b2.finished.mask.sum(-1).tolist() == [3, 6]  # whole responses
    # the cost model's counts, by hand: contexts of 1 token (a prompt) or 1 + 4 (the carried row), each
    # k-th new token attending over context + k positions
    assert (b1.stats["gen/prefill_tokens"], b1.stats["gen/reprefill_tokens"], b1.stats["gen/kv_row_tokens"]) == \
        (2, 0, (2 * 1 + 1) + (4 * 1 + 6))
    assert (b2.stats["gen/prefill_tokens"], b2.stats["gen/reprefill_tokens"], b2.stats["gen/kv_row_tokens"]) == \
        (1 + 5, 4, (3 * 1 + 3) + (2 * 5 + 1))
