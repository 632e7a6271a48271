"""The planted-failure env, single and vectorised, against a naive reading of its rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given
from hypothesis import strategies as st

import envs
from envs.planted_failure import EOS_ID, PAD_ID, PlantedFailureEnv, PlantedFailureVectorEnv

TINY = "testbed/PlantedFailureTiny-v0"
DEFAULT = "testbed/PlantedFailure-v0"


def reference_outcome(env, problem: int, tokens: list[int]) -> dict:
    """The rules as the docstring states them, one token at a time, with no shared code.

    ``tokens`` is a whole episode (it ends at EOS or at max_len tokens).
    """
    L = int(env.target_len[problem])
    failure_step, errors = -1, 0
    for t, a in enumerate(tokens):
        if failure_step >= 0:
            continue
        if a == EOS_ID:
            if t != L:  # EOS too early or too late
                failure_step = t
        elif t >= L:  # a content token where EOS belonged: overshoot
            failure_step = t
        elif not env.acceptable[problem, t, a]:  # PAD is never acceptable
            if env.critical[problem, t]:
                failure_step = t
            else:
                errors += 1
    terminated = tokens[-1] == EOS_ID
    success = terminated and failure_step < 0
    reward = max(0.0, 1.0 - env.structure.recoverable_cost * errors) if success else 0.0
    return dict(
        reward=reward, success=success, failure_step=failure_step, terminated=terminated,
        truncated=not terminated, recoverable_errors=errors,
    )


def correct_response(env, problem: int) -> list[int]:
    """The first acceptable token at every position, then EOS."""
    L = int(env.target_len[problem])
    return [int(np.flatnonzero(env.acceptable[problem, t])[0]) for t in range(L)] + [EOS_ID]


def wrong_token(env, problem: int, t: int) -> int:
    """A content token that is not acceptable at index t."""
    content = np.arange(2, env.vocab_size)
    return int(content[~env.acceptable[problem, t, 2:]][0])


def play_single(env: PlantedFailureEnv, problem: int, tokens: list[int]):
    """Reset to ``problem`` and step ``tokens``; returns the last step's results."""
    env.reset(options={"problem": problem})
    for a in tokens:
        obs, reward, terminated, truncated, info = env.step(a)
    return obs, reward, terminated, truncated, info


@st.composite
def episodes(draw, env):
    """(problem, tokens): a whole episode, leaning towards acceptable tokens and EOS at L so that
    success, recoverable errors, fatal errors, wrong lengths and truncation all occur."""
    problem = draw(st.integers(0, env.num_problems - 1))
    L = int(env.target_len[problem])
    tokens: list[int] = []
    while len(tokens) < env.max_len:
        t = len(tokens)
        good = np.flatnonzero(env.acceptable[problem, min(t, env.max_len - 1)]).tolist() or [EOS_ID]
        if draw(st.integers(0, 3)) > 0 and t <= L:
            a = draw(st.sampled_from(good))
        else:
            a = draw(st.integers(0, env.vocab_size - 1))
        tokens.append(a)
        if a == EOS_ID:
            break
    return problem, tokens


