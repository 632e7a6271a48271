"""The exact solver against its own recursion, the positional fast path, and Monte-Carlo rollouts."""

from __future__ import annotations

from functools import lru_cache

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import envs  # noqa: F401  (registers the ids)
from envs.planted_failure import EOS_ID, PlantedFailureVectorEnv
from envs.solver import (
    as_structure,
    solve,
    solve_positional,
    success_curves,
    walk,
)
from testbed.scoring import bayes_optimal_stop

TINY = "testbed/PlantedFailureTiny-v0"
Z = 4.0
"""Monte-Carlo tolerance in standard errors: a correct solver fails one comparison in ~16,000."""


def tiny() -> PlantedFailureVectorEnv:
    return gym.make_vec(TINY, num_envs=1, vectorization_mode="vector_entry_point")


def prefix_policy(structure, seed: int, skill: float = 0.6):
    """A tabular policy that really depends on the whole prefix: a Dirichlet draw seeded by
    (seed, problem, prefix), mixed with weight ``skill`` onto the acceptable actions so that success
    is common enough to estimate."""

    @lru_cache(maxsize=None)
    def policy(problem: int, prefix: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([seed, problem, len(prefix), *prefix])
        noise = rng.dirichlet(np.ones(structure.vocab_size))
        good = structure.acceptable[problem, min(len(prefix), structure.max_len - 1)].astype(float)
        good = good / good.sum() if good.sum() else noise
        return (1 - skill) * noise + skill * good

    return policy


def positional_probs(structure, problem: int, seed: int, skill: float = 0.6) -> np.ndarray:
    """(max_len, V) position-only policy, built like :func:`prefix_policy`."""
    rng = np.random.default_rng([seed, problem])
    noise = rng.dirichlet(np.ones(structure.vocab_size), size=structure.max_len)
    good = structure.acceptable[problem].astype(float)
    good[good.sum(-1) == 0] = 1.0
    return (1 - skill) * noise + skill * good / good.sum(-1, keepdims=True)


def monte_carlo(env_id: str, problem: int, prefix: tuple[int, ...], sample, n: int, seed: int):
    """Roll out ``n`` episodes of ``problem`` that start with ``prefix`` and continue with
    ``sample(t, prefixes (list of tuples)) -> actions``. Returns (success, reward) arrays (n,)."""
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point")
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    venv.reset_rows(rows, np.full(n, problem))
    success, reward = np.zeros(n, bool), np.zeros(n)
    live = np.ones(n, bool)
    responses = [list(prefix) for _ in range(n)]
    for t in range(venv.max_len):
        r = np.flatnonzero(live)
        if r.size == 0:
            break
        if t < len(prefix):
            actions = np.full(r.size, prefix[t])
        else:
            actions = sample(t, [tuple(responses[i]) for i in r], rng)
            for i, a in zip(r, actions):
                responses[i].append(int(a))
        rew, terminated, truncated, info = venv.step_rows(r, actions)
        done = terminated | truncated
        success[r[done]] = info["success"][done]
        reward[r[done]] = rew[done]
        live[r[done]] = False
    assert not live.any()
    return success, reward


def inverse_cdf(probs: np.ndarray, rng) -> np.ndarray:
    """One action per row of ``probs`` (n, V)."""
    u = rng.random((probs.shape[0], 1))
    return np.minimum((probs.cumsum(-1) < u).sum(-1), probs.shape[1] - 1)


def assert_within_z(estimate: np.ndarray, exact: float, *, binary: bool) -> None:
    n = estimate.size
    sd = np.sqrt(exact * (1 - exact)) if binary else estimate.std()
    se = max(sd, 1e-12) / np.sqrt(n)
    assert abs(estimate.mean() - exact) <= Z * se + 1e-12, (estimate.mean(), exact, se)


# -- exact recursion -------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), skill=st.floats(0, 0.9), target=st.sampled_from(["success", "reward"]))
def test_table_satisfies_the_bellman_equation(seed, skill, target):
    s = as_structure(tiny())
    policy = prefix_policy(s, seed, skill)
    for problem in range(s.num_problems):
        values = solve(s, problem, policy, target=target)
        assert values.table, "the table holds every not-doomed prefix"
        for prefix, v in values.table.items():
            probs = policy(problem, prefix)
            children = sum(probs[a] * values(prefix + (a,)) for a in range(s.vocab_size))
            assert v == pytest.approx(children, abs=1e-12)
            assert 0.0 <= v <= 1.0


def test_terminal_and_doomed_prefixes():
    s = as_structure(tiny())
    values = solve(s, 0, prefix_policy(s, 0))
    correct = [int(np.flatnonzero(s.acceptable[0, t])[0]) for t in range(int(s.target_len[0]))]
    assert values(correct + [EOS_ID]) == 1.0
    assert values([EOS_ID]) == 0.0  # EOS at index 0, too early
    crit = int(np.flatnonzero(s.critical[0])[0])
    wrong = correct[:crit] + [int(np.flatnonzero(~s.acceptable[0, crit, 2:])[0]) + 2]
    assert walk(s, 0, wrong)[0]
    assert values(wrong) == 0.0
    with pytest.raises(ValueError, match="follows EOS"):
        values([EOS_ID, 2])
    with pytest.raises(ValueError, match="outside"):
        values([s.vocab_size])


@given(seed=st.integers(0, 2**32 - 1), skill=st.floats(0, 0.9))
def test_positional_fast_path_equals_general_dp(seed, skill):
    s = as_structure(tiny())
    for problem in range(s.num_problems):
        probs = positional_probs(s, problem, seed, skill)
        general = solve(s, problem, lambda p, prefix: probs[len(prefix)])
        fast = solve_positional(s, problem, probs)
        for prefix in general.table:
            assert fast(prefix) == pytest.approx(general(prefix), abs=1e-12)
        assert fast.q[int(s.target_len[problem]) + 1 :].sum() == 0.0


def test_uniform_policy_success_has_a_closed_form():
    """Uniform policy, L tokens: every step before L avoids EOS and, at a critical position, the
    unacceptable tokens; then EOS. P = prod_t (safe_t / V) * 1 / V."""
    s = as_structure(gym.make("testbed/PlantedFailure-v0"))
    V = s.vocab_size
    for problem in range(3):
        L = int(s.target_len[problem])
        safe = np.where(s.critical[problem, :L], s.acceptable[problem, :L].sum(-1), V - 1)
        expect = np.prod(safe / V) / V
        got = solve_positional(s, problem, np.full((s.max_len, V), 1 / V))(())
        assert got == pytest.approx(expect, rel=1e-12)


# -- against Monte-Carlo ---------------------------------------------------------------------


@pytest.mark.parametrize("problem", [0, 1, 2])
def test_prefix_policy_matches_monte_carlo(problem):
    s = as_structure(tiny())
    policy = prefix_policy(s, seed=11)
    values = solve(s, problem, policy)
    success_values = values
    reward_values = solve(s, problem, policy, target="reward")

    def sample(t, prefixes, rng):
        return inverse_cdf(np.stack([policy(problem, p) for p in prefixes]), rng)

    # the root, and two not-doomed prefixes of lengths 1 and 2
    deeper = sorted((p for p in values.table if 1 <= len(p) <= 2), key=lambda p: -values(p))
    for k, prefix in enumerate([(), deeper[0], deeper[-1]]):
        success, reward = monte_carlo(TINY, problem, prefix, sample, n=20_000, seed=100 * problem + k)
        assert_within_z(success, success_values(prefix), binary=True)
        assert_within_z(reward, reward_values(prefix), binary=False)


def test_positional_solution_matches_monte_carlo_on_the_default_env():
    env_id = "testbed/PlantedFailure-v0"
    s = as_structure(gym.make(env_id))
    problem = 5
    probs = positional_probs(s, problem, seed=3, skill=0.9)
    exact = solve_positional(s, problem, probs)(())
    assert 0.05 < exact < 0.95  # informative: neither near-certain failure nor success

    def sample(t, prefixes, rng):
        return inverse_cdf(np.broadcast_to(probs[t], (len(prefixes), s.vocab_size)), rng)

    success, _ = monte_carlo(env_id, problem, (), sample, n=4000, seed=0)
    assert_within_z(success, exact, binary=True)


# -- stop helpers ----------------------------------------------------------------------------


def test_bayes_optimal_stop():
    curves = np.array(
        [
            [0.5, 0.6, 0.2, 0.1, 0.0],  # first below 0.3 is prefix length 2 -> stop at index 1
            [0.5, 0.5, 0.5, 0.5, 1.0],  # never
            [0.1, 0.1, np.nan, np.nan, np.nan],  # below from the first token
        ]
    )
    np.testing.assert_array_equal(bayes_optimal_stop(curves, 0.3), [1, -1, 0])
    np.testing.assert_array_equal(bayes_optimal_stop(curves, 0.3, min_tokens=2), [2, -1, -1])
    assert bayes_optimal_stop(curves[0], 0.3) == 1
    assert bayes_optimal_stop(curves[0], 0.0) == -1


def test_success_curves_pad_with_nan():
    s = as_structure(tiny())
    policy = prefix_policy(s, 0)
    values = [solve(s, p, policy) for p in range(s.num_problems)]
    tokens = np.array([[2, 3, 0, 0], [EOS_ID, 0, 0, 0]])
    curves = success_curves(values, np.array([0, 1]), tokens, np.array([2, 1]))
    assert curves.shape == (2, 5)
    np.testing.assert_allclose(curves[0, :3], values[0].curve([2, 3]))
    assert np.isnan(curves[0, 3:]).all() and np.isnan(curves[1, 2:]).all()
    assert curves[1, 1] == 0.0  # EOS at index 0 fails


def test_bad_inputs():
    s = as_structure(tiny())
    with pytest.raises(ValueError, match="max_prefixes"):
        solve(s, 0, prefix_policy(s, 0), max_prefixes=3)
    with pytest.raises(ValueError, match="sum to 1"):
        solve(s, 0, lambda p, prefix: np.full(s.vocab_size, 0.5))
    with pytest.raises(ValueError, match="shape"):
        solve(s, 0, lambda p, prefix: np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="^problem"):
        solve(s, s.num_problems, prefix_policy(s, 0))
    with pytest.raises(ValueError, match="^target"):
        solve(s, 0, prefix_policy(s, 0), target="value")
    with pytest.raises(ValueError, match="^probs"):
        solve_positional(s, 0, np.ones((2, 2)))
    with pytest.raises(TypeError, match="source"):
        as_structure(object())
