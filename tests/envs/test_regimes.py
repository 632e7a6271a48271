"""Issue 19 regime knobs: long and heavy-tailed lengths, derailment, recovery, and P(success | prefix)
that survives recovery (exact DP against Monte Carlo)."""

from __future__ import annotations

from functools import lru_cache

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.planted_failure import EOS_ID, FIRST_CONTENT_ID as FIRST, Z99, PlantedFailureEnv, PlantedFailureVectorEnv
from envs.solver import _branches, monte_carlo_success, replay, solve, solve_positional

NEW_IDS = (
    "testbed/PlantedFailureLong-v0",
    "testbed/PlantedFailureTail-v0",
    "testbed/PlantedFailureDerail-v0",
    "testbed/PlantedFailureRecover-v0",
    "testbed/PlantedFailureRecoverTiny-v0",
)
RECOVER_TINY = "testbed/PlantedFailureRecoverTiny-v0"


@pytest.mark.parametrize("env_id", NEW_IDS)
def test_new_ids_pass_check_env_and_vectorise_natively(env_id):
    assert env_id in envs.ENV_IDS
    check_env(gym.make(env_id).unwrapped)
    venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv, PlantedFailureVectorEnv)
    obs, info = venv.reset(seed=0)
    for _ in range(5):
        obs, *_, info = venv.step(venv.action_space.sample())
        assert venv.observation_space.contains(obs)
    assert {"repaired", "repairable", "forced", "derail_end", "doomed"} <= set(info)


def test_knobs_off_leave_the_default_env_alone():
    off = PlantedFailureEnv(length_tail=None, length_spacing="random", repair_prob=0.0, repair_cost=1, derail=0.0)
    default = PlantedFailureEnv()
    assert default.vocab_size == off.vocab_size == 18 and default.structure.revise_id == -1
    for name in ("prompts", "target_len", "acceptable", "critical"):
        np.testing.assert_array_equal(getattr(off, name), getattr(default, name))
    assert PlantedFailureEnv(repair_prob=0.5).vocab_size == 19  # REVISE exists only when the knob is on


# -- lengths ---------------------------------------------------------------------------------


def test_long_variant_spans_64_to_512():
    env = gym.make("testbed/PlantedFailureLong-v0").unwrapped
    L = env.target_len
    assert L.min() == 64 and L.max() == 512 and env.max_len == 513
    # evenly spaced: the quartiles are those of U[64, 512]
    np.testing.assert_allclose(np.percentile(L, [25, 50, 75]), [176, 288, 400], atol=4)
    assert np.diff(np.sort(L)).max() <= 8


def test_length_tail_sets_p99_over_p50():
    kw = dict(num_problems=3000, prompt_len=3, length_dist="lognormal", target_len=32, max_len=600, min_len=1)
    for tail in (3.0, 8.0):
        L = PlantedFailureEnv(length_tail=tail, **kw).target_len  # i.i.d. draws
        assert np.percentile(L, 99) / np.median(L) == pytest.approx(tail, rel=0.15)
        Q = PlantedFailureEnv(length_tail=tail, length_spacing="quantile", **kw).target_len
        assert np.median(Q) == 32
        assert np.percentile(Q, 99) / np.median(Q) == pytest.approx(tail, rel=0.03)
    assert Z99 == pytest.approx(2.3263, abs=1e-4)


def test_tail_variant_is_heavy_tailed_around_32():
    L = gym.make("testbed/PlantedFailureTail-v0").unwrapped.target_len
    assert np.median(L) == 32 and L.min() >= 4
    assert L.max() >= 8 * np.median(L) and L.max() < 320


def test_length_knobs_are_checked():
    with pytest.raises(ValueError, match="^length_tail"):
        PlantedFailureEnv(length_tail=8.0)  # needs lognormal
    with pytest.raises(ValueError, match="^length_spacing"):
        PlantedFailureEnv(length_spacing="even")
    for kw, name in [(dict(repair_prob=1.5), "repair_prob"), (dict(repair_cost=0), "repair_cost"),
                     (dict(derail=0.5), "derail")]:
        with pytest.raises(ValueError, match=f"^{name}"):
            PlantedFailureVectorEnv(num_envs=2, **kw)


# -- a scripted policy on the vector env -----------------------------------------------------


