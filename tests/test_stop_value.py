"""The success probability a stop throws away (``testbed.ops.stop_value``) and the env's episode cloning
it rests on: a restored episode continues exactly as the original would, and the Monte Carlo estimate
at each stop agrees with the exact solver's P(success | prefix) on an env small enough for it."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the ids)
from envs.solver import success_curves
from testbed import config as config_mod
from testbed.ops import exact_posterior as ep
from testbed.ops import stop_value as sv
from testbed.ops.trainer import Trainer
from testbed.sim_task import SimTask

from analysis.experiments.detector_bayes import sweep as dbs

KNOBS = [
    {},
    {"repair_prob": 0.5, "repair_cost": 3},
    {"derail": 2.0},
    {"repair_prob": 0.5, "repair_cost": 2, "derail": 3.0, "overshoot": "recoverable"},
]


def _venv(n, **kw):
    return gym.make_vec("testbed/PlantedFailure-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw).unwrapped


def _play(venv, rng, steps=None):
    """Uniformly random actions on the live rows, for ``steps`` steps (None: until every row ended);
    returns every step's (rows, reward, terminated, truncated, info)."""
    out = []
    k = 0
    while venv._live.any() and (steps is None or k < steps):
        rows = np.flatnonzero(venv._live)
        out.append((rows, *venv.step_rows(rows, rng.integers(venv.vocab_size, size=rows.size))))
        k += 1
    return out


@pytest.mark.parametrize("kw", KNOBS, ids=lambda kw: ",".join(kw) or "default")
def test_restored_episodes_continue_as_the_originals(kw):
    for seed in range(3):
        a = _venv(64, **kw)
        a.reset(seed=seed)
        _play(a, np.random.default_rng(seed), steps=5)
        snap = a.snapshot_rows(np.arange(64))
        b = _venv(64, **kw)
        b.reset(seed=seed + 100)  # other problems and hidden draws: all replaced by the restore
        b.restore_rows(np.arange(64), snap)
        assert b.row_info(np.arange(64)).keys() == a.row_info(np.arange(64)).keys()
        for k, v in a.row_info(np.arange(64)).items():
            np.testing.assert_array_equal(b.row_info(np.arange(64))[k], v, err_msg=k)
        a.np_random, b.np_random = np.random.default_rng(7), np.random.default_rng(7)  # later run-on draws
        ra, rb = _play(a, np.random.default_rng(1)), _play(b, np.random.default_rng(1))
        assert len(ra) == len(rb) and len(ra) > 0
        for x, y in zip(ra, rb):
            for u, w in zip(x[:4], y[:4]):
                np.testing.assert_array_equal(u, w)
            for k in x[4]:
                np.testing.assert_array_equal(x[4][k], y[4][k], err_msg=k)
        np.testing.assert_array_equal(a._obs()["tokens"], b._obs()["tokens"])


def test_one_episode_cloned_into_many_rows():
    a = _venv(8, repair_prob=0.5)
    a.reset(seed=0)
    _play(a, np.random.default_rng(0), steps=3)
    b = _venv(20, repair_prob=0.5)
    b.reset(seed=1)
    b.restore_rows(np.arange(20), a.snapshot_rows(np.array([2, 5])), src=np.repeat([0, 1], 10))
    info, ref = b.row_info(np.arange(20)), a.row_info(np.array([2, 5]))
    for k in ("problem", "length", "failure_step", "repairable", "recoverable_errors", "live"):
        np.testing.assert_array_equal(info[k], np.repeat(ref[k], 10), err_msg=k)


def test_restore_refuses_a_snapshot_of_another_structure():
    a, b = _venv(4), _venv(4, structure_seed=1)
    a.reset(seed=0)
    b.reset(seed=0)
    with pytest.raises(ValueError, match="another structure"):
        b.restore_rows(np.arange(4), a.snapshot_rows(np.arange(4)))
    with pytest.raises(ValueError, match="src"):
        a.restore_rows(np.arange(4), a.snapshot_rows(np.arange(2)))


