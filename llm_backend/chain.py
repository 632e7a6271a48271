r"""Checkable-step arithmetic: generated multi-step problems and a verifier of the equations a response writes.

A **chain problem** applies ``steps`` operations to a start number, left to right, and shows the
expression with the parentheses standard precedence needs (``(37 + 48 - 12) * 6``), so the
canonical solution is one equation per step (``37 + 48 = 85. 85 - 12 = 73. 73 * 6 = 438.``), the
style of :data:`CHAIN_EXAMPLE`, the one-shot demonstration.

The **verifier** (:func:`verify_chain`) reads the equations ``lhs = rhs`` a response writes and finds
the first wrong number:

1. an operand of ``lhs`` that is neither a number of the question nor the result of an earlier
   correct equation (a mis-copied or invented value): the wrong number is that operand;
2. an equation whose ``rhs`` is not the value of ``lhs`` (an arithmetic error): the wrong number is
   ``rhs``. ``lhs`` counts as right when either standard precedence or left-to-right evaluation
   gives ``rhs`` (a restated question that drops its parentheses is not an arithmetic error);
3. when every equation is right but the final ``\boxed{}`` answer is a wrong number: that number.

The row's ``failure_step`` is the index of the response token holding the wrong number's first
character, ``doomed`` is "the final answer is not the gold answer" (no box counts as wrong), and a
row is **checkable** when it wrote at least one equation and its verdict is consistent (a located
error, or a right answer). A doomed row whose error cannot be located (right arithmetic throughout,
then no box) is not checkable; diagnostics leave such rows out.

Text normalisation keeps a map back to the original characters: ``\times``, ``\cdot``, ``×``, ``·``,
``x`` between numbers -> ``*``; ``−``, ``–`` -> ``-``; ``÷``, ``\div`` -> ``/``; ``$``, ``\(``,
``\)``, ``\[``, ``\]``, ``\left``, ``\right`` dropped; ``{,}`` and ``\,`` between digit groups -> ``,``;
numbers may use thousands separators (``1,234``). Equations chained as ``a + b = c - d = e`` count as
``a + b = c`` and ``c - d = e``. An ``lhs`` without an operator (``x = 5``, ``56 = 56``) is not an
equation.

**Prefix mode** (``prefix=True``, used while decoding): a number touching the end of the text may
still grow (``1`` -> ``17``), so it is not judged yet, and the final answer is not judged at all.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Sequence

import numpy as np

from llm_backend.problems import SPLITS, Problem, problem_id, split_of
from llm_backend.rewards import extract_boxed, parse_plain_integer
from llm_backend.task import MathTask, _StreamSource
from testbed.protocols import TaskResult

__all__ = [
    "CHAIN_EXAMPLE",
    "ChainCheck",
    "ChainResult",
    "Equation",
    "chain_problem",
    "iter_chain_problems",
    "token_of_char",
    "verify_chain",
]

CHAIN_EXAMPLE = ("What is (4 + 3) * 2 - 5?", "4 + 3 = 7. 7 * 2 = 14. 14 - 5 = 9. The answer is \\boxed{9}.")
"""One-shot demonstration of the chain task: one equation per step, then the boxed answer."""

OPS = "+-*"


# ---------------------------------------------------------------------------------------------
# problems


def chain_problem(rng: random.Random, *, steps: int = 3, digits: int = 2, mul_max: int = 9,
                  ops: str = OPS) -> tuple[str, int, list[int], str]:
    """One chain problem: ``(question, answer, operands, key)``.

    The start number and the operands of ``+`` and ``-`` have ``digits`` digits (a subtrahend never
    exceeds the running value, so every intermediate result is >= 0); a multiplier is in
    ``[2, mul_max]``.

    >>> q, a, operands, key = chain_problem(random.Random(0), steps=3, digits=2)
    >>> a == eval(q.removeprefix("What is ").rstrip("?"))
    True
    """
    if steps < 1 or digits < 1 or mul_max < 2 or not ops or set(ops) - set(OPS):
        raise ValueError(f"chain: need steps >= 1, digits >= 1, mul_max >= 2, ops from {OPS!r}; got "
                         f"steps={steps}, digits={digits}, mul_max={mul_max}, ops={ops!r}")
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    value = rng.randint(lo, hi)
    expr, top = str(value), ""  # top: the last operator at the expression's top level
    operands = [value]
    for _ in range(steps):
        op = rng.choice(ops)
        if op == "-" and value < 1:
            op = "+"
        if op == "*":
            b = rng.randint(2, mul_max)
            if top in "+-" and top:
                expr = f"({expr})"
            value *= b
        elif op == "-":
            b = rng.randint(min(lo, value), min(hi, value))
            value -= b
        else:
            b = rng.randint(lo, hi)
            value += b
        expr = f"{expr} {op} {b}"
        top = op
        operands.append(b)
    return f"What is {expr}?", value, operands, f"chain:{expr}"


def iter_chain_problems(seed: int, split: str, **knobs: Any) -> Iterator[Problem]:
    """Endless deterministic stream of chain problems of one ``split`` (train/test by :func:`split_of`
    of the expression, so no seed ever puts a test problem in training)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rng = random.Random(f"chain|{sorted(knobs.items())}|{split}|{seed}")
    while True:
        question, answer, operands, key = chain_problem(rng, **knobs)
        if split_of(key) != split:
            continue
        yield Problem(question, str(answer), {"id": problem_id("chain", key), "difficulty": "chain",
                                              "split": split, "key": key, "integer_answer": True,
                                              "source": "chain", "operands": operands})