def scripted_rollout(venv, n: int, seed: int, p_wrong: float = 0.3, revise: bool = False):
    """Rows of random problems under a fixed script: the first acceptable token at the row's logical
    position, a wrong token at a critical position with probability ``p_wrong``, EOS at L, REVISE
    right after a revisable error when ``revise``. Returns the final ``row_info`` and the tokens."""
    venv.reset(seed=seed)
    rows = np.arange(n)
    rng = np.random.default_rng(seed)
    s = venv.structure
    first_ok = np.argmax(s.acceptable, axis=2)  # (P, T): EOS at L, a content token before
    first_wrong = 2 + np.argmax(~s.acceptable[:, :, 2 : 2 + 16], axis=2)
    while True:
        live = rows[venv.row_info(rows)["live"]]
        if live.size == 0:
            break
        info = venv.row_info(live)  # a doomed row's logical position is frozen: it counts on in length
        pos = np.where(info["doomed"], info["length"], venv._pos[live])
        p, pos = venv.problem[live], np.minimum(pos, venv.max_len - 1)
        err = s.critical[p, pos] & (rng.random(live.size) < p_wrong)
        actions = np.where(err, first_wrong[p, pos], first_ok[p, pos])
        if revise:
            actions = np.where(venv._pending[live], s.revise_id, actions)
        venv.step_rows(live, actions)
    return venv.row_info(rows), venv._tokens[:, venv.prompt_len :].copy()


@pytest.mark.parametrize("R", [2.0, 4.0])
def test_derail_multiplies_doomed_length(R):
    venv = PlantedFailureVectorEnv(num_envs=4000, derail=R, max_len=400)
    info, tokens = scripted_rollout(venv, 4000, seed=1)
    ok, doomed = info["success"], info["doomed"]
    assert 0.2 < doomed.mean() < 0.8 and (ok | doomed).all()
    ratio = info["length"][doomed].mean() / info["length"][ok].mean()
    assert ratio == pytest.approx(R, rel=0.06)
    # ground truth in info: where each run-on ends, and that its tokens were forced (loop, then EOS)
    ended = doomed & (info["length"] < venv.max_len)
    np.testing.assert_array_equal(info["derail_end"][ended], info["length"][ended])
    assert (info["derail_end"][ok] == -1).all() and info["forced"][ended].all()
    for i in np.flatnonzero(ended)[:50]:
        run = tokens[i, info["failure_step"][i] + 1 : info["length"][i]]
        assert (run[:-1] == venv.structure.loop_id).all() and run[-1] == EOS_ID


def test_without_derail_the_same_script_gives_equal_lengths():
    info, _ = scripted_rollout(PlantedFailureVectorEnv(num_envs=2000, max_len=400), 2000, seed=1)
    ratio = info["length"][info["doomed"]].mean() / info["length"][info["success"]].mean()
    assert ratio == pytest.approx(1.0, abs=1e-9)  # the script always ends at L + 1


def test_forced_tokens_predict_and_override_the_action():
    venv = PlantedFailureVectorEnv(num_envs=1, derail=3.0, max_len=200)
    venv.reset(seed=0, options={"problem": 0})
    s, rows = venv.structure, np.array([0])
    crit = int(np.flatnonzero(s.critical[0])[0])
    for t in range(crit):
        venv.step_rows(rows, np.array([np.flatnonzero(s.acceptable[0, t])[0]]))
    assert venv.forced_tokens(rows)[0] == -1
    venv.step_rows(rows, np.array([2 + np.flatnonzero(~s.acceptable[0, crit, 2:])[0]]))
    while venv.row_info(rows)["live"][0]:
        f = venv.forced_tokens(rows)[0]
        assert f in (s.loop_id, EOS_ID)
        _, terminated, _, info = venv.step_rows(rows, np.array([3]))  # the action is ignored
        assert info["forced"][0] and terminated[0] == (f == EOS_ID)
    assert venv.forced_tokens(rows)[0] == -1


# -- recovery --------------------------------------------------------------------------------


def _correct(s, problem, t):
    return int(np.flatnonzero(s.acceptable[problem, t])[0])


def _wrong(s, problem, t):
    return 2 + int(np.flatnonzero(~s.acceptable[problem, t, 2 : s.vocab_size - 1])[0])


def play(env, problem, tokens):
    env.reset(seed=0, options={"problem": problem})
    out = [env.step(a) for a in tokens]
    return out[-1], out


