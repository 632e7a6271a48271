"""Stop rules: ESPO's definition, causality, the normaliser's freezing, gates, ablations, baselines."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from testbed.config import StopSection
from testbed.stopping import (RULES, RandomRule, RegretNormalizer, StopContext, StopSchedule, make_stop_rule,
                              success_probability)


def ctx(regret, values=None, *, slots=None, positions=None, step=10, failure=None):
    regret = torch.as_tensor(regret, dtype=torch.float32)
    b = len(regret)
    return StopContext(
        slots=torch.arange(b) if slots is None else torch.as_tensor(slots),
        positions=torch.full((b,), 5) if positions is None else torch.as_tensor(positions),
        logits=torch.zeros(b, 4), tokens=torch.zeros(b, dtype=torch.long), regret=regret,
        values=None if values is None else torch.as_tensor(values, dtype=torch.float32),
        failure_step=torch.full((b,), -1) if failure is None else torch.as_tensor(failure), train_step=step)


def espo(**kw):
    cfg = StopSection(rule="espo", warmup_steps=0, min_tokens=1, **kw)
    rule = make_stop_rule(cfg, num_slots=4)
    # statistics: mean 1, std 1
    rule.update(torch.tensor([[0.0, 2.0, 0.0, 2.0]]), torch.ones(1, 4, dtype=torch.bool))
    return rule


def test_registry_lists_all_rules_and_rejects_unknown():
    assert set(RULES.names()) == {"none", "espo", "regret_only", "value_only", "random", "oracle"}
    with pytest.raises(KeyError, match="valid names"):
        RULES.get("espo2")


def test_nothing_stops_before_the_first_update():
    rule = make_stop_rule(StopSection(rule="espo", warmup_steps=0, min_tokens=1, tau=0, tau_min=0), num_slots=2)
    assert not rule(ctx([100.0, 100.0], [0.0, 0.0])).any()


@pytest.mark.parametrize("gate", ["scaled", "and", "max"])
def test_infinite_threshold_never_stops(gate):
    # values with p_t > 0 (and V above value_floor), so each threshold really is infinite: a value of 0
    # would make the scaled gate's tau * p_t = inf * 0 = NaN, and "never fires" would rest on NaN > 0
    # being False rather than on the threshold
    rule = espo(tau=float("inf"), gate=gate, rho=1.0)
    values = [0.25, 0.5, 0.75, 1.0]
    for _ in range(20):
        assert not rule(ctx([50.0] * 4, values)).any()
        assert torch.isneginf(rule.last_margin).all()  # S - inf: the threshold is never reached
    # the same statistic does fire under a finite threshold (the regrets are large enough to matter)
    finite = espo(tau=8.0, gate=gate, rho=1.0)
    assert any(finite(ctx([50.0] * 4, values)).any() for _ in range(20))


def test_spike_on_low_value_row_stops_and_on_high_value_row_does_not():
    # z = (10 - 1) / 1 = 9; cusum S = 9 - 0.5 = 8.5; scaled threshold tau*p + tau_min.
    rule = espo(tau=8.0, tau_min=1.0, kappa=0.5)
    stop = rule(ctx([10.0, 10.0], [0.05, 0.95]))
    assert stop.tolist() == [True, False]


def test_cusum_accumulates_and_resets_per_slot():
    rule = espo(tau=0.0, tau_min=3.0, kappa=0.5)
    # z = 1.5 per token -> S grows by 1.0: 1, 2, 3, 4 -> stops when S > 3 (4th token)
    fired = [bool(rule(ctx([2.5], [0.0]))[0]) for _ in range(4)]
    assert fired == [False, False, False, True]
    rule.reset(torch.tensor([0]), train_step=10)
    assert not rule(ctx([2.5], [0.0]))[0]


def test_and_gate():
    rule = espo(gate="and", tau=2.0, rho=0.3, kappa=0.0)
    stop = rule(ctx([10.0, 10.0, 0.0], [0.1, 0.9, 0.1]))
    assert stop.tolist() == [True, False, False]


def test_min_tokens_and_warmup():
    cfg = StopSection(rule="espo", warmup_steps=3, min_tokens=4, tau=0.0, tau_min=0.0)
    rule = make_stop_rule(cfg, num_slots=2)
    rule.update(torch.tensor([[0.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert not rule(ctx([10.0, 10.0], [0.0, 0.0], positions=[9, 9], step=2)).any()  # warm-up
    assert rule(ctx([10.0, 10.0], [0.0, 0.0], positions=[2, 3], step=3)).tolist() == [False, True]


def test_normalizer_changes_only_on_update():
    n = RegretNormalizer(beta=0.5)
    assert not n.ready
    n.update(torch.tensor([[1.0, 3.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert (n.mean, n.var) == (2.0, 1.0)
    before = n.normalize(torch.tensor([4.0]))
    rule = espo()
    stats = dict(rule.normalizer.state_dict())
    for _ in range(5):
        rule(ctx([7.0, 0.0, 3.0, 1.0], [0.5] * 4))  # deciding never moves the statistics
    assert rule.normalizer.state_dict() == stats
    n.update(torch.tensor([[10.0, 10.0]]), torch.ones(1, 2, dtype=torch.bool))
    # EMAs of E[g] and E[g²]: mean 0.5*2 + 0.5*10 = 6, E[g²] 0.5*5 + 0.5*100 = 52.5, var 52.5 - 36 = 16.5
    # (an EMA of within-batch variances would give 0.5: it ignores the jump of the mean)
    assert n.mean == 6.0 and n.var == pytest.approx(16.5)
    assert not torch.equal(n.normalize(torch.tensor([4.0])), before)


def test_normalizer_variance_follows_a_drifting_mean():
    """On a stream whose mean drifts between batches, the normaliser's variance is the EMA-weighted
    mixture variance of all batches so far, computed here directly from the weights."""
    beta = 0.8
    rng = np.random.default_rng(0)
    batches = [rng.normal(0.5 * k, 1.0 + 0.1 * k, size=(4, 25)) for k in range(12)]
    n = RegretNormalizer(beta=beta)
    for k, b in enumerate(batches):
        n.update(torch.as_tensor(b), torch.ones(b.shape, dtype=torch.bool))
        # weights of batches 0..k: the first batch initialises (beta^k), batch j>0 gets (1-beta) beta^(k-j)
        w = np.array([beta ** k] + [(1 - beta) * beta ** (k - j) for j in range(1, k + 1)])
        mu = sum(wj * bj.mean() for wj, bj in zip(w, batches))
        var = sum(wj * ((bj - mu) ** 2).mean() for wj, bj in zip(w, batches))
        assert n.mean == pytest.approx(mu, rel=1e-9, abs=1e-12)
        assert n.var == pytest.approx(var, rel=1e-9)
    within = np.mean([b.var() for b in batches[-3:]])
    assert n.var > 1.5 * within  # the drift widens it beyond the within-batch spread


def test_normalizer_state_round_trips():
    n = RegretNormalizer(beta=0.7)
    for k in range(3):
        n.update(torch.full((1, 3), float(k)) + torch.arange(3.0), torch.ones(1, 3, dtype=torch.bool))
    m = RegretNormalizer()
    m.load_state_dict(n.state_dict())
    assert (m.beta, m.mean, m.var) == (n.beta, n.mean, n.var)


def test_normalizer_ignores_masked_regret():
    n = RegretNormalizer()
    n.update(torch.tensor([[1.0, 1e6]]), torch.tensor([[True, False]]))
    assert n.mean == 1.0


@given(st.lists(st.floats(0, 20), min_size=2, max_size=12), st.integers(0, 10))
def test_decision_at_t_does_not_depend_on_later_tokens(regrets, cut):
    """Causality: decisions for the first `cut` tokens are identical whatever follows."""
    cut = min(cut, len(regrets) - 1)
    tail_a = regrets[cut:]
    tail_b = [20.0 - r for r in tail_a]

    def decisions(seq):
        rule = espo(tau=2.0, tau_min=0.5)
        return [bool(rule(ctx([g], [0.3]))[0]) for g in seq]

    assert decisions(regrets[:cut] + tail_a)[:cut] == decisions(regrets[:cut] + tail_b)[:cut]


def test_values_none_accumulates_but_never_stops():
    rule = espo(tau=0.0, tau_min=0.5, kappa=0.0)
    assert not rule(ctx([10.0], None)).any()  # critic skipped this step
    assert rule(ctx([1.0], [0.0]))[0]  # S already holds the spike


def test_ablations():
    reg = make_stop_rule(StopSection(rule="regret_only", warmup_steps=0, min_tokens=1, tau=4.0, tau_min=1.0, kappa=0.0), num_slots=2)
    reg.update(torch.tensor([[0.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert reg(ctx([10.0, 3.0], [0.99, 0.0])).tolist() == [True, False]  # value ignored
    val = make_stop_rule(StopSection(rule="value_only", warmup_steps=0, min_tokens=1, rho=0.3), num_slots=2)
    val.update(torch.tensor([[0.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert val(ctx([0.0, 100.0], [0.1, 0.9])).tolist() == [True, False]  # regret ignored


def test_success_probability_clips():
    cfg = StopSection(r_fail=-1.0, r_success=1.0)
    p = success_probability(torch.tensor([-3.0, 0.0, 3.0]), cfg)
    assert p.tolist() == [0.0, 0.5, 1.0]


def test_oracle_stops_after_delay():
    rule = make_stop_rule(StopSection(rule="oracle", delay=2, warmup_steps=0, min_tokens=1), num_slots=3)
    out = rule(ctx([0.0] * 3, None, positions=[3, 4, 4], failure=[2, 2, -1]))
    assert out.tolist() == [False, True, False]


def test_random_rule_matches_rate_and_histogram():
    sched = StopSchedule(rates=[0.0, 0.5], histograms=[[0, 0, 0], [0, 0, 1]])
    rule = RandomRule(StopSection(rule="random", warmup_steps=0, min_tokens=1), num_slots=4000, seed=1, schedule=sched)
    rule.reset(torch.arange(4000), train_step=1)
    marked = rule.stop_at >= 0
    assert abs(marked.float().mean().item() - 0.5) < 0.05
    assert set(rule.stop_at[marked].tolist()) == {2}
    out = rule(ctx([0.0] * 4000, None, slots=torch.arange(4000), positions=torch.full((4000,), 2), step=1))
    assert torch.equal(out, marked)
    rule.reset(torch.arange(4000), train_step=0)
    assert (rule.stop_at < 0).all()


def test_random_rule_reads_reference_run(tmp_path):
    lines = [{"step": 0, "stop/rate": 0.25, "stop/step_hist": [0, 1]}, {"step": 1, "stop/rate": 0.5, "stop/step_hist": [1, 0]}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = StopSchedule.from_run(tmp_path)
    assert s.rates == [0.25, 0.5] and s.at(7)[0] == 0.5
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        StopSchedule.from_run(tmp_path)
    with pytest.raises(ValueError, match="reference_run"):
        make_stop_rule(StopSection(rule="random"), num_slots=2)


def _calibration_run(hit_window: int | None = None, steps: int = 30, change: int = 10) -> list[float]:
    """Realised stop rate per step when, up to step ``change``, half the rows end at EOS at position
    4 (before a stop at 5 can fire) and afterwards none do (the policy's lengths changed).
    ``hit_window`` None: the default window."""
    sched = StopSchedule(rates=[0.3], histograms=[[0, 0, 0, 0, 1, 1]])  # positions 4 or 5
    cfg = StopSection(rule="random", warmup_steps=0, min_tokens=1)
    if hit_window is not None:
        cfg.hit_window = hit_window
    rule = RandomRule(cfg, num_slots=2000, seed=3, schedule=sched)
    rates = []
    for step in range(steps):
        rule.reset(torch.arange(2000), train_step=step)
        alive = torch.ones(2000, dtype=torch.bool)
        stopped = torch.zeros(2000, dtype=torch.bool)
        for pos in range(6):
            if pos == 4 and step < change:
                alive[:1000] = False
            idx = alive.nonzero().squeeze(-1)
            s = rule(ctx([0.0] * len(idx), None, slots=idx, positions=torch.full((len(idx),), pos), step=step))
            stopped[idx[s]] = True
            alive[idx[s]] = False
        rates.append(stopped.float().mean().item())
    return rates


def test_random_rule_calibrates_for_rows_that_end_first():
    """Rows that end before their drawn stop position are not stopped; marking compensates."""
    rates = _calibration_run(steps=6, change=6)
    assert rates[0] < 0.27  # uncalibrated: 0.3 * (1 - 0.5 * 0.5) = 0.225
    assert abs(rates[-1] - 0.3) < 0.03


def test_random_rule_calibration_follows_a_length_change():
    """After the rows stop ending early, a windowed hit rate returns the stop rate to the reference's
    within the window; a whole-run ratio keeps over-marking (it still remembers the early rows)."""
    windowed = _calibration_run(hit_window=5)
    whole_run = _calibration_run(hit_window=10_000)
    assert abs(windowed[9] - 0.3) < 0.03 and abs(whole_run[9] - 0.3) < 0.03  # both calibrated before
    assert all(abs(r - 0.3) < 0.03 for r in windowed[16:])
    # whole run at step 16: hit rate ~ (10*0.75 + 6*1)/16 = 0.84, marks 0.3/0.84 = 0.36 of rows, all stopped
    assert np.mean(whole_run[16:20]) > 0.33


def test_random_rule_rejects_a_bad_window():
    with pytest.raises(ValueError, match="hit_window"):
        RandomRule(StopSection(rule="random", hit_window=0), num_slots=2, schedule=StopSchedule([0.1], [[1]]))


def test_rows_ending_at_eos_are_never_stopped_or_counted():
    sched = StopSchedule(rates=[1.0], histograms=[[0, 0, 1]])
    rule = RandomRule(StopSection(rule="random", warmup_steps=0, min_tokens=1), num_slots=2, seed=0, schedule=sched)
    rule.reset(torch.arange(2), train_step=0)
    c = ctx([0.0, 0.0], None, positions=[2, 2], step=0)
    c.ends_anyway = torch.tensor([True, False])
    assert rule(c).tolist() == [False, True]
    assert rule.counts[0] == [2, 1]  # both rows marked, one stop executed
