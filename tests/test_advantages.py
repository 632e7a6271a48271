"""testbed.advantages: fast estimators against naive oracles, closed forms and the EGAE contract."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.advantages import (
    ESTIMATORS,
    AdvantageParams,
    Advantages,
    egae,
    gae,
    grpo,
    loss_mask,
    mc_returns,
)
from testbed.config import AlgoSection, RolloutSection
from testbed.rollout import Ending, LengthCap, Rollout
from tests import oracles
from tests.oracles import as_tensor, garbage, ragged, randn

TOL = dict(rtol=1e-9, atol=1e-9)
relaxed = settings(deadline=None)  # shared 2-core machine: wall-clock deadlines would be flaky

gammas = st.sampled_from([1.0, 0.99, 0.9, 0.5])
lams = st.sampled_from([0.0, 0.5, 0.95, 1.0])


def _batch(b, nan=True):
    """Random rewards and values with garbage pads, plus a random bootstrap ``(B,)``."""
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    rewards = garbage(randn((B, T), g), m, g, nan)
    values = garbage(randn((B, T), g), m, g, nan)
    return rewards, values, m, randn((B,), g)


def _prefix_mask(lengths, T):
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# ---------------------------------------------------------------------------- pure functions


@relaxed
@given(ragged(holes=True), gammas, lams, st.booleans(), st.booleans())
def test_gae_matches_oracle(b, gamma, lam, per_row_lam, with_bootstrap):
    r, v, m, boot = _batch(b)
    if per_row_lam:  # length-adaptive lambda arrives as a (B,) tensor
        lam = torch.rand(b["B"], generator=b["gen"], dtype=torch.float64)
    adv, ret = gae(r, v, m, gamma=gamma, lam=lam, bootstrap=boot if with_bootstrap else None)
    o_adv, o_ret = oracles.gae(r, v, m, gamma, lam.tolist() if per_row_lam else lam, boot.tolist() if with_bootstrap else None)
    torch.testing.assert_close(adv, as_tensor(o_adv), **TOL)
    torch.testing.assert_close(ret, as_tensor(o_ret), **TOL)


@relaxed
@given(ragged(holes=True), gammas, lams)
def test_pad_garbage_never_changes_outputs(b, gamma, lam):
    r, v, m, boot = _batch(b, nan=False)
    clean = [torch.where(m, x, 0.0) for x in (r, v)]
    finished = b["ending"] != Ending.WINDOW_CUT
    for fn in (
        lambda r_, v_: gae(r_, v_, m, gamma=gamma, lam=lam, bootstrap=boot),
        lambda r_, v_: egae(r_, v_, m, finished, gamma=gamma, lam=lam),
        lambda r_, v_: (mc_returns(r_, m, gamma=gamma, bootstrap=boot),),
    ):
        for a, c in zip(fn(r, v), fn(*clean)):
            torch.testing.assert_close(a, c, rtol=0, atol=0)
            assert (a[~m] == 0).all()


def _discounts(T, gamma):
    """``(T, T)`` matrix D[t, k] = gamma^(k - t) for k >= t, else 0."""
    k = torch.arange(T, dtype=torch.float64)
    exp = k.unsqueeze(0) - k.unsqueeze(1)
    return torch.where(exp >= 0, gamma ** exp.clamp(min=0), torch.zeros(()))


@relaxed
@given(ragged(), gammas)
def test_lambda_one_is_discounted_return_minus_value(b, gamma):
    r, v, m, boot = _batch(b)
    L = torch.tensor(b["lengths"], dtype=torch.float64).unsqueeze(1)
    steps = torch.arange(b["T"], dtype=torch.float64).unsqueeze(0)
    # closed form G_t = sum_{t<=k<L} gamma^(k-t) r_k + gamma^(L-t) bootstrap, no recursion
    G = torch.where(m, r, 0.0) @ _discounts(b["T"], gamma).T + gamma ** (L - steps) * boot.unsqueeze(1)
    adv, ret = gae(r, v, m, gamma=gamma, lam=1.0, bootstrap=boot)
    torch.testing.assert_close(adv[m], (G - v)[m], **TOL)
    torch.testing.assert_close(ret[m], G[m], **TOL)
    torch.testing.assert_close(mc_returns(r, m, gamma=gamma, bootstrap=boot)[m], G[m], **TOL)


@relaxed
@given(ragged(), gammas)
def test_lambda_zero_is_one_step_td_error(b, gamma):
    r, v, m, boot = _batch(b)
    L = torch.tensor(b["lengths"]).unsqueeze(1)
    steps = torch.arange(b["T"]).unsqueeze(0)
    v_next = torch.cat([v[:, 1:], torch.zeros(b["B"], 1, dtype=v.dtype)], dim=1)
    v_next = torch.where(steps + 1 == L, boot.unsqueeze(1).expand_as(v), v_next)
    adv, _ = gae(r, v, m, gamma=gamma, lam=0.0, bootstrap=boot)
    torch.testing.assert_close(adv[m], (r + gamma * v_next - v)[m], **TOL)


@relaxed
@given(ragged(), gammas, lams)
def test_egae_is_gae_with_own_last_value_on_unfinished_rows(b, gamma, lam):
    r, v, m, _ = _batch(b)
    finished = b["ending"] != Ending.WINDOW_CUT
    # V(s_l) by direct indexing at length - 1 (independent of last_valid_value)
    last = torch.stack([v[i, n - 1] if n else torch.tensor(0.0, dtype=v.dtype) for i, n in enumerate(b["lengths"])])
    adv_e, ret_e = egae(r, v, m, finished, gamma=gamma, lam=lam)
    adv_0, ret_0 = gae(r, v, m, gamma=gamma, lam=lam)  # finished rows: plain GAE, bootstrap 0
    adv_l, ret_l = gae(r, v, m, gamma=gamma, lam=lam, bootstrap=last)
    rows_f = finished.unsqueeze(1).expand_as(m)
    torch.testing.assert_close(adv_e[m & rows_f], adv_0[m & rows_f], **TOL)
    torch.testing.assert_close(ret_e[m & rows_f], ret_0[m & rows_f], **TOL)
    torch.testing.assert_close(adv_e[m & ~rows_f], adv_l[m & ~rows_f], **TOL)
    torch.testing.assert_close(ret_e[m & ~rows_f], ret_l[m & ~rows_f], **TOL)
    o_adv, _ = oracles.egae(r, v, m, finished, gamma, lam)
    torch.testing.assert_close(adv_e, as_tensor(o_adv), **TOL)


@relaxed
@given(st.integers(2, 10), st.data(), gammas, lams, st.integers(0, 2**31 - 1))
def test_egae_row_cut_then_finished(L, data, gamma, lam, seed):
    """A row of L tokens cut after l in window 1 and finished in window 2, against GAE over the
    concatenation (finished, bootstrap 0). What agrees, exactly:

    1. Window 2 (EGAE, finished) equals the concatenation's tail A[l:]: GAE looks only forward.
    2. Window 1 (EGAE, bootstrap V(s_l) := V[l-1]) differs from A[:l] only through the cut's TD error:
       A[t] = A1[t] + (gamma*lam)^(l-1-t) * (gamma*(V[l] - V[l-1]) + gamma*lam*A[l])  for t < l.
       So they agree when the value does not change across the cut and lam = 0.
    """
    l = data.draw(st.integers(1, L - 1))
    g = torch.Generator().manual_seed(seed)
    r, v = randn((1, L), g), randn((1, L), g)
    full, _ = gae(r, v, torch.ones(1, L, dtype=torch.bool), gamma=gamma, lam=lam)
    a1, _ = egae(r[:, :l], v[:, :l], torch.ones(1, l, dtype=torch.bool), torch.tensor([False]), gamma=gamma, lam=lam)
    a2, _ = egae(r[:, l:], v[:, l:], torch.ones(1, L - l, dtype=torch.bool), torch.tensor([True]), gamma=gamma, lam=lam)
    torch.testing.assert_close(a2, full[:, l:], **TOL)
    k = torch.arange(l, dtype=torch.float64)
    decay = torch.tensor(gamma * lam, dtype=torch.float64) ** (l - 1 - k)  # 0^0 = 1 at t = l-1
    correction = decay * (gamma * (v[0, l] - v[0, l - 1]) + gamma * lam * full[0, l])
    torch.testing.assert_close(full[0, :l], a1[0] + correction, **TOL)
    # the special case: a value flat across the cut and one-step TD make the windows exact
    v_flat = v.clone()
    v_flat[0, l] = v_flat[0, l - 1]
    full0, _ = gae(r, v_flat, torch.ones(1, L, dtype=torch.bool), gamma=gamma, lam=0.0)
    a10, _ = egae(r[:, :l], v_flat[:, :l], torch.ones(1, l, dtype=torch.bool), torch.tensor([False]), gamma=gamma, lam=0.0)
    torch.testing.assert_close(a10, full0[:, :l], **TOL)


@relaxed
@given(ragged(holes=True), gammas, st.booleans())
def test_mc_returns_match_oracle(b, gamma, with_bootstrap):
    r, _, m, boot = _batch(b)
    boot_arg = boot if with_bootstrap else None
    out = mc_returns(r, m, gamma=gamma, bootstrap=boot_arg)
    torch.testing.assert_close(out, as_tensor(oracles.mc_returns(r, m, gamma, boot.tolist() if with_bootstrap else None)), **TOL)


def test_gae_float32_close_to_double_oracle():
    g = torch.Generator().manual_seed(0)
    m = _prefix_mask([5, 1, 8, 3], 8)
    r, v = randn((4, 8), g).float(), randn((4, 8), g).float()
    adv, _ = gae(r, v, m, gamma=0.99, lam=0.95)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv.double(), as_tensor(oracles.gae(r, v, m, 0.99, 0.95)[0]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- GRPO


@st.composite
def groups(draw):
    B = draw(st.integers(1, 12))
    ids = torch.tensor(draw(st.lists(st.sampled_from([3, 7, 8, 42]), min_size=B, max_size=B)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # binary scores (pass/fail) make constant groups common; continuous ones exercise the std
    binary = draw(st.booleans())
    scores = (torch.rand(B, generator=gen, dtype=torch.float64) < 0.5).double() if binary else randn((B,), gen)
    return scores, ids


@relaxed
@given(groups(), st.booleans())
def test_grpo_matches_oracle_and_centres_each_group(sg, scale):
    scores, ids = sg
    out = grpo(scores, ids, scale=scale)
    torch.testing.assert_close(out, as_tensor(oracles.grpo(scores, ids, scale=scale)), **TOL)
    for gid in ids.unique():
        members = out[ids == gid]
        torch.testing.assert_close(members.mean(), torch.tensor(0.0, dtype=torch.float64), rtol=0, atol=1e-9)
        if len(members) == 1:
            assert members.item() == 0.0  # no comparison possible: no signal
        elif scale:
            # unit (unbiased) std, exactly as far as eps = 1e-6 in the denominator allows
            std = scores[ids == gid].std()
            torch.testing.assert_close(members.std(), std / (std + 1e-6), **TOL)
        elif not scale:
            torch.testing.assert_close(members, scores[ids == gid] - scores[ids == gid].mean(), **TOL)


def test_grpo_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 5.0, 2.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 9, 4])
    # group 0: mean 1/3, unbiased std sqrt(1/3); groups 9 and 4 are singletons
    std = (1 / 3) ** 0.5
    expect = torch.tensor([(2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(grpo(scores, ids), expect, **TOL)
    torch.testing.assert_close(grpo(scores, ids, scale=False), torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0], dtype=torch.float64), **TOL)


# ---------------------------------------------------------------------------- estimator registry


def _rollout(b, with_groups=True, length_cap="terminal"):
    """A Rollout with garbage pads, random rewards on every valid token, endings drawn from all four,
    and ``rollout.bootstrap`` as the collector writes it (the ending table; random where the table
    leaves it open)."""
    B, T, m, g = b["B"], b["T"], b["mask"], b["gen"]
    r, v, _, boot = _batch(b)
    group_ids = torch.randint(0, 3, (B,), generator=g) if with_groups else None
    zeros = torch.zeros(B, T)
    rollout = Rollout(
        tokens=torch.zeros(B, T, dtype=torch.long),
        logprobs=zeros,
        regret=zeros,
        values=v,
        rewards=r,
        mask=m,
        ending=b["ending"],
        bootstrap=boot,
        failure_step=torch.full((B,), -1),
        policy_version=torch.zeros(B, T, dtype=torch.long),
        group_ids=group_ids,
        length_cap=length_cap,
    )
    rollout.bootstrap = torch.tensor(oracles.table_bootstrap(rollout), dtype=v.dtype)
    return rollout


params_st = st.builds(
    AdvantageParams,
    gamma=gammas,
    lam_actor=lams,
    lam_critic=lams,
    lam_adaptive_alpha=st.sampled_from([0.0, 0.05, 0.5, 2.0]),
    grpo_scale=st.booleans(),
)


def _check_estimator(name, rollout, params):
    out = ESTIMATORS.get(name)(rollout, params)
    assert isinstance(out, Advantages)
    o_adv, o_ret = oracles.estimator(name, rollout, params)
    torch.testing.assert_close(out.advantages, as_tensor(o_adv), **TOL)
    torch.testing.assert_close(out.returns, as_tensor(o_ret), **TOL)


@pytest.mark.parametrize("length_cap", LengthCap.ALL)
@pytest.mark.parametrize("name", ["gae", "egae", "grpo", "mc"])
@relaxed
@given(b=ragged(), params=params_st, with_groups=st.booleans())
def test_estimator_matches_oracle(name, length_cap, b, params, with_groups):
    _check_estimator(name, _rollout(b, with_groups, length_cap), params)


@pytest.mark.parametrize("length_cap", LengthCap.ALL)
@pytest.mark.parametrize("name", ["gae", "egae", "grpo", "mc"])
def test_estimator_fixed_batch_with_every_ending(name, length_cap):
    # hypothesis might draw batches without some ending; this one has each, twice, in one group pair
    lengths = [3, 5, 1, 4, 2, 5, 4, 3]
    endings = [Ending.EOS, Ending.LENGTH_CAP, Ending.WINDOW_CUT, Ending.EARLY_STOP] * 2
    b = {"B": 8, "T": 5, "mask": _prefix_mask(lengths, 5), "lengths": lengths, "ending": torch.tensor(endings), "gen": torch.Generator().manual_seed(1)}
    rollout = _rollout(b, length_cap=length_cap)
    rollout.group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    _check_estimator(name, rollout, AdvantageParams(gamma=0.9, lam_actor=0.8, lam_critic=0.95))


@relaxed
@given(ragged(), st.sampled_from(LengthCap.ALL), st.sampled_from(["gae", "egae", "grpo", "mc"]))
def test_non_trainable_rows_get_zero_and_loss_mask(b, length_cap, name):
    rollout = _rollout(b, length_cap=length_cap)
    out = ESTIMATORS.get(name)(rollout, AdvantageParams())
    lm = loss_mask(rollout, length_cap)
    assert torch.equal(lm, loss_mask(rollout))
    other = next(c for c in LengthCap.ALL if c != length_cap)
    with pytest.raises(ValueError, match="differs from the rollout"):
        loss_mask(rollout, other)
    trainable = [oracles.ending_table(int(e), length_cap)[1] for e in b["ending"]]
    expect = b["mask"] & torch.tensor(trainable, dtype=torch.bool).unsqueeze(1)
    assert torch.equal(lm, expect)
    assert (out.advantages[~lm] == 0).all() and (out.returns[~lm] == 0).all()


def test_estimators_trust_rollout_bootstrap_and_egae_is_eq_6():
    # one token, reward 0, V = 0.7; a cut row whose bootstrap field says 123 and an EOS row (0)
    m = torch.ones(2, 1, dtype=torch.bool)
    rollout = _rollout({"B": 2, "T": 1, "mask": m, "lengths": [1, 1], "ending": torch.tensor([Ending.WINDOW_CUT, Ending.EOS]), "gen": torch.Generator().manual_seed(0)})
    rollout.values = torch.full((2, 1), 0.7, dtype=torch.float64)
    rollout.rewards = torch.zeros(2, 1, dtype=torch.float64)
    rollout.bootstrap = torch.tensor([123.0, 0.0], dtype=torch.float64)
    gae_out = ESTIMATORS.get("gae")(rollout, AdvantageParams(gamma=0.5))
    torch.testing.assert_close(gae_out.advantages, torch.tensor([[0.5 * 123.0 - 0.7], [-0.7]], dtype=torch.float64), **TOL)
    mc_out = ESTIMATORS.get("mc")(rollout, AdvantageParams(gamma=0.5))
    torch.testing.assert_close(mc_out.returns, torch.tensor([[0.5 * 123.0], [0.0]], dtype=torch.float64), **TOL)
    egae_out = ESTIMATORS.get("egae")(rollout, AdvantageParams(gamma=0.5))  # V(s_{l+1}) := V(s_l)
    torch.testing.assert_close(egae_out.advantages, torch.tensor([[0.5 * 0.7 - 0.7], [-0.7]], dtype=torch.float64), **TOL)
    # and the collector's table bootstrap makes gae and egae agree
    rollout.bootstrap = torch.tensor([0.7, 0.0], dtype=torch.float64)
    torch.testing.assert_close(ESTIMATORS.get("gae")(rollout, AdvantageParams(gamma=0.5)).advantages, egae_out.advantages)


def test_treatment_is_computed_once_per_rollout(monkeypatch):
    import testbed.rollout as R

    calls = []
    real = R.treatment
    monkeypatch.setattr(R, "treatment", lambda *a: calls.append(a) or real(*a))
    lengths = [3, 5, 1, 4]
    b = {"B": 4, "T": 5, "mask": _prefix_mask(lengths, 5), "lengths": lengths,
         "ending": torch.tensor([Ending.EOS, Ending.LENGTH_CAP, Ending.WINDOW_CUT, Ending.EARLY_STOP]),
         "gen": torch.Generator().manual_seed(1)}
    rollout = _rollout(b, length_cap="masked")
    calls.clear()
    for name in ("gae", "egae", "grpo", "mc"):
        ESTIMATORS.get(name)(rollout, AdvantageParams())
    loss_mask(rollout)
    assert len(calls) == 1
    rollout.length_cap = "bootstrap"  # a replaced field is seen
    assert rollout.treatment.bootstrap_from_last_value[1] and len(calls) == 2


def test_rollout_validate_rejects_a_bootstrap_on_a_terminal_row():
    lengths = [2, 2]
    b = {"B": 2, "T": 2, "mask": _prefix_mask(lengths, 2), "lengths": lengths,
         "ending": torch.tensor([Ending.WINDOW_CUT, Ending.EOS]), "gen": torch.Generator().manual_seed(0)}
    rollout = _rollout(b)
    rollout.validate()
    rollout.bootstrap = torch.tensor([0.3, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"bootstrap must be 0 on terminal rows.*\[1\]"):
        rollout.validate()


def test_length_adaptive_lambda_by_hand():
    # alpha = 0.5: length 4 -> lambda 1 - 1/2 = 0.5; length 1 -> 1 - 2 < 0, clamped to 0
    lengths = [4, 1]
    b = {"B": 2, "T": 4, "mask": _prefix_mask(lengths, 4), "lengths": lengths, "ending": torch.tensor([Ending.EOS, Ending.EOS]), "gen": torch.Generator().manual_seed(3)}
    rollout = _rollout(b)
    out = ESTIMATORS.get("gae")(rollout, AdvantageParams(gamma=0.9, lam_actor=0.95, lam_adaptive_alpha=0.5))
    a_half, _ = gae(rollout.rewards, rollout.values, rollout.mask, gamma=0.9, lam=0.5)
    a_zero, _ = gae(rollout.rewards, rollout.values, rollout.mask, gamma=0.9, lam=0.0)
    torch.testing.assert_close(out.advantages[0], a_half[0], **TOL)
    torch.testing.assert_close(out.advantages[1], a_zero[1], **TOL)


def test_registry_members_share_one_signature_and_unknown_names_raise():
    assert set(ESTIMATORS.names()) >= {"gae", "egae", "grpo", "mc"}
    sigs = {name: inspect.signature(ESTIMATORS.get(name)) for name in ESTIMATORS}
    params = {tuple((p.name, p.kind) for p in s.parameters.values()) for s in sigs.values()}
    assert len(params) == 1, sigs
    with pytest.raises(KeyError, match="gae"):
        ESTIMATORS.get("ppo")
    with pytest.raises(ValueError):
        ESTIMATORS.register("gae")(lambda r, p: None)


def test_params_from_config():
    algo = AlgoSection(gamma=0.9, lam_actor=0.8, lam_critic=0.7, lam_adaptive_alpha=0.3, grpo_scale=False)
    p = AdvantageParams.from_config(algo, RolloutSection(length_cap="masked"))
    assert p == AdvantageParams(gamma=0.9, lam_actor=0.8, lam_critic=0.7, lam_adaptive_alpha=0.3, grpo_scale=False)