def test_repair_undoes_a_fatal_token_at_a_length_cost():
    env = PlantedFailureEnv(num_problems=4, repair_prob=1.0, repair_cost=3)
    s, R = env.structure, env.structure.revise_id
    L, crit = int(s.target_len[0]), int(np.flatnonzero(s.critical[0])[0])
    head = [_correct(s, 0, t) for t in range(crit)]
    tail = [_correct(s, 0, t) for t in range(crit, L)] + [EOS_ID]
    tokens = head + [_wrong(s, 0, crit), R, 7, 7] + tail  # the two 7s are overridden by forced REVISEs
    (obs, reward, terminated, _, info), steps = play(env, 0, tokens)
    assert steps[crit][4]["doomed"] is False and steps[crit][4]["failure_step"] == -1  # pending
    assert [st[4]["forced"] for st in steps[crit + 1 : crit + 4]] == [False, True, True]
    assert terminated and info["success"] and reward == 1.0 and info["repaired"] == 1
    assert obs["length"] - env.prompt_len == L + 1 + 1 + 3  # the wrong token plus repair_cost
    assert list(obs["tokens"][env.prompt_len + crit + 1 : env.prompt_len + crit + 4]) == [R, R, R]


def test_no_revise_seals_and_an_unrepairable_row_is_doomed_at_once():
    env = PlantedFailureEnv(num_problems=4, repair_prob=1.0, repair_cost=2)
    s = env.structure
    crit = int(np.flatnonzero(s.critical[0])[0])
    head = [_correct(s, 0, t) for t in range(crit)] + [_wrong(s, 0, crit)]
    (_, _, _, _, info), _ = play(env, 0, head + [_correct(s, 0, crit)])
    assert info["doomed"] and info["failure_step"] == crit + 1 and info["repaired"] == 0
    (_, _, te, _, info), _ = play(env, 0, [EOS_ID])  # an early EOS ends the row: not revisable
    assert te and info["doomed"] and info["failure_step"] == 0
    venv = PlantedFailureVectorEnv(num_envs=400, num_problems=4, repair_prob=0.5, repair_cost=2)
    venv.reset(seed=3, options={"problem": 0})
    rows = np.arange(400)
    for a in head:
        venv.step_rows(rows, np.full(400, a))
    info = venv.row_info(rows)
    assert 0.4 < info["repairable"].mean() < 0.6
    np.testing.assert_array_equal(info["doomed"], ~info["repairable"])  # unrecoverable = doomed
    venv.step_rows(rows, np.full(400, s.revise_id))
    info = venv.row_info(rows)
    np.testing.assert_array_equal(info["repaired"], info["repairable"].astype(int))
    assert (info["failure_step"][~info["repairable"]] == crit).all()


def test_repairs_can_run_out_of_length():
    env = PlantedFailureEnv(num_problems=4, repair_prob=1.0, repair_cost=1, max_len=14)
    s = env.structure
    crit = int(np.flatnonzero(s.critical[0])[0])
    tokens = [_correct(s, 0, t) for t in range(crit)] + [_wrong(s, 0, crit), s.revise_id] * 20
    env.reset(options={"problem": 0})
    for a in tokens:
        *_, truncated, info = env.step(a)
        if truncated:
            break
    assert truncated and info["doomed"] and info["failure_step"] == env.max_len - 1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_vector_env_matches_single_env_with_regimes(data):
    kw = data.draw(st.sampled_from([dict(repair_prob=1.0, repair_cost=2), dict(repair_prob=0.5, repair_cost=3),
                                    dict(derail=2.0, max_len=60), dict(repair_prob=0.7, derail=3.0, max_len=60),
                                    dict(overshoot="recoverable", max_len=30),
                                    dict(overshoot="recoverable", repair_prob=0.5, derail=2.0, max_len=40),
                                    dict(overshoot="recoverable", runon_cost=0.5, recoverable_cost=0.05, max_len=30),
                                    dict(overshoot="recoverable", runon_cost=0.3, repair_prob=0.5, max_len=40),
                                    dict(overshoot="recoverable", runon_cost=0.3, runon_price="log", max_len=40)]))
    single = PlantedFailureEnv(num_problems=8, **kw)
    s = single.structure
    problem = data.draw(st.integers(0, 7))
    venv = PlantedFailureVectorEnv(num_envs=1, num_problems=8, **kw)
    venv.reset(seed=data.draw(st.integers(0, 100)), options={"problem": problem})
    single.reset(options={"problem": problem})
    single._row.repairable = bool(venv._repairable[0])  # the hidden draw: copy it, then compare
    menu = list(range(s.vocab_size))
    while venv.row_info(np.array([0]))["live"][0]:
        pos = min(single._row.pos, s.max_len - 1)
        good = np.flatnonzero(s.acceptable[problem, pos]).tolist() or menu
        a = data.draw(st.sampled_from(good)) if data.draw(st.integers(0, 3)) else data.draw(st.sampled_from(menu))
        r, te, tr, info = venv.step_rows(np.array([0]), np.array([a]))
        obs, r1, te1, tr1, inf1 = single.step(a)
        if inf1["derail_end"] != info["derail_end"][0]:  # the run-on length is a draw: copy it too
            single._row.derail_end = single._row.forced_until = int(info["derail_end"][0])
        assert (r[0], te[0], tr[0]) == (r1, te1, tr1)
        for key in ("failure_step", "doomed", "success", "recoverable_errors", "repaired", "forced"):
            assert info[key][0] == inf1[key], key
        assert venv._tokens[0, venv.prompt_len + single._row.t - 1] == obs["tokens"][venv.prompt_len + single._row.t - 1]


