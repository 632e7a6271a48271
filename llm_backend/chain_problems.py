"""Chain problems: ``steps`` operations applied to a start number, with exact answers.

A **chain problem** applies ``steps`` operations to a start number, left to right, and shows the
expression with the parentheses standard precedence needs (``(37 + 48 - 12) * 6``), so the
canonical solution is one equation per step (``37 + 48 = 85. 85 - 12 = 73. 73 * 6 = 438.``), the
style of :data:`CHAIN_EXAMPLE`, the one-shot demonstration.

Problems are split into train and test by their expression (:func:`llm_backend.problems.split_of`);
the task that poses them and checks the answers is :mod:`llm_backend.chain`, the checker of the
written equations :mod:`llm_backend.verifier`.
"""

from __future__ import annotations

import random
import re
from typing import Any, Iterator, Sequence

from llm_backend.problems import SPLITS, Problem, problem_id, split_of

__all__ = ["CHAIN_EXAMPLE", "EXAMPLES", "LONG_CHAIN_EXAMPLE", "OPS", "chain_problem", "chain_solution", "check_knobs",
           "iter_chain_problems", "step_range"]

CHAIN_EXAMPLE = ("What is (4 + 3) * 2 - 5?", "4 + 3 = 7. 7 * 2 = 14. 14 - 5 = 9. The answer is \\boxed{9}.")
"""One-shot demonstration of the chain task: one equation per step, then the boxed answer."""

LONG_CHAIN_EXAMPLE = ("What is 6 + 5 - 3 + 9 - 4 + 2 - 7?",
                      "6 + 5 = 11. 11 - 3 = 8. 8 + 9 = 17. 17 - 4 = 13. 13 + 2 = 15. 15 - 7 = 8. "
                      "The answer is \\boxed{8}.")
"""A longer demonstration (six ``+``/``-`` steps of one-digit operands) for long chains, the chain
task's ``example: long``; its problem is in the training split, never in ``test``."""

EXAMPLES = {"short": CHAIN_EXAMPLE, "long": LONG_CHAIN_EXAMPLE}
"""``task.source_kwargs.example`` -> the one-shot demonstration (default ``short``)."""

OPS = "+-*"

LATER_KNOBS = {"max_value": 0}
"""Generator knobs added after the first studies, each with the value that changes nothing: a knob at
that value is left out of the stream's seed, so every stream drawn before it existed stays the same."""


def _knob(name: str) -> str:
    return f"task.source_kwargs.{name}"


def step_range(steps: Any) -> tuple[int, int]:
    """``steps`` as ``(low, high)``: an int ``n`` is ``(n, n)``; a pair ``[low, high]`` means a number of
    steps drawn per problem, uniform on ``low..high``.

    >>> step_range(3), step_range([4, 8])
    ((3, 3), (4, 8))
    """
    pair = isinstance(steps, (list, tuple)) and len(steps) == 2
    values = list(steps) if pair else [steps]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
        raise ValueError(f"{_knob('steps')}: an integer or a pair [low, high] of integers, got {steps!r}")
    lo, hi = values[0], values[-1]
    if lo < 1 or lo > hi:
        raise ValueError(f"{_knob('steps')}: need 1 <= low <= high, got {steps!r}")
    return lo, hi