def test_sim_task_restore_carries_the_outcome_so_far():
    a = SimTask("testbed/PlantedFailure-v0", 32, seed=0)
    slots = np.arange(32)
    a.reset(slots)
    rng = np.random.default_rng(0)
    for _ in range(30):  # long enough that some rows ended (successes among them)
        a.observe(slots, rng.integers(1, 4, size=32))
    b = SimTask("testbed/PlantedFailure-v0", 32, seed=5)
    b.reset(slots)
    b.restore(slots, a.snapshot(slots))
    ra, rb = a.finish(slots, [[]] * 32), b.finish(slots, [[]] * 32)
    for k in ("reward", "success", "failure_step", "doomed"):
        np.testing.assert_array_equal(getattr(rb, k), getattr(ra, k), err_msg=k)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ESPO on the tiny env, the detector_bayes study's settings (60 steps, a partly trained policy)."""
    tmp = tmp_path_factory.mktemp("sv")
    over = {**dbs.OVERRIDES, "run.steps": 60, "run.checkpoint_every": 60}
    cfg = config_mod.load(dbs.BASE_CONFIG, [f"{k}={v}" for k, v in over.items()]
                          + [f"run.out_dir={tmp}", "run.name=espo", "run.seed=0", "run.threads=1"])
    Trainer(cfg).train()
    trainer = Trainer(cfg, tmp / "espo")
    trainer.close()
    return trainer, tmp / "espo"


def test_estimate_matches_the_exact_posterior(trained):
    """Every stop of the value-only ablation (it stops often, doomed and live rows alike): the doomed ones
    have exact P = 0; over the live ones the continuations' success share is unbiased for the exact P of
    the prefix (no hidden draws in this env), within 4 standard errors."""
    trainer, _ = trained
    torch.set_num_threads(1)
    K = 200
    m = sv.measure_trainer(trainer, n_rows=600, continuations=K, seed=3, rule="value_only")
    assert m["stops"] > 100 and 0 < m["doomed_stops"] < m["stops"], m["stops"]
    values = ep.exact_values(trainer.backend, trainer.task.env.structure, trainer.cfg.rollout.temperature)
    T = max(len(x) for x in m["prefix"])
    tokens = np.zeros((m["stops"], T), dtype=np.int64)
    for i, x in enumerate(m["prefix"]):
        tokens[i, : len(x)] = x
    lengths = np.array(m["position"])
    exact = success_curves(values, np.array(m["problem"]), tokens, lengths)[np.arange(m["stops"]), lengths]
    doomed, p_hat = np.array(m["doomed"]), np.array(m["p_success"])
    assert (exact[doomed] == 0).all() and (p_hat[doomed] == 0).all()
    live = ~doomed
    assert (exact[live] > 0).any()
    se = np.sqrt((exact[live] * (1 - exact[live])).sum() / K) / live.sum()
    assert abs(p_hat[live].mean() - exact[live].mean()) < 4 * se + 1e-9
    assert np.corrcoef(p_hat[live], exact[live])[0, 1] > 0.9
    assert m["p_thrown"] == pytest.approx(p_hat.mean()) and m["precision"] == pytest.approx(doomed.mean())


def test_oracle_throws_nothing_away(trained):
    trainer, _ = trained
    m = sv.measure_trainer(trainer, n_rows=300, continuations=4, seed=1, rule="oracle")
    assert m["stops"] > 0 and m["doomed_stops"] == m["stops"] and m["p_thrown"] == 0.0


def test_measure_run_writes_keeps_and_skips_rules_that_never_stop(trained, tmp_path):
    _, run_dir = trained
    logs = []
    p = sv.measure_run(run_dir, rows=200, continuations=4, log=logs.append)
    first = p.read_text()
    assert json.loads(first)["rows"] == 200 and len(logs) == 1
    sv.measure_run(run_dir, rows=200, continuations=4, log=logs.append)
    assert p.read_text() == first and len(logs) == 1  # kept: same settings
    ppo = tmp_path / "ppo"
    ppo.mkdir()
    cfg = (run_dir / "config.yaml").read_text().replace("rule: espo", "rule: none")
    assert "rule: none" in cfg
    (ppo / "config.yaml").write_text(cfg)  # not loaded: no checkpoint needed
    out = json.loads(sv.measure_run(ppo, rows=200, continuations=4, log=logs.append).read_text())
    assert out["stops"] == 0
