"""Tests that can fail: runs whose weights and optimiser state do change, the ending table row by row
at the collector, ESPO(tau = inf) == PPO on the weights, each preset's own behaviour, and the toy
backend's reference policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed import config as C
from testbed.advantages import ESTIMATORS, AdvantageParams, loss_mask
from testbed.ops.build import build
from testbed.collector import SamplePool
from testbed.metrics import read_metrics
from testbed.rollout import Ending, last_valid_value
from testbed.stopping import make_stop_rule
from testbed.toy import ToyBackend
from testbed.ops.trainer import Trainer
from tests.toyruns import small, stable

ROOT = Path(__file__).resolve().parents[1]

# Rewards from the first step on: the overlong ramp puts a length-dependent negative reward on every
# finished row, ESPO stops (from step 1) cost stop_penalty. Without them a random toy policy on this
# env never earns a reward, every advantage and value target is 0, and no weight ever moves.
SIGNAL = ["stop.rule=espo", "stop.warmup_steps=1", "stop.stop_penalty=0.5", "algo.overlong_buffer=8",
          "algo.overlong_penalty=1.0"]


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.backend.state_dict().items()}


def opt_tensors(t: Trainer) -> list[torch.Tensor]:
    out = []
    for opt in (t.opt_actor, t.opt_critic):
        for st in opt.state_dict()["state"].values():
            out += [st["exp_avg"].clone(), st["exp_avg_sq"].clone(), st["step"].clone()]
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted 4-step run: (its directory, initial weights, final weights, optimiser state)."""
    out = tmp_path_factory.mktemp("full")
    t = Trainer(small(out, *SIGNAL, name="full"))
    init = weights(t)
    t.train()
    return out / "full", init, weights(t), opt_tensors(t)


def test_the_reference_run_changes_every_weight_and_the_optimiser_state(full):
    run_dir, init, final, opt = full
    moved = [k for k in final if not torch.equal(final[k], init[k])]
    assert moved == list(final), set(final) - set(moved)
    assert init["critic.head.weight"].abs().sum() == 0 and final["critic.head.weight"].abs().sum() > 0
    assert all(x.abs().sum() > 0 for x in opt)  # Adam's moments and step counts are not zero
    recs = read_metrics(run_dir / "metrics.jsonl")
    assert any(r["reward/mean"] < 0 for r in recs) and any(r["stop/rate"] > 0 for r in recs)


def _resume(tmp_path, monkeypatch=None, skip=None):
    Trainer(small(tmp_path, *SIGNAL, "run.steps=2", name="part")).train()
    if skip == "weights":
        monkeypatch.setattr(ToyBackend, "load_state_dict", lambda self, state, *a, **k: None)
    elif skip == "optimiser":
        monkeypatch.setattr(torch.optim.Adam, "load_state_dict", lambda self, state: None)
    t = Trainer(small(tmp_path, *SIGNAL, name="part"))
    assert t.step == 2
    t.train()
    return t


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, full):
    run_dir, _, final, opt = full
    t = _resume(tmp_path)
    assert stable(read_metrics(tmp_path / "part" / "metrics.jsonl")) == stable(read_metrics(run_dir / "metrics.jsonl"))
    for k, v in weights(t).items():
        assert torch.equal(v, final[k]), k
    assert all(torch.equal(a, b) for a, b in zip(opt_tensors(t), opt, strict=True))


@pytest.mark.parametrize("skip", ["weights", "optimiser"])
def test_a_resume_without_a_restore_differs(tmp_path, monkeypatch, full, skip):
    """The check above is sharp: drop either restore and the resumed run ends elsewhere."""
    _, _, final, _ = full
    t = _resume(tmp_path, monkeypatch, skip)
    assert not all(torch.equal(v, final[k]) for k, v in weights(t).items())


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, full):
    run_dir, _, final, _ = full
    a = Trainer(small(tmp_path, *SIGNAL, name="again"))
    a.train()
    assert stable(read_metrics(tmp_path / "again" / "metrics.jsonl")) == stable(read_metrics(run_dir / "metrics.jsonl"))
    assert all(torch.equal(v, final[k]) for k, v in weights(a).items())
    b = Trainer(small(tmp_path, *SIGNAL, "run.seed=1", name="other"))
    b.train()
    assert not any(torch.equal(v, final[k]) for k, v in weights(b).items())


