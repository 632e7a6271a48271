"""The simulated task: tokens the env writes itself reach the collector only when a regime knob is on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import envs  # noqa: F401 (registers the gymnasium ids)
from testbed.sim_task import SimTask


def test_forced_tokens_only_with_a_regime_knob():
    assert not hasattr(SimTask("testbed/PlantedFailure-v0", 4, seed=0), "forced_tokens")  # default path unchanged
    task = SimTask("testbed/PlantedFailureDerail-v0", 4, seed=0)
    slots = np.arange(4)
    task.reset(slots)
    assert (task.forced_tokens(slots) == -1).all()  # nothing forced before a row is doomed


def test_the_collector_appends_the_env_s_tokens_and_leaves_them_out_of_the_loss(tmp_path):
    """On the derail env a doomed row continues with the env's run-on: those tokens are in the rollout
    but marked not sampled (the trainer's policy mask drops them); on the default env nothing is."""
    from testbed.ops.trainer import Trainer
    from toyruns import small

    t = Trainer(small(tmp_path, "task.env_id=testbed/PlantedFailureDerail-v0",
                      "task.env_kwargs={max_len: 16, target_len: 4, derail: 3}", name="derail"))
    r = t.pool.collect(t.backend, 0).rollout
    forced = r.mask & ~r.sampled
    assert forced.any()
    assert (t.sampled_mask(r) == (r.mask & r.sampled)).all()
    doomed = torch.as_tensor(r.failure_step >= 0) if not torch.is_tensor(r.failure_step) else r.failure_step >= 0
    assert not forced[~doomed].any()  # only doomed rows run on
    plain = Trainer(small(tmp_path, name="plain"))
    assert plain.pool.collect(plain.backend, 0).rollout.sampled is None


def test_held_out_problems_each_in_turn_make_a_greedy_evaluation_exact():
    """``eval_problems="each"``: held-out rows take the problems in turn, from the first again at each
    evaluation, so a greedy pass@1 over a multiple of ``num_problems`` rows is the mean of the problems'
    outcomes; ``random`` (the default) keeps drawing at random, rewind or not, as before the knob."""
    from testbed import config as C
    from testbed.evaluate import evaluate
    from testbed.ops.build import build

    kw = {"num_problems": 4, "max_len": 12, "target_len": 4}
    task = SimTask("testbed/PlantedFailure-v0", 6, seed=0, env_kwargs=kw, eval_problems="each")
    drawn = []
    for _ in range(2):  # two evaluations of two chunks of 6 rows
        task.rewind("test")
        seen = []
        for _ in range(2):
            task.reset(np.arange(6), split="test")
            seen += task.env.problem.tolist()
        drawn.append(seen)
    assert drawn[0] == drawn[1] == [0, 1, 2, 3] * 3  # in turn, and the same at every evaluation
    task.rewind("test")
    task.reset(np.arange(4), split="test", group_size=2)
    assert task.env.problem[:4].tolist() == [0, 0, 1, 1]  # a group shares its problem
    plain, rewound = (SimTask("testbed/PlantedFailure-v0", 8, seed=0, env_kwargs=kw) for _ in range(2))
    rewound.rewind("test")
    for _ in range(3):
        plain.reset(np.arange(8), split="test"), rewound.reset(np.arange(8), split="test")
        assert (plain.env.problem == rewound.env.problem).all()  # random: unchanged by rewind
    assert len(set(plain.env.problem.tolist())) > 1

    cfg = C.from_dict({}, ["rollout.max_len=12", "task.env_kwargs={num_problems: 4, max_len: 12, target_len: 4}",
                           "task.eval_problems=each"])
    task, backend = build(cfg, num_slots=8)
    res = evaluate(backend, task, cfg, n=8, greedy=True, progress=False)
    per_problem = np.asarray(res["correct"]).reshape(2, 4)
    assert (per_problem[0] == per_problem[1]).all()  # greedy: each problem's outcome, twice
    assert res["pass@1"] == per_problem[0].mean()


def test_training_problems_in_shuffled_passes():
    """``train_problems="epochs"``: training rows take every problem once per pass, in a new order at each
    pass, across resets of any size (T-PPO refills a few slots at a time) and groups; the pass in progress
    survives a checkpoint's state; held-out draws are untouched; ``random`` draws with replacement."""
    kw = {"num_problems": 5, "max_len": 12, "target_len": 4}
    task = SimTask("testbed/PlantedFailure-v0", 8, seed=0, env_kwargs=kw, train_problems="epochs")
    drawn = []
    for n in (3, 1, 4, 2, 8, 2):  # 20 rows: four passes
        task.reset(np.arange(n))
        drawn += task.env.problem[:n].tolist()
    passes = [drawn[i:i + 5] for i in range(0, 20, 5)]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # reshuffled
    task.reset(np.arange(4), group_size=2)
    g = task.env.problem[:4].tolist()
    assert g[0] == g[1] and g[2] == g[3] and g[0] != g[2]  # a group shares its problem; a pass repeats none

    def draws(t):  # three resets of 3 rows: their problems
        out = []
        for _ in range(3):
            t.reset(np.arange(3))
            out.append(t.env.problem[:3].tolist())
        return out

    state = task.rng_state()
    ahead = draws(task)
    resumed = SimTask("testbed/PlantedFailure-v0", 8, seed=1, env_kwargs=kw, train_problems="epochs")
    resumed.set_rng_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
    assert draws(resumed) == ahead
    legacy = SimTask("testbed/PlantedFailure-v0", 8, seed=1, env_kwargs=kw)
    legacy.set_rng_state(task.env.np_random.bit_generator.state)  # a checkpoint from before the pass was kept
    assert legacy.rng_state()["env_rng"] == task.env.np_random.bit_generator.state

    random = SimTask("testbed/PlantedFailure-v0", 20, seed=0, env_kwargs=kw)
    random.reset(np.arange(20))
    counts = np.bincount(random.env.problem, minlength=5)
    assert counts.sum() == 20 and (counts != 4).any()  # with replacement: uneven
    with pytest.raises(ValueError, match="train_problems"):
        SimTask("testbed/PlantedFailure-v0", 8, seed=0, env_kwargs=kw, train_problems="each")


def test_train_problems_is_a_checked_config_choice():
    from testbed import config as C

    assert C.from_dict({}, ["task.train_problems=epochs"]).task.train_problems == "epochs"
    with pytest.raises(C.ConfigError, match="task.train_problems"):
        C.from_dict({}, ["task.train_problems=shuffle"])