# -- P(success | prefix) that survives recovery ----------------------------------------------


def story_policy(s, problem: int, story: tuple[int, ...]):
    """A tabular policy that depends on the whole prefix: along ``story`` it puts 0.6 on the story's
    next token (so the prefixes tested are common enough to sample), elsewhere 0.6 on the
    acceptable tokens of its length; the rest is a Dirichlet draw seeded by the prefix."""

    @lru_cache(maxsize=None)
    def policy(p: int, prefix: tuple[int, ...]) -> np.ndarray:
        noise = np.random.default_rng([5, p, len(prefix), *prefix]).dirichlet(np.ones(s.vocab_size))
        target = np.zeros(s.vocab_size)
        if p == problem and prefix == story[: len(prefix)] and len(prefix) < len(story):
            target[story[len(prefix)]] = 1.0
        else:
            target = s.acceptable[p, min(len(prefix), s.max_len - 1)].astype(float)
            target = target / target.sum() if target.sum() else np.full(s.vocab_size, 1 / s.vocab_size)
        return 0.4 * noise + 0.6 * target

    return policy


def test_exact_p_success_matches_monte_carlo_through_a_repair():
    s = gym.make(RECOVER_TINY).unwrapped.structure
    problem = 1
    crit = int(np.flatnonzero(s.critical[problem])[0])
    R = s.revise_id
    head = tuple(_correct(s, problem, t) for t in range(crit))
    rest = tuple(_correct(s, problem, t) for t in range(crit, int(s.target_len[problem])))
    story = head + (_wrong(s, problem, crit), R, R) + rest + (EOS_ID,)
    policy = story_policy(s, problem, story)
    values = solve(s, problem, policy)
    assert set(values.tables) == {False, True}
    prior_rejected = 0
    # from before the error, through the error, REVISE and the forced REVISE, to the repaired steps
    for k in range(len(head), len(story)):
        prefix = story[:k]
        exact = values(prefix)
        mc = monte_carlo_success(RECOVER_TINY, problem, prefix, policy, trials=2000, seed=k, confidence=0.999)
        assert mc.low <= exact <= mc.high, (prefix, exact, mc)
        # The prior mix of the branches (no posterior over the hidden draw) ignores the evidence of
        # the forced REVISE: the sampled estimate must tell it apart from the exact value.
        prior = sum(w * _branch(values, s, problem, prefix, c) for w, c in _branches(s))
        prior_rejected += not mc.low <= prior <= mc.high
    assert prior_rejected >= 1


def _branch(values, s, problem, prefix, repairable):
    row, ended, _ = replay(s, problem, prefix, repairable=repairable)
    return values._branch_value(row, ended, tuple(prefix), values.tables[repairable])


