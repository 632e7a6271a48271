"""Exact success probabilities on planted-failure problems, and the Bayes-optimal early stop.

Given one problem of a :class:`~envs.planted_failure.Structure` and a policy, these compute
``P(success | prefix)`` for every response prefix: the quantity an ideal failure detector would
threshold, against which ESPO's learned stops are scored.

- :func:`solve` takes any tabular policy ``policy(problem, prefix) -> probs (vocab_size,)`` and
  runs a DP over every prefix that is not yet doomed (doomed prefixes are worth 0 and need no
  table). The number of such prefixes grows like ``vocab_size ** L``: tiny instances only
  (``testbed/PlantedFailureTiny-v0``).
- :func:`solve_positional` takes a policy that depends on the prefix only through its length,
  ``probs (max_len, vocab_size)``. Then success depends only on (position, doomed so far), and the
  DP is one backward pass over positions: any instance size.

Both return a :class:`PrefixValues`, callable on a prefix, with :meth:`PrefixValues.curve` for a
whole response. :func:`testbed.scoring.bayes_optimal_stop` turns curves into stop steps.

With recovery (``repair_prob > 0``) whether a row is repairable is a hidden draw, so the value of a
prefix is the posterior mix of the two branches' values, each weighted by its prior and by the
prefix's likelihood in it (forced REVISEs, a derailed run-on and the policy's own tokens differ
between branches). :func:`solve` computes that exactly; :func:`monte_carlo_success` estimates
``P(success | prefix)`` on any instance, with a binomial interval, by rejection sampling rollouts
of the env itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np

from envs.planted_failure import EOS_ID, FATAL, RowState, Structure

Policy = Callable[[int, tuple[int, ...]], np.ndarray]
"""``policy(problem, prefix) -> (vocab_size,)`` action probabilities after response ``prefix``."""


def as_structure(source: object) -> Structure:
    """The :class:`Structure` of a structure, an env, a vector env or a wrapped env."""
    if isinstance(source, Structure):
        return source
    structure = getattr(getattr(source, "unwrapped", source), "structure", None)
    if not isinstance(structure, Structure):
        raise TypeError(f"source: expected a Structure or a planted-failure env, got {type(source).__name__}")
    return structure


def _check_problem(s: Structure, problem: int) -> int:
    if not 0 <= int(problem) < s.num_problems:
        raise ValueError(f"problem: must be in [0, {s.num_problems}), got {problem}")
    return int(problem)


def _check_probs(probs: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != shape:
        raise ValueError(f"{where}: expected probabilities of shape {shape}, got {probs.shape}")
    if (probs < 0).any() or not np.allclose(probs.sum(-1), 1.0, atol=1e-6):
        raise ValueError(f"{where}: probabilities must be >= 0 and sum to 1 over actions")
    return probs


class _NoDraw:
    """Stands in for the rng at a dooming step: the run-on it starts is never stepped through (the
    replay scores what follows a doom in closed form, the DP stops at dooms)."""

    @staticmethod
    def geometric(q: float) -> int:
        return 1


def _branches(s: Structure) -> list[tuple[float, bool]]:
    """(prior, repairable) of each value of the hidden draw that can occur."""
    p = s.repair_prob
    if p <= 0 or p >= 1:
        return [(1.0, p >= 1)]
    return [(1.0 - p, False), (p, True)]


def _check_prefix(s: Structure, prefix: Sequence[int]) -> None:
    if len(prefix) > s.max_len:
        raise ValueError(f"prefix: longer than max_len = {s.max_len}")
    for t, a in enumerate(prefix):
        if not 0 <= a < s.vocab_size:
            raise ValueError(f"prefix: token {a} at index {t} is outside [0, {s.vocab_size})")
        if t > 0 and prefix[t - 1] == EOS_ID:
            raise ValueError(f"prefix: token at index {t} follows EOS")


def replay(
    structure: Structure,
    problem: int,
    prefix: Sequence[int],
    *,
    repairable: bool = False,
    policy: Policy | None = None,
) -> tuple[RowState, bool, float]:
    """Replay ``prefix`` under the env's rules in the branch where the hidden draw is ``repairable``.

    Returns ``(row, ended, likelihood)``: the row's state (frozen at its doom: what follows a doom
    cannot change the outcome), whether the last token was EOS, and the probability that the env
    and ``policy`` produce ``prefix`` in this branch (0 where a token contradicts one the env
    forces; without ``policy`` the policy's factors are left out, i.e. taken as 1).
    Raises ``ValueError`` for a prefix no branch could produce (bad id, token after EOS, too long).
    """
    s = structure
    prefix = tuple(int(a) for a in prefix)
    _check_prefix(s, prefix)
    row, lik = RowState(repairable=repairable), 1.0
    for k, a in enumerate(prefix):
        if row.failure_step >= 0:
            return row, prefix[-1] == EOS_ID, lik * _after_doom(s, problem, prefix, row, policy)
        f = s.forced_token(row)
        if f >= 0 and a != f:
            return row, prefix[-1] == EOS_ID, 0.0
        if f < 0 and policy is not None:
            lik *= float(policy(problem, prefix[:k])[a])
        s.advance_row(row, problem, a, _NoDraw)
    return row, len(prefix) > 0 and prefix[-1] == EOS_ID, lik


def _after_doom(s: Structure, problem: int, prefix: tuple[int, ...], row: RowState, policy: Policy | None) -> float:
    """Likelihood of the tokens after the dooming one: a derailed run-on is loop tokens then EOS at
    ``t + 1 + G`` (G geometric, :meth:`Structure.derail_q`); otherwise they are the policy's."""
    d = row.t - 1  # the dooming token's index
    rest = prefix[d + 1 :]
    if s.derail > 0 and prefix[d] != EOS_ID:
        q = float(s.derail_q(problem, d))
        c = len(rest)
        if any(a != s.loop_id for a in rest[:-1]) or (c and rest[-1] not in (s.loop_id, EOS_ID)):
            return 0.0
        if c and rest[-1] == EOS_ID:
            return q * (1.0 - q) ** (c - 1)  # G = c - 1
        return (1.0 - q) ** c  # G >= c: still running (or truncated at max_len)
    if policy is None:
        return 1.0
    return float(np.prod([policy(problem, prefix[:k])[prefix[k]] for k in range(d + 1, len(prefix))]))


def walk(structure: Structure, problem: int, prefix: Sequence[int]) -> tuple[bool, bool, int]:
    """Replay ``prefix`` (response token ids) under the env's rules (with ``0 < repair_prob < 1``: the
    branch where the row is not repairable).

    Returns ``(doomed, ended, recoverable_errors)``; ``ended`` means the last token was EOS.
    Raises ``ValueError`` for a prefix the env could not produce (bad id, token after EOS, too long).
    """
    row, ended, _ = replay(structure, problem, prefix, repairable=structure.repair_prob >= 1)
    return row.failure_step >= 0, ended, row.errors


class PrefixValues:
    """``P(success | prefix)`` (or expected reward) for one problem under one policy.

    Doomed prefixes are worth 0, a prefix ending in EOS is worth its outcome (1, or the reward),
    and every other prefix is read from ``table`` (from :func:`solve`: every not-doomed, not-ended
    prefix -> value) or from ``q`` (from :func:`solve_positional`: ``(max_len + 1,)`` by length).
    With a hidden repairable draw (``0 < repair_prob < 1``), :func:`solve` gives one table per
    branch (``tables``: repairable -> table) and the value is their posterior mix given the prefix
    (``policy`` gives the likelihoods). Call it with a sequence of response token ids.
    """

    def __init__(
        self,
        structure: Structure,
        problem: int,
        target: str,
        *,
        table: dict[tuple[int, ...], float] | None = None,
        q: np.ndarray | None = None,
        tables: dict[bool, dict[tuple[int, ...], float]] | None = None,
        policy: Policy | None = None,
    ):
        if sum(x is not None for x in (table, q, tables)) != 1:
            raise ValueError("exactly one of table, q and tables must be given")
        if tables is not None and policy is None:
            raise ValueError("tables: the posterior over branches needs the policy")
        self.structure, self.problem, self.target = structure, problem, target
        self.table, self.q, self.tables, self.policy = table, q, tables, policy

    def _branch_value(self, row: RowState, ended: bool, prefix: tuple[int, ...], table) -> float:
        if row.failure_step >= 0:
            return 0.0
        if ended:
            return 1.0 if self.target == "success" else float(self.structure.success_reward(row.errors, self.problem, row.pos))
        return table[prefix] if table is not None else float(self.q[len(prefix)])

    def __call__(self, prefix: Sequence[int]) -> float:
        prefix = tuple(int(a) for a in prefix)
        s = self.structure
        if self.tables is None:
            row, ended, lik = replay(s, self.problem, prefix, repairable=s.repair_prob >= 1)
            if lik == 0.0:
                raise ValueError(f"prefix: {prefix} contradicts a token the env forces")
            return self._branch_value(row, ended, prefix, self.table)
        num = den = 0.0
        for prior, repairable in _branches(s):
            row, ended, lik = replay(s, self.problem, prefix, repairable=repairable, policy=self.policy)
            if lik > 0.0:
                num += prior * lik * self._branch_value(row, ended, prefix, self.tables[repairable])
                den += prior * lik
        if den == 0.0:
            raise ValueError(f"prefix: {prefix} has probability 0 under the policy and the env")
        return num / den

    def curve(self, tokens: Sequence[int]) -> np.ndarray:
        """``(n + 1,)`` values of every prefix ``tokens[:k]``, ``k = 0..n``, of a response of n tokens."""
        return np.array([self(tokens[:k]) for k in range(len(tokens) + 1)])


def solve(
    source: object,
    problem: int,
    policy: Policy,
    *,
    target: Literal["success", "reward"] = "success",
    max_prefixes: int = 1_000_000,
) -> PrefixValues:
    """Exact values under a general tabular policy, by DP over the not-yet-doomed prefixes.

    ``V(prefix) = sum_a policy(problem, prefix)[a] * V(prefix + (a,))``, with doomed children worth
    0 and EOS children worth their outcome; where the env forces the next token that token is the
    only child. ``target="reward"`` gives expected reward instead of success probability (they
    differ by the recoverable-error cost). The policy is queried on every not-doomed prefix where
    it chooses, also those it gives probability 0. With ``0 < repair_prob < 1`` one DP per value of
    the hidden draw; :class:`PrefixValues` mixes them by their posterior given the prefix.

    Raises ``ValueError`` once more than ``max_prefixes`` prefixes are needed.

    Example (on the tiny instance, uniform policy):

    >>> import gymnasium as gym, numpy as np, envs
    >>> env = gym.make("testbed/PlantedFailureTiny-v0")
    >>> values = solve(env, 0, lambda problem, prefix: np.full(5, 0.2))
    >>> positional = solve_positional(env, 0, np.full((6, 5), 0.2))
    >>> bool(np.isclose(values(()), positional(())))
    True
    """
    if target not in ("success", "reward"):
        raise ValueError(f"target: must be 'success' or 'reward', got {target!r}")
    s = as_structure(source)
    problem = _check_problem(s, problem)
    tables: dict[bool, dict[tuple[int, ...], float]] = {}
    for _, repairable in _branches(s):
        table = tables[repairable] = {}

        def value(prefix: tuple[int, ...], row: RowState) -> float:
            if sum(map(len, tables.values())) >= max_prefixes:
                raise ValueError(
                    f"max_prefixes: this instance needs more than {max_prefixes} prefixes; use "
                    "solve_positional or monte_carlo_success"
                )
            forced = s.forced_token(row)
            if forced >= 0:
                choices: Any = [(forced, 1.0)]
            else:
                probs = _check_probs(policy(problem, prefix), (s.vocab_size,), f"policy({problem}, {prefix})")
                choices = zip(range(s.vocab_size), probs)
            total = 0.0
            for a, pr in choices:
                child = row.copy()
                _, _, _, terminated, _ = s.advance_row(child, problem, a, _NoDraw)
                if child.failure_step >= 0:  # doomed, or truncated (which seals)
                    continue
                if terminated:
                    v = 1.0 if target == "success" else float(s.success_reward(child.errors, problem, child.pos))
                else:
                    v = value(prefix + (a,), child)
                total += pr * v
            table[prefix] = total = float(total)
            return total

        value((), RowState(repairable=repairable))
    if len(tables) == 1:
        return PrefixValues(s, problem, target, table=next(iter(tables.values())))
    return PrefixValues(s, problem, target, tables=tables, policy=policy)


def solve_positional(source: object, problem: int, probs: np.ndarray) -> PrefixValues:
    """Exact ``P(success | prefix)`` under a policy that depends only on the position.

    Args:
        source: a :class:`Structure` or a planted-failure env.
        problem: problem index.
        probs: ``(max_len, vocab_size)``; row t is the action distribution at response index t.

    With ``q[t]`` the success probability after t tokens none fatal: ``q[L] = probs[L, EOS]`` and
    ``q[t] = q[t + 1] * P(token t is not fatal)`` for ``t < L``. The result's ``q`` attribute is
    ``(max_len + 1,)``, zero beyond L.
    """
    s = as_structure(source)
    if s.repair_prob > 0:  # a repair decouples the table index from the length
        raise ValueError("solve_positional: needs repair_prob == 0; use solve or monte_carlo_success")
    if s.overshoot != "fatal":  # an EOS after L succeeds: success is not a product over t < L
        raise ValueError("solve_positional: needs overshoot='fatal'; use solve or monte_carlo_success")
    problem = _check_problem(s, problem)
    probs = _check_probs(probs, (s.max_len, s.vocab_size), "probs")
    L = int(s.target_len[problem])
    q = np.zeros(s.max_len + 1)
    q[L] = probs[L, EOS_ID]
    for t in range(L - 1, -1, -1):
        safe = [s.classify(problem, t, a) != FATAL for a in range(s.vocab_size)]
        q[t] = q[t + 1] * probs[t, safe].sum()
    return PrefixValues(s, problem, "success", q=q)


def success_curves(
    values: Sequence[PrefixValues] | dict[int, PrefixValues],
    problems: np.ndarray,
    tokens: np.ndarray,
    lengths: np.ndarray,
) -> np.ndarray:
    """Curves for a batch of responses, NaN-padded.

    Args:
        values: per-problem solutions, indexable by problem index.
        problems: ``(B,)`` problem of each row.
        tokens: ``(B, T)`` right-padded response token ids.
        lengths: ``(B,)`` number of valid tokens in each row.

    Returns:
        ``(B, T + 1)``: ``[b, k] = P(success | tokens[b, :k])`` for ``k <= lengths[b]``, NaN after.
    """
    tokens = np.asarray(tokens)
    out = np.full((tokens.shape[0], tokens.shape[1] + 1), np.nan)
    for b, (p, n) in enumerate(zip(np.asarray(problems), np.asarray(lengths))):
        out[b, : n + 1] = values[int(p)].curve(tokens[b, :n].tolist())
    return out


@dataclass(frozen=True)
class MonteCarloEstimate:
    """``P(success | prefix)`` estimated from ``trials`` rollouts that produced the prefix."""

    successes: int
    trials: int
    low: float
    high: float
    """Exact (Clopper-Pearson) binomial interval at ``confidence``."""
    confidence: float
    attempts: int
    """Rollouts started; the others left the prefix and were rejected."""

    @property
    def estimate(self) -> float:
        return self.successes / self.trials


def monte_carlo_success(
    env_id: str,
    problem: int,
    prefix: Sequence[int],
    policy: Policy,
    *,
    trials: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    batch: int = 4096,
    max_attempts: int = 2_000_000,
    env_kwargs: dict[str, Any] | None = None,
) -> MonteCarloEstimate:
    """Estimate ``P(success | prefix)`` under ``policy`` where :func:`solve` cannot (large
    instances, derail with recovery), with a binomial interval.

    Rejection sampling on the native vector env: rows of ``problem`` start fresh (hidden draws from
    the prior), sample from ``policy`` (tokens the env forces replace the sampled ones), and are
    kept only if their first ``len(prefix)`` tokens are ``prefix``; each kept row is then an
    independent draw from the episodes that start with ``prefix``, so its success count is binomial
    and ``scipy.stats.binomtest(...).proportion_ci`` applies. The cost grows as 1 / P(prefix).
    """
    from scipy.stats import binomtest  # test-time dependency: kept out of `import envs`

    import gymnasium as gym

    venv = gym.make_vec(env_id, num_envs=batch, vectorization_mode="vector_entry_point", **(env_kwargs or {}))
    venv = venv.unwrapped
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    prefix = tuple(int(a) for a in prefix)
    _check_prefix(venv.structure, prefix)
    _check_problem(venv.structure, problem)
    successes = kept = attempts = 0
    while kept < trials:
        if attempts >= max_attempts:
            raise ValueError(f"max_attempts: only {kept} of {attempts} rollouts produced prefix {prefix}")
        rows = np.arange(batch)
        venv.reset_rows(rows, np.full(batch, problem))
        attempts += batch
        responses: list[tuple[int, ...]] = [()] * batch
        live = np.ones(batch, dtype=bool)
        ok = np.ones(batch, dtype=bool)  # still on the prefix
        success = np.zeros(batch, dtype=bool)
        while live.any():
            r = np.flatnonzero(live)
            dists: dict[tuple[int, ...], np.ndarray] = {}
            probs = np.stack([dists.setdefault(responses[i], np.asarray(policy(problem, responses[i]))) for i in r])
            u = rng.random((r.size, 1))
            actions = np.minimum((probs.cumsum(-1) < u).sum(-1), probs.shape[1] - 1)
            forced = venv.forced_tokens(r)
            actions = np.where(forced >= 0, forced, actions)
            k = np.array([len(responses[i]) for i in r])
            on = k < len(prefix)
            want = np.array(prefix + (0,))[np.minimum(k, len(prefix))]
            off = on & (actions != want)  # left the prefix: reject now, stop spending steps on it
            ok[r[off]] = False
            live[r[off]] = False
            keep = ~off
            r, actions = r[keep], actions[keep]
            if r.size == 0:
                continue
            _, terminated, truncated, info = venv.step_rows(r, actions)
            for i, a in zip(r, actions):
                responses[i] = responses[i] + (int(a),)
            done = terminated | truncated
            success[r[done]] = info["success"][done]
            live[r[done]] = False
            # a row that ended inside the prefix did not produce it
            short = done & (np.array([len(responses[i]) for i in r]) < len(prefix))
            ok[r[short]] = False
        take = np.flatnonzero(ok)[: trials - kept]
        kept += take.size
        successes += int(success[take].sum())
    ci = binomtest(successes, kept).proportion_ci(confidence_level=confidence, method="exact")
    return MonteCarloEstimate(successes, kept, float(ci.low), float(ci.high), confidence, attempts)
