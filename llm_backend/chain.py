r"""Checkable-step arithmetic: the task that poses chain problems (:mod:`llm_backend.chain_problems`)
and takes each row's ground truth from the verifier of the equations it writes
(:mod:`llm_backend.verifier`).

A row's ``failure_step`` is the response token holding the character :func:`verify_chain` reports
as the first wrong number's (:func:`token_of_char`); ``doomed`` and ``checkable`` are the verifier's
verdict (their definitions: :mod:`llm_backend.verifier`).

The generator's and the verifier's names stay importable from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from llm_backend.chain_problems import (CHAIN_EXAMPLE, EXAMPLES, LATER_KNOBS, LONG_CHAIN_EXAMPLE, OPS, chain_problem,
                                       chain_solution, check_knobs, iter_chain_problems)
from llm_backend.task import MathTask, _StreamSource
from llm_backend.verifier import (ChainCheck, Equation, char_offsets, find_equations, normalize, token_of_char,
                                  verify_chain)
from testbed.protocols import TaskResult

__all__ = [
    "CHAIN_EXAMPLE",
    "CHAIN_KNOBS",
    "OPS",
    "ChainCheck",
    "ChainResult",
    "ChainTask",
    "Equation",
    "LONG_CHAIN_EXAMPLE",
    "chain_problem",
    "chain_solution",
    "char_offsets",
    "find_equations",
    "iter_chain_problems",
    "make_chain_task",
    "normalize",
    "token_of_char",
    "verify_chain",
]

# ---------------------------------------------------------------------------------------------
# the task's per-row verdict


@dataclass
class ChainResult(TaskResult):
    """:class:`testbed.protocols.TaskResult` plus ``checkable`` (b,) bool (see :func:`verify_chain`)."""

    checkable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


# ---------------------------------------------------------------------------------------------
# the task

CHAIN_KNOBS = {"steps": 3, "digits": 2, "mul_max": 9, "ops": OPS, **LATER_KNOBS, "example": "short",
               "plant_fraction": 0.0, "plant_step": 1}
"""``task.source_kwargs`` of the chain task and their defaults: the generator's (``steps`` an int or a
range ``[low, high]``, ``digits``, ``mul_max``, ``ops``, ``max_value``; :func:`chain_problem`), the
one-shot ``example`` (``short``: :data:`CHAIN_EXAMPLE`; ``long``: :data:`LONG_CHAIN_EXAMPLE`), and the
planted wrong steps (``plant_fraction``, ``plant_step``)."""


class _ChainSource(_StreamSource):
    """Train: the run's seed; test: the fixed :data:`llm_backend.task.EVAL_SEED` order."""

    def __init__(self, seed: int, knobs: dict):
        self.knobs = knobs
        super().__init__(seed, lambda s, split: iter_chain_problems(s, split, **knobs))


