"""testbed.losses: PPO surrogate, value, KL and entropy losses against oracles and hand computations."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.config import AlgoSection
from testbed.losses import (
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PolicyLossParams,
    entropy_bonus,
    explained_variance,
    kl_penalty,
    ppo_policy_loss,
    value_loss,
)
from testbed.masked import AGG_MODES
from tests import oracles
from tests.oracles import as_tensor, garbage, ragged, randn

TOL = dict(rtol=1e-9, atol=1e-9)
relaxed = settings(deadline=None)  # shared 2-core machine: wall-clock deadlines would be flaky
F64 = torch.float64


def _leaf(x):
    return x.clone().requires_grad_(True)


# ---------------------------------------------------------------------------- PPO policy loss


@relaxed
@given(ragged(), st.sampled_from(AGG_MODES), st.sampled_from([0.1, 0.2, 0.28]), st.sampled_from([0.1, 0.2, 0.28]), st.sampled_from([0.0, 1.5, 3.0]))
def test_ppo_matches_oracle_and_ignores_pads(b, agg, clip_low, clip_high, dual_clip):
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    old = randn((B, T), g) - 1.0
    lp = old + 0.5 * randn((B, T), g)  # ratios from about 0.2 to 5: every clip regime occurs
    adv = randn((B, T), g)
    kw = dict(clip_low=clip_low, clip_high=clip_high, agg=agg, dual_clip=dual_clip)
    clean_lp = _leaf(lp)
    loss, _ = ppo_policy_loss(clean_lp, old, adv, m, **kw)
    torch.testing.assert_close(loss, as_tensor(oracles.ppo_policy_loss(lp, old, adv, m, clip_low, clip_high, agg, dual_clip)), **TOL)
    loss.backward()
    dirty_lp = _leaf(garbage(lp, m, g))
    dirty, _ = ppo_policy_loss(dirty_lp, garbage(old, m, g), garbage(adv, m, g), m, **kw)
    dirty.backward()
    torch.testing.assert_close(dirty, loss, rtol=0, atol=0)
    torch.testing.assert_close(dirty_lp.grad, clean_lp.grad, rtol=0, atol=0)
    assert (dirty_lp.grad[~m] == 0).all()


@relaxed
@given(ragged(), st.sampled_from(["logprobs", "old_logprobs", "advantages"]), st.sampled_from(AGG_MODES))
def test_ppo_garbage_in_one_input_at_a_time(b, which, agg):
    # garbage in a single input matters most when the others are sane at the pads (e.g. a NaN
    # advantage where ratio = 1 would make 0 * NaN in the backward pass unless pads are selected away)
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    inputs = {"logprobs": randn((B, T), g), "old_logprobs": None, "advantages": randn((B, T), g)}
    inputs["old_logprobs"] = inputs["logprobs"] + 0.1 * randn((B, T), g)
    grads = []
    for dirty in (False, True):
        x = dict(inputs)
        if dirty:
            x[which] = garbage(x[which], m, g)
        x["logprobs"] = _leaf(x["logprobs"])
        loss, metrics = ppo_policy_loss(x["logprobs"], x["old_logprobs"], x["advantages"], m, clip_low=0.2, clip_high=0.2, agg=agg, dual_clip=2.0)
        loss.backward()
        grads.append((loss, x["logprobs"].grad, metrics))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)
    for key in grads[0][2]:
        torch.testing.assert_close(grads[1][2][key], grads[0][2][key], rtol=0, atol=0)


@relaxed
@given(ragged(min_len=1))
def test_at_ratio_one_clipped_equals_unclipped_and_grad_is_minus_a_over_n(b):
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    lp, adv = randn((B, T), g), randn((B, T), g)
    out = []
    for clip in (0.2, 1e6):  # 1e6: the clip never binds, the plain importance-weighted surrogate
        x = _leaf(lp)
        loss, _ = ppo_policy_loss(x, lp, adv, m, clip_low=clip, clip_high=clip)
        loss.backward()
        out.append((loss, x.grad))
    n = m.sum()
    torch.testing.assert_close(out[0][0], out[1][0], **TOL)
    torch.testing.assert_close(out[0][0], -adv[m].sum() / n, **TOL)
    expect_grad = torch.where(m, -adv / n, 0.0)
    torch.testing.assert_close(out[0][1], expect_grad, **TOL)
    torch.testing.assert_close(out[1][1], expect_grad, **TOL)


def _one_token_grad(ratio, adv, clip_low=0.2, clip_high=0.2, dual_clip=0.0):
    old = torch.tensor([[-1.0]], dtype=F64)
    x = _leaf(old + math.log(ratio))
    loss, _ = ppo_policy_loss(x, old, torch.tensor([[adv]], dtype=F64), torch.ones(1, 1, dtype=torch.bool), clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
    loss.backward()
    return loss.item(), x.grad.item()


@pytest.mark.parametrize(
    "ratio, adv, clipped",
    [
        (1.5, 1.0, True),  # above the range, A > 0: pushing further up is clipped
        (1.5, -1.0, False),  # above the range, A < 0: PPO still pulls it back down
        (0.5, -1.0, True),  # below the range, A < 0: pushing further down is clipped
        (0.5, 1.0, False),  # below the range, A > 0: PPO still pulls it back up
        (1.1, 1.0, False),  # inside the range: never clipped
        (0.9, -1.0, False),
    ],
)
def test_gradient_vanishes_outside_clip_range_in_one_direction_only(ratio, adv, clipped):
    _, grad = _one_token_grad(ratio, adv)
    if clipped:
        assert grad == 0.0
    else:
        # d(-A * ratio)/d logprob = -A * ratio
        assert grad == pytest.approx(-adv * ratio, rel=1e-12, abs=1e-12)


def test_clip_bounds_are_decoupled():
    # ratio 1.25, A > 0: clipped by clip_high 0.2, free under clip-higher 0.28, whatever clip_low
    assert _one_token_grad(1.25, 1.0, clip_low=0.28, clip_high=0.2)[1] == 0.0
    assert _one_token_grad(1.25, 1.0, clip_low=0.2, clip_high=0.28)[1] == pytest.approx(-1.25, abs=1e-12)
    # ratio 0.75, A < 0: clipped by clip_low 0.2, free under clip_low 0.3, whatever clip_high
    assert _one_token_grad(0.75, -1.0, clip_low=0.2, clip_high=0.3)[1] == 0.0
    assert _one_token_grad(0.75, -1.0, clip_low=0.3, clip_high=0.2)[1] == pytest.approx(0.75, abs=1e-12)


def test_dual_clip_bounds_negative_advantages_only():
    # A < 0 with ratio 10: plain PPO loss 10 * |A|, dual clip c = 3 caps it at 3 * |A| with no gradient
    assert _one_token_grad(10.0, -2.0) == pytest.approx((20.0, 20.0), abs=1e-9)
    loss, grad = _one_token_grad(10.0, -2.0, dual_clip=3.0)
    assert loss == pytest.approx(6.0, abs=1e-12) and grad == 0.0
    # below c the dual clip changes nothing
    assert _one_token_grad(2.0, -2.0, dual_clip=3.0) == pytest.approx(_one_token_grad(2.0, -2.0), abs=1e-12)
    # A > 0: the ordinary clip already bounds it; dual clip must not touch it
    assert _one_token_grad(10.0, 2.0, dual_clip=3.0) == pytest.approx(_one_token_grad(10.0, 2.0), abs=1e-12)
    with pytest.raises(ValueError):
        _one_token_grad(1.0, 1.0, dual_clip=0.5)
    # metric: the dual clip binds on exactly the A < 0 token with ratio above c (1 of 3 tokens)
    old = torch.zeros(1, 3, dtype=F64)
    lp = torch.log(torch.tensor([[10.0, 10.0, 2.0]], dtype=F64))
    adv = torch.tensor([[-1.0, 1.0, -1.0]], dtype=F64)
    _, metrics = ppo_policy_loss(lp, old, adv, torch.ones(1, 3, dtype=torch.bool), clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    torch.testing.assert_close(metrics["clipfrac_dual"].double(), torch.tensor(1 / 3, dtype=F64), rtol=0, atol=1e-7)


@relaxed
@given(ragged(min_len=1), st.sampled_from([1.5, 3.0]))
def test_dual_clip_loss_never_exceeds_c_times_abs_advantage(b, c):
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    old = randn((B, T), g)
    lp = old + 3.0 * randn((B, T), g)
    adv = -randn((B, T), g).abs()
    loss, _ = ppo_policy_loss(lp, old, adv, m, clip_low=0.2, clip_high=0.2, dual_clip=c)
    assert loss <= c * adv.abs()[m].mean() + 1e-12


def test_aggregation_modes_by_hand():
    # at ratio 1 the loss is -agg(A): row 0 has A = [1, 2, 3], row 1 A = [10], row 2 is empty
    adv = torch.tensor([[1.0, 2.0, 3.0], [10.0, 99.0, 99.0], [5.0, 5.0, 5.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    lp = torch.zeros(3, 3, dtype=F64)
    expect = {
        # (loss, per-token gradient on each row's valid tokens)
        "token-mean": (-16 / 4, [-a / 4 for a in (1, 2, 3)] + [-10 / 4]),
        "seq-mean-token-sum": (-(6 + 10) / 2, [-a / 2 for a in (1, 2, 3)] + [-10 / 2]),
        "seq-mean-token-mean": (-(2 + 10) / 2, [-a / (2 * 3) for a in (1, 2, 3)] + [-10 / 2]),
    }
    for agg, (value, grads) in expect.items():
        x = _leaf(lp)
        loss, _ = ppo_policy_loss(x, lp, adv, m, clip_low=0.2, clip_high=0.2, agg=agg)
        loss.backward()
        torch.testing.assert_close(loss, torch.tensor(value, dtype=F64), **TOL)
        torch.testing.assert_close(x.grad[m], torch.tensor(grads, dtype=F64), **TOL)


def test_metrics_by_hand_and_detached():
    # mean(ratio) != 1 on purpose, so k3 (approx_kl) and k1 (mean -log ratio) differ
    ratios = [1.5, 1.3, 0.5, 0.7, 1.1]
    advs = [1.0, -1.0, -1.0, 1.0, 1.0]
    old = torch.tensor([[-1.0] * 5 + [0.0]], dtype=F64)
    lp = _leaf(old + torch.tensor([[math.log(r) for r in ratios] + [float("nan")]], dtype=F64))
    adv = torch.tensor([advs + [float("nan")]], dtype=F64)
    m = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    _, metrics = ppo_policy_loss(lp, old, adv, m, clip_low=0.2, clip_high=0.2)
    expect = {
        "clipfrac_high": 1 / 5,  # token 0: ratio 1.5, A > 0
        "clipfrac_low": 1 / 5,  # token 2: ratio 0.5, A < 0
        "clipfrac_dual": 0.0,
        "approx_kl": sum((r - 1) - math.log(r) for r in ratios) / 5,
        "ratio_mean": sum(ratios) / 5,
    }
    assert set(expect) <= set(metrics)
    for key, value in expect.items():
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad, key
        torch.testing.assert_close(metrics[key].double(), torch.tensor(value, dtype=F64), rtol=1e-6, atol=1e-7, msg=key)


# ---------------------------------------------------------------------------- value loss


@relaxed
@given(ragged(), st.sampled_from(AGG_MODES), st.sampled_from([0.0, 0.1, 0.5]))
def test_value_loss_matches_oracle_and_ignores_pads(b, agg, clip):
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    old, ret = randn((B, T), g), randn((B, T), g)
    v = old + 0.5 * randn((B, T), g)
    x = _leaf(v)
    loss, metrics = value_loss(x, old, ret, m, clip=clip, agg=agg)
    torch.testing.assert_close(loss, as_tensor(oracles.value_loss(v, old, ret, m, clip, agg)), **TOL)
    torch.testing.assert_close(metrics["explained_variance"], as_tensor(oracles.explained_variance(v, ret, m)), **TOL)
    loss.backward()
    y = _leaf(garbage(v, m, g))
    dirty, dirty_metrics = value_loss(y, garbage(old, m, g), garbage(ret, m, g), m, clip=clip, agg=agg)
    dirty.backward()
    torch.testing.assert_close(dirty, loss, rtol=0, atol=0)
    torch.testing.assert_close(y.grad, x.grad, rtol=0, atol=0)
    for key in metrics:
        torch.testing.assert_close(dirty_metrics[key], metrics[key], rtol=0, atol=0)


def test_value_clip_by_hand():
    # token 0: V=2 moved 1 from old=1, target 3 -> clipped V 1.5: errors 1 vs 2.25, clipped wins, no gradient
    # token 1: V=1.8, old=1, target 0 -> clipped V 1.5: errors 3.24 vs 2.25, unclipped wins, gradient V-G
    v = _leaf(torch.tensor([[2.0, 1.8]], dtype=F64))
    old = torch.tensor([[1.0, 1.0]], dtype=F64)
    ret = torch.tensor([[3.0, 0.0]], dtype=F64)
    m = torch.ones(1, 2, dtype=torch.bool)
    loss, metrics = value_loss(v, old, ret, m, clip=0.5, agg="token-mean")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor((0.5 * 2.25 + 0.5 * 3.24) / 2, dtype=F64), **TOL)
    torch.testing.assert_close(v.grad, torch.tensor([[0.0, 1.8 / 2]], dtype=F64), **TOL)
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(0.5), rtol=0, atol=1e-7)
    # no clip: plain 0.5 * MSE
    plain, _ = value_loss(v, old, ret, m, clip=0.0, agg="token-mean")
    torch.testing.assert_close(plain, torch.tensor((0.5 * 1.0 + 0.5 * 3.24) / 2, dtype=F64), **TOL)


def test_explained_variance_edges():
    m = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    ret = torch.tensor([[1.0, 2.0, 6.0, float("nan")]], dtype=F64)
    torch.testing.assert_close(explained_variance(ret, ret, m), torch.tensor(1.0, dtype=F64), **TOL)
    torch.testing.assert_close(explained_variance(torch.full_like(ret, 3.0), ret, m), torch.tensor(0.0, dtype=F64), **TOL)
    # constant returns: undefined ratio, reported as 0 (finite logs)
    torch.testing.assert_close(explained_variance(ret, torch.ones_like(ret), m), torch.tensor(0.0, dtype=F64), rtol=0, atol=0)


# ---------------------------------------------------------------------------- KL and entropy


@relaxed
@given(ragged(), st.sampled_from(["k1", "k3"]), st.sampled_from(AGG_MODES))
def test_kl_penalty_matches_oracle_and_ignores_pads(b, kind, agg):
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    lp = randn((B, T), g)
    ref = lp + 0.3 * randn((B, T), g)
    loss, metrics = kl_penalty(lp, ref, m, kind=kind, agg=agg)
    torch.testing.assert_close(loss, as_tensor(oracles.kl_penalty(lp, ref, m, kind, agg)), **TOL)
    dirty, _ = kl_penalty(garbage(lp, m, g), garbage(ref, m, g), m, kind=kind, agg=agg)
    torch.testing.assert_close(dirty, loss, rtol=0, atol=0)
    if kind == "k3":
        assert metrics["kl"] >= 0
        assert (KL_ESTIMATORS.get("k3")(lp - ref) >= 0).all()


def test_kl_zero_at_reference_and_unknown_kind_raises():
    lp = _leaf(torch.randn(2, 3, dtype=F64))
    m = torch.ones(2, 3, dtype=torch.bool)
    for kind in ("k1", "k3"):
        loss, _ = kl_penalty(lp, lp.detach(), m, kind=kind)
        torch.testing.assert_close(loss, torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-12)
    with pytest.raises(KeyError, match="k3"):
        kl_penalty(lp, lp, m, kind="k9")


def test_entropy_bonus_sign_and_value():
    h = _leaf(torch.tensor([[1.0, 3.0, float("nan")], [2.0, 0.0, 0.0]], dtype=F64))
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, metrics = entropy_bonus(h, m, agg="token-mean")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(-2.0, dtype=F64), **TOL)  # minimising it raises entropy
    torch.testing.assert_close(metrics["entropy"], torch.tensor(2.0, dtype=F64), **TOL)
    torch.testing.assert_close(h.grad, torch.where(m, torch.tensor(-1 / 3, dtype=F64), 0.0), **TOL)


# ---------------------------------------------------------------------------- registry


def test_policy_loss_registry():
    assert "ppo" in POLICY_LOSSES
    # Every member takes what the trainer passes, positionally: with one member today, "all members share
    # one signature" would hold trivially, so each is checked against the call the trainer makes.
    expected = [("logprobs", inspect.Parameter.POSITIONAL_OR_KEYWORD), ("old_logprobs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                ("advantages", inspect.Parameter.POSITIONAL_OR_KEYWORD), ("mask", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                ("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for n in POLICY_LOSSES:
        assert [(p.name, p.kind) for p in inspect.signature(POLICY_LOSSES.get(n)).parameters.values()] == expected, n
    # the KL estimators (two members): one signature, one positional log-ratio
    kl = {tuple((p.name, p.kind) for p in inspect.signature(KL_ESTIMATORS.get(n)).parameters.values()) for n in KL_ESTIMATORS}
    assert len(list(KL_ESTIMATORS)) >= 2 and kl == {(("log_ratio", inspect.Parameter.POSITIONAL_OR_KEYWORD),)}
    with pytest.raises(KeyError, match="ppo"):
        POLICY_LOSSES.get("trpo")
    params = PolicyLossParams.from_config(AlgoSection(clip_low=0.1, clip_high=0.3, dual_clip=2.0, agg="seq-mean-token-mean"))
    assert params == PolicyLossParams(clip_low=0.1, clip_high=0.3, dual_clip=2.0, agg="seq-mean-token-mean")
    g = torch.Generator().manual_seed(0)
    lp, old, adv = randn((3, 4), g), randn((3, 4), g), randn((3, 4), g)
    m = torch.rand(3, 4, generator=g) < 0.7
    via_registry, _ = POLICY_LOSSES.get("ppo")(lp, old, adv, m, params)
    direct, _ = ppo_policy_loss(lp, old, adv, m, clip_low=0.1, clip_high=0.3, dual_clip=2.0, agg="seq-mean-token-mean")
    torch.testing.assert_close(via_registry, direct, rtol=0, atol=0)
