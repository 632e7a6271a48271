"""T-PPO's options: tppo.bootstrap=next, tppo.credit (deferred/both), the critic warm-up and
initialisation, and the review's fixes (MC critic under length_cap=bootstrap, length-adaptive lambda
on the row's total length). Each against a hand computation or an independent replay."""

import copy

import pytest
import torch

from testbed import config as C
from testbed.advantages import ESTIMATORS, AdvantageParams, actor_lambda
from testbed.metrics import read_metrics
from testbed.rollout import Ending, Rollout, table_bootstrap
from testbed.ops.trainer import Trainer
from tests import oracles

ENV = "task.env_kwargs={max_len: 24, length_dist: lognormal, target_len: 8, length_sigma: 0.6, min_len: 2}"


def cfg_for(tmp_path, *extra, name="r"):
    return C.from_dict({}, [f"run.out_dir={tmp_path}", f"run.name={name}", "run.progress=false", "run.steps=3",
                            "rollout.batch_size=16", "rollout.max_len=24", "algo.minibatch_size=8",
                            "task.env_id=testbed/PlantedFailureLongTail-v0", ENV, "algo.estimator=egae",
                            "tppo.enabled=true", *extra])


def informative_critic(backend, seed=0):
    """The toy critic's head starts at zero (V = 0 everywhere), which would hide a wrong value: randomise it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backend.critic.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def one_row(values, rewards, ending, next_value=None, start=0):
    T = len(values)
    ex = {"start": torch.tensor([start])}
    if next_value is not None:
        ex["next_value"] = torch.tensor([next_value])
    r = Rollout(tokens=torch.ones(1, T, dtype=torch.long), logprobs=torch.zeros(1, T), regret=torch.zeros(1, T),
                values=torch.tensor([values]), rewards=torch.tensor([rewards]), mask=torch.ones(1, T, dtype=torch.bool),
                ending=torch.tensor([int(ending)]), bootstrap=torch.zeros(1), failure_step=torch.tensor([-1]),
                policy_version=torch.zeros(1, T, dtype=torch.long), extras=ex)
    # as the collector writes it: the ending table's bootstrap, V(s_{l+1}) for a cut row under `next`
    r.bootstrap = table_bootstrap(r.treatment, r.values, r.mask)
    if next_value is not None and int(ending) == Ending.WINDOW_CUT:
        r.bootstrap = torch.tensor([float(next_value)])
    return r


# --- review fixes -------------------------------------------------------------------------------
def test_length_adaptive_lambda_uses_total_length():
    """A 2-token window of a row that already had 8 tokens: lambda from length 10, not 2."""
    p = AdvantageParams(lam_adaptive_alpha=0.5)
    r = one_row([0.1, 0.2], [0.0, 0.0], Ending.WINDOW_CUT, start=8)
    torch.testing.assert_close(actor_lambda(r, p), torch.tensor([1 - 1 / (0.5 * 10)]))
    r0 = one_row([0.1, 0.2], [0.0, 0.0], Ending.WINDOW_CUT)  # no carried tokens: the window is the row
    torch.testing.assert_close(actor_lambda(r0, p), torch.tensor([0.0]))


@pytest.mark.parametrize("length_cap", ["bootstrap", "terminal"])
def test_mc_critic_follows_length_cap_treatment(tmp_path, length_cap):
    """Rows that hit max_len: under ``bootstrap`` the MC target is reward + V(s_l) of the current
    critic (like the actor's advantages, whose deferred credit reads the rows' ``bootstrap``); under
    ``terminal`` it is the reward alone."""
    t = Trainer(cfg_for(tmp_path, "tppo.window=4", "rollout.max_len=6", f"rollout.length_cap={length_cap}",
                        "task.env_kwargs={max_len: 6, length_dist: fixed, target_len: 5}"))
    informative_critic(t.backend)
    capped = 0
    for step in range(4):
        batch = t.pool.collect(t.backend, step)
        if batch.finished is None:
            continue
        rows, ret, old = t.critic_data(batch, None)
        v = t.backend.critic_forward(rows.prompts, rows.tokens, rows.mask).detach()
        torch.testing.assert_close(old, v)
        for i in range(rows.batch_size):
            n = int(rows.lengths[i])
            reward = float(rows.rewards[i, :n].sum())
            cap = int(rows.ending[i]) == Ending.LENGTH_CAP
            capped += cap
            boot = float(v[i, n - 1]) if cap and length_cap == "bootstrap" else 0.0
            torch.testing.assert_close(ret[i, :n], torch.full((n,), reward + boot))
            # the rows carry it too: deferred credit's estimator reads Rollout.bootstrap
            assert float(rows.bootstrap[i]) == pytest.approx(boot, abs=1e-6)
    assert capped > 0


def test_tppo_config_states_value_clip():
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tppo.yaml").read_text())
    assert "value_clip" in raw["algo"]


# --- tppo.bootstrap=next ------------------------------------------------------------------------
def test_next_bootstrap_hand_computation():
    """Cut row, values (0.1, 0.2, 0.3), V(s_3) = 0.7, gamma 1, lambda_actor 0.5, lambda_critic 1:
    TD errors 0.1, 0.1, 0.4; advantages 0.25, 0.3, 0.4; returns 0.7 everywhere. ``self`` (EGAE) would
    put 0 at the cut: TD errors 0.1, 0.1, 0.0."""
    p = AdvantageParams(gamma=1.0, lam_actor=0.5, lam_critic=1.0)
    for name in ("egae", "gae"):
        out = ESTIMATORS.get(name)(one_row([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], Ending.WINDOW_CUT, next_value=0.7), p)
        torch.testing.assert_close(out.advantages, torch.tensor([[0.25, 0.3, 0.4]]))
        torch.testing.assert_close(out.returns, torch.tensor([[0.7, 0.7, 0.7]]))
    own = ESTIMATORS.get("egae")(one_row([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], Ending.WINDOW_CUT), p)
    torch.testing.assert_close(own.advantages, torch.tensor([[0.15, 0.1, 0.0]]))
    # a finished row ignores the next value: terminal, bootstrap 0
    fin = ESTIMATORS.get("egae")(one_row([0.1, 0.2, 0.3], [0.0, 0.0, 1.0], Ending.EOS, next_value=0.7), p)
    torch.testing.assert_close(fin.advantages, torch.tensor([[0.1 + 0.5 * 0.1 + 0.25 * 0.7, 0.1 + 0.5 * 0.7, 0.7]]))


def test_next_value_is_the_critic_value_after_the_window(tmp_path):
    """The value measured by the extra decoding step equals the teacher-forced critic's value of the
    state after the window's last token (the value before a dummy token that follows it)."""
    t = Trainer(cfg_for(tmp_path, "tppo.window=4", "tppo.bootstrap=next"))
    informative_critic(t.backend)
    seen = 0
    for step in range(3):
        b = t.pool.collect(t.backend, step)
        r = b.rollout
        nxt = r.extras["next_value"]
        cut = r.ending == Ending.WINDOW_CUT
        assert torch.isnan(nxt[~cut]).all() and not torch.isnan(nxt[cut]).any()
        # the collector writes it into the ending table's bootstrap, which every estimator reads
        torch.testing.assert_close(r.bootstrap[cut], nxt[cut])
        assert (r.bootstrap[r.treatment.terminal] == 0).all()
        assert b.stats["gen/value_steps"] == int(cut.any())
        for i in cut.nonzero().squeeze(-1).tolist():
            n = int(r.lengths[i])
            ctx = r.prompts[i] + r.tokens[i, :n].tolist()
            v = t.backend.critic_forward([ctx], torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
            torch.testing.assert_close(nxt[i], v[0, 0].detach(), rtol=1e-5, atol=1e-6)
            seen += 1
    assert seen > 0


def test_next_bootstrap_does_not_change_sampling(tmp_path):
    """The extra critic step consumes no randomness: the sampled tokens equal those of ``self``."""
    a = Trainer(cfg_for(tmp_path, "tppo.window=4", name="a"))
    b = Trainer(cfg_for(tmp_path, "tppo.window=4", "tppo.bootstrap=next", name="b"))
    for step in range(3):
        ra, rb = a.pool.collect(a.backend, step).rollout, b.pool.collect(b.backend, step).rollout
        assert torch.equal(ra.tokens, rb.tokens) and torch.equal(ra.ending, rb.ending)


# --- tppo.credit --------------------------------------------------------------------------------
def test_deferred_credit_matches_a_replay(tmp_path):
    """Replay: rebuild every finished row from the windows it was decoded in (tokens, sampling
    log-probs, policy versions), value it with the critic as it stood, compute advantages with the
    naive GAE oracle (terminal rows, bootstrap 0), and compare with what the deferred update trains on."""
    t = Trainer(cfg_for(tmp_path, "tppo.window=3", "tppo.credit=deferred", "run.steps=6"))
    informative_critic(t.backend)
    seen, calls = {}, []
    orig = t.update_actor

    def spy(rollout, advantages):
        calls.append((rollout, advantages.clone(), copy.deepcopy(t.backend)))
        return orig(rollout, advantages)

    t.update_actor = spy
    checked = 0
    for step in range(6):
        t.step = step
        batch = t.pool.collect(t.backend, step)
        r = batch.rollout
        for i in range(r.batch_size):
            n = int(r.lengths[i])
            if int(r.extras["start"][i]) == 0:
                seen[i] = ([], [], [])
            seen[i][0].extend(r.tokens[i, :n].tolist())
            seen[i][1].extend(r.logprobs[i, :n].tolist())
            seen[i][2].extend([step] * n)
        calls.clear()
        adv = t.estimator(r, t.adv_params)
        rec = t.update_policy(batch, adv.advantages)
        fin = r.finished.nonzero().squeeze(-1).tolist()
        if not fin:
            assert not calls
            continue
        (d, d_adv, before), = calls
        assert d.batch_size == len(fin)
        vals = []
        for j, i in enumerate(fin):
            toks, lps, vers = seen[i]
            n = len(toks)
            assert d.tokens[j, :n].tolist() == toks and int(d.lengths[j]) == n
            torch.testing.assert_close(d.logprobs[j, :n], torch.tensor(lps))
            assert d.policy_version[j, :n].tolist() == vers
            v = before.critic_forward([d.prompts[j]], torch.tensor([toks]), torch.ones(1, n, dtype=torch.bool))
            vals.append(v[0].detach().tolist())
            checked += 1
        values = torch.zeros_like(d.values)
        for j, v in enumerate(vals):
            values[j, : len(v)] = torch.tensor(v)
        o_adv, _ = oracles.gae(d.rewards, values, d.mask, 1.0, t.cfg.algo.lam_actor, [0.0] * d.batch_size)
        torch.testing.assert_close(d_adv, torch.tensor(o_adv), rtol=1e-5, atol=1e-6)
        ages = torch.cat([step - d.policy_version[j, : int(d.lengths[j])] for j in range(d.batch_size)]).float()
        assert rec["deferred/age_mean"] == pytest.approx(float(ages.mean()))
        assert rec["deferred/age_max"] == float(ages.max())
    assert checked > 0 and max(len(s[0]) for s in seen.values()) > 3  # some rows spanned several windows


def test_both_credit_adds_the_finishing_update(tmp_path):
    t = Trainer(cfg_for(tmp_path, "tppo.window=3", "tppo.credit=both"))
    kinds = []
    orig = t.update_actor
    t.update_actor = lambda r, a: kinds.append(r) or orig(r, a)
    for step in range(8):  # 3-token windows: the first rows finish within a few steps
        batch = t.pool.collect(t.backend, step)
        if batch.finished is not None:
            break
    assert batch.finished is not None, "no row finished in 8 windows"
    kinds.clear()
    rec = t.update_policy(batch, t.estimator(batch.rollout, t.adv_params).advantages)
    assert kinds[0] is batch.rollout and kinds[1] is batch.finished
    assert rec["tokens/actor"] == int(batch.rollout.mask.sum()) + int(batch.finished.mask.sum())
    assert "deferred/loss_policy" in rec and "loss/policy" in rec


def test_deferred_with_window_covering_max_len_equals_window_credit(tmp_path):
    """Every row finishes in its first window, so the finishing update sees the same tokens, log-probs
    and values (the critic has not moved since decoding): same weights as window credit."""
    runs = {}
    for credit in ("window", "deferred"):
        t = Trainer(cfg_for(tmp_path, "tppo.window=24", f"tppo.credit={credit}", name=credit))
        t.train()
        runs[credit] = t.backend.state_dict()
    for k, v in runs["window"].items():
        torch.testing.assert_close(v, runs["deferred"][k], rtol=1e-4, atol=1e-5, msg=k)


# --- critic warm-up and initialisation ----------------------------------------------------------
def test_critic_warmup_freezes_the_actor(tmp_path):
    t = Trainer(cfg_for(tmp_path, "tppo.window=4", "algo.critic_warmup_steps=2", "run.steps=2"))
    informative_critic(t.backend)  # a zero critic on zero returns would get no gradient
    actor0 = {k: v.clone() for k, v in t.backend.policy.state_dict().items()}
    critic0 = {k: v.clone() for k, v in t.backend.critic.state_dict().items()}
    t.train()
    for k, v in t.backend.policy.state_dict().items():
        assert torch.equal(v, actor0[k]), k
    assert any(not torch.equal(v, critic0[k]) for k, v in t.backend.critic.state_dict().items())
    t2 = Trainer(cfg_for(tmp_path, "tppo.window=4", "algo.critic_warmup_steps=2", "run.steps=3"))  # resumes
    t2.train()
    assert any(not torch.equal(v, actor0[k]) for k, v in t2.backend.policy.state_dict().items())


@pytest.mark.parametrize("tppo", ["true", "false"])
def test_a_frozen_critic_costs_no_update(tmp_path, tppo):
    """lr_critic = 0: the critic keeps its weights and the update runs no critic forward or Adam step,
    while the actor still learns from the frozen critic's values."""
    extra = ["tppo.window=4", f"tppo.enabled={tppo}", "algo.lr_critic=0"] + ([] if tppo == "true" else ["algo.estimator=gae"])
    t = Trainer(cfg_for(tmp_path, *extra))
    informative_critic(t.backend)
    actor0 = {k: v.clone() for k, v in t.backend.policy.state_dict().items()}
    critic0 = {k: v.clone() for k, v in t.backend.critic.state_dict().items()}
    calls = []
    forward = t.backend.critic_forward
    t.backend.critic_forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    t.train()
    for k, v in t.backend.critic.state_dict().items():
        assert torch.equal(v, critic0[k]), k
    assert any(not torch.equal(v, actor0[k]) for k, v in t.backend.policy.state_dict().items())
    assert not calls and not t.opt_critic.state_dict()["state"]  # no forward, no Adam step
    recs = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert all(r["critic/frozen"] == 1.0 and "tokens/critic" not in r for r in recs)
    # the same run through the whole critic update at lr 0 (what lr_critic=0 did before): the same actor
    full = Trainer(cfg_for(tmp_path, *[x for x in extra if "lr_critic" not in x], "algo.lr_critic=1e-3", name="full"))
    informative_critic(full.backend)
    for g in full.opt_critic.param_groups:
        g["lr"] = 0.0
    full.train()
    for k, v in full.backend.policy.state_dict().items():
        assert torch.equal(v, t.backend.policy.state_dict()[k]), k


def test_critic_init_from_a_finished_run(tmp_path):
    src = Trainer(cfg_for(tmp_path, "tppo.window=4", name="src"))
    src.train()
    t = Trainer(cfg_for(tmp_path, "tppo.window=4", f"model.critic_init={tmp_path / 'src'}", name="dst"))
    fresh = Trainer(cfg_for(tmp_path, "tppo.window=4", name="fresh"))
    for k, v in t.backend.critic.state_dict().items():
        assert torch.equal(v, src.backend.critic.state_dict()[k]), k
    for k, v in t.backend.policy.state_dict().items():
        assert torch.equal(v, fresh.backend.policy.state_dict()[k]), k


def test_critic_init_errors_name_the_problem(tmp_path):
    with pytest.raises(C.ConfigError, match="model.critic_init: no run directory"):
        Trainer(cfg_for(tmp_path, f"model.critic_init={tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.ConfigError, match="has no checkpoint"):
        Trainer(cfg_for(tmp_path, f"model.critic_init={tmp_path / 'empty'}", name="x"))
    small = Trainer(cfg_for(tmp_path, "model.hidden_size=16", "run.steps=1", name="small"))
    small.train()
    with pytest.raises(C.ConfigError, match="does not fit this critic"):
        Trainer(cfg_for(tmp_path, f"model.critic_init={tmp_path / 'small'}", name="y"))


def test_new_options_are_validated():
    with pytest.raises(C.ConfigError, match="tppo.credit"):
        C.from_dict({}, ["tppo.credit=later"])
    with pytest.raises(C.ConfigError, match="tppo.bootstrap"):
        C.from_dict({}, ["tppo.bootstrap=far"])
    with pytest.raises(C.ConfigError, match="algo.critic_warmup_steps"):
        C.from_dict({}, ["algo.critic_warmup_steps=-1"])


def test_cost_bench_writes_its_calibration(tmp_path):
    """bench/tppo_cost.py: the unit costs the study's cost model reads (values are timings: only sanity-checked)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "tppo_cost.py"
    spec = importlib.util.spec_from_file_location("tppo_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cal.json"
    assert mod.main(["--steps", "4", "--repeats", "1", "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["decode_step_b1_s"] > 0 and cal["decode_step_b32_s"] > 0 and cal["train_token_s"] > 0
    assert cal["a_s"] + cal["b_s"] == pytest.approx(cal["decode_step_b1_s"])