# ---------------------------------------------------------------------------------------------
# normalisation with a character map

# (pattern, replacement) applied left to right in one scan; the replacement's characters all map to
# the first original character of the match.
_REPLACE = [
    (r"\\times|\\cdot|×|·|∗", "*"),
    (r"(?<=\d)\s*[xX]\s*(?=\d)", " * "),
    (r"−|–|—", "-"),
    (r"\\div|÷", "/"),
    (r"\\left|\\right|\\\(|\\\)|\\\[|\\\]|\$", ""),
    (r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})", ","),
    (r"\\!|\\;|\\quad", " "),
]
_SCAN = re.compile("|".join(f"({p})" for p, _ in _REPLACE))


def normalize(text: str) -> tuple[str, list[int]]:
    r"""``(normalised text, index map)``: ``map[i]`` is the original index of normalised character ``i``.

    >>> normalize(r"$3 \times 4 = 12$")[0]
    '3 * 4 = 12'
    """
    out: list[str] = []
    where: list[int] = []
    pos = 0
    for m in _SCAN.finditer(text):
        for j in range(pos, m.start()):
            out.append(text[j])
            where.append(j)
        rep = _REPLACE[m.lastindex - 1][1]
        out.extend(rep)
        where.extend([m.start()] * len(rep))
        pos = m.end()
    for j in range(pos, len(text)):
        out.append(text[j])
        where.append(j)
    return "".join(out), where


# ---------------------------------------------------------------------------------------------
# equations

_NUM = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_RHS = re.compile(rf"\s*(-?)\s*({_NUM})")
_LHS_CHARS = set("0123456789+-*/(). ,")


@dataclass(frozen=True)
class Equation:
    """One equation ``lhs = rhs`` as written (positions are in the original text)."""

    lhs: str
    rhs: Fraction
    rhs_start: int
    """Original index of the result's first character."""
    operands: tuple[tuple[Fraction, int], ...]
    """Each number of ``lhs`` with the original index of its first character."""
    value: Fraction | None
    """``lhs`` under standard precedence (None: not evaluable, e.g. a division by zero)."""
    value_ltr: Fraction | None
    """``lhs`` evaluated left to right, ignoring precedence."""
    rhs_values: tuple[Fraction, ...] = ()
    """When the right side is an expression (``a + b = c + d = e``): its values (both evaluations)."""

    @property
    def correct(self) -> bool:
        """The first number of the right side is the value of ``lhs`` (a running computation,
        ``12 + 5 = 17 - 3 = 14``), or the right side is an expression of the same value."""
        values = {self.value, self.value_ltr} - {None}
        return self.rhs in values or any(v in values for v in self.rhs_values)


