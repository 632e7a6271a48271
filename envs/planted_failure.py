"""Planted-failure token-MDP: one env (:class:`PlantedFailureEnv`) and its native numpy batch
(:class:`PlantedFailureVectorEnv`), both built on one hidden :class:`Structure`.

Token ids are shared by prompts, responses and actions: ``PAD_ID = 0`` (padding, never a correct
action), ``EOS_ID = 1`` (ends the response), content tokens ``2 .. num_content_tokens + 1`` and,
only when ``repair_prob > 0``, one REVISE token after them (so the default vocabulary is unchanged).
Prompts are drawn from the content tokens, so a policy needs one embedding table of ``vocab_size``
rows and its logits cover exactly the action space.

The rules of a step live in two places written independently on purpose: the scalar
:meth:`Structure.classify` (used by the single env and the exact solver) and the array kernel
behind :meth:`PlantedFailureVectorEnv.step_rows`. Tests hold them to each other and to a naive
reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

PAD_ID = 0
EOS_ID = 1
FIRST_CONTENT_ID = 2

OK, RECOVERABLE, FATAL = 0, 1, 2
"""Codes returned by :meth:`Structure.classify` for one emitted token."""

LENGTH_DISTS = ("fixed", "uniform", "lognormal")
LENGTH_SPACINGS = ("random", "quantile")
OVERSHOOTS = ("fatal", "recoverable")
PROMPT_CODES = ("random", "length")
RUNON_PRICES = ("linear", "log", "linear-log")
Z99 = NormalDist().inv_cdf(0.99)
"""Standard normal 99th percentile: ``length_tail = p99 / p50 = exp(length_sigma * Z99)``."""
INFO_KEYS = (
    "problem", "failure_step", "doomed", "success", "recoverable_errors",
    "repaired", "repairable", "forced", "derail_end",
)
"""Keys of every ``info`` dict (reset and step, single and vector; the vector env's
:meth:`~PlantedFailureVectorEnv.row_info` adds ``length`` and ``live``)."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Structure:
    """The hidden problem set, a pure function of the constructor arguments and ``structure_seed``.

    ``P = num_problems``, ``V = vocab_size`` (number of actions, PAD and EOS included). Arrays are
    read-only. Response index ``t`` counts response tokens already emitted before the current one.
    """

    num_problems: int
    prompt_len: int
    max_len: int
    vocab_size: int
    recoverable_cost: float
    prompts: np.ndarray
    """(P, prompt_len) int64: prompt token ids (content ids), distinct across problems."""
    target_len: np.ndarray
    """(P,) int64: L, the number of content tokens before the EOS that succeeds; 1 <= L < max_len."""
    acceptable: np.ndarray
    """(P, max_len, V) bool: acceptable actions at index t: some content ids for t < L, only EOS
    at t == L, none for t > L (the response has overshot; nothing can succeed)."""
    critical: np.ndarray
    """(P, max_len) bool: the planted critical positions (all have t < L). An unacceptable token
    there is fatal; elsewhere before L it is recoverable."""
    repair_prob: float = 0.0
    """Chance that a row is repairable (a hidden draw at reset); 0 = no REVISE token at all."""
    repair_cost: int = 1
    """Tokens a repair takes: the REVISE the agent emits, then ``repair_cost - 1`` forced REVISEs."""
    derail: float = 0.0
    """R: a doomed row runs on to an expected ``R * (L + 1)`` tokens (forced); 0 = off."""
    overshoot: str = "fatal"
    """``"fatal"``: anything but EOS at index L dooms the row; ``"recoverable"``: EOS at any index >= L
    succeeds and each content token from L on is a recoverable error (the answer is complete; the
    extra tokens only cost)."""
    runon_cost: float | None = None
    """With ``overshoot="recoverable"``: None, each run-on token costs ``recoverable_cost``; a number c, a
    run-on by the fraction f of L costs ``c * f`` (each token ``c / L``), so a margin in proportion to L
    costs every problem alike."""
    runon_price: str = "linear"
    """How :attr:`runon_cost` grows with f: ``"linear"``, ``c * f``; ``"log"``, ``c * ln(1 + f)`` (the
    same near L; each further token costs ``c`` over the answer's length so far, so the reward of a long
    run-on stays above 0 while ``c * ln(1 + f) < 1``, never flattening at 0, where every row would score
    alike and teach nothing); ``"linear-log"``, ``c * f`` up to ``f = 1`` and ``c * (1 + ln f)`` beyond
    (the linear price where an answer ends near L, the log price's slope ``c / f`` past one L of run-on)."""

    @property
    def revise_id(self) -> int:
        """Id of the REVISE token, -1 when repair is off."""
        return self.vocab_size - 1 if self.repair_prob > 0 else -1

    @property
    def loop_id(self) -> int:
        """The token a derailed row repeats (a derailed LLM loops)."""
        return FIRST_CONTENT_ID

    def derail_q(self, problem: np.ndarray | int, t: np.ndarray | int) -> np.ndarray | float:
        """Success probability of the geometric run-on drawn when a row is doomed by the token at
        index ``t``: the run ends (forced EOS) at length ``t + 2 + G``, ``G ~ Geometric`` on
        {0, 1, ...} with mean ``max(0, R * (L + 1) - (t + 2))``, so ``E[length] = R * (L + 1)``
        wherever the run-on can reach it (clipped at max_len, which truncates)."""
        mean = np.maximum(0.0, self.derail * (self.target_len[problem] + 1) - (np.asarray(t) + 2))
        return 1.0 / (1.0 + mean)

    def classify(self, problem: int, t: int, action: int) -> int:
        """:data:`OK`, :data:`RECOVERABLE` or :data:`FATAL` for ``action`` at response index ``t``
        of an episode not yet doomed. The length rule makes every failure fatal somewhere: EOS
        before L, or anything but EOS at L."""
        L = int(self.target_len[problem])
        late_ok = self.overshoot == "recoverable"
        if action == EOS_ID:
            return OK if t == L or (late_ok and t > L) else FATAL
        if t >= L:
            return RECOVERABLE if late_ok else FATAL
        if self.acceptable[problem, t, action]:
            return OK
        return FATAL if self.critical[problem, t] else RECOVERABLE

    def success_reward(self, recoverable_errors: int | np.ndarray, problem: int | np.ndarray | None = None,
                       pos: int | np.ndarray | None = None) -> float | np.ndarray:
        """Reward of a successful response with that many recoverable errors (run-on tokens included);
        ``problem`` and ``pos`` (the logical length with its EOS, ``L + 1`` + the run-on) are needed only
        to price the run-on by :attr:`runon_cost`."""
        errors = np.asarray(recoverable_errors, dtype=np.float64)
        if self.runon_cost is None:
            return np.maximum(0.0, 1.0 - self.recoverable_cost * errors)
        if problem is None or pos is None:
            raise ValueError("success_reward: runon_cost prices the run-on by L; pass problem and pos")
        L = self.target_len[problem]
        runon = np.maximum(0, np.asarray(pos) - 1 - L)
        f = runon / L
        if self.runon_price == "log":
            price = np.log1p(f)
        elif self.runon_price == "linear-log":
            price = np.where(f > 1, 1 + np.log(np.maximum(f, 1)), f)
        else:
            price = f
        return np.maximum(0.0, 1.0 - self.recoverable_cost * (errors - runon) - self.runon_cost * price)

    def forced_token(self, row: "RowState") -> int:
        """The token the env will append at ``row``'s next step whatever the action, -1 if none."""
        if row.t >= row.forced_until:
            return -1
        return EOS_ID if row.forced_ends and row.t == row.forced_until - 1 else row.forced_token

    def advance_row(
        self, row: "RowState", problem: int, action: int, rng: np.random.Generator | None
    ) -> tuple[int, bool, float, bool, bool]:
        """The scalar rules of one step (single env and solver): update ``row`` in place.

        Returns ``(token, forced, reward, terminated, truncated)``; ``token`` is what was appended
        (``action`` unless the env forced one). ``rng`` draws a derailed row's run-on; None only
        where derail is off or the caller never steps past a doom (the solver).
        """
        f = self.forced_token(row)
        forced = f >= 0
        a = f if forced else int(action)
        t = row.t
        doomed_now = False
        if row.failure_step < 0:
            if row.pending:  # the token after a revisable fatal one: REVISE repairs, anything else seals
                row.pending = False
                if a == self.revise_id:
                    row.repaired += 1
                    row.pos -= 1  # back to the index of the wrong token
                    row.forced_until, row.forced_token, row.forced_ends = t + self.repair_cost, a, False
                else:
                    row.failure_step, doomed_now = t, True
            elif not forced:  # forced REVISEs of a repair only take length
                verdict = self.classify(problem, row.pos, a)
                if verdict == FATAL and row.repairable and a != EOS_ID:
                    row.pending = True
                elif verdict == FATAL:
                    row.failure_step, doomed_now = t, True
                elif verdict == RECOVERABLE:
                    row.errors += 1
                row.pos += 1
        row.t = t + 1
        terminated = a == EOS_ID
        truncated = not terminated and row.t == self.max_len
        if truncated and row.failure_step < 0:  # only reachable with repairs: the cap seals the row
            row.failure_step = t
        if doomed_now and self.derail > 0 and not terminated and not truncated:
            g = int(rng.geometric(self.derail_q(problem, t))) - 1
            row.derail_end = row.forced_until = t + 2 + g
            row.forced_token, row.forced_ends = self.loop_id, True
        row.success = terminated and row.failure_step < 0
        reward = float(self.success_reward(row.errors, problem, row.pos)) if row.success else 0.0
        return a, forced, reward, terminated, truncated