def test_repair_dp_satisfies_the_bellman_equation_per_branch():
    s = gym.make(RECOVER_TINY).unwrapped.structure
    policy = story_policy(s, 0, ())
    values = solve(s, 0, policy)
    for c, table in values.tables.items():
        for prefix, v in list(table.items())[:300]:
            row, _, _ = replay(s, 0, prefix, repairable=c)
            forced = s.forced_token(row)
            probs = np.eye(s.vocab_size)[forced] if forced >= 0 else policy(0, prefix)
            kids = sum(probs[a] * _branch(values, s, 0, prefix + (a,), c) for a in range(s.vocab_size) if probs[a])
            assert v == pytest.approx(kids, abs=1e-12)
    with pytest.raises(ValueError, match="repair_prob"):
        solve_positional(s, 0, np.full((s.max_len, s.vocab_size), 1 / s.vocab_size))


# -- overshoot: an answer complete at L may run on -------------------------------------------


def _walk(env, problem, actions):
    env.reset(options={"problem": problem})
    out = None
    for a in actions:
        out = env.step(a)
    return out


def test_recoverable_overshoot_succeeds_after_L_at_a_cost():
    kw = dict(num_problems=4, critical_frac=0.0, recoverable_cost=0.1, max_len=24, overshoot="recoverable")
    env = PlantedFailureEnv(**kw)
    s = env.structure
    L = int(s.target_len[0])
    good = [_correct(s, 0, t) for t in range(L)]
    for extra in (0, 1, 3):
        _, r, term, trunc, info = _walk(env, 0, good + [FIRST] * extra + [EOS_ID])
        assert term and not trunc and info["success"] and info["failure_step"] == -1
        assert r == pytest.approx(1 - 0.1 * extra) and info["recoverable_errors"] == extra
    _, r, term, _, info = _walk(env, 0, good[:-1] + [EOS_ID])  # stopping before L is still fatal
    assert term and r == 0 and info["failure_step"] == L - 1
    _, r, term, trunc, info = _walk(env, 0, good + [FIRST] * (s.max_len - L))  # never stops: the cap seals it
    assert trunc and not term and r == 0 and info["failure_step"] == s.max_len - 1
    # the default is unchanged: anything but EOS at L dooms the row there
    fatal = PlantedFailureEnv(**{**kw, "overshoot": "fatal"})
    _, r, _, _, info = _walk(fatal, 0, good + [FIRST, EOS_ID])
    assert r == 0 and info["failure_step"] == L
    for name in ("prompts", "target_len", "critical"):
        np.testing.assert_array_equal(getattr(fatal, name), getattr(env, name))
    with pytest.raises(ValueError, match="overshoot"):
        PlantedFailureEnv(overshoot="late")


def test_runon_cost_prices_the_run_on_relative_to_L():
    kw = dict(num_problems=8, length_dist="uniform", target_len=4, max_len_target=16, min_len=4, critical_frac=0.0,
              recoverable_cost=0.02, max_len=40, overshoot="recoverable")
    env, flat = PlantedFailureEnv(**kw, runon_cost=0.5), PlantedFailureEnv(**kw)
    s = env.structure
    np.testing.assert_array_equal(s.target_len, flat.target_len)  # the problems are the same
    short, long_ = int(np.argmin(s.target_len)), int(np.argmax(s.target_len))
    for problem in (short, long_):
        L = int(s.target_len[problem])
        good = [_correct(s, problem, t) for t in range(L)]
        wrong = next(a for a in range(FIRST, s.vocab_size) if not s.acceptable[problem, 0, a])
        for extra in (0, 2, L):  # a run-on of the fraction extra / L costs 0.5 * extra / L, whatever L is
            _, r, term, _, info = _walk(env, problem, [wrong] + good[1:] + [FIRST] * extra + [EOS_ID])
            assert term and info["success"] and info["recoverable_errors"] == 1 + extra
            assert r == pytest.approx(1 - 0.02 - 0.5 * extra / L)
            _, r_flat, *_ = _walk(flat, problem, [wrong] + good[1:] + [FIRST] * extra + [EOS_ID])
            assert r_flat == pytest.approx(1 - 0.02 * (1 + extra))  # the default: every error alike
    # the exact solver prices it the same way: a policy that runs on exactly 2 tokens, then stops
    tiny = PlantedFailureEnv(num_problems=2, num_content_tokens=2, num_acceptable=1, critical_frac=0.0, max_len=7,
                             target_len=3, overshoot="recoverable", runon_cost=0.6).structure

    def policy(problem, prefix):
        p = np.zeros(tiny.vocab_size)
        p[_correct(tiny, problem, len(prefix)) if len(prefix) < 3 else (FIRST if len(prefix) < 5 else EOS_ID)] = 1
        return p
    assert solve(tiny, 0, policy, target="reward")(()) == pytest.approx(1 - 0.6 * 2 / 3)
    with pytest.raises(ValueError, match="runon_cost"):
        PlantedFailureEnv(runon_cost=0.5)  # needs overshoot="recoverable"
    with pytest.raises(ValueError, match="runon_cost"):
        PlantedFailureEnv(overshoot="recoverable", runon_cost=-1.0)
    with pytest.raises(ValueError, match="pass problem and pos"):
        s.success_reward(1)