def _num(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _tokens(expr: str) -> list[str | Fraction] | None:
    out: list[str | Fraction] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "+-*/()":
            out.append(c)
            i += 1
        else:
            m = _NUM_RE.match(expr, i)
            if m is None:
                return None
            out.append(_num(m.group()))
            i = m.end()
    return out


def _eval(tokens: list, precedence: bool) -> Fraction | None:
    """Evaluate numbers, ``+ - * /`` and parentheses (unary minus allowed); None if malformed."""
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def atom():
        nonlocal pos
        t = peek()
        if t == "-":
            pos += 1
            v = atom()
            return None if v is None else -v
        if t == "(":
            pos += 1
            v = expr()
            if peek() != ")":
                raise ValueError
            pos += 1
            return v
        if isinstance(t, Fraction):
            pos += 1
            return t
        raise ValueError

    def apply(a, op, b):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            raise ZeroDivisionError
        return a / b

    def term():
        nonlocal pos
        v = atom()
        while peek() in ("*", "/"):
            op = tokens[pos]
            pos += 1
            v = apply(v, op, atom())
        return v

    def expr():
        nonlocal pos
        v = term() if precedence else atom()
        while peek() in (("+", "-") if precedence else ("+", "-", "*", "/")):
            op = tokens[pos]
            pos += 1
            v = apply(v, op, term() if precedence else atom())
        return v

    try:
        v = expr()
    except (ValueError, ZeroDivisionError):
        return None
    return v if pos == len(tokens) else None


def _lhs_span(norm: str, eq: int) -> int:
    """Start of the arithmetic run that ends at the ``=`` at ``eq``."""
    i = eq
    while i > 0 and norm[i - 1] in _LHS_CHARS:
        # ". " and ", " end a sentence or a clause, not part of an expression.
        if norm[i - 1] in ".," and (i >= len(norm) or norm[i].isspace()):
            break
        i -= 1
    while i < eq and not (norm[i].isdigit() or norm[i] in "(-"):
        i += 1
    if i < eq and norm[i].isdigit() and i > 0 and (norm[i - 1].isalpha() or norm[i - 1] in "_\\"):
        while i < eq and norm[i].isdigit():  # "s1 = ...": the digit belongs to a word
            i += 1
    while i < eq and not (norm[i].isdigit() or norm[i] in "(-"):
        i += 1
    return i


def _rhs_span(norm: str, start: int) -> int:
    """End of the arithmetic run that starts at ``start`` (stops at ``=`` and at ". " / ", ")."""
    i = start
    while i < len(norm) and norm[i] in _LHS_CHARS:
        if norm[i] in ".," and (i + 1 >= len(norm) or norm[i + 1].isspace()):
            break
        i += 1
    while i > start and norm[i - 1] in " +-*/(.,":
        i -= 1
    return i


def _ended(tail: str) -> bool:
    """Whether the text after a right side shows that it is complete (prefix mode)."""
    tail = tail.lstrip(" \t")
    if not tail:
        return False
    c, nxt = tail[0], tail[1:2]
    if c in ".,":
        return nxt != "" and not nxt.isdigit()
    return not (c.isdigit() or c in "+-*/(")


def find_equations(text: str, *, prefix: bool = False) -> list[Equation]:
    r"""The equations of ``text`` in order (see the module docstring).

    >>> [(e.lhs, int(e.rhs), e.correct) for e in find_equations(r"12 + 5 = 17. 17 \times 3 = 50.")]
    [('12 + 5', 17, True), ('17 * 3', 50, False)]
    >>> [e.correct for e in find_equations("5 + 3 + 2 = 5 + 5 = 10, 12 + 5 = 17 - 3 = 14.")]
    [True, True, True, True]
    """
    norm, where = normalize(text)
    out = []
    for m in re.finditer(r"=", norm):
        eq = m.start()
        r = _RHS.match(norm, eq + 1)
        if r is None:
            continue
        end = _rhs_span(norm, r.start(2))
        if prefix and not _ended(norm[end:]):
            continue  # the result (or the expression it starts) may still grow
        start = _lhs_span(norm, eq)
        lhs = norm[start:eq].strip()
        toks = _tokens(lhs)
        if not toks or not any(t in ("+", "-", "*", "/") for t in toks[1:]):
            continue
        operands = tuple((_num(n.group()), where[n.start()]) for n in _NUM_RE.finditer(norm, start, eq))
        rhs = _num(r.group(2)) * (-1 if r.group(1) else 1)
        rhs_values: tuple[Fraction, ...] = ()
        rtoks = _tokens(norm[r.start(1) if r.group(1) else r.start(2):end])
        if rtoks and len(rtoks) > 1:
            rhs_values = tuple(v for v in (_eval(rtoks, True), _eval(rtoks, False)) if v is not None)
        out.append(Equation(lhs, rhs, where[r.start(1) if r.group(1) else r.start(2)], operands,
                            _eval(toks, True), _eval(toks, False), rhs_values))
    return out


@dataclass(frozen=True)
class ChainCheck:
    """The verdict on one response (character positions in the decoded text)."""

    failure_char: int
    """Index of the first character of the first wrong number, -1 if none."""
    doomed: bool
    """The final answer is not the gold answer (always False in prefix mode)."""
    checkable: bool
    """At least one equation, and a located error or a right answer."""
    equations: int
    reason: str
    """``ok``, ``arithmetic`` (a wrong result), ``operand`` (an unknown value used), ``answer``
    (right steps, wrong boxed number), ``no_equations``, ``unlocated`` (doomed, no error found)."""


def verify_chain(text: str, gold: int | str, numbers: Sequence[int], *, prefix: bool = False) -> ChainCheck:
    r"""Check the equations of a response to a chain problem whose question holds ``numbers``.

    >>> verify_chain("12 + 5 = 17. 17 * 3 = 51. The answer is \\boxed{51}.", 51, [12, 5, 3])
    ChainCheck(failure_char=-1, doomed=False, checkable=True, equations=2, reason='ok')
    >>> v = verify_chain("12 + 5 = 17. 17 * 3 = 41. The answer is \\boxed{41}.", 51, [12, 5, 3])
    >>> v.failure_char, v.doomed, v.reason
    (22, True, 'arithmetic')
    """
    known = {Fraction(int(n)) for n in numbers}
    eqs = find_equations(text, prefix=prefix)
    failure, reason = -1, "ok"
    for e in eqs:
        unknown = [p for v, p in e.operands if v not in known]
        if unknown:
            failure, reason = unknown[0], "operand"
            break
        if not e.correct:
            failure, reason = e.rhs_start, "arithmetic"
            break
        known.add(e.rhs)
        known.update(e.rhs_values)
    if prefix:
        return ChainCheck(failure, False, bool(eqs), len(eqs), reason if eqs else "no_equations")
    boxed = extract_boxed(text)
    value = None if boxed is None else parse_plain_integer(boxed)
    doomed = value is None or value != int(gold)
    if failure < 0 and doomed and value is not None:
        # right steps, wrong boxed number: the box's content is the wrong number
        failure, reason = _box_content_start(text), "answer"
    if not eqs:
        return ChainCheck(-1, doomed, False, 0, "no_equations")
    if failure < 0 and doomed:
        reason = "unlocated"
    return ChainCheck(failure, doomed, failure >= 0 or not doomed, len(eqs), reason)


def _box_content_start(text: str) -> int:
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    j = text.find("{", i) + 1
    while j < len(text) and not (text[j].isdigit() or text[j] in "-+"):
        j += 1
    return j


# ---------------------------------------------------------------------------------------------
# characters -> tokens


def char_offsets(tokenizer, tokens: Sequence[int]) -> list[int]:
    """``offsets[i]``: index in ``decode(tokens)`` where token ``i``'s text starts (decoding each prefix,
    so multi-byte characters split over tokens land on the token that completes them)."""
    return [len(tokenizer.decode(list(tokens[:i]), skip_special_tokens=True)) for i in range(len(tokens))]


def token_of_char(offsets: Sequence[int], char: int) -> int:
    """Index of the token holding character ``char`` (-1 for ``char < 0``)."""
    if char < 0:
        return -1
    return max(bisect.bisect_right(list(offsets), char) - 1, 0)


# ---------------------------------------------------------------------------------------------
# the task's per-row verdict


@dataclass
class ChainResult(TaskResult):
    """:class:`testbed.protocols.TaskResult` plus ``checkable`` (b,) bool (see :func:`verify_chain`)."""

    checkable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


# ---------------------------------------------------------------------------------------------
# the task

CHAIN_KNOBS = {"steps": 3, "digits": 2, "mul_max": 9, "ops": OPS, "plant_fraction": 0.0, "plant_step": 1}
"""``task.source_kwargs`` of the chain task and their defaults."""


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
                 seed: int = 0, **kw):
        super().__init__(tokenizer, source, example=CHAIN_EXAMPLE, **kw)
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
    chain_problem(random.Random(0), **knobs)  # validates the knobs, naming them
    tokenizer = load_tokenizer(model_cfg.path, getattr(model_cfg, "cache_dir", ""))
    return ChainTask(tokenizer, _ChainSource(seed, knobs), num_slots=num_slots, seed=seed,
                     reward_timeout=task_cfg.reward_timeout, format_score=task_cfg.format_score,
                     system_prompt=task_cfg.system_prompt, **plant)
