"""Planted-failure token-MDP: one env (:class:`PlantedFailureEnv`) and its native numpy batch
(:class:`PlantedFailureVectorEnv`), both built on one hidden :class:`Structure`.

Token ids are shared by prompts, responses and actions: ``PAD_ID = 0`` (padding, never a correct
action), ``EOS_ID = 1`` (ends the response), content tokens ``2 .. vocab_size - 1``. Prompts are
drawn from the content tokens, so a policy needs one embedding table of ``vocab_size`` rows and
its logits cover exactly the action space.

The rules of a step live in two places written independently on purpose: the scalar
:meth:`Structure.classify` (used by the single env and the exact solver) and the array kernel
behind :meth:`PlantedFailureVectorEnv.step_rows`. Tests hold them to each other and to a naive
reference.
"""

from __future__ import annotations

from dataclasses import dataclass
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
INFO_KEYS = ("problem", "failure_step", "doomed", "success", "recoverable_errors")
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

    def classify(self, problem: int, t: int, action: int) -> int:
        """:data:`OK`, :data:`RECOVERABLE` or :data:`FATAL` for ``action`` at response index ``t``
        of an episode not yet doomed. The length rule makes every failure fatal somewhere: EOS
        before L, or anything but EOS at L."""
        L = int(self.target_len[problem])
        if action == EOS_ID:
            return OK if t == L else FATAL
        if t >= L:
            return FATAL
        if self.acceptable[problem, t, action]:
            return OK
        return FATAL if self.critical[problem, t] else RECOVERABLE

    def success_reward(self, recoverable_errors: int | np.ndarray) -> float | np.ndarray:
        """Reward of a successful response with that many recoverable errors."""
        return np.maximum(0.0, 1.0 - self.recoverable_cost * np.asarray(recoverable_errors, dtype=np.float64))


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
    num_acceptable: int,
    num_acceptable_critical: int | None,
    critical_frac: float,
    recoverable_cost: float,
    structure_seed: int,
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
    if num_acceptable_critical is None:
        num_acceptable_critical = num_acceptable
    for name, k in (("num_acceptable", num_acceptable), ("num_acceptable_critical", num_acceptable_critical)):
        _require(1 <= k <= C, name, f"must be in [1, num_content_tokens = {C}], got {k}")
    _require(0.0 <= critical_frac <= 1.0, "critical_frac", f"must be in [0, 1], got {critical_frac}")
    _require(recoverable_cost >= 0, "recoverable_cost", f"must be >= 0, got {recoverable_cost}")

    P, T, V = num_problems, max_len, C + FIRST_CONTENT_ID
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

    if length_dist == "fixed":
        lengths = np.full(P, target_len)
    elif length_dist == "uniform":
        lengths = rng.integers(min_len, max_len_target + 1, size=P)
    else:  # lognormal with median target_len: a long right tail, clipped to what fits
        lengths = np.rint(np.exp(rng.normal(np.log(target_len), length_sigma, size=P)))
    lengths = np.clip(lengths, min_len, max_len - 1).astype(np.int64)

    t = np.arange(T)
    before_L = t[None, :] < lengths[:, None]  # (P, T)
    # Exactly round(critical_frac * L) critical positions per problem, uniformly placed before L:
    # the lowest-ranked random keys among positions < L win.
    n_crit = np.rint(critical_frac * lengths).astype(np.int64)
    keys = np.where(before_L, rng.random((P, T)), np.inf)
    crit_rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    critical = crit_rank < n_crit[:, None]

    # Acceptable content tokens: a random subset at each position, its size set by criticality.
    content_rank = np.argsort(np.argsort(rng.random((P, T, C)), axis=2), axis=2)
    k = np.where(critical, num_acceptable_critical, num_acceptable)
    acceptable = np.zeros((P, T, V), dtype=bool)
    acceptable[:, :, FIRST_CONTENT_ID:] = (content_rank < k[:, :, None]) & before_L[:, :, None]
    acceptable[np.arange(P), lengths, EOS_ID] = True

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
    0 on every step except EOS at index ``L`` with no fatal error (success), which gives
    ``max(0, 1 - recoverable_cost * recoverable_errors)``.

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
    - ``num_acceptable=8``: acceptable content tokens at a non-critical position;
      ``num_acceptable_critical=None`` (defaults to ``num_acceptable``): at a critical one.
    - ``critical_frac=0.2``: ``round(critical_frac * L)`` critical positions per problem.
    - ``recoverable_cost=0.1``, ``structure_seed=0``, ``render_mode=None`` (or ``"ansi"``).

    ## Planted Failure Points
    An unacceptable token at a critical position is **fatal**: the episode goes on, but no
    continuation can succeed. So is a wrong length, which is checked at index ``L``: EOS before
    ``L`` (ends the episode) or any non-EOS token at ``L`` (the response overshoots). Hence an
    episode fails exactly when it has a fatal token, and ``info["failure_step"]`` (response index of
    the first fatal token, -1 if none) is the earliest index after which failure was certain.
    Unacceptable tokens at non-critical positions before ``L`` are recoverable (cost
    ``recoverable_cost`` each). ``info`` holds ``problem``, ``failure_step``, ``doomed``
    (``failure_step >= 0``), ``success`` and ``recoverable_errors``: ground truth, not for the agent.
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
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = _observation_space(self.structure)
        self._tokens = np.zeros(self.prompt_len + self.max_len, dtype=np.int64)
        self._problem = 0
        self._t = 0
        self._failure_step = -1
        self._errors = 0
        self._success = False
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
        self._t, self._failure_step, self._errors = 0, -1, 0
        self._success, self._ended = False, False
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._ended:
            raise ValueError("step: the episode has ended; call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action: must be an int in [0, {self.vocab_size}), got {action!r}")
        a, t = int(action), self._t
        if self._failure_step < 0:  # once doomed, nothing more is counted
            verdict = self.structure.classify(self._problem, t, a)
            if verdict == FATAL:
                self._failure_step = t
            elif verdict == RECOVERABLE:
                self._errors += 1
        self._tokens[self.prompt_len + t] = a
        self._t = t + 1
        terminated = a == EOS_ID
        truncated = not terminated and self._t == self.max_len
        self._success = terminated and self._failure_step < 0
        reward = float(self.structure.success_reward(self._errors)) if self._success else 0.0
        self._ended = terminated or truncated
        return self._obs(), reward, terminated, truncated, self._info()

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        response = self._tokens[self.prompt_len : self.prompt_len + self._t]
        return (
            f"problem {self._problem} (L={self.target_len[self._problem]}) | "
            f"{' '.join(map(str, self.prompts[self._problem]))} | {' '.join(map(str, response))}"
            f" | failure_step={self._failure_step}\n"
        )

    def _obs(self) -> dict[str, np.ndarray]:
        return {"tokens": self._tokens.copy(), "length": np.int64(self.prompt_len + self._t)}

    def _info(self) -> dict[str, Any]:
        return {
            "problem": self._problem,
            "failure_step": self._failure_step,
            "doomed": self._failure_step >= 0,
            "success": self._success,
            "recoverable_errors": self._errors,
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
        # Where a wrong token is fatal: planted critical positions, and the length check at t == L.
        self._fatal_if_wrong = self.critical.copy()
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

    def _advance(self, rows: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unchecked :meth:`step_rows` without the info: ``rows`` distinct and live, ``actions`` valid."""
        p, t = self._problem[rows], self._t[rows]
        is_eos = actions == EOS_ID
        not_doomed = self._failure_step[rows] < 0
        # A not-doomed row has t <= L < max_len, so the lookups are in range; EOS is acceptable
        # only at t == L, which folds the length rule into the same two tables.
        wrong = not_doomed & ~self.acceptable[p, t, actions]
        fatal = wrong & (is_eos | self._fatal_if_wrong[p, t])
        self._failure_step[rows] = np.where(fatal, t, self._failure_step[rows])
        self._errors[rows] += wrong & ~fatal
        self._tokens[rows, self.prompt_len + t] = actions
        self._t[rows] = t + 1

        terminated = is_eos
        truncated = ~is_eos & (t + 1 == self.max_len)
        success = is_eos & (self._failure_step[rows] < 0)
        self._success[rows] = success
        self._live[rows] = ~(terminated | truncated)
        reward = np.where(success, self.structure.success_reward(self._errors[rows]), 0.0)
        return reward, terminated, truncated

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
            "length": self._t[rows],
            "live": self._live[rows],
        }

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
