"""The paper's ESPO options of the one ESPO rule, against hand computations (configs/espo_paper.yaml)."""

import math

import numpy as np
import pytest
import torch

from testbed.config import StopSection
from testbed.stopping import RegretNormalizer, StopContext, Warmup, espo_margin, make_stop_rule

PAPER = dict(rule="espo", norm_var="batch", ema_beta=0.99, z_clip=3.0, accumulate="smooth", alpha_s=0.9,
             gate="max", value_floor=0.2, tau=7.0, warmup_steps=0, min_tokens=1)


def ctx(regret, values, *, slots=None, positions=None, step=100):
    b = len(regret)
    return StopContext(slots=torch.arange(b) if slots is None else torch.as_tensor(slots),
                       positions=torch.full((b,), 5) if positions is None else torch.as_tensor(positions),
                       logits=torch.zeros(b, 4), tokens=torch.zeros(b, dtype=torch.long),
                       regret=torch.as_tensor(regret, dtype=torch.float32),
                       values=torch.as_tensor(values, dtype=torch.float32), failure_step=torch.full((b,), -1),
                       train_step=step)


def fitted(n=4, **kw):
    """A paper-ESPO rule whose normaliser has mean 1 and variance 1 (one batch [0, 2, 0, 2])."""
    rule = make_stop_rule(StopSection(**{**PAPER, **kw}), num_slots=n)
    rule.update(torch.tensor([[0.0, 2.0, 0.0, 2.0]]), torch.ones(1, 4, dtype=torch.bool))
    return rule