def test_log_runon_price_matches_near_L_and_never_flattens_at_zero():
    kw = dict(num_problems=8, length_dist="uniform", target_len=4, max_len_target=16, min_len=4, critical_frac=0.0,
              recoverable_cost=0.0, max_len=80, overshoot="recoverable", runon_cost=0.3)
    env, lin = PlantedFailureEnv(**kw, runon_price="log"), PlantedFailureEnv(**kw)
    s = env.structure
    for name in ("target_len", "acceptable", "critical", "prompts"):  # only the reward changes
        np.testing.assert_array_equal(getattr(env, name), getattr(lin, name))
    problem = int(np.argmin(s.target_len))
    L = int(s.target_len[problem])
    good = [_correct(s, problem, t) for t in range(L)]
    rewards = []
    for extra in (0, 1, L, 4 * L, 80 - L - 1):  # up to the longest run-on that fits (EOS at the last index)
        _, r, term, _, info = _walk(env, problem, good + [FIRST] * extra + [EOS_ID])
        assert term and info["success"]
        assert r == pytest.approx(1 - 0.3 * np.log1p(extra / L))
        _, r_lin, *_ = _walk(lin, problem, good + [FIRST] * extra + [EOS_ID])
        assert r_lin == pytest.approx(max(0.0, 1 - 0.3 * extra / L))
        rewards.append(r)
    assert np.all(np.diff(rewards) < 0) and rewards[-1] > 0  # every further token costs; never a flat 0
    assert r_lin == 0.0  # where the linear price has long since flattened
    tiny = PlantedFailureEnv(num_problems=2, num_content_tokens=2, num_acceptable=1, critical_frac=0.0, max_len=7,
                             target_len=3, overshoot="recoverable", runon_cost=0.6, runon_price="log").structure

    def policy(problem, prefix):  # runs on exactly 2 tokens, then stops
        p = np.zeros(tiny.vocab_size)
        p[_correct(tiny, problem, len(prefix)) if len(prefix) < 3 else (FIRST if len(prefix) < 5 else EOS_ID)] = 1
        return p
    assert solve(tiny, 0, policy, target="reward")(()) == pytest.approx(1 - 0.6 * np.log1p(2 / 3))
    for bad, match in ((dict(runon_price="square"), "runon_price.*one of"),
                       (dict(overshoot="recoverable", runon_price="log"), "runon_price.*None")):
        with pytest.raises(ValueError, match=match):
            PlantedFailureEnv(**bad)


def test_linear_log_price_is_linear_up_to_one_L_then_logarithmic():
    kw = dict(num_problems=8, length_dist="uniform", target_len=4, max_len_target=16, min_len=4, critical_frac=0.0,
              recoverable_cost=0.0, max_len=80, overshoot="recoverable", runon_cost=0.2)
    env, lin = PlantedFailureEnv(**kw, runon_price="linear-log"), PlantedFailureEnv(**kw)
    s = env.structure
    problem = int(np.argmin(s.target_len))
    L = int(s.target_len[problem])
    good = [_correct(s, problem, t) for t in range(L)]
    rewards = []
    for extra in range(0, 80 - L):  # every run-on that fits
        _, r, term, _, info = _walk(env, problem, good + [FIRST] * extra + [EOS_ID])
        assert term and info["success"]
        f = extra / L
        assert r == pytest.approx(1 - 0.2 * (f if f <= 1 else 1 + np.log(f)))
        if f <= 1:  # the linear price, unchanged, where answers end near L
            assert r == pytest.approx(_walk(lin, problem, good + [FIRST] * extra + [EOS_ID])[1])
        rewards.append(r)
    assert np.all(np.diff(rewards) < 0) and rewards[-1] > 0  # every further token costs; never a flat 0