def check_knobs(*, steps: Any = 3, digits: int = 2, mul_max: int = 9, ops: str = OPS, max_value: int = 0) -> None:
    """Raise a ValueError naming the ``task.source_kwargs`` field of the first bad generator knob."""
    step_range(steps)
    for name, value, low in (("digits", digits, 1), ("mul_max", mul_max, 2), ("max_value", max_value, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{_knob(name)}: must be an integer >= {low}, got {value!r}")
    if not isinstance(ops, str) or not ops or set(ops) - set(OPS):
        raise ValueError(f"{_knob('ops')}: one or more of {OPS!r} (e.g. '+-'), got {ops!r}")
    if max_value and max_value < 10 ** digits - 1:
        raise ValueError(f"{_knob('max_value')}: must be 0 (no bound) or at least the largest {digits}-digit "
                         f"operand, {10 ** digits - 1}; got {max_value}")


def chain_problem(rng: random.Random, *, steps: int | Sequence[int] = 3, digits: int = 2, mul_max: int = 9,
                  ops: str = OPS, max_value: int = 0) -> tuple[str, int, list[int], str]:
    """One chain problem: ``(question, answer, operands, key)``.

    ``steps`` operations, or a pair ``[low, high]``: the problem draws its number of steps uniformly
    from that range. The start number and the operands of ``+`` and ``-`` have ``digits`` digits (a
    subtrahend never exceeds the running value, so every intermediate result is >= 0); a multiplier is
    in ``[2, mul_max]``. ``max_value`` (0: none) bounds every intermediate result: an operation whose
    result would exceed it becomes a ``-`` (with a subtrahend drawn as any other).

    >>> q, a, operands, key = chain_problem(random.Random(0), steps=3, digits=2)
    >>> a == eval(q.removeprefix("What is ").rstrip("?"))
    True
    >>> q, a, operands, key = chain_problem(random.Random(1), steps=[6, 9], digits=1, ops="+-", max_value=20)
    >>> 7 <= len(operands) <= 10 and 0 <= a <= 20 and a == eval(q.removeprefix("What is ").rstrip("?"))
    True
    """
    check_knobs(steps=steps, digits=digits, mul_max=mul_max, ops=ops, max_value=max_value)
    low, high = step_range(steps)
    n_steps = low if low == high else rng.randint(low, high)  # a fixed count draws nothing (old streams)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    value = rng.randint(lo, hi)
    expr, top = str(value), ""  # top: the last operator at the expression's top level
    operands = [value]
    for _ in range(n_steps):
        op = rng.choice(ops)
        if op == "-" and value < 1:
            op = "+"
        if op == "*":
            b = rng.randint(2, mul_max)
        elif op == "+":
            b = rng.randint(lo, hi)
        if max_value and op != "-" and (value * b if op == "*" else value + b) > max_value:
            op = "-"  # value >= 1 here: 0 + b <= hi <= max_value and 0 * b = 0
        if op == "*":
            if top in "+-" and top:
                expr = f"({expr})"
            value *= b
        elif op == "-":
            b = rng.randint(min(lo, value), min(hi, value))
            value -= b
        else:
            value += b
        expr = f"{expr} {op} {b}"
        top = op
        operands.append(b)
    return f"What is {expr}?", value, operands, f"chain:{expr}"


def chain_solution(question: str, operands: Sequence[int]) -> str:
    r"""The canonical solution of a chain problem: one equation per step, left to right, then the boxed
    answer (the style of :data:`CHAIN_EXAMPLE`).

    >>> chain_solution("What is (4 + 3) * 2 - 5?", [4, 3, 2, 5])
    '4 + 3 = 7. 7 * 2 = 14. 14 - 5 = 9. The answer is \\boxed{9}.'
    """
    ops = re.findall(r" ([-+*]) ", question)
    if len(ops) != len(operands) - 1:
        raise ValueError(f"{question!r}: {len(ops)} operators for {len(operands)} numbers")
    value, parts = int(operands[0]), []
    for op, b in zip(ops, operands[1:]):
        new = value + b if op == "+" else value - b if op == "-" else value * b
        parts.append(f"{value} {op} {b} = {new}.")
        value = new
    return " ".join(parts) + f" The answer is \\boxed{{{value}}}."


def _seed_knobs(knobs: dict[str, Any]) -> list[tuple[str, Any]]:
    """The knobs that name a stream's seed: later knobs at their no-op value left out, ``steps`` pairs as lists."""
    out = []
    for k, v in sorted(knobs.items()):
        if k in LATER_KNOBS and v == LATER_KNOBS[k]:
            continue
        out.append((k, list(v) if isinstance(v, tuple) else v))
    return out


def iter_chain_problems(seed: int, split: str, **knobs: Any) -> Iterator[Problem]:
    """Endless deterministic stream of chain problems of one ``split`` (train/test by :func:`split_of`
    of the expression, so no seed ever puts a test problem in training)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    check_knobs(**knobs)
    rng = random.Random(f"chain|{_seed_knobs(knobs)}|{split}|{seed}")
    while True:
        question, answer, operands, key = chain_problem(rng, **knobs)
        if split_of(key) != split:
            continue
        yield Problem(question, str(answer), {"id": problem_id("chain", key), "difficulty": "chain",
                                              "split": split, "key": key, "integer_answer": True,
                                              "source": "chain", "operands": operands})
