"""T-PPO: windows, carried rows, the policy/critic token sets, ignore_last_k, and PPO equivalence."""

import pytest
import torch

from testbed import config as C
from testbed.advantages import egae, gae
from testbed.collector import SamplePool
from testbed.metrics import read_metrics
from testbed.rollout import Ending
import envs  # noqa: F401 (registers the gymnasium ids)
from testbed.sim_task import SimTask
from testbed.stopping import make_stop_rule
from testbed.toy import ToyBackend
from testbed.ops.trainer import Trainer

ENV = "task.env_kwargs={max_len: 24, length_dist: lognormal, target_len: 8, length_sigma: 0.6, min_len: 2}"


def cfg_for(tmp_path, *extra, name="r"):
    return C.from_dict({}, [f"run.out_dir={tmp_path}", f"run.name={name}", "run.progress=false", "run.steps=3",
                            "rollout.batch_size=16", "rollout.max_len=24", "algo.minibatch_size=8",
                            "task.env_id=testbed/PlantedFailureLongTail-v0", ENV, *extra])


def pool_for(cfg):
    task = SimTask(cfg.task.env_id, cfg.rollout.batch_size, seed=0, env_kwargs=cfg.task.env_kwargs)
    backend = ToyBackend(task.vocab_size, task.eos_token_id, seed=0)
    rule = make_stop_rule(cfg.stop, num_slots=cfg.rollout.batch_size)
    return SamplePool(task, rule, cfg, seed=0), backend


def test_window_covering_max_len_reproduces_ppo(tmp_path):
    ppo = Trainer(cfg_for(tmp_path, "algo.estimator=gae", name="ppo"))
    ppo.train()
    tppo = Trainer(cfg_for(tmp_path, "algo.estimator=egae", "tppo.enabled=true", "tppo.window=24", name="tppo"))
    tppo.train()
    a = read_metrics(tmp_path / "ppo" / "metrics.jsonl")
    b = read_metrics(tmp_path / "tppo" / "metrics.jsonl")
    for ra, rb in zip(a, b):
        assert ra["tokens/generated"] == rb["tokens/generated"]
        assert ra["success/rate"] == rb["success/rate"]
        for key in ("loss/policy", "loss/value", "reward/mean"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
    for (k, pa), pb in zip(ppo.backend.state_dict().items(), tppo.backend.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=k)


def test_pool_keeps_batch_constant_and_rows_within_max_len(tmp_path):
    cfg = cfg_for(tmp_path, "tppo.enabled=true", "tppo.window=4")
    pool, backend = pool_for(cfg)
    carried_seen = False
    for step in range(12):
        batch = pool.collect(backend, step)
        r = batch.rollout
        assert r.batch_size == cfg.rollout.batch_size
        assert (r.lengths <= 4).all()  # only this window's tokens
        assert ((r.extras["start"] + r.lengths) <= cfg.rollout.max_len).all()
        assert (r.policy_version[r.mask] == step).all()
        cut = r.ending == Ending.WINDOW_CUT
        assert (r.lengths[cut] == 4).all()
        carried_seen |= batch.stats["pool/carried"] > 0
        if batch.finished is not None:
            f = batch.finished
            assert len(f.prompts) == int((~cut).sum())
            assert (f.ending != Ending.WINDOW_CUT).all()
            assert (f.lengths <= cfg.rollout.max_len).all()
        # carried rows continue where they stopped: context = prompt + earlier tokens
        assert all(len(p) >= 1 for p in r.prompts)
    assert carried_seen


def test_carried_row_never_gets_a_fresh_budget(tmp_path):
    cfg = cfg_for(tmp_path, "tppo.enabled=true", "tppo.window=5", "rollout.max_len=7",
                  "task.env_kwargs={max_len: 7, length_dist: fixed, target_len: 6}")
    pool, backend = pool_for(cfg)
    for step in range(6):
        b = pool.collect(backend, step)
        total = b.rollout.extras["start"] + b.rollout.lengths
        assert (total <= 7).all()
        capped = b.rollout.ending == Ending.LENGTH_CAP
        assert (total[capped] == 7).all()


@pytest.mark.parametrize("k", [0, 1, 4])
def test_ignore_last_k(tmp_path, k):
    cfg = cfg_for(tmp_path, "tppo.enabled=true", "tppo.window=4", f"tppo.ignore_last_k={k}")
    t = Trainer(cfg)
    batch = t.pool.collect(t.backend, 0)
    r = batch.rollout
    m = t.policy_mask(r)
    cut = r.ending == Ending.WINDOW_CUT
    assert cut.any() and (~cut).any()
    assert torch.equal(m[cut].sum(-1), (r.lengths[cut] - k).clamp(min=0))
    assert torch.equal(m[~cut], r.mask[~cut])  # finished rows keep every token


def test_critic_trains_only_on_finished_rows(tmp_path):
    t = Trainer(cfg_for(tmp_path, "tppo.enabled=true", "tppo.window=3"))
    for step in range(8):  # windows of 3 tokens: the first rows finish within a few steps
        batch = t.pool.collect(t.backend, step)
        adv = t.estimator(batch.rollout, t.adv_params)
        data = t.critic_data(batch, adv.returns)
        if data is not None:
            break
        assert batch.finished is None  # no critic data exactly when no row finished
    assert data is not None, "no row finished in 8 windows"
    rows, ret, old = data
    assert (rows.ending != Ending.WINDOW_CUT).all()
    # Monte-Carlo returns from the task reward, over the whole response from its first window
    final = rows.rewards.sum(-1)
    torch.testing.assert_close(ret[rows.mask], final.unsqueeze(1).expand_as(ret)[rows.mask])


def test_egae_cut_then_finished_agrees_with_definition():
    """A row cut after 3 tokens, finished 2 tokens later. EGAE on the first window equals GAE with
    bootstrap V(s_3) := V(s_l); the second window is plain GAE; lambda=0 makes each window's
    advantages the TD errors with that bootstrap."""
    v = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    m = torch.ones(1, 3, dtype=torch.bool)
    a1, _ = egae(r[None, :3], v[None, :3], m, torch.tensor([False]), gamma=1.0, lam=0.9)
    g1, _ = gae(r[None, :3], v[None, :3], m, gamma=1.0, lam=0.9, bootstrap=v[None, 2])
    torch.testing.assert_close(a1, g1)
    m2 = torch.ones(1, 2, dtype=torch.bool)
    a2, _ = egae(r[None, 3:], v[None, 3:], m2, torch.tensor([True]), gamma=1.0, lam=0.9)
    g2, _ = gae(r[None, 3:], v[None, 3:], m2, gamma=1.0, lam=0.9)
    torch.testing.assert_close(a2, g2)
    a0, _ = egae(r[None, :3], v[None, :3], m, torch.tensor([False]), gamma=1.0, lam=0.0)
    td = torch.tensor([[0.2 - 0.1, 0.3 - 0.2, 0.3 - 0.3]])
    torch.testing.assert_close(a0, td)