def test_espo_with_an_infinite_threshold_reproduces_ppo_weights_exactly(tmp_path):
    common = ["stop.warmup_steps=0", "stop.min_tokens=1", "algo.overlong_buffer=8", "algo.overlong_penalty=1.0"]
    ppo = Trainer(small(tmp_path, "stop.rule=none", *common, name="ppo"))
    init = weights(ppo)
    ppo.train()
    espo = Trainer(small(tmp_path, "stop.rule=espo", "stop.tau=.inf", "stop.tau_min=.inf", *common, name="espo"))
    espo.train()
    assert espo.rule.normalizer.ready  # ESPO's machinery ran (statistics exist), it just never fired
    w_ppo, w_espo = weights(ppo), weights(espo)
    assert any(not torch.equal(w_ppo[k], init[k]) for k in w_ppo)
    for k in w_ppo:
        assert torch.equal(w_ppo[k], w_espo[k]), k
    a, b = stable(read_metrics(tmp_path / "ppo" / "metrics.jsonl")), stable(read_metrics(tmp_path / "espo" / "metrics.jsonl"))
    assert all(r["stop/rate"] == 0 for r in b) and all(r["stop/tau"] is None for r in b)  # inf is logged as null
    rule_state = ("stop/active", "stop/tau")  # the rules' own state differs (none is always active; espo has a tau)
    assert [{k: v for k, v in r.items() if k not in rule_state} for r in a] == \
        [{k: v for k, v in r.items() if k not in rule_state} for r in b]


# --- the ending table, row by row, at the collector ------------------------------------------------

FAIL_R, PENALTY = 0.25, 0.5


