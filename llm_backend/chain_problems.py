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
from typing import Any, Iterator

from llm_backend.problems import SPLITS, Problem, problem_id, split_of

__all__ = ["CHAIN_EXAMPLE", "OPS", "chain_problem", "iter_chain_problems"]

CHAIN_EXAMPLE = ("What is (4 + 3) * 2 - 5?", "4 + 3 = 7. 7 * 2 = 14. 14 - 5 = 9. The answer is \\boxed{9}.")
"""One-shot demonstration of the chain task: one equation per step, then the boxed answer."""

OPS = "+-*"


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
