"""Seeded procedural math word problems with exact integer answers and graded difficulty.

Each difficulty is a sampler of problems. A problem's **canonical key** names its content up to
surface form: the operation and its operands (sorted for ``+`` and ``x``, so ``3 + 5`` and ``5 + 3``
are one problem), or a word template's id and its numbers (the name and the item are decoration).
The train/test split is a fixed function of the key alone (:func:`split_of`), independent of the
seed and of the difficulty that drew the problem, so no seed of any difficulty ever puts a test
problem in training.

Difficulties, easiest first (measured base accuracy of SmolLM2-135M in DESIGN.md: about 80% on
``sum1``, 25% on ``sum2``, 0% on ``word2``):

==========  ============================================================  =========================
name        what                                                          example
==========  ============================================================  =========================
``sum1``    one-digit sum                                                 What is 3 + 5?
``mul1``    one-digit product                                             What is 7 * 8?
``sum2``    two-digit sum                                                 What is 37 + 48?
``sub2``    two-digit difference (non-negative)                           What is 74 - 29?
``mul2``    two-digit times one-digit                                     What is 37 * 6?
``sum3``    three-digit sum                                               What is 374 + 518?
``word1``   one-step word problem (add, take away or multiply)            Anna has 23 stickers ...
``word2``   two-step word problem                                         Tom has 23 apples. He ...
``mixed``   each problem from one of the above, uniformly
==========  ============================================================  =========================
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = [
    "DIFFICULTIES",
    "SPLITS",
    "TEST_FRACTION",
    "Problem",
    "generate",
    "iter_problems",
    "problem_id",
    "split_of",
]

TEST_FRACTION = 0.2
"""Share of canonical problem keys held out for the ``test`` split."""

SPLITS = ("train", "test")

_SPLIT_SALT = "testbed-split-v1"


@dataclass
class Problem:
    """A math problem with an exact answer."""

    question: str
    answer: str
    """The gold final answer as text (an integer for generated problems)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """``id``, ``difficulty`` (or dataset ``format``), ``split``, ``key``, ``integer_answer``, ..."""


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """``"test"`` for a fixed ``test_fraction`` of canonical keys, else ``"train"``.

    >>> split_of("add:3,5") == split_of("add:3,5")
    True
    """
    return "test" if _digest(f"{_SPLIT_SALT}|{key}") < test_fraction * 2**64 else "train"


def problem_id(prefix: str, key: str) -> str:
    """Short stable id of a problem: ``prefix-<10 hex digits of its key's hash>``."""
    return f"{prefix}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------
# samplers: rng -> (question, answer, canonical key)

Sample = tuple[str, int, str]


def _binary(op: str, lo_a: int, hi_a: int, lo_b: int, hi_b: int) -> Callable[[random.Random], Sample]:
    def sample(rng: random.Random) -> Sample:
        a, b = rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)
        if op == "-" and b > a:
            a, b = b, a
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        name = {"+": "add", "-": "sub", "*": "mul"}[op]
        ka, kb = (min(a, b), max(a, b)) if op in "+*" else (a, b)
        return f"What is {a} {op} {b}?", value, f"{name}:{ka},{kb}"

    return sample


_NAMES = [("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Maria", "She"), ("Sam", "He"),
          ("Lily", "She"), ("Omar", "He"), ("Mia", "She"), ("Leo", "He"), ("Zoe", "She")]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "stamps", "shells", "coins"]

# Word templates: id -> (text, number sampler, answer). Numbers are never 1 (no "1 apples").
_Nums = Callable[[random.Random], tuple[int, ...]]


def _w_take(rng: random.Random) -> tuple[int, ...]:
    a = rng.randint(10, 99)
    return a, rng.randint(2, a - 2)


def _w_add_give(rng: random.Random) -> tuple[int, ...]:
    a, b = rng.randint(10, 60), rng.randint(10, 60)
    return a, b, rng.randint(2, min(a + b - 2, 60))


def _w_boxes_give(rng: random.Random) -> tuple[int, ...]:
    a, b = rng.randint(2, 9), rng.randint(3, 12)
    return a, b, rng.randint(2, a * b - 2)


def _w_shop(rng: random.Random) -> tuple[int, ...]:
    a = rng.randint(40, 99)
    b = rng.randint(2, a - 20)
    return a, b, rng.randint(2, a - b - 2)