@pytest.mark.parametrize("length_cap", ["terminal", "bootstrap", "masked"])
def test_every_row_of_the_ending_table_at_the_collector(length_cap):
    """T-PPO windows of 3 tokens, max_len 6, the oracle stopping planted failures: every ending occurs.
    The task's reward is replaced by a known non-zero value per slot and the critic head is random,
    so a reward or bootstrap taken from the wrong place cannot pass as 0."""
    cfg = C.from_dict({}, [
        "rollout.batch_size=32", "rollout.max_len=6", "task.env_kwargs={max_len: 16, target_len: 8}",
        "tppo.enabled=true", "tppo.window=3", "algo.estimator=egae", "stop.rule=oracle", "stop.warmup_steps=0",
        "stop.min_tokens=2", f"stop.failure_reward={FAIL_R}", f"stop.stop_penalty={PENALTY}",
        f"rollout.length_cap={length_cap}"])
    task, backend = build(cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        backend.critic.head.weight.copy_(torch.randn(backend.critic.head.weight.shape, generator=g))
        backend.critic.head.bias.fill_(0.3)
        backend.policy.head.bias[task.eos_token_id] += 2.0  # some rows end at EOS early
    finish = task.finish

    def known_rewards(slots, responses):
        return dataclasses.replace(finish(slots, responses), reward=0.1 * np.asarray(slots) + 0.05)

    task.finish = known_rewards
    pool = SamplePool(task, make_stop_rule(cfg.stop, num_slots=32), cfg, seed=0)
    seen = set()
    for step in range(3):
        r = pool.collect(backend, step).rollout
        last = r.lengths - 1
        r_last = r.rewards[torch.arange(r.batch_size), last]
        others = r.rewards.clone()
        others[torch.arange(r.batch_size), last] = 0
        assert (others == 0).all()  # rewards sit at the last token only
        v_last = last_valid_value(r.values, r.mask)
        task_r = 0.1 * torch.arange(32, dtype=torch.float32) + 0.05
        lm = loss_mask(r)
        adv = ESTIMATORS.get("egae")(r, AdvantageParams())
        for i in range(r.batch_size):
            e = Ending(int(r.ending[i]))
            seen.add(e)
            if e == Ending.EOS:
                expect_r, expect_b = task_r[i], 0.0
            elif e == Ending.EARLY_STOP:
                expect_r, expect_b = FAIL_R - PENALTY, 0.0
            elif e == Ending.WINDOW_CUT:
                expect_r, expect_b = 0.0, v_last[i]
                assert v_last[i] != 0
            else:  # LENGTH_CAP
                expect_r = task_r[i] if length_cap == "terminal" else 0.0
                expect_b = v_last[i] if length_cap == "bootstrap" else 0.0
                assert lm[i].any() == (length_cap != "masked")
                if length_cap == "masked":
                    assert (adv.advantages[i] == 0).all() and (adv.returns[i] == 0).all()
            torch.testing.assert_close(r_last[i], torch.as_tensor(expect_r, dtype=torch.float32), msg=f"{e.name} reward")
            torch.testing.assert_close(r.bootstrap[i], torch.as_tensor(expect_b, dtype=torch.float32), msg=f"{e.name} bootstrap")
            if e != Ending.LENGTH_CAP:
                assert lm[i].equal(r.mask[i])
    assert seen == set(Ending), seen


# --- each preset's own behaviour -------------------------------------------------------------------


def preset(tmp_path, name, *extra):
    return C.load(ROOT / "configs" / f"{name}.yaml",
                  [f"run.out_dir={tmp_path}", "run.progress=false", "rollout.batch_size=16", "algo.minibatch_size=8",
                   *extra])


def test_ppo_preset_never_stops_and_learns_from_gae(tmp_path):
    t = Trainer(preset(tmp_path, "ppo", "run.steps=2", "algo.overlong_buffer=8"))
    assert t.estimator is ESTIMATORS.get("gae") and t.cfg.stop.rule == "none"
    summary = t.train()
    recs = read_metrics(t.run_dir / "metrics.jsonl")
    assert summary["complete"] and all(r["stop/rate"] == 0 for r in recs)
    assert recs[-1]["critic/grad_norm"] > 0


def test_espo_preset_stops_only_after_warmup(tmp_path):
    cfg = preset(tmp_path, "espo", "run.steps=6", "stop.warmup_steps=2")
    assert (cfg.stop.rule, cfg.stop.accumulate, cfg.stop.gate) == ("espo", "cusum", "scaled")
    Trainer(cfg).train()
    recs = read_metrics(tmp_path / "espo" / "metrics.jsonl")
    assert all(r["stop/rate"] == 0 for r in recs[:2])
    assert sum(r["stop/rate"] for r in recs[2:]) > 0, [r["stop/rate"] for r in recs]


def test_grpo_preset_normalises_within_groups(tmp_path):
    t = Trainer(preset(tmp_path, "grpo", "rollout.group_size=4", "run.steps=1", "algo.overlong_buffer=12"))
    batch = t.pool.collect(t.backend, 0)
    r = batch.rollout
    gid = r.group_ids
    assert len(gid.unique()) == 4 and all(int((gid == g).sum()) == 4 for g in gid.unique())
    adv = t.estimator(r, t.adv_params).advantages
    row_adv = adv[:, 0]
    assert torch.equal(adv, row_adv.unsqueeze(1).expand_as(adv) * r.mask)  # one advantage per row
    assert row_adv.abs().sum() > 0
    for g in gid.unique():
        torch.testing.assert_close(row_adv[gid == g].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    # the estimator reads the group ids: pretending every row is its own group zeroes everything
    r.group_ids = torch.arange(r.batch_size)
    assert (t.estimator(r, t.adv_params).advantages == 0).all()


def test_dapo_preset_clips_higher_and_filters_groups(tmp_path):
    t = Trainer(preset(tmp_path, "dapo", "rollout.group_size=4", "run.steps=1"))
    p = t.loss_params
    assert p.clip_high > p.clip_low
    # a token whose ratio went up by 25% with a positive advantage: PPO's symmetric 0.2 clips it, DAPO's 0.28 not
    lp_old = torch.zeros(1, 1)
    lp_new = torch.full((1, 1), float(np.log(1.25)))
    m = torch.ones(1, 1, dtype=torch.bool)
    _, met = t.policy_loss(lp_new, lp_old, torch.ones(1, 1), m, p)
    _, met_sym = t.policy_loss(lp_new, lp_old, torch.ones(1, 1), m, dataclasses.replace(p, clip_high=p.clip_low))
    assert float(met["clipfrac_high"]) == 0 and float(met_sym["clipfrac_high"]) == 1
    # dynamic sampling: exactly the groups whose rewards are all equal are left out of the policy loss
    r = t.pool.collect(t.backend, 0).rollout
    score = r.rewards.sum(-1)
    keep = t.policy_mask(r).any(-1)
    informative = torch.tensor([bool(score[r.group_ids == g].max() > score[r.group_ids == g].min()) for g in r.group_ids])
    assert torch.equal(keep, informative & r.mask.any(-1))
    summary = Trainer(preset(tmp_path, "dapo", "rollout.group_size=4", "run.steps=2", "run.name=dapo2")).train()
    assert summary["complete"]
    assert "actor/clipfrac_high" in read_metrics(tmp_path / "dapo2" / "metrics.jsonl")[0]


def test_tppo_preset_carries_rows_across_windows(tmp_path):
    Trainer(preset(tmp_path, "tppo", "run.steps=3")).train()
    recs = read_metrics(tmp_path / "tppo" / "metrics.jsonl")
    assert all(r["ending/window_cut"] > 0 for r in recs)
    assert recs[0]["pool/carried"] == 0 and all(r["pool/carried"] > 0 for r in recs[1:])
    assert max(r["length/max"] for r in recs) > 8  # a row grew past one 8-token window


# --- the toy backend's reference policy ------------------------------------------------------------


def test_kl_penalty_against_the_toy_reference_policy(tmp_path):
    extra = ["model.reference=true", "algo.overlong_buffer=8", "run.steps=3"]
    t = Trainer(small(tmp_path, "algo.kl_coef=0.1", *extra, name="kl"))
    ref0 = {k: v.clone() for k, v in t.backend.reference.state_dict().items()}
    assert all(torch.equal(v, t.backend.policy.state_dict()[k]) for k, v in ref0.items())
    assert not any(p.requires_grad for p in t.backend.reference.parameters())
    r = t.pool.collect(t.backend, 0).rollout
    with torch.no_grad():
        lp, _ = t.backend.policy_forward(r.prompts, r.tokens, r.mask, temperature=1.0)
    torch.testing.assert_close(t.backend.reference_forward(r.prompts, r.tokens, r.mask, temperature=1.0), lp)
    t.train()
    assert all(torch.equal(v, t.backend.reference.state_dict()[k]) for k, v in ref0.items())  # frozen
    recs = read_metrics(tmp_path / "kl" / "metrics.jsonl")
    assert recs[-1]["actor/kl"] > 0
    plain = Trainer(small(tmp_path, *extra, name="nokl"))
    plain.train()
    assert not torch.equal(plain.backend.policy.head.weight, t.backend.policy.head.weight)
    with pytest.raises(C.ConfigError, match="needs model.reference=true"):
        small(tmp_path, "algo.kl_coef=0.1")


# --- one definition of the detector metrics --------------------------------------------------------


def test_detector_metrics_one_definition_for_trainer_and_analysis():
    """Five finished rows (stopped, failure_step, last): a hit with delay 2, a false stop, a missed
    stoppable doomed row, a row doomed at its last token (not stoppable), a clean row."""
    import pandas as pd

    from analysis.experiments.espo_headline.analysis import pooled_detector
    from testbed.diagnostics import detection_metrics
    from testbed.metrics import detector_metrics
    from testbed.rollout import Rollout

    stopped, fail, last = [True, True, False, False, False], [1, -1, 2, 4, -1], [3, 2, 5, 4, 6]
    expect = {"precision": 0.5, "recall": 0.5, "false_stop_rate": 0.5, "delay": 2.0}
    for xs in (np.asarray, torch.tensor):
        m = detector_metrics(xs(stopped), xs(fail), xs(last))
        assert {k: m[k] for k in expect} == expect and m["doomed_rate"] == 0.6 and m["count"] == 2
    df = pd.DataFrame({"stopped": stopped, "failure_step": fail, "length": np.asarray(last) + 1})
    assert pooled_detector(df) == expect
    T = max(last) + 1
    mask = torch.arange(T)[None, :] <= torch.tensor(last)[:, None]
    z = torch.zeros(5, T)
    ending = torch.tensor([Ending.EARLY_STOP if s else Ending.EOS for s in stopped])
    r = Rollout(tokens=z.long(), logprobs=z, regret=z, values=z, rewards=z, mask=mask, ending=ending,
                bootstrap=torch.zeros(5), failure_step=torch.tensor(fail), policy_version=z.long())
    d = detection_metrics(r)
    assert {k: d[f"stop/{k}"] for k in expect} == expect and d["stats/doomed_rate"] == 0.6


def test_a_resume_mid_pass_draws_the_problems_of_the_uninterrupted_run(tmp_path):
    """``task.train_problems=epochs``: 16 rows a step over 24 problems, so the checkpoint at step 2 falls in the
    middle of the second pass; the resumed run must draw that pass's remaining problems."""
    extra = ("task.train_problems=epochs", "task.env_kwargs={max_len: 16, target_len: 8, num_problems: 24}")
    whole = Trainer(small(tmp_path, *SIGNAL, *extra, name="whole"))
    whole.train()
    Trainer(small(tmp_path, *SIGNAL, *extra, "run.steps=2", name="part")).train()
    part = Trainer(small(tmp_path, *SIGNAL, *extra, name="part"))
    assert part.step == 2 and len(part.task.rng_state()["epoch"]) == 16
    part.train()
    assert stable(read_metrics(tmp_path / "part" / "metrics.jsonl")) == stable(read_metrics(tmp_path / "whole" / "metrics.jsonl"))
    for k, v in weights(part).items():
        assert torch.equal(v, weights(whole)[k]), k


def test_a_transformer_policy_trains_and_resumes_exactly(tmp_path):
    extra = ("model.arch=transformer", "model.hidden_size=16", "model.layers=1")
    whole = Trainer(small(tmp_path, *SIGNAL, *extra, name="whole"))
    init = weights(whole)
    whole.train()
    assert all(not torch.equal(v, init[k]) for k, v in weights(whole).items() if k.startswith("policy."))
    Trainer(small(tmp_path, *SIGNAL, *extra, "run.steps=2", name="part")).train()
    part = Trainer(small(tmp_path, *SIGNAL, *extra, name="part"))
    part.train()
    assert stable(read_metrics(tmp_path / "part" / "metrics.jsonl")) == stable(read_metrics(tmp_path / "whole" / "metrics.jsonl"))
    assert all(torch.equal(v, weights(whole)[k]) for k, v in weights(part).items())