class ChainTask(MathTask):
    """:class:`llm_backend.task.MathTask` on chain problems, with ground truth from :func:`verify_chain`.

    ``observe`` runs the verifier on each row's decoded prefix, so the failure step is known during
    decoding (the ``oracle`` stop rule uses it); ``finish`` returns a :class:`ChainResult` with the
    row's ``failure_step`` (token index), ``doomed`` and ``checkable``.

    Planted wrong steps: a ``plant_fraction`` share of rows (drawn at ``reset`` from the task's own
    seeded generator) get a wrong result forced at their ``plant_step``-th equation: once the row has
    written that equation's ``=``, :meth:`forced_tokens` returns the tokens of ``value + d``
    (``d`` in ±1..3, the result kept >= 0) one per decoding step, and the collector writes them in
    place of the sampled tokens (marked not sampled). The fatal token, the wrong number's first token,
    is ``planted_at[slot]``.
    """

    ground_truth = True
    """Rows carry a real ``failure_step``: the trainer logs detector metrics for them."""

    def __init__(self, tokenizer, source: _ChainSource, *, plant_fraction: float = 0.0, plant_step: int = 1,
                 seed: int = 0, example: tuple[str, str] = CHAIN_EXAMPLE, **kw):
        super().__init__(tokenizer, source, example=example, **kw)
        if not 0.0 <= plant_fraction <= 1.0:
            raise ValueError(f"task.source_kwargs.plant_fraction: must be in [0, 1], got {plant_fraction}")
        if plant_step < 1:
            raise ValueError(f"task.source_kwargs.plant_step: must be >= 1, got {plant_step}")
        self.plant_fraction, self.plant_step = float(plant_fraction), int(plant_step)
        self._plant_rng = np.random.default_rng([seed, 4243])
        n = self.num_slots
        self._tokens: list[list[int]] = [[] for _ in range(n)]
        self._failure = np.full(n, -1, dtype=np.int64)
        self._plant = np.zeros(n, dtype=bool)
        self.planted_at = np.full(n, -1, dtype=np.int64)
        self._planted = np.zeros(n, dtype=bool)  # the row's wrong step is queued or written
        self._queue: list[list[int]] = [[] for _ in range(n)]

    def reset(self, slots, *, split: str = "train", group_size: int = 1):
        prompts = super().reset(slots, split=split, group_size=group_size)
        idx = self._check_slots(slots)
        plant = self._plant_rng.random(len(idx)) < self.plant_fraction
        for s, p in zip(idx, plant):
            self._tokens[s], self._queue[s] = [], []
            self._failure[s], self.planted_at[s], self._planted[s] = -1, -1, False
            self._plant[s] = bool(p) and split == "train"
        return prompts

    def solution(self, slot: int) -> str:
        """The canonical solution of the problem in ``slot`` (:func:`chain_solution`): what supervised
        warm-up trains on (:mod:`llm_backend.sft`)."""
        p = self._problems[self._check_slots(np.array([slot]))[0]]
        if p is None:
            raise RuntimeError(f"slot {slot} has no problem: call reset() first")
        return chain_solution(p.question, p.meta["operands"])

    def _numbers(self, slot: int) -> list[int]:
        return list(self._problems[slot].meta["operands"])

    def forced_tokens(self, slots) -> np.ndarray:
        """(b,) long: the token to write in each listed slot at this step instead of the sampled one, -1 none."""
        out = np.full(len(slots), -1, dtype=np.int64)
        for j, s in enumerate(self._check_slots(slots)):
            if self._queue[s]:
                out[j] = self._queue[s].pop(0)
                if self.planted_at[s] < 0 and any(c.isdigit() for c in self.tokenizer.decode([int(out[j])])):
                    self.planted_at[s] = len(self._tokens[s])  # the wrong number's first token (not a lone space)
        return out

    def _maybe_plant(self, s: int, text: str) -> None:
        if not self._plant[s] or self._planted[s] or not re.search(r"=\s*$", text):
            return
        eqs = find_equations(text + "0")  # complete the open equation with a dummy result to read its lhs
        if not eqs or eqs[-1].rhs_start < len(text.rstrip()) or len(eqs) < self.plant_step:
            return
        value = eqs[-1].value
        if value is None or value.denominator != 1:
            return
        d = int(self._plant_rng.choice([-3, -2, -1, 1, 2, 3]))
        wrong = int(value) + d if int(value) + d >= 0 else int(value) - d
        piece = str(wrong) if text[-1].isspace() else f" {wrong}"
        self._planted[s] = True
        self._queue[s] = list(self.tokenizer(piece, add_special_tokens=False)["input_ids"])

    def observe(self, slots, tokens) -> np.ndarray:
        """Append each row's token; return the first wrong number's token index found in the prefix so far."""
        idx = self._check_slots(slots)
        for s, t in zip(idx, np.asarray(tokens).reshape(-1)):
            toks = self._tokens[s]
            toks.append(int(t))
            if int(t) == self.eos_token_id:
                continue
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            if self._failure[s] < 0:
                v = verify_chain(text, 0, self._numbers(s), prefix=True)
                if v.failure_char >= 0:
                    self._failure[s] = token_of_char(char_offsets(self.tokenizer, toks), v.failure_char)
            self._maybe_plant(s, text)
        return self._failure[idx].copy()

    def finish(self, slots, responses) -> ChainResult:
        base = super().finish(slots, responses)
        idx = self._check_slots(slots)
        fail = np.full(len(idx), -1, dtype=np.int64)
        doomed = np.zeros(len(idx), dtype=bool)
        checkable = np.zeros(len(idx), dtype=bool)
        for j, (s, r) in enumerate(zip(idx, responses)):
            toks = [int(t) for t in r]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            p = self._problems[s]
            v = verify_chain(text, int(p.answer), p.meta["operands"])
            fail[j] = token_of_char(char_offsets(self.tokenizer, toks), v.failure_char)
            doomed[j], checkable[j] = v.doomed, v.checkable
            self._verdicts[s] = {**(self._verdicts[s] or {}), "failure_step": int(fail[j]), "reason": v.reason,
                                 "checkable": bool(v.checkable), "planted_at": int(self.planted_at[s])}
        return ChainResult(reward=base.reward, success=base.success, failure_step=fail, doomed=doomed,
                           checkable=checkable)


def make_chain_task(task_cfg, model_cfg, *, num_slots: int, seed: int) -> ChainTask:
    """``task.source: chain``; knobs in ``task.source_kwargs`` (:data:`CHAIN_KNOBS`)."""
    from llm_backend.tokenizer import load_tokenizer

    kw = dict(task_cfg.source_kwargs or {})
    unknown = set(kw) - set(CHAIN_KNOBS)
    if unknown:
        raise ValueError(f"task.source_kwargs: unknown chain knob(s) {sorted(unknown)}; valid: {', '.join(CHAIN_KNOBS)}")
    knobs = {**CHAIN_KNOBS, **kw}
    plant = {k: knobs.pop(k) for k in ("plant_fraction", "plant_step")}
    example = knobs.pop("example")
    if example not in EXAMPLES:
        raise ValueError(f"task.source_kwargs.example: {example!r} is not one of {', '.join(EXAMPLES)}")
    if isinstance(knobs["steps"], tuple):
        knobs["steps"] = list(knobs["steps"])
    check_knobs(**knobs)  # validates the knobs, naming them
    tokenizer = load_tokenizer(model_cfg.path, getattr(model_cfg, "cache_dir", ""))
    return ChainTask(tokenizer, _ChainSource(seed, knobs), num_slots=num_slots, seed=seed,
                     reward_timeout=task_cfg.reward_timeout, format_score=task_cfg.format_score,
                     system_prompt=task_cfg.system_prompt, example=EXAMPLES[example], **plant)