_WORD1: dict[str, tuple[str, _Nums, Callable[..., int]]] = {
    "gain": ("{name} has {a} {item}. {pron} gets {b} more. How many {item} does {name} have now?",
             lambda r: (r.randint(2, 60), r.randint(2, 60)), lambda a, b: a + b),
    "take": ("{name} has {a} {item} and gives {b} of them away. How many {item} does {name} have left?",
             _w_take, lambda a, b: a - b),
    "bags": ("{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?",
             lambda r: (r.randint(2, 9), r.randint(2, 12)), lambda a, b: a * b),
}

_WORD2: dict[str, tuple[str, _Nums, Callable[..., int]]] = {
    "add_give": ("{name} has {a} {item}. {pron} buys {b} more and then gives {c} to a friend. "
                 "How many {item} does {name} have now?", _w_add_give, lambda a, b, c: a + b - c),
    "boxes_give": ("{name} buys {a} boxes of {item}. Each box has {b} {item}. {pron} gives away {c} {item}. "
                   "How many {item} does {name} have left?", _w_boxes_give, lambda a, b, c: a * b - c),
    "shop": ("A shop has {a} {item}. It sells {b} in the morning and {c} in the afternoon. "
             "How many {item} are left?", _w_shop, lambda a, b, c: a - b - c),
    "reading": ("{name} reads {a} pages every day for {b} days and then reads {c} more pages. "
                "How many pages does {name} read in total?",
                lambda r: (r.randint(5, 30), r.randint(2, 9), r.randint(2, 40)), lambda a, b, c: a * b + c),
    "packs": ("{name} has {a} {item}. {pron} buys {b} packs with {c} {item} in each pack. "
              "How many {item} does {name} have now?",
              lambda r: (r.randint(2, 40), r.randint(2, 9), r.randint(2, 12)), lambda a, b, c: a + b * c),
}


def _word(templates: dict[str, tuple[str, _Nums, Callable[..., int]]]) -> Callable[[random.Random], Sample]:
    ids = sorted(templates)

    def sample(rng: random.Random) -> Sample:
        tid = rng.choice(ids)
        text, nums, answer = templates[tid]
        values = nums(rng)
        name, pron = rng.choice(_NAMES)
        item = rng.choice(_ITEMS)
        letters = dict(zip("abc", values))
        question = text.format(name=name, pron=pron, item=item, **letters)
        return question, answer(*values), f"word:{tid}:{','.join(map(str, values))}"

    return sample


_SAMPLERS: dict[str, tuple[str, Callable[[random.Random], Sample]]] = {
    "sum1": ("one-digit sum", _binary("+", 0, 9, 0, 9)),
    "mul1": ("one-digit product", _binary("*", 1, 9, 1, 9)),
    "sum2": ("two-digit sum", _binary("+", 10, 99, 10, 99)),
    "sub2": ("two-digit difference (non-negative)", _binary("-", 10, 99, 10, 99)),
    "mul2": ("two-digit times one-digit", _binary("*", 10, 99, 2, 9)),
    "sum3": ("three-digit sum", _binary("+", 100, 999, 100, 999)),
    "word1": ("one-step word problem", _word(_WORD1)),
    "word2": ("two-step word problem", _word(_WORD2)),
}

DIFFICULTIES: dict[str, str] = {name: desc for name, (desc, _) in _SAMPLERS.items()}
DIFFICULTIES["mixed"] = "each problem from one of the other difficulties, uniformly"
"""Difficulty name -> one-line description, easiest first (``mixed`` last)."""


def _check(difficulty: str, split: str) -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def iter_problems(difficulty: str, seed: int = 0, split: str = "train") -> Iterator[Problem]:
    """Endless deterministic stream of problems of ``difficulty`` from ``split`` (with repeats:
    small difficulties such as ``sum1`` have only a few dozen distinct problems per split)."""
    _check(difficulty, split)
    rng = random.Random(f"{difficulty}|{split}|{seed}")
    kinds = [k for k in _SAMPLERS] if difficulty == "mixed" else [difficulty]
    while True:
        kind = rng.choice(kinds) if len(kinds) > 1 else kinds[0]
        question, answer, key = _SAMPLERS[kind][1](rng)
        if split_of(key) != split:
            continue
        meta = {"id": problem_id(kind, key), "difficulty": kind, "split": split, "key": key,
                "integer_answer": True, "source": "generator"}
        if difficulty == "mixed":
            meta["mixture"] = "mixed"
        yield Problem(question, str(answer), meta)


def generate(difficulty: str, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
    """The first ``n`` problems of :func:`iter_problems` (deterministic in ``seed``).

    >>> p = generate("sum2", 1, seed=0)[0]
    >>> int(p.answer) == eval(p.question.removeprefix("What is ").rstrip("?"))
    True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(itertools.islice(iter_problems(difficulty, seed, split), n))
