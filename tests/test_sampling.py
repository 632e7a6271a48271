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


def test_wide_vocabularies_draw_by_inverse_cdf_with_the_right_frequencies():
    """Above ``INVERSE_CDF_ABOVE`` tokens the draw is an inverse CDF: frequencies match the softmax
    (chi-square), top-k's zero-probability tokens are never drawn, and seeds reproduce."""
    from scipy.stats import chisquare

    from testbed.sampling import INVERSE_CDF_ABOVE, _inverse_cdf

    V = INVERSE_CDF_ABOVE + 7
    logits = torch.full((1, V), -30.0)
    logits[0, [0, 5, V - 3, V - 1]] = torch.tensor([1.0, 0.0, 2.0, -0.5])
    logits = logits.expand(20000, V).contiguous()
    g = torch.Generator().manual_seed(0)
    s = sample_tokens(logits, top_k=3, generator=g)
    counts = torch.bincount(s.tokens, minlength=V)
    assert set(s.tokens.unique().tolist()) == {0, 5, V - 3}  # V - 1 is outside the top 3
    p = torch.softmax(torch.tensor([1.0, 0.0, 2.0]), -1)
    assert chisquare(counts[[0, 5, V - 3]].numpy(), (p * 20000).numpy()).pvalue > 1e-3
    again = sample_tokens(logits[:50], top_k=3, generator=torch.Generator().manual_seed(1)).tokens
    assert torch.equal(again, sample_tokens(logits[:50], top_k=3, generator=torch.Generator().manual_seed(1)).tokens)
    probs = torch.zeros(2, 8)
    probs[:, [1, 4]] = 0.5
    assert set(_inverse_cdf(probs, g).tolist()) <= {1, 4}


def test_inverse_cdf_fallback_picks_the_last_positive_token(monkeypatch):
    from testbed import sampling

    probs = torch.zeros(3, 8)
    probs[:, [1, 4]] = 0.5
    monkeypatch.setattr(sampling.torch, "rand", lambda *a, **k: torch.ones(3, 1))  # u = 1: past the mass
    assert sampling._inverse_cdf(probs, None).tolist() == [4, 4, 4]