def test_recoverable_overshoot_exact_success_matches_the_closed_form():
    # No critical positions and a uniform policy: success = no EOS in the first L tokens, then an
    # EOS somewhere in [L, max_len): (1 - 1/V)^L * (1 - (1 - 1/V)^(max_len - L)).
    s = PlantedFailureEnv(num_problems=2, num_content_tokens=2, num_acceptable=1, critical_frac=0.0, max_len=7, target_len=3,
                          overshoot="recoverable").structure
    V = s.vocab_size
    values = solve(s, 0, lambda problem, prefix: np.full(V, 1 / V))
    q = 1 - 1 / V
    assert values(()) == pytest.approx(q ** 3 * (1 - q ** (7 - 3)), abs=1e-12)
    with pytest.raises(ValueError, match="overshoot"):
        solve_positional(s, 0, np.full((s.max_len, V), 1 / V))


# -- failure position: where the critical positions sit -------------------------------------


@pytest.mark.parametrize("zone", [(0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)])
def test_critical_zone_places_every_failure_point_in_its_band(zone):
    kw = dict(num_problems=32, length_dist="uniform", target_len=12, min_len=8, max_len_target=30, max_len=32,
              critical_frac=0.1)
    env = PlantedFailureEnv(**kw, critical_zone=list(zone))  # a YAML list works as the pair
    free = PlantedFailureEnv(**kw)
    np.testing.assert_array_equal(env.target_len, free.target_len)  # the other draws are unchanged
    for p in range(env.num_problems):
        L = int(env.target_len[p])
        idx = np.flatnonzero(env.critical[p])
        assert len(idx) == len(np.flatnonzero(free.critical[p])) == round(0.1 * L)
        assert ((idx >= np.floor(zone[0] * L)) & (idx < np.ceil(zone[1] * L))).all(), (p, L, idx)
    for bad in ((0.5, 0.5), (-0.1, 0.5), (0.2,), "early"):
        with pytest.raises(ValueError, match="critical_zone"):
            PlantedFailureEnv(critical_zone=bad)


# -- prompts that hint at the length --------------------------------------------------------


def test_length_prompt_is_a_thermometer_code_of_log_length():
    kw = dict(num_problems=8, length_dist="lognormal", length_spacing="quantile", target_len=16, length_tail=16.0,
              min_len=4, max_len=161, prompt_len=8)
    env, plain = PlantedFailureEnv(**kw, prompt_code="length"), PlantedFailureEnv(**kw)
    for name in ("target_len", "acceptable", "critical"):  # only the prompts change
        np.testing.assert_array_equal(getattr(env, name), getattr(plain, name))
    ones = env.prompts - FIRST
    assert set(np.unique(ones)) <= {0, 1}
    order = np.argsort(env.target_len)
    counts = ones.sum(1)[order]
    assert counts[0] == 0 and counts[-1] == 8 and (np.diff(counts) > 0).all()  # monotone in L, distinct
    # the count tracks log L: the codes of lengths spaced evenly in log differ evenly
    u = np.log(env.target_len[order] / env.target_len[order][0]) / np.log(env.target_len.max() / env.target_len.min())
    assert np.abs(counts - 8 * u).max() <= 0.5 + 1e-9
    assert len({tuple(p) for p in env.prompts}) == 8  # the prompt still names the problem
    venv = PlantedFailureVectorEnv(num_envs=3, **kw, prompt_code="length")
    np.testing.assert_array_equal(venv.prompts, env.prompts)


def test_length_prompt_errors_name_the_field():
    kw = dict(num_problems=8, length_dist="lognormal", length_spacing="quantile", target_len=16, length_tail=16.0,
              min_len=4, max_len=161)
    with pytest.raises(ValueError, match="prompt_len.*distinct code.*longer prompt"):
        PlantedFailureEnv(**kw, prompt_len=4, prompt_code="length")  # 5 codes for 8 lengths
    with pytest.raises(ValueError, match="prompt_code"):
        PlantedFailureEnv(prompt_code="digits")
    with pytest.raises(ValueError, match="prompt_len.*distinct code"):  # equal lengths cannot get distinct codes
        PlantedFailureEnv(num_problems=4, prompt_code="length")