# -- gymnasium conformance -------------------------------------------------------------------


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env(env_id):
    check_env(gym.make(env_id).unwrapped)
    check_env(gym.make(env_id, render_mode="ansi").unwrapped)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_registered_with_native_vector_entry_point(env_id):
    spec = gym.spec(env_id)
    assert spec.entry_point == "envs.planted_failure:PlantedFailureEnv"
    assert spec.vector_entry_point == "envs.planted_failure:PlantedFailureVectorEnv"
    venv = gym.make_vec(env_id, num_envs=5, vectorization_mode="vector_entry_point")
    assert isinstance(venv, PlantedFailureVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, info = venv.reset(seed=0)
    assert obs["tokens"].shape == (5, venv.prompt_len + venv.max_len)
    assert venv.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert venv.observation_space.contains(obs)
    assert reward.shape == terminated.shape == truncated.shape == (5,)
    assert {"problem", "failure_step", "doomed", "success"} <= set(info)


def test_envs_imports_neither_torch_nor_testbed():
    code = "import sys, envs, envs.solver; bad = {'torch', 'testbed'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(envs.__file__).parents[1])


# -- determinism and seeds -------------------------------------------------------------------


def rollout_single(env_id: str, seed: int, steps: int) -> list:
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    record = []
    obs, info = env.reset(seed=seed)
    record.append((obs["tokens"].tolist(), int(obs["length"]), info))
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        record.append((obs["tokens"].tolist(), int(obs["length"]), reward, terminated, truncated, info))
        if terminated or truncated:
            obs, info = env.reset()  # unseeded: the stream continues from the first seed
            record.append((obs["tokens"].tolist(), info))
    return record


def rollout_vector(env_id: str, seed: int, steps: int) -> list:
    venv = gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point")
    rng = np.random.default_rng(seed)
    obs, info = venv.reset(seed=seed)
    record = [(obs["tokens"].tolist(), {k: v.tolist() for k, v in info.items()})]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = venv.step(rng.integers(venv.vocab_size, size=4))
        record.append((obs["tokens"].tolist(), reward.tolist(), terminated.tolist(), truncated.tolist(),
                       {k: v.tolist() for k, v in info.items()}))
    return record


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_same_seed_same_trajectory(env_id):
    assert rollout_single(env_id, 3, 60) == rollout_single(env_id, 3, 60)
    assert rollout_vector(env_id, 3, 60) == rollout_vector(env_id, 3, 60)
    # ...and the seed matters (the problems drawn differ), so the comparison above can fail.
    assert rollout_single(DEFAULT, 3, 60) != rollout_single(DEFAULT, 4, 60)
    assert rollout_vector(DEFAULT, 3, 60) != rollout_vector(DEFAULT, 4, 60)


def test_structure_seed_changes_structure_episode_seed_does_not():
    a = gym.make(DEFAULT, structure_seed=0).unwrapped
    b = gym.make(DEFAULT, structure_seed=0).unwrapped
    c = gym.make(DEFAULT, structure_seed=1).unwrapped
    a.reset(seed=1)
    b.reset(seed=2)
    for name in ("prompts", "target_len", "acceptable", "critical"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.acceptable, c.acceptable)
    assert not np.array_equal(a.critical, c.critical)
    assert not np.array_equal(a.prompts, c.prompts)
    v = gym.make_vec(DEFAULT, num_envs=2, vectorization_mode="vector_entry_point", structure_seed=0)
    np.testing.assert_array_equal(v.acceptable, a.acceptable)


# -- structure -------------------------------------------------------------------------------


@given(
    num_content_tokens=st.integers(2, 12),
    prompt_len=st.integers(1, 3),
    max_len=st.integers(3, 30),
    length_dist=st.sampled_from(["fixed", "uniform", "lognormal"]),
    critical_frac=st.floats(0, 1),
    data=st.data(),
)
def test_structure_invariants(num_content_tokens, prompt_len, max_len, length_dist, critical_frac, data):
    C = num_content_tokens
    num_problems = data.draw(st.integers(1, min(20, C**prompt_len)))
    min_len = data.draw(st.integers(1, max_len - 1))
    target_len = data.draw(st.integers(min_len, max_len - 1))
    k = data.draw(st.integers(1, C))
    k_crit = data.draw(st.integers(1, C))
    env = PlantedFailureEnv(
        num_problems=num_problems, prompt_len=prompt_len, num_content_tokens=C, max_len=max_len,
        length_dist=length_dist, target_len=target_len, min_len=min_len, max_len_target=max_len - 1,
        num_acceptable=k, num_acceptable_critical=k_crit, critical_frac=critical_frac,
        structure_seed=data.draw(st.integers(0, 2**32 - 1)),
    )
    assert env.vocab_size == C + 2
    assert len({tuple(p) for p in env.prompts.tolist()}) == num_problems  # the prompt names the problem
    assert env.prompts.min() >= 2 and env.prompts.max() < env.vocab_size
    L = env.target_len
    assert (L >= min_len).all() and (L <= max_len - 1).all()
    if length_dist == "fixed":
        assert (L == target_len).all()
    for p in range(num_problems):
        crit = np.flatnonzero(env.critical[p])
        assert crit.size == round(critical_frac * L[p]) or abs(critical_frac * L[p] % 1 - 0.5) < 1e-9
        assert (crit < L[p]).all()
        counts = env.acceptable[p, :, 2:].sum(-1)
        expect = np.where(env.critical[p], k_crit, k) * (np.arange(max_len) < L[p])
        np.testing.assert_array_equal(counts, expect)
        assert not env.acceptable[p, :, PAD_ID].any()
        np.testing.assert_array_equal(np.flatnonzero(env.acceptable[p, :, EOS_ID]), [L[p]])


def test_long_tail_variant_has_a_long_tail():
    L = gym.make("testbed/PlantedFailureLongTail-v0").unwrapped.target_len
    assert np.median(L) == pytest.approx(12, abs=2)
    assert L.max() >= 2.5 * np.median(L)


def test_trap_variant_errors_are_mostly_recoverable():
    env = gym.make("testbed/PlantedFailureTrap-v0").unwrapped
    before_L = np.arange(env.max_len)[None] < env.target_len[:, None]
    wrong = 1 - env.acceptable[:, :, 2:].mean(-1)  # chance a uniform content token is unacceptable
    recoverable = (wrong * (before_L & ~env.critical)).sum()
    fatal = (wrong * env.critical).sum()
    assert recoverable > 10 * fatal


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_acceptable=17), "num_acceptable"),
        (dict(num_acceptable_critical=0), "num_acceptable_critical"),
        (dict(target_len=24), "target_len"),
        (dict(min_len=0), "min_len"),
        (dict(length_dist="normal"), "length_dist"),
        (dict(length_dist="uniform", min_len=3, max_len_target=2), "max_len_target"),
        (dict(num_problems=300), "num_problems"),
        (dict(critical_frac=1.5), "critical_frac"),
        (dict(recoverable_cost=-1), "recoverable_cost"),
        (dict(max_len=1, target_len=1), "max_len"),
        (dict(render_mode="human"), "render_mode"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        PlantedFailureEnv(**kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        PlantedFailureVectorEnv(num_envs=2, **kwargs)


def test_vector_env_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="num_acceptible"):
        PlantedFailureVectorEnv(num_envs=2, num_acceptible=3)
    with pytest.raises(ValueError, match="^num_envs"):
        PlantedFailureVectorEnv(num_envs=0)


# -- episode semantics -----------------------------------------------------------------------


@pytest.fixture
def env() -> PlantedFailureEnv:
    return gym.make(DEFAULT).unwrapped


def test_correct_response_succeeds(env):
    for p in range(5):
        obs, reward, terminated, truncated, info = play_single(env, p, correct_response(env, p))
        assert (reward, terminated, truncated) == (1.0, True, False)
        assert info["success"] and not info["doomed"] and info["failure_step"] == -1
        assert info["problem"] == p
        assert obs["length"] == env.prompt_len + env.target_len[p] + 1
        np.testing.assert_array_equal(obs["tokens"][: env.prompt_len], env.prompts[p])


def test_fatal_token_dooms_even_with_correct_eos(env):
    p = 0
    crit = int(np.flatnonzero(env.critical[p])[0])
    tokens = correct_response(env, p)
    tokens[crit] = wrong_token(env, p, crit)
    env.reset(options={"problem": p})
    for t, a in enumerate(tokens[:-1]):
        _, reward, terminated, truncated, info = env.step(a)
        # the episode goes on after the fatal token, with failure_step fixed from then on
        assert not terminated and not truncated and reward == 0.0
        assert info["failure_step"] == (crit if t >= crit else -1)
        assert info["doomed"] == (t >= crit)
    _, reward, terminated, _, info = env.step(EOS_ID)
    assert terminated and reward == 0.0 and not info["success"]
    assert info["failure_step"] == crit and info["doomed"]


@pytest.mark.parametrize("bad", ["content", "pad"])
def test_recoverable_error_costs_but_succeeds(env, bad):
    p = 1
    t = int(np.flatnonzero(~env.critical[p])[0])
    tokens = correct_response(env, p)
    tokens[t] = wrong_token(env, p, t) if bad == "content" else PAD_ID
    _, reward, terminated, _, info = play_single(env, p, tokens)
    assert terminated and info["success"] and not info["doomed"]
    assert info["recoverable_errors"] == 1
    assert reward == pytest.approx(1.0 - env.structure.recoverable_cost)


def test_reward_floors_at_zero():
    env = PlantedFailureEnv(recoverable_cost=0.4, critical_frac=0.0)
    tokens = correct_response(env, 0)
    tokens[:3] = [wrong_token(env, 0, t) for t in range(3)]
    _, reward, _, _, info = play_single(env, 0, tokens)
    assert info["success"] and reward == 0.0


def test_pad_at_a_critical_position_is_fatal(env):
    p = 2
    crit = int(np.flatnonzero(env.critical[p])[0])
    tokens = correct_response(env, p)
    tokens[crit] = PAD_ID
    _, reward, _, _, info = play_single(env, p, tokens)
    assert reward == 0.0 and info["failure_step"] == crit


def test_eos_too_early_fails_at_that_step(env):
    p = 0
    tokens = correct_response(env, p)[:3] + [EOS_ID]
    obs, reward, terminated, truncated, info = play_single(env, p, tokens)
    assert terminated and not truncated and reward == 0.0
    assert info["failure_step"] == 3 and not info["success"]


def test_eos_too_late_fails_where_eos_belonged(env):
    p = 0
    L = int(env.target_len[p])
    tokens = correct_response(env, p)[:-1] + [2, 3, EOS_ID]
    _, reward, terminated, _, info = play_single(env, p, tokens)
    assert terminated and reward == 0.0 and info["failure_step"] == L


def test_truncated_at_max_len_not_terminated(env):
    p = 0
    L = int(env.target_len[p])
    tokens = correct_response(env, p)[:-1]
    tokens += [2] * (env.max_len - len(tokens))
    env.reset(options={"problem": p})
    for t, a in enumerate(tokens):
        obs, reward, terminated, truncated, info = env.step(a)
        assert not terminated
        assert truncated == (t == env.max_len - 1)
    assert reward == 0.0 and info["failure_step"] == L
    assert obs["length"] == env.prompt_len + env.max_len
    with pytest.raises(ValueError, match="ended"):
        env.step(2)


def test_single_env_rejects_bad_action_and_problem(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="^action"):
        env.step(env.vocab_size)
    with pytest.raises(ValueError, match="problem"):
        env.reset(options={"problem": env.num_problems})


@given(st.data())
def test_single_env_matches_reference(data):
    env = gym.make(TINY if data.draw(st.booleans()) else DEFAULT).unwrapped
    problem, tokens = data.draw(episodes(env))
    expect = reference_outcome(env, problem, tokens)
    _, reward, terminated, truncated, info = play_single(env, problem, tokens)
    got = dict(reward=reward, success=info["success"], failure_step=info["failure_step"],
               terminated=terminated, truncated=truncated, recoverable_errors=info["recoverable_errors"])
    assert got == pytest.approx(expect)
    assert info["doomed"] == (expect["failure_step"] >= 0)


# -- vector env ------------------------------------------------------------------------------


@given(st.data())
def test_vector_env_matches_single_env_step_for_step(data):
    """Rows of different problems and lengths, stepped together, equal single envs one by one."""
    env_id = data.draw(st.sampled_from([TINY, DEFAULT]))
    single = gym.make(env_id).unwrapped
    n = data.draw(st.integers(1, 6))
    eps = [data.draw(episodes(single)) for _ in range(n)]
    venv = gym.make_vec(env_id, num_envs=n + 1, vectorization_mode="vector_entry_point")
    rows = np.arange(1, n + 1)  # leave row 0 idle: row-wise stepping must not touch it
    prompts = venv.reset_rows(rows, np.array([p for p, _ in eps]))
    np.testing.assert_array_equal(prompts, single.prompts[[p for p, _ in eps]])
    np.testing.assert_array_equal(venv.problem[rows], [p for p, _ in eps])
    singles = []
    for p, _ in eps:
        e = gym.make(env_id).unwrapped
        e.reset(options={"problem": p})
        singles.append(e)
    for t in range(max(len(tok) for _, tok in eps)):
        active = [i for i, (_, tok) in enumerate(eps) if t < len(tok)]
        actions = np.array([eps[i][1][t] for i in active])
        reward, terminated, truncated, info = venv.step_rows(rows[active], actions)
        for j, i in enumerate(active):
            obs, r, te, tr, inf = singles[i].step(int(actions[j]))
            assert (reward[j], terminated[j], truncated[j]) == (r, te, tr)
            for key in ("problem", "failure_step", "doomed", "success", "recoverable_errors"):
                assert info[key][j] == inf[key], key
            assert info["length"][j] == obs["length"] - single.prompt_len
    assert not venv.row_info(np.array([0]))["live"][0]


def test_vector_step_autoresets_on_the_next_step():
    venv = gym.make_vec(DEFAULT, num_envs=3, vectorization_mode="vector_entry_point")
    obs, info = venv.reset(seed=0, options={"problem": [0, 1, 2]})
    np.testing.assert_array_equal(info["problem"], [0, 1, 2])
    actions = np.array([EOS_ID, 2, 2])
    obs, reward, terminated, truncated, info = venv.step(actions)
    np.testing.assert_array_equal(terminated, [True, False, False])
    assert info["failure_step"][0] == 0 and obs["length"][0] == venv.prompt_len + 1
    obs, reward, terminated, truncated, info = venv.step(np.array([2, 2, 2]))
    # row 0 restarted (its action ignored); the others took their second token
    assert obs["length"].tolist() == [venv.prompt_len, venv.prompt_len + 2, venv.prompt_len + 2]
    assert not terminated[0] and not truncated[0] and reward[0] == 0.0
    assert info["failure_step"][0] == -1 and info["live"][0]
    np.testing.assert_array_equal(obs["tokens"][0, : venv.prompt_len], venv.prompts[info["problem"][0]])
    assert (obs["tokens"][0, venv.prompt_len :] == PAD_ID).all()


def test_vector_step_matches_step_rows():
    """``step`` on all-live rows is ``step_rows`` on all rows."""
    a = gym.make_vec(DEFAULT, num_envs=8, vectorization_mode="vector_entry_point")
    b = gym.make_vec(DEFAULT, num_envs=8, vectorization_mode="vector_entry_point")
    a.reset(seed=5)
    b.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = rng.integers(2, a.vocab_size, size=8)  # no EOS: every row stays live
        _, ra, ta, ua, ia = a.step(actions)
        rb, tb, ub, ib = b.step_rows(np.arange(8), actions)
        np.testing.assert_array_equal(ra, rb)
        for key in ia:
            np.testing.assert_array_equal(ia[key], ib[key])


def test_step_rows_on_an_ended_row_raises():
    venv = gym.make_vec(TINY, num_envs=3, vectorization_mode="vector_entry_point").unwrapped
    with pytest.raises(ValueError, match="^rows"):  # never started
        venv.step_rows(np.array([0]), np.array([2]))
    venv.reset_rows(np.array([0, 1]))
    venv.step_rows(np.array([0, 1]), np.array([EOS_ID, 2]))
    with pytest.raises(ValueError, match="^rows.*ended"):
        venv.step_rows(np.array([1, 0]), np.array([2, 2]))
    venv.step_rows(np.array([1]), np.array([2]))  # the live row is unaffected by the failed call
    assert venv.row_info(np.array([1]))["length"][0] == 2
    venv.reset_rows(np.array([0]))
    venv.step_rows(np.array([0]), np.array([2]))


def test_row_api_rejects_bad_input():
    venv = PlantedFailureVectorEnv(num_envs=3)
    venv.reset(seed=0)
    for rows, actions, name in [
        (np.array([0, 0]), np.array([2, 2]), "rows"),
        (np.array([3]), np.array([2]), "rows"),
        (np.array([0]), np.array([2, 2]), "actions"),
        (np.array([0]), np.array([venv.vocab_size]), "actions"),
        (np.array([0]), np.array([2.0]), "actions"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}"):
            venv.step_rows(rows, actions)
    with pytest.raises(ValueError, match="^problems"):
        venv.reset_rows(np.array([0]), np.array([venv.num_problems]))
    with pytest.raises(ValueError, match="^actions"):
        venv.step(np.array([2, 2]))


def test_reset_rows_draws_problems_from_the_seeded_stream():
    def draw(seed):
        venv = PlantedFailureVectorEnv(num_envs=4)
        venv.reset(seed=seed)
        return venv.reset_rows(np.array([3, 1])).tolist(), venv.row_info(np.array([3, 1]))["problem"].tolist()

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_empty_row_calls_are_no_ops():
    venv = PlantedFailureVectorEnv(num_envs=2)
    venv.reset(seed=0)
    assert venv.reset_rows(np.array([], dtype=np.int64)).shape == (0, venv.prompt_len)
    empty = np.array([], dtype=np.int64)
    reward, terminated, truncated, info = venv.step_rows(empty, empty)
    assert reward.shape == terminated.shape == truncated.shape == info["failure_step"].shape == (0,)