@dataclass
class RowState:
    """One episode's state under the scalar rules. ``t``: response tokens so far; ``pos``: the
    logical index into the structure's tables (``t`` minus the tokens repairs took); a row is
    ``pending`` after a fatal token it may still revise (repairable rows only)."""

    repairable: bool = False
    t: int = 0
    pos: int = 0
    failure_step: int = -1
    errors: int = 0
    repaired: int = 0
    pending: bool = False
    forced_until: int = 0
    forced_token: int = -1
    forced_ends: bool = False
    derail_end: int = -1
    success: bool = False

    def copy(self) -> "RowState":
        return replace(self)


def _draw_repairable(p: float, rng: np.random.Generator, n: int | None) -> bool | np.ndarray:
    """The hidden per-row draw; no draw at all unless 0 < p < 1, so default streams are untouched."""
    if 0 < p < 1:
        return rng.random(n) < p if n is not None else bool(rng.random() < p)
    return np.full(n, p >= 1) if n is not None else p >= 1


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


def _require_memory(nbytes: int, name: str, what: str) -> None:
    """Refuse an allocation larger than the memory available (Linux ``MemAvailable``), naming its size."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return  # unknown: let numpy try
    _require(nbytes <= avail, name, f"{what} would allocate {nbytes} bytes, more than the {avail} bytes "
             f"({avail / 2**30:.1f} GiB) of memory available; lower it")


def _length_prompts(lengths: np.ndarray, prompt_len: int) -> np.ndarray:
    """(P, prompt_len) prompts that spell each problem's length as a thermometer code on a log scale.

    Token i is the second content id when ``log L`` passes the i-th of ``prompt_len`` evenly spaced
    thresholds between the shortest and the longest problem's log length, else the first. The mean of
    the prompt's embeddings (what the toy policy sees) then moves along one direction in proportion to
    ``log L``: a smooth length cue shared across problems, as a question's text hints at how long its
    solution runs. Problems whose codes coincide would share a prompt: an error asks for a longer one.
    """
    logs = np.log(lengths.astype(np.float64))
    span = logs.max() - logs.min()
    u = (logs - logs.min()) / span if span > 0 else np.zeros_like(logs)
    thresholds = (np.arange(prompt_len) + 0.5) / prompt_len
    ones = u[:, None] >= thresholds[None, :]
    _, first = np.unique(ones, axis=0, return_index=True)
    _require(
        first.size == len(lengths), "prompt_len",
        f"prompt_code='length' needs a distinct code for each of the {len(lengths)} lengths "
        f"{sorted(lengths.tolist())}; {prompt_len} thresholds give {first.size}: use a longer prompt",
    )
    return ones.astype(np.int64) + FIRST_CONTENT_ID


def make_structure(
    *,
    num_problems: int,
    prompt_len: int,
    num_content_tokens: int,
    max_len: int,
    length_dist: str,
    target_len: int,
    min_len: int,
    max_len_target: int | None,
    length_sigma: float,
    length_tail: float | None = None,
    length_spacing: str = "random",
    num_acceptable: int,
    num_acceptable_critical: int | None,
    critical_frac: float,
    recoverable_cost: float,
    structure_seed: int,
    repair_prob: float = 0.0,
    repair_cost: int = 1,
    derail: float = 0.0,
    overshoot: str = "fatal",
    critical_zone: tuple[float, float] | None = None,
    runon_cost: float | None = None,
    runon_price: str = "linear",
    prompt_code: str = "random",
) -> Structure:
    """Validate the arguments and draw the hidden structure from ``np.random.default_rng(structure_seed)``.

    See :class:`PlantedFailureEnv` for the meaning of each argument.
    """
    C = num_content_tokens
    _require(C >= 1, "num_content_tokens", f"must be >= 1, got {C}")
    _require(num_problems >= 1, "num_problems", f"must be >= 1, got {num_problems}")
    _require(prompt_len >= 1, "prompt_len", f"must be >= 1, got {prompt_len}")
    _require(
        num_problems <= C**prompt_len,
        "num_problems",
        f"{num_problems} distinct prompts need num_content_tokens ** prompt_len >= num_problems, "
        f"got {C} ** {prompt_len} = {C**prompt_len}",
    )
    _require(max_len >= 2, "max_len", f"must be >= 2 (at least one content token and EOS), got {max_len}")
    _require(
        length_dist in LENGTH_DISTS, "length_dist", f"must be one of {LENGTH_DISTS}, got {length_dist!r}"
    )
    # L content tokens plus EOS must fit in max_len, so L <= max_len - 1.
    _require(1 <= min_len < max_len, "min_len", f"must be in [1, max_len - 1 = {max_len - 1}], got {min_len}")
    _require(
        min_len <= target_len < max_len,
        "target_len",
        f"must be in [min_len = {min_len}, max_len - 1 = {max_len - 1}], got {target_len}",
    )
    if max_len_target is None:
        max_len_target = target_len
    _require(
        min_len <= max_len_target < max_len,
        "max_len_target",
        f"must be in [min_len = {min_len}, max_len - 1 = {max_len - 1}], got {max_len_target}",
    )
    _require(length_sigma >= 0, "length_sigma", f"must be >= 0, got {length_sigma}")
    if length_tail is not None:
        _require(length_dist == "lognormal", "length_tail", f"needs length_dist='lognormal', got {length_dist!r}")
        _require(length_tail >= 1, "length_tail", f"must be >= 1 (p99 / p50), got {length_tail}")
        length_sigma = float(np.log(length_tail)) / Z99
    _require(
        length_spacing in LENGTH_SPACINGS,
        "length_spacing",
        f"must be one of {LENGTH_SPACINGS}, got {length_spacing!r}",
    )
    _require(0.0 <= repair_prob <= 1.0, "repair_prob", f"must be in [0, 1], got {repair_prob}")
    _require(int(repair_cost) == repair_cost and repair_cost >= 1, "repair_cost", f"must be an int >= 1, got {repair_cost}")
    _require(overshoot in OVERSHOOTS, "overshoot", f"must be one of {OVERSHOOTS}, got {overshoot!r}")
    _require(prompt_code in PROMPT_CODES, "prompt_code", f"must be one of {PROMPT_CODES}, got {prompt_code!r}")
    _require(derail == 0 or derail >= 1, "derail", f"must be 0 (off) or a length multiple >= 1, got {derail}")
    if num_acceptable_critical is None:
        num_acceptable_critical = num_acceptable
    for name, k in (("num_acceptable", num_acceptable), ("num_acceptable_critical", num_acceptable_critical)):
        _require(1 <= k <= C, name, f"must be in [1, num_content_tokens = {C}], got {k}")
    _require(0.0 <= critical_frac <= 1.0, "critical_frac", f"must be in [0, 1], got {critical_frac}")
    if critical_zone is not None:
        ok = (isinstance(critical_zone, (tuple, list)) and len(critical_zone) == 2
              and all(isinstance(x, (int, float)) for x in critical_zone))
        _require(ok, "critical_zone", f"must be None or a pair (lo, hi) of fractions of L, got {critical_zone!r}")
        _require(0.0 <= critical_zone[0] < critical_zone[1] <= 1.0, "critical_zone",
                 f"must satisfy 0 <= lo < hi <= 1, got {tuple(critical_zone)}")
        critical_zone = (float(critical_zone[0]), float(critical_zone[1]))
    _require(recoverable_cost >= 0, "recoverable_cost", f"must be >= 0, got {recoverable_cost}")
    if runon_cost is not None:
        _require(overshoot == "recoverable", "runon_cost", f"prices a run-on past L: needs overshoot='recoverable', got {overshoot!r}")
        _require(runon_cost >= 0, "runon_cost", f"must be >= 0 or None, got {runon_cost}")
    _require(runon_price in RUNON_PRICES, "runon_price", f"must be one of {RUNON_PRICES}, got {runon_price!r}")
    _require(runon_price == "linear" or runon_cost is not None, "runon_price",
             f"{runon_price!r} shapes runon_cost, which is None")

    P, T = num_problems, max_len
    V = C + FIRST_CONTENT_ID + (repair_prob > 0)  # REVISE last, so content ids never move
    # The largest step below draws (P, T, C) float64 keys and ranks them twice (int64), next to (P, T, V) bools.
    _require_memory(P * T * (C * 24 + V), "num_problems x max_len x num_content_tokens", f"{P} x {T} x {C}")
    rng = np.random.default_rng(structure_seed)

    # Prompts: distinct digit strings over the content tokens, so the prompt identifies the problem.
    digits = rng.integers(C, size=(P, prompt_len))
    while True:
        _, first = np.unique(digits, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(P), first)
        if dup.size == 0:
            break
        digits[dup] = rng.integers(C, size=(dup.size, prompt_len))
    prompts = digits.astype(np.int64) + FIRST_CONTENT_ID

    # "quantile" spacing puts the P lengths at evenly spaced quantiles of the distribution (no draw),
    # so a study over a few dozen problems sees exactly the range and tail it asked for.
    if length_dist == "fixed":
        lengths = np.full(P, target_len)
    elif length_dist == "uniform" and length_spacing == "quantile":  # both ends included
        lengths = np.rint(np.linspace(min_len, max_len_target, P))
    elif length_dist == "uniform":
        lengths = rng.integers(min_len, max_len_target + 1, size=P)
    elif length_spacing == "quantile":  # lognormal
        z = np.array([NormalDist().inv_cdf((i + 0.5) / P) for i in range(P)])
        lengths = np.rint(np.exp(np.log(target_len) + length_sigma * z))
    else:  # lognormal with median target_len: a long right tail, clipped to what fits
        lengths = np.rint(np.exp(rng.normal(np.log(target_len), length_sigma, size=P)))
    lengths = np.clip(lengths, min_len, max_len - 1).astype(np.int64)
    if prompt_code == "length":  # after every draw above, so the rest of the structure is unchanged
        prompts = _length_prompts(lengths, prompt_len)

    t = np.arange(T)
    before_L = t[None, :] < lengths[:, None]  # (P, T)
    # Exactly round(critical_frac * L) critical positions per problem, uniformly placed before L:
    # the lowest-ranked random keys among positions < L win.
    n_crit = np.rint(critical_frac * lengths).astype(np.int64)
    eligible = before_L
    if critical_zone is not None:  # only positions in [lo * L, hi * L): where the failures sit
        lo, hi = critical_zone
        eligible = before_L & (t[None, :] >= np.floor(lo * lengths)[:, None]) & (t[None, :] < np.ceil(hi * lengths)[:, None])
        n_crit = np.minimum(n_crit, eligible.sum(axis=1))
    keys = np.where(eligible, rng.random((P, T)), np.inf)
    crit_rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    critical = crit_rank < n_crit[:, None]

    # Acceptable content tokens: a random subset at each position, its size set by criticality.
    content_rank = np.argsort(np.argsort(rng.random((P, T, C)), axis=2), axis=2)
    k = np.where(critical, num_acceptable_critical, num_acceptable)
    acceptable = np.zeros((P, T, V), dtype=bool)
    # REVISE (the last id, when present) is never acceptable: outside a repair it is a wrong token.
    acceptable[:, :, FIRST_CONTENT_ID : FIRST_CONTENT_ID + C] = (content_rank < k[:, :, None]) & before_L[:, :, None]
    acceptable[np.arange(P), lengths, EOS_ID] = True
    if overshoot == "recoverable":  # EOS closes a complete answer at any index from L on
        acceptable[:, :, EOS_ID] |= t[None, :] >= lengths[:, None]

    return Structure(
        num_problems=P,
        prompt_len=prompt_len,
        max_len=max_len,
        vocab_size=V,
        recoverable_cost=float(recoverable_cost),
        prompts=_readonly(prompts),
        target_len=_readonly(lengths),
        acceptable=_readonly(acceptable),
        critical=_readonly(critical),
        repair_prob=float(repair_prob),
        repair_cost=int(repair_cost),
        derail=float(derail),
        overshoot=str(overshoot),
        runon_cost=None if runon_cost is None else float(runon_cost),
        runon_price=str(runon_price),
    )


def _observation_space(s: Structure) -> spaces.Dict:
    n = s.prompt_len + s.max_len
    return spaces.Dict(
        {
            "tokens": spaces.Box(0, s.vocab_size - 1, shape=(n,), dtype=np.int64),
            "length": spaces.Discrete(s.max_len + 1, start=s.prompt_len),
        }
    )


class _StructureAttrs:
    """Shortcuts to the structure shared by the single and the vector env."""

    structure: Structure
    pad_id = PAD_ID
    eos_id = EOS_ID

    @property
    def vocab_size(self) -> int:
        """Number of actions (PAD, EOS and content tokens); every token id is below it."""
        return self.structure.vocab_size

    @property
    def prompt_len(self) -> int:
        return self.structure.prompt_len

    @property
    def max_len(self) -> int:
        return self.structure.max_len

    @property
    def num_problems(self) -> int:
        return self.structure.num_problems

    @property
    def prompts(self) -> np.ndarray:
        return self.structure.prompts

    @property
    def target_len(self) -> np.ndarray:
        return self.structure.target_len

    @property
    def acceptable(self) -> np.ndarray:
        return self.structure.acceptable

    @property
    def critical(self) -> np.ndarray:
        return self.structure.critical


class PlantedFailureEnv(_StructureAttrs, gym.Env[dict[str, np.ndarray], int]):
    """A prompt names a hidden problem; the agent answers token by token; some positions are fatal.

    ## Description
    A token-level MDP standing in for LLM reasoning with ground truth. Each of ``num_problems``
    problems has a prompt of ``prompt_len`` tokens, a target response length ``L`` and, at every
    response index ``t < L``, a set of acceptable content tokens. A correct response is ``L``
    acceptable tokens followed by EOS. The structure is drawn once from ``structure_seed``;
    ``reset`` only picks which problem to pose (from ``self.np_random``).

    ## Action Space
    ``Discrete(vocab_size)``: ``0`` = PAD (always unacceptable), ``1`` = EOS, ``2..vocab_size-1``
    content tokens; ``vocab_size = num_content_tokens + 2``.

    ## Observation Space
    ``Dict``: ``"tokens"`` ``(prompt_len + max_len,)`` int64, the prompt then the response so far,
    right-padded with PAD; ``"length"`` the number of valid tokens (``prompt_len`` after reset).

    ## Reward
    0 on every step except EOS at index ``L`` (at any index >= L with ``overshoot="recoverable"``)
    with no fatal error (success), which gives ``max(0, 1 - recoverable_cost * recoverable_errors)``.

    ## Episode End
    Terminated when EOS is emitted (at any index). Truncated when the response reaches
    ``max_len`` tokens without EOS (reward 0). Stepping an ended episode raises ``ValueError``.

    ## Arguments
    - ``num_problems=64``, ``prompt_len=2``, ``num_content_tokens=16``, ``max_len=24``: sizes.
    - ``length_dist="fixed"``: ``"fixed"`` (every L = ``target_len``), ``"uniform"`` (L uniform in
      ``[min_len, max_len_target]``) or ``"lognormal"`` (median ``target_len``, log-std
      ``length_sigma``, long right tail), always clipped to ``[min_len, max_len - 1]``.
    - ``target_len=12``, ``min_len=1``, ``max_len_target=None`` (defaults to ``target_len``),
      ``length_sigma=0.5``.
    - ``length_tail=None``: p99 / p50 of the lognormal lengths; sets ``length_sigma`` to
      ``ln(length_tail) / z_0.99`` (needs ``length_dist="lognormal"``).
    - ``length_spacing="random"``: lengths drawn i.i.d.; ``"quantile"``: placed at the evenly
      spaced quantiles ``(i + 0.5) / P`` of the distribution (uniform: both ends included), so the
      realised range and tail are the asked-for ones.
    - ``num_acceptable=8``: acceptable content tokens at a non-critical position;
      ``num_acceptable_critical=None`` (defaults to ``num_acceptable``): at a critical one.
    - ``critical_frac=0.2``: ``round(critical_frac * L)`` critical positions per problem.
    - ``critical_zone=None``: ``(lo, hi)`` places them at indices in ``[floor(lo * L), ceil(hi * L))``
      only (where the failures sit in the response; at most as many as fit there); None: anywhere before L.
    - ``recoverable_cost=0.1``, ``structure_seed=0``, ``render_mode=None`` (or ``"ansi"``).
    - ``repair_prob=0.0``, ``repair_cost=1``: recovery (below); 0 leaves the vocabulary unchanged.
    - ``derail=0.0``: R >= 1 turns on derailment (below); 0 = off.
    - ``overshoot="fatal"``: ``"recoverable"`` lets EOS at any index >= L succeed, each content
      token from index L on costing ``recoverable_cost`` like a recoverable error (an answer that is
      complete at L and then runs on); stopping before L stays fatal.
    - ``prompt_code="random"``: prompts are random digit strings that only name the problem;
      ``"length"`` makes each prompt a thermometer code of ``log L`` over its ``prompt_len`` tokens
      (two content ids; distinct lengths must get distinct codes), a length cue shared across problems.
    - ``runon_cost=None``: with ``overshoot="recoverable"``, a number c prices the run-on relative to L:
      running on by the fraction f of L costs ``c * f`` (each token ``c / L``) instead of
      ``recoverable_cost`` a token, so short answers must end close to L while long ones may keep a
      margin in proportion to their length (a length tail the policy keeps, not one it pads away).
    - ``runon_price="linear"``: ``"log"`` prices the run-on ``c * ln(1 + f)`` instead: the same near L,
      but a long run-on of a short answer keeps a reward above 0 while ``c * ln(1 + f) < 1`` (the
      linear price reaches 0 at ``f = 1 / c``, a plateau where every row scores 0 and nothing pulls
      the policy back). ``"linear-log"``: ``c * f`` up to ``f = 1``, ``c * (1 + ln f)`` beyond (the
      linear price near L, without the plateau; the two pieces meet with equal slope at ``f = 1``).

    ## Recovery (``repair_prob > 0``)
    The vocabulary gains REVISE (id ``vocab_size - 1``). At reset a hidden draw makes the row
    *repairable* with probability ``repair_prob``. In a repairable row a fatal token that does not
    end the episode (a wrong token at a critical position, or a content token where EOS belonged)
    is revisable: if the next token is REVISE, the error is undone (the row is back at the wrong
    token's index) at a length cost of ``repair_cost`` tokens: that REVISE and ``repair_cost - 1``
    REVISEs the env forces; any other next token seals the failure (``failure_step`` is that
    token's index). In a row that is not repairable every fatal token dooms at once. A row that
    repairs can run out of length: truncation at ``max_len`` then seals it.

    ## Derailment (``derail = R >= 1``)
    Once a row is doomed by a token that does not end it, the env takes over: it forces the loop
    token (``2``) and then EOS, ending the row at length ``t + 2 + G`` for a doom at index ``t``,
    ``G`` geometric with mean ``max(0, R * (L + 1) - (t + 2))``: a doomed row's expected length is
    ``R`` times a successful row's ``L + 1`` (less where ``max_len`` truncates it). Rows doomed by an
    early EOS end there.

    ## Forced tokens
    Repairs and derailment append tokens whatever the action (the action is ignored, as with
    sticky actions); ``info["forced"]`` flags such a step and :meth:`forced_token` tells the next
    one in advance, so a collector can record the forced token and leave it out of the policy loss.

    ## Planted Failure Points
    An unacceptable token at a critical position is **fatal**: the episode goes on, but no
    continuation can succeed. So is a wrong length, which is checked at index ``L``: EOS before
    ``L`` (ends the episode) or any non-EOS token at ``L`` (the response overshoots). Hence an
    episode fails exactly when it has a fatal token, and ``info["failure_step"]`` (response index of
    the first fatal token, -1 if none) is the earliest index after which failure was certain.
    Unacceptable tokens at non-critical positions before ``L`` are recoverable (cost
    ``recoverable_cost`` each). ``info`` holds ``problem``, ``failure_step``, ``doomed``
    (``failure_step >= 0``: no continuation can succeed), ``success``, ``recoverable_errors``,
    ``repaired`` (repairs so far), ``repairable`` (the hidden draw), ``forced`` (this step's token was
    forced) and ``derail_end`` (the length a derailed row will end at, -1 if none): ground truth,
    not for the agent.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        num_problems: int = 64,
        prompt_len: int = 2,
        num_content_tokens: int = 16,
        max_len: int = 24,
        length_dist: str = "fixed",
        target_len: int = 12,
        min_len: int = 1,
        max_len_target: int | None = None,
        length_sigma: float = 0.5,
        num_acceptable: int = 8,
        num_acceptable_critical: int | None = None,
        critical_frac: float = 0.2,
        recoverable_cost: float = 0.1,
        structure_seed: int = 0,
        length_tail: float | None = None,
        length_spacing: str = "random",
        repair_prob: float = 0.0,
        repair_cost: int = 1,
        derail: float = 0.0,
        overshoot: str = "fatal",
        critical_zone: tuple[float, float] | None = None,
        runon_cost: float | None = None,
        runon_price: str = "linear",
        prompt_code: str = "random",
        render_mode: str | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            modes = self.metadata["render_modes"]
            raise ValueError(f"render_mode: must be None or one of {modes}, got {render_mode!r}")
        self.render_mode = render_mode
        self.structure = make_structure(
            num_problems=num_problems,
            prompt_len=prompt_len,
            num_content_tokens=num_content_tokens,
            max_len=max_len,
            length_dist=length_dist,
            target_len=target_len,
            min_len=min_len,
            max_len_target=max_len_target,
            length_sigma=length_sigma,
            num_acceptable=num_acceptable,
            num_acceptable_critical=num_acceptable_critical,
            critical_frac=critical_frac,
            recoverable_cost=recoverable_cost,
            structure_seed=structure_seed,
            length_tail=length_tail,
            length_spacing=length_spacing,
            repair_prob=repair_prob,
            repair_cost=repair_cost,
            derail=derail,
            overshoot=overshoot,
            critical_zone=critical_zone,
            runon_cost=runon_cost,
            runon_price=runon_price,
            prompt_code=prompt_code,
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = _observation_space(self.structure)
        self._tokens = np.zeros(self.prompt_len + self.max_len, dtype=np.int64)
        self._problem = 0
        self._row = RowState()
        self._forced = False
        self._ended = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; ``options={"problem": i}`` pins the problem, else it is drawn uniformly."""
        super().reset(seed=seed)
        problem = (options or {}).get("problem")
        if problem is None:
            problem = int(self.np_random.integers(self.num_problems))
        elif not 0 <= int(problem) < self.num_problems:
            raise ValueError(f"options['problem']: must be in [0, {self.num_problems}), got {problem}")
        self._problem = int(problem)
        self._tokens[:] = PAD_ID
        self._tokens[: self.prompt_len] = self.prompts[self._problem]
        self._row = RowState(repairable=_draw_repairable(self.structure.repair_prob, self.np_random, None))
        self._forced, self._ended = False, False
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._ended:
            raise ValueError("step: the episode has ended; call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action: must be an int in [0, {self.vocab_size}), got {action!r}")
        t = self._row.t
        a, self._forced, reward, terminated, truncated = self.structure.advance_row(
            self._row, self._problem, int(action), self.np_random
        )
        self._tokens[self.prompt_len + t] = a
        self._ended = terminated or truncated
        return self._obs(), reward, terminated, truncated, self._info()

    def forced_token(self) -> int:
        """The token the next step will append whatever the action, -1 if the action decides."""
        return -1 if self._ended else self.structure.forced_token(self._row)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        response = self._tokens[self.prompt_len : self.prompt_len + self._row.t]
        return (
            f"problem {self._problem} (L={self.target_len[self._problem]}) | "
            f"{' '.join(map(str, self.prompts[self._problem]))} | {' '.join(map(str, response))}"
            f" | failure_step={self._row.failure_step}\n"
        )

    def _obs(self) -> dict[str, np.ndarray]:
        return {"tokens": self._tokens.copy(), "length": np.int64(self.prompt_len + self._row.t)}

    def _info(self) -> dict[str, Any]:
        r = self._row
        return {
            "problem": self._problem,
            "failure_step": r.failure_step,
            "doomed": r.failure_step >= 0,
            "success": r.success,
            "recoverable_errors": r.errors,
            "repaired": r.repaired,
            "repairable": r.repairable,
            "forced": self._forced,
            "derail_end": r.derail_end,
        }


class PlantedFailureVectorEnv(_StructureAttrs, VectorEnv):
    """``num_envs`` independent :class:`PlantedFailureEnv` rows stepped in one numpy call.

    Takes ``num_envs=1`` plus the keyword arguments of :class:`PlantedFailureEnv` (no
    ``render_mode``); all rows share one structure. Observations batch the single env's:
    ``"tokens"`` ``(N, prompt_len + max_len)``, ``"length"`` ``(N,)``; ``info`` is
    :meth:`row_info` of every row: each key an ``(N,)`` array.

    Two ways to drive it (they may be mixed; a row is *live* from its start until it ends):

    - Standard gymnasium API, ``AutoresetMode.NEXT_STEP``: ``step(actions)`` steps the live rows;
      a row that is not live (it ended on an earlier step, or was never started) is restarted
      instead, with a new problem, its action ignored, reward 0 and both flags False.
    - Row API for a collector that owns its batch: :meth:`reset_rows` and :meth:`step_rows`. No
      autoreset: a row stays ended until :meth:`reset_rows`. Per-row state is readable with
      :meth:`row_info`.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, **kwargs: Any):
        if int(num_envs) < 1:
            raise ValueError(f"num_envs: must be >= 1, got {num_envs}")
        if kwargs.pop("render_mode", None) is not None:
            raise ValueError("render_mode: the vector env does not render")
        # The single env validates and documents the arguments; build the same structure here.
        defaults = PlantedFailureEnv.__init__.__kwdefaults__
        unknown = set(kwargs) - set(defaults)
        if unknown:
            valid = sorted(set(defaults) - {"render_mode"})
            raise TypeError(f"unknown arguments {sorted(unknown)}; valid: {valid}")
        params = {k: kwargs.get(k, v) for k, v in defaults.items() if k != "render_mode"}
        _require_memory(int(num_envs) * (params["prompt_len"] + params["max_len"]) * 8 * 2, "num_envs",
                        f"{num_envs} rows x {params['prompt_len'] + params['max_len']} tokens")
        self.structure = make_structure(**params)
        self.num_envs = N = int(num_envs)
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.action_space = batch_space(self.single_action_space, N)
        self.single_observation_space = _observation_space(self.structure)
        self.observation_space = batch_space(self.single_observation_space, N)

        # Per-row state. _t: response tokens emitted; _live: episode in progress.
        self._tokens = np.zeros((N, self.prompt_len + self.max_len), dtype=np.int64)
        self._problem = np.zeros(N, dtype=np.int64)
        self._t = np.zeros(N, dtype=np.int64)
        self._failure_step = np.full(N, -1, dtype=np.int64)
        self._errors = np.zeros(N, dtype=np.int64)
        self._success = np.zeros(N, dtype=bool)
        self._live = np.zeros(N, dtype=bool)
        # Regime state (see the single env's Recovery and Derailment sections); _pos is the logical
        # index into the tables, equal to _t unless a repair has taken length.
        self._pos = np.zeros(N, dtype=np.int64)
        self._repairable = np.zeros(N, dtype=bool)
        self._pending = np.zeros(N, dtype=bool)
        self._repaired = np.zeros(N, dtype=np.int64)
        self._forced_until = np.zeros(N, dtype=np.int64)
        self._forced_token = np.full(N, -1, dtype=np.int64)
        self._forced_ends = np.zeros(N, dtype=bool)
        self._derail_end = np.full(N, -1, dtype=np.int64)
        self._last_forced = np.zeros(N, dtype=bool)
        # Where a wrong token is fatal: planted critical positions, and the length check at t == L.
        self._fatal_if_wrong = self.critical.copy()
        if self.structure.overshoot == "fatal":
            self._fatal_if_wrong[np.arange(self.num_problems), self.target_len] = True

    # -- standard gymnasium API --------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Start every row; ``options={"problem": int or (N,) ints}`` pins problems."""
        super().reset(seed=seed)
        problems = (options or {}).get("problem")
        if problems is not None:
            problems = np.broadcast_to(np.asarray(problems, dtype=np.int64), (self.num_envs,))
        self.reset_rows(np.arange(self.num_envs), problems)
        return self._obs(), self.row_info(np.arange(self.num_envs))

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Step live rows, restart the others (next-step autoreset). ``actions`` is ``(N,)`` ints."""
        N = self.num_envs
        actions = self._check_actions(actions, (N,))
        reward = np.zeros(N, dtype=np.float64)
        terminated = np.zeros(N, dtype=bool)
        truncated = np.zeros(N, dtype=bool)
        live, restart = np.flatnonzero(self._live), np.flatnonzero(~self._live)
        if live.size:
            reward[live], terminated[live], truncated[live] = self._advance(live, actions[live])
        if restart.size:
            self._start(restart, self.np_random.integers(self.num_problems, size=restart.size))
        return self._obs(), reward, terminated, truncated, self.row_info(np.arange(N))

    # -- row API (extension used by the testbed's task adapter) ------------------------------

    def reset_rows(self, rows: np.ndarray, problems: np.ndarray | None = None) -> np.ndarray:
        """Start new episodes in ``rows`` (live or not) and return their prompts.

        Args:
            rows: ``(n,)`` distinct row indices in ``[0, num_envs)``.
            problems: ``(n,)`` problem indices, or None to draw them uniformly from ``np_random``.

        Returns:
            ``(n, prompt_len)`` int64 prompt token ids.
        """
        rows = self._check_rows(rows)
        if problems is None:
            problems = self.np_random.integers(self.num_problems, size=rows.size)
        problems = np.asarray(problems, dtype=np.int64)
        if problems.shape != rows.shape:
            raise ValueError(f"problems: expected shape {rows.shape}, got {problems.shape}")
        if problems.size and not (0 <= problems.min() and problems.max() < self.num_problems):
            raise ValueError(f"problems: must be in [0, {self.num_problems}), got {problems}")
        self._start(rows, problems)
        return self.prompts[problems]

    def _start(self, rows: np.ndarray, problems: np.ndarray) -> None:
        """Unchecked :meth:`reset_rows`: ``rows`` distinct, ``problems`` in range."""
        self._problem[rows] = problems
        self._tokens[rows] = PAD_ID
        self._tokens[rows, : self.prompt_len] = self.prompts[problems]
        self._t[rows] = 0
        self._failure_step[rows] = -1
        self._errors[rows] = 0
        self._success[rows] = False
        self._live[rows] = True
        self._pos[rows] = 0
        self._repairable[rows] = _draw_repairable(self.structure.repair_prob, self.np_random, rows.size)
        self._pending[rows] = False
        self._repaired[rows] = 0
        self._forced_until[rows] = 0
        self._forced_token[rows] = -1
        self._forced_ends[rows] = False
        self._derail_end[rows] = -1
        self._last_forced[rows] = False

    def step_rows(
        self, rows: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Append one token to each listed live row.

        Args:
            rows: ``(n,)`` distinct indices of live rows; an ended (or never started) row raises
                ``ValueError``.
            actions: ``(n,)`` token ids in ``[0, vocab_size)``.

        Returns:
            ``(reward, terminated, truncated, info)``: ``(n,)`` float64, bool, bool, and a dict of
            ``(n,)`` arrays keyed by :data:`INFO_KEYS`, for the listed rows in order.
        """
        rows = self._check_rows(rows)
        actions = self._check_actions(actions, rows.shape)
        if not self._live[rows].all():
            raise ValueError(f"rows: rows {rows[~self._live[rows]]} have ended; reset_rows() them first")
        return (*self._advance(rows, actions), self.row_info(rows))

    def forced_tokens(self, rows: np.ndarray) -> np.ndarray:
        """``(n,)`` the token each listed row's next step will append whatever the action, -1 where
        the action decides (always -1 without repair or derail, and for rows not live)."""
        rows = self._check_rows(rows)
        t, until = self._t[rows], self._forced_until[rows]
        tok = np.where(self._forced_ends[rows] & (t == until - 1), EOS_ID, self._forced_token[rows])
        return np.where(self._live[rows] & (t < until), tok, -1)

    def _advance(self, rows: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unchecked :meth:`step_rows` without the info: ``rows`` distinct and live, ``actions`` valid."""
        s = self.structure
        p, t = self._problem[rows], self._t[rows]
        forced = t < self._forced_until[rows]  # never true with both knobs off
        if forced.any():
            until = self._forced_until[rows]
            tok = np.where(self._forced_ends[rows] & (t == until - 1), EOS_ID, self._forced_token[rows])
            actions = np.where(forced, tok, actions)
        is_eos = actions == EOS_ID
        fs = self._failure_step[rows]
        not_doomed = fs < 0
        judged = not_doomed & ~forced  # forced REVISEs of a repair are not judged
        doom = np.zeros(rows.size, dtype=bool)
        if s.repair_prob > 0:
            pending = self._pending[rows] & not_doomed
            revise = pending & (actions == s.revise_id)
            doom |= pending & ~revise  # the token after a revisable error was not REVISE
            self._pending[rows] = False
            self._pos[rows] -= revise  # back to the wrong token's index
            self._repaired[rows] += revise
            self._forced_until[rows] = np.where(revise, t + s.repair_cost, self._forced_until[rows])
            self._forced_token[rows] = np.where(revise, s.revise_id, self._forced_token[rows])
            self._forced_ends[rows] &= ~revise
            judged &= ~pending
        # A judged row has pos < max_len (pos <= L unless overshoot is recoverable); the clip only keeps the others' lookups in range. EOS
        # is acceptable only at pos == L, which folds the length rule into the same two tables.
        pos = np.minimum(self._pos[rows], self.max_len - 1)
        wrong = judged & ~self.acceptable[p, pos, actions]
        fatal = wrong & (is_eos | self._fatal_if_wrong[p, pos])
        if s.repair_prob > 0:
            hold = fatal & ~is_eos & self._repairable[rows]
            self._pending[rows] |= hold
            fatal &= ~hold
        doom |= fatal
        self._errors[rows] += wrong & ~fatal & ~self._pending[rows]
        self._pos[rows] += judged
        self._tokens[rows, self.prompt_len + t] = actions
        self._t[rows] = t + 1
        self._last_forced[rows] = forced

        terminated = is_eos
        truncated = ~is_eos & (t + 1 == self.max_len)
        fs = np.where((doom | truncated) & not_doomed, t, fs)  # truncation seals a repaired-out row
        self._failure_step[rows] = fs
        if s.derail > 0:
            run_on = doom & ~terminated & ~truncated
            if run_on.any():
                r = rows[run_on]
                g = self.np_random.geometric(s.derail_q(p[run_on], t[run_on])) - 1
                self._derail_end[r] = self._forced_until[r] = t[run_on] + 2 + g
                self._forced_token[r] = s.loop_id
                self._forced_ends[r] = True
        success = is_eos & (fs < 0)
        self._success[rows] = success
        self._live[rows] = ~(terminated | truncated)
        reward = np.where(success, s.success_reward(self._errors[rows], p, self._pos[rows]), 0.0)
        return reward, terminated, truncated

    ROW_STATE = ("_tokens", "_problem", "_t", "_failure_step", "_errors", "_success", "_live", "_pos",
                 "_repairable", "_pending", "_repaired", "_forced_until", "_forced_token", "_forced_ends",
                 "_derail_end", "_last_forced")
    """Every per-row array: together they are an episode's whole state (the structure is shared)."""

    def _fingerprint(self) -> str:
        """A digest of the structure: snapshots move only between envs of the same problems and rules."""
        s = self.structure
        h = hashlib.sha256(repr((s.max_len, s.vocab_size, s.recoverable_cost, s.repair_prob, s.repair_cost,
                                 s.derail, s.overshoot)).encode())
        for a in (s.prompts, s.target_len, s.acceptable, s.critical):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def snapshot_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The episodes in ``rows`` as they stand, hidden draws included (a copy): what
        :meth:`restore_rows` needs to continue them elsewhere, in this env or another env of the same
        structure. Continuing a restored row draws only the randomness still to come (a run-on drawn
        at a later doom) from the restoring env's ``np_random``."""
        rows = self._check_rows(rows)
        return {"structure": np.asarray(self._fingerprint())} | {k: getattr(self, k)[rows].copy() for k in self.ROW_STATE}

    def restore_rows(self, rows: np.ndarray, snapshot: dict[str, np.ndarray], src: np.ndarray | None = None) -> None:
        """Make ``rows`` continue the snapshot's episodes: row ``rows[i]`` becomes episode ``src[i]``
        of the snapshot (default ``i``), so one episode can be cloned into many rows."""
        rows = self._check_rows(rows)
        if str(snapshot["structure"]) != self._fingerprint():
            raise ValueError("snapshot: taken from an env of another structure (other problems or knobs)")
        n = len(snapshot["_t"])
        src = np.arange(rows.size) if src is None else np.asarray(src, dtype=np.int64)
        if src.shape != rows.shape or (src.size and not (0 <= src.min() and src.max() < n)):
            raise ValueError(f"src: expected {rows.size} indices into the snapshot's {n} episodes, got {src}")
        if snapshot["_tokens"].shape[1:] != self._tokens.shape[1:]:
            raise ValueError(f"snapshot: rows of {snapshot['_tokens'].shape[1]} tokens, this env has {self._tokens.shape[1]}")
        for k in self.ROW_STATE:
            getattr(self, k)[rows] = snapshot[k][src]

    @property
    def problem(self) -> np.ndarray:
        """``(N,)`` problem index of each row's current (or last) episode; a copy."""
        return self._problem.copy()

    def row_info(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Ground truth of ``rows`` as they stand: :data:`INFO_KEYS` plus ``"length"`` (response
        tokens so far) and ``"live"``, each ``(n,)``."""
        rows = np.asarray(rows, dtype=np.int64)
        fs = self._failure_step[rows]
        return {
            "problem": self._problem[rows],
            "failure_step": fs,
            "doomed": fs >= 0,
            "success": self._success[rows],
            "recoverable_errors": self._errors[rows],
            "repaired": self._repaired[rows],
            "repairable": self._repairable[rows],
            "forced": self._last_forced[rows],
            "derail_end": self._derail_end[rows],
            "length": self._t[rows],
            "live": self._live[rows],
        }

    def row_reward(self, rows: np.ndarray) -> np.ndarray:
        """The reward ``rows`` have earned as they stand (0 unless they ended in success), ``(n,)``."""
        rows = np.asarray(rows, dtype=np.int64)
        p, ok = self._problem[rows], self._success[rows]
        return np.where(ok, self.structure.success_reward(self._errors[rows], p, self._pos[rows]), 0.0)

    def _check_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"rows: expected a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64, copy=False)
        if rows.size and not (0 <= rows.min() and rows.max() < self.num_envs):
            raise ValueError(f"rows: must be in [0, {self.num_envs}), got {rows}")
        if rows.size and np.bincount(rows, minlength=self.num_envs).max() > 1:
            raise ValueError(f"rows: must be distinct, got {rows}")
        return rows

    def _check_actions(self, actions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.shape != shape or (actions.size and not np.issubdtype(actions.dtype, np.integer)):
            raise ValueError(
                f"actions: expected an integer array of shape {shape}, got {actions.dtype} {actions.shape}"
            )
        if actions.size and not (0 <= actions.min() and actions.max() < self.vocab_size):
            raise ValueError(f"actions: must be in [0, {self.vocab_size}), got {actions}")
        return actions

    def _obs(self) -> dict[str, np.ndarray]:
        return {"tokens": self._tokens.copy(), "length": self.prompt_len + self._t}