def test_z_is_clipped():
    norm = RegretNormalizer(0.9, "batch", delta=0.0, clip=3.0)
    norm.update(torch.tensor([[0.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))  # mean 1, variance 1
    z = norm.normalize(torch.tensor([1.5, 10.0, -10.0], dtype=torch.float64))
    torch.testing.assert_close(z, torch.tensor([0.5 / (1 + 1e-6), 3.0, -3.0], dtype=torch.float64))
    unclipped = RegretNormalizer(0.9, "batch", delta=3.0)
    unclipped.update(torch.tensor([[0.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert unclipped.normalize(torch.tensor([9.0], dtype=torch.float64)).item() == pytest.approx(8 / (2 + 1e-6))


def test_both_variance_modes_by_hand():
    """Two batches, beta 0.5: moment keeps EMAs of mean and of E[g^2]; batch keeps an EMA of variances."""
    b1, b2 = torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, 8.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    mom, bat = RegretNormalizer(0.5, "moment"), RegretNormalizer(0.5, "batch")
    for n in (mom, bat):
        n.update(b1, m)
        n.update(b2, m)
    mean = 0.5 * 1 + 0.5 * 6
    assert mom.mean == pytest.approx(mean) and bat.mean == pytest.approx(mean)
    assert mom.var == pytest.approx(0.5 * 2 + 0.5 * 40 - mean ** 2)  # E[g^2]: 2 and 40
    assert bat.var == pytest.approx(0.5 * 1 + 0.5 * 4)  # batch variances: 1 and 4 (the drift is not in it)


def test_smoothed_statistic_by_hand():
    rule = fitted(z_clip=math.inf, tau=1e9)
    zs = [1.0, 3.0, -1.0, 5.0]  # regret g = z + 1 (mean 1, std 1)
    expect, s = [], 0.0
    for z in zs:
        s = 0.9 * s + 0.1 * z
        expect.append(s)
    got = []
    for z in zs:
        rule(ctx([z + 1.0], [0.5]))
        got.append(rule.score[0].item())
    assert got == pytest.approx(expect, rel=1e-5)


def test_max_gate_by_hand():
    """margin = S - tau * max(V, floor); S after one token = 0.1 * z."""
    rule = fitted(tau=2.0, value_floor=0.2)
    g = [1 + 3.0, 1 + 3.0, 1 + 3.0]  # z = 3 (the clip), S = 0.3
    stop = rule(ctx(g, [-1.0, 0.1, 0.2]))  # thresholds 2*0.2 = 0.4 for all three: none stops
    assert not stop.any()
    rule = fitted(tau=1.0, value_floor=0.2)
    stop = rule(ctx(g, [-1.0, 0.25, 0.35]))  # thresholds 0.2, 0.25, 0.35 against S = 0.3
    assert stop.tolist() == [True, True, False]
    torch.testing.assert_close(rule.last_margin, torch.tensor([0.1, 0.05, -0.05], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(espo_margin(torch.tensor([0.3]), torch.tensor([0.05]), StopSection(**PAPER), 1.0),
                               torch.tensor([0.1]))


def _stream_batches(rule, rng, n_batches, *, rows=64, length=20, start=0):
    """A stationary regret stream: each batch, rows of ``length`` tokens with exponential regrets, some
    rows 'bad' (higher regret); a stopped row is dropped. Returns the per-batch stop rates and taus."""
    rates, taus = [], []
    for k in range(start, start + n_batches):
        slots = torch.arange(rows)
        rule.reset(slots, k)
        g = torch.as_tensor(rng.exponential(1.0, size=(rows, length)) * np.where(rng.random(rows) < 0.4, 2.0, 1.0)[:, None],
                            dtype=torch.float32)
        alive = torch.ones(rows, dtype=torch.bool)
        stopped = torch.zeros(rows, dtype=torch.bool)
        for t in range(length):
            idx = alive.nonzero().squeeze(-1)
            if not len(idx):
                break
            s = rule(ctx(g[idx, t].tolist(), [0.3] * len(idx), slots=idx, positions=[t] * len(idx), step=k))
            stopped[idx[s]] = True
            alive[idx[s]] = False
        rate = stopped.float().mean().item()
        taus.append(rule.tau)
        rule.update(g, torch.ones_like(g, dtype=torch.bool), train_step=k, stop_rate=rate, critic_loss=0.0)
        rates.append(rate)
    return rates, taus


def test_controller_converges_to_its_target_and_resumes_bit_identically():
    cfg = dict(target_rate=0.25, rate_eta=1.0, tau_low=0.0, tau_high=50.0)
    rule = fitted(n=64, **cfg)
    rates, taus = _stream_batches(rule, np.random.default_rng(0), 150)
    assert taus[0] == 7.0 and abs(np.mean(rates[75:]) - 0.25) < 0.05, (np.mean(rates[75:]), taus[-1])
    assert abs(taus[-1] - 7.0) > 1.0  # it had to move to get there
    # resume: the state after 60 batches, loaded into a fresh rule, continues exactly as the original
    a = fitted(n=64, **cfg)
    rng_a = np.random.default_rng(1)
    _stream_batches(a, rng_a, 60)
    b = fitted(n=64, **cfg)
    b.load_state_dict(a.state_dict())
    rng_b = np.random.default_rng(2)
    rng_b.bit_generator.state = rng_a.bit_generator.state
    ra, ta = _stream_batches(a, rng_a, 30, start=60)
    rb, tb = _stream_batches(b, rng_b, 30, start=60)
    assert ra == rb and ta == tb
    # off (target 0): tau never moves
    still = fitted(n=64)
    _, t0 = _stream_batches(still, np.random.default_rng(0), 5)
    assert t0 == [7.0] * 5


def test_controller_ignores_batches_in_warm_up():
    rule = fitted(target_rate=0.25, rate_eta=1.0, warmup_steps=5)
    rule.update(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), train_step=3, stop_rate=0.0)
    assert rule.tau == 7.0
    rule.update(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), train_step=5, stop_rate=0.0)
    assert rule.tau == pytest.approx(7.0 - 0.25)


def _warmup(losses, **kw):
    cfg = StopSection(**{**PAPER, "warmup": "critic_loss", **kw})
    w = Warmup(cfg, total_steps=kw.pop("total", 1000))
    on = []
    for k, loss in enumerate(losses):
        on.append(w.over(k))
        w.observe(k, loss)
    return on, w


def test_critic_loss_warmup_switches_on_at_each_criterion():
    # below 0.5 on three consecutive steps (changes >= 0.1 all along): on from the step after the third
    on, w = _warmup([2.0, 0.45, 0.3, 0.1, 0.6, 0.2])
    assert w.on_at == 4 and on == [False] * 4 + [True] * 2
    # a step-to-step change below 0.1 on three consecutive steps (loss above 0.5 all along)
    on, w = _warmup([3.0, 2.95, 2.9, 2.0, 1.95, 1.9, 1.86, 5.0])
    assert w.on_at == 7  # changes: .05 .05 (then 0.9 resets) .05 .05 .04 -> third in a row at step 6
    # a NaN (no critic update) resets both counts
    on, w = _warmup([0.1, 0.1, float("nan"), 0.1, 0.1, 0.9])
    assert w.on_at is None
    # the cap: on at ceil(10% of 25) = 3 whatever the loss does
    cfg = StopSection(**{**PAPER, "warmup": "critic_loss"})
    w = Warmup(cfg, total_steps=25)
    assert [w.over(k) for k in range(5)] == [False, False, False, True, True]
    # the steps mode ignores the loss
    w = Warmup(StopSection(**{**PAPER, "warmup": "steps", "warmup_steps": 2}), total_steps=25)
    w.observe(0, 0.0)
    assert [w.over(k) for k in range(4)] == [False, False, True, True]


def test_trainer_hands_the_critic_loss_to_the_rule_and_logs_the_controller(tmp_path):
    from testbed.metrics import read_metrics
    from testbed.ops.trainer import Trainer
    from toyruns import small

    paper = ["stop.rule=espo", "stop.norm_var=batch", "stop.accumulate=smooth", "stop.gate=max", "stop.z_clip=3",
             "stop.warmup=critic_loss", "stop.warmup_cap=1.0", "stop.target_rate=0.25", "stop.rate_eta=1.0",
             "stop.tau=0.5", "stop.min_tokens=1", "run.steps=6", "run.checkpoint_every=3"]
    t = Trainer(small(tmp_path, *paper, name="a"))
    t.train()
    recs = read_metrics(tmp_path / "a" / "metrics.jsonl")
    losses = [r["loss/value"] for r in recs]
    w = Warmup(t.cfg.stop, total_steps=6)
    for k, loss in enumerate(losses):
        assert bool(recs[k]["stop/active"]) == (w.over(k) and k > 0), k  # k = 0: no normaliser statistics yet
        w.observe(k, loss)
    # tau moves by eta * (stop rate - target) after each active batch
    for prev, nxt in zip(recs, recs[1:]):
        want = prev["stop/tau"] + (prev["stop/rate"] - 0.25) if prev["stop/active"] else prev["stop/tau"]
        assert nxt["stop/tau"] == pytest.approx(max(0.0, want))
    # a run of 3 steps, then resumed to 6 from its step-3 checkpoint: the same taus and stops
    Trainer(small(tmp_path, *paper, "run.steps=3", name="b")).train()
    Trainer(small(tmp_path, *paper, name="b")).train()
    again = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["stop/tau"] for r in again] == [r["stop/tau"] for r in recs]
    assert [r["stop/rate"] for r in again] == [r["stop/rate"] for r in recs]
    assert any(r["stop/active"] for r in recs) and len({r["stop/tau"] for r in recs}) > 1  # not vacuous


def test_critic_passes_in_decoding_are_counted(tmp_path):
    """``tokens/critic_decode``: one critic evaluation per generated token when values are checked every
    token; with ``model.stop_check_every = 3`` only the checked positions (the rest are filled after
    decoding and not counted); none when nothing uses values (GRPO without a value gate)."""
    from testbed.metrics import read_metrics
    from testbed.ops.trainer import Trainer
    from toyruns import small

    Trainer(small(tmp_path, "stop.rule=espo", "run.steps=2", name="every")).train()
    for r in read_metrics(tmp_path / "every" / "metrics.jsonl"):
        assert r["tokens/critic_decode"] == r["tokens/generated"] > 0
    Trainer(small(tmp_path, "stop.rule=espo", "model.stop_check_every=3", "run.steps=2", name="third")).train()
    for r in read_metrics(tmp_path / "third" / "metrics.jsonl"):
        assert 0 < r["tokens/critic_decode"] < r["tokens/generated"]
    Trainer(small(tmp_path, "algo.estimator=grpo", "run.steps=2", name="grpo")).train()
    assert all(r["tokens/critic_decode"] == 0 for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl"))
