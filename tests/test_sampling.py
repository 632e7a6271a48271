"""Sampling: the support top-k / top-p allow, log-prob and regret definitions, greedy, seeds."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from testbed.sampling import sample_tokens

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])


def draws(n=2000, **kw):
    g = torch.Generator().manual_seed(0)
    return torch.stack([sample_tokens(LOGITS, generator=g, **kw).tokens for _ in range(n)]).flatten()


def test_top_k_restricts_support():
    assert set(draws(top_k=2).tolist()) == {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    p = torch.softmax(LOGITS[0], -1)  # about [0.61, 0.22, 0.14, 0.02, 0.003]
    assert p[0] < 0.7 < p[0] + p[1]
    assert set(draws(top_p=0.7).tolist()) == {0, 1}
    assert set(draws(top_p=0.5).tolist()) == {0}  # the top token always stays


def test_greedy_takes_argmax_with_zero_regret():
    s = sample_tokens(LOGITS, greedy=True)
    assert s.tokens.tolist() == [0] and s.regret.tolist() == [0.0]


@given(st.floats(0.3, 3.0), st.integers(0, 2**31 - 1))
def test_logprob_and_regret_under_the_temperature_scaled_softmax(temperature, seed):
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(seed))
    s = sample_tokens(logits, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    logp = torch.log_softmax(logits / temperature, -1)
    torch.testing.assert_close(s.logprobs, logp.gather(-1, s.tokens[:, None])[:, 0])
    torch.testing.assert_close(s.regret, logp.max(-1).values - s.logprobs)
    assert (s.regret >= 0).all()


def test_same_seed_same_tokens():
    a = draws(n=50, top_p=0.9, temperature=0.7)
    b = draws(n=50, top_p=0.9, temperature=0.7)
    assert torch.equal(a, b)
