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
whole response. :func:`bayes_optimal_stop` turns curves into stop steps.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

from envs.planted_failure import EOS_ID, FATAL, RECOVERABLE, Structure

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


def walk(structure: Structure, problem: int, prefix: Sequence[int]) -> tuple[bool, bool, int]:
    """Replay ``prefix`` (response token ids) under the env's rules.

    Returns ``(doomed, ended, recoverable_errors)``; ``ended`` means the last token was EOS.
    Raises ``ValueError`` for a prefix the env could not produce (bad id, token after EOS, too long).
    """
    if len(prefix) > structure.max_len:
        raise ValueError(f"prefix: longer than max_len = {structure.max_len}")
    doomed, errors = False, 0
    for t, a in enumerate(prefix):
        if not 0 <= a < structure.vocab_size:
            raise ValueError(f"prefix: token {a} at index {t} is outside [0, {structure.vocab_size})")
        if t > 0 and prefix[t - 1] == EOS_ID:
            raise ValueError(f"prefix: token at index {t} follows EOS")
        if not doomed:
            verdict = structure.classify(problem, t, int(a))
            doomed = verdict == FATAL
            errors += verdict == RECOVERABLE
    return doomed, len(prefix) > 0 and prefix[-1] == EOS_ID, errors


class PrefixValues:
    """``P(success | prefix)`` (or expected reward) for one problem under one policy.

    Doomed prefixes are worth 0, a prefix ending in EOS is worth its outcome (1, or the reward),
    and every other prefix is read from ``table`` (from :func:`solve`: every not-doomed, not-ended
    prefix -> value) or from ``q`` (from :func:`solve_positional`: ``(max_len + 1,)`` by length).
    Call it with a sequence of response token ids.
    """

    def __init__(
        self,
        structure: Structure,
        problem: int,
        target: str,
        *,
        table: dict[tuple[int, ...], float] | None = None,
        q: np.ndarray | None = None,
    ):
        if (table is None) == (q is None):
            raise ValueError("exactly one of table and q must be given")
        self.structure, self.problem, self.target = structure, problem, target
        self.table, self.q = table, q

    def __call__(self, prefix: Sequence[int]) -> float:
        prefix = tuple(int(a) for a in prefix)
        doomed, ended, errors = walk(self.structure, self.problem, prefix)
        if doomed:
            return 0.0
        if ended:
            return 1.0 if self.target == "success" else float(self.structure.success_reward(errors))
        return self.table[prefix] if self.table is not None else float(self.q[len(prefix)])

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
    0 and EOS children worth their outcome. ``target="reward"`` gives expected reward instead of
    success probability (they differ by the recoverable-error cost). The policy is queried on every
    not-doomed prefix, also those it gives probability 0.

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
    table: dict[tuple[int, ...], float] = {}

    def value(prefix: tuple[int, ...], errors: int) -> float:
        if len(table) >= max_prefixes:
            raise ValueError(
                f"max_prefixes: this instance needs more than {max_prefixes} prefixes; use solve_positional"
            )
        probs = _check_probs(policy(problem, prefix), (s.vocab_size,), f"policy({problem}, {prefix})")
        t, total = len(prefix), 0.0
        for a in range(s.vocab_size):
            verdict = s.classify(problem, t, a)
            if verdict == FATAL:
                continue
            e = errors + (verdict == RECOVERABLE)
            if a == EOS_ID:
                v = 1.0 if target == "success" else float(s.success_reward(e))
            else:  # not fatal and not EOS means t < L <= max_len - 1: never truncated here
                v = value(prefix + (a,), e)
            total += probs[a] * v
        table[prefix] = total = float(total)
        return total

    value((), 0)
    return PrefixValues(s, problem, target, table=table)


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


def bayes_optimal_stop(curves: np.ndarray, threshold: float, *, min_tokens: int = 0) -> np.ndarray:
    """The detector that stops as soon as ``P(success | prefix) < threshold``.

    Stop semantics follow the testbed's stop rules: stopping at response index ``s`` keeps token
    ``s``, so the decision at ``s`` reads ``curves[..., s + 1]``. No stop at ``s < min_tokens``.
    A row whose token ``s`` already ended it (EOS) is still reported if that prefix is below the
    threshold; put NaN there to exclude it. NaN never stops.

    Args:
        curves: ``(..., T + 1)`` from :meth:`PrefixValues.curve` or :func:`success_curves`.
        threshold: stop below this success probability.
        min_tokens: earliest response index at which a stop is allowed.

    Returns:
        ``(...)`` int64: the stop index ``s``, or -1 for rows never stopped.
    """
    curves = np.asarray(curves, dtype=np.float64)
    below = curves[..., 1:] < threshold  # NaN compares False
    below[..., :min_tokens] = False
    return np.where(below.any(-1), below.argmax(-1), -1).astype(np.int64)
