r"""Answer-checking rewards for math tasks (TRL style: batched lists in, ``list[float]`` out).

The final answer of a completion is the content of its last top-level ``\boxed{...}``.

* Integer-answer items (every generated problem; any dataset item whose gold answer is an integer)
  are checked **exactly**: the boxed text must be a plain number -- optional sign, digits,
  optionally grouped in threes by ``,``, ``{,}`` or ``\,`` -- and its value must equal the gold
  integer. This closes a reward hack: math-verify evaluates expressions, so ``\boxed{82*5}``
  verifies as 410, and a policy rewarded for that learns to copy the question into the box.
* Other items (fractions, radicals, intervals, ... from MATH-style data) are checked with
  math-verify (``parse`` + ``verify``) under a per-item wall-clock timeout.

Reward per item: 1.0 if correct; ``format_score`` if the answer is well formed but wrong (or could
not be verified in time); 0.0 if there is no closed ``\boxed{}`` or, for integer items, the box does
not hold a plain number.

Timeouts: in the main thread a ``SIGALRM`` interval timer (float seconds) interrupts the check; in any
other thread (signals are main-thread only) each check runs in a worker process that is killed on
timeout. math-verify's own ``signal.alarm`` timeouts are switched off so they cannot clobber ours.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import signal
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

__all__ = [
    "AnswerCheck",
    "MAX_ANSWER_CHARS",
    "accuracy_reward",
    "call_with_timeout",
    "check_answers",
    "extract_boxed",
    "format_reward",
    "is_plain_integer",
    "parse_plain_integer",
]

MAX_ANSWER_CHARS = 500
"""Boxed answers longer than this are not sent to math-verify (counted as wrong)."""

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# Plain number: optional sign, then digits, either ungrouped or grouped in threes by one separator.
_SEP = r"(?:,|\{,\}|\\,|\s)"
_PLAIN_INT = re.compile(rf"^([+-]?)\s*(\d+|\d{{1,3}}(?:{_SEP}\d{{3}})+)$")


def extract_boxed(text: str) -> str | None:
    r"""Content of the last top-level ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, stripped.

    Braces nest; escaped braces (``\{``, ``\}``) do not count. Boxes inside a box are part of its
    content. If the last box opened is never closed the answer is malformed: ``None``.

    >>> extract_boxed(r"so \boxed{3} then \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed{\{1, 2\}}")
    '\\{1, 2\\}'
    >>> extract_boxed(r"\boxed{\boxed{5}}")
    '\\boxed{5}'
    >>> extract_boxed("no box") is None, extract_boxed(r"\boxed{5} then \boxed{6") is None
    (True, True)
    """
    found: str | None = None
    pos = 0
    while True:
        starts = [(i, c) for c in _BOX_COMMANDS if (i := text.find(c, pos)) >= 0]
        if not starts:
            return found
        start, cmd = min(starts)
        j = start + len(cmd)
        while j < len(text) and text[j].isspace():
            j += 1
        if j >= len(text) or text[j] != "{":  # "\boxeds" or "\boxed 5": not a braced box
            pos = start + len(cmd)
            continue
        depth, k = 0, j
        while k < len(text):
            ch = text[k]
            if ch == "\\":
                k += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        if depth != 0:  # the last box opened never closes
            return None
        found = text[j + 1 : k].strip()
        pos = k + 1


def parse_plain_integer(text: str) -> int | None:
    r"""The value of ``text`` if it is a plain integer, else ``None``.

    >>> [parse_plain_integer(s) for s in ["410", " -4,100 ", "4{,}100", "4\\,100", "+07"]]
    [410, -4100, 4100, 4100, 7]
    >>> [parse_plain_integer(s) for s in ["82*5", "41,00", "4.1", "", "\\frac{820}{2}", "1e3"]]
    [None, None, None, None, None, None]
    """
    m = _PLAIN_INT.match(text.strip())
    if m is None:
        return None
    digits = re.sub(r"\D", "", m.group(2))
    return -int(digits) if m.group(1) == "-" else int(digits)


def is_plain_integer(text: str) -> bool:
    """Whether ``text`` is a plain integer (see :func:`parse_plain_integer`)."""
    return parse_plain_integer(text) is not None


@dataclass(frozen=True)
class AnswerCheck:
    """The verdict on one completion."""

    reward: float
    correct: bool
    boxed: str | None
    """The extracted final answer (None: no closed box)."""
    status: str
    """``correct``, ``wrong``, ``no_box``, ``not_a_number`` (integer item, box not a plain number),
    ``too_long``, ``timeout``."""


# ---------------------------------------------------------------------------------------------
# math-verify with our own timeout


class _CheckTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException so math-verify's ``except Exception`` can't eat it."""


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its timeout is off; we pass None on purpose (we time out ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse("\\boxed{" + gold + "}", parsing_timeout=None)


def _verify_general(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answers (both box contents). No timeout of its own."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:  # gold unparsable: fall back to exact text match
        return "".join(gold.split()) == "".join(pred.split())
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


_warm = False


def _warm_up() -> None:
    """Import math-verify and run one check untimed: first-use imports and parser set-up take
    seconds on a loaded machine and must not count against the first answer's timeout."""
    global _warm
    if not _warm:
        _verify_general("\\frac{1}{2}", "\\dfrac{2}{4}")
        _warm = True


def _alarm_handler(signum, frame):
    raise _CheckTimeout()


def _call_with_signal_timeout(gold: str, pred: str, timeout: float) -> bool | None:
    """``_verify_general`` under a SIGALRM interval timer; None on timeout. Main thread only."""
    old_handler = signal.signal(signal.SIGALRM, _alarm_handler)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout)
    started = time.monotonic()
    result: bool | None = None
    try:
        try:
            result = _verify_general(gold, pred)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _CheckTimeout:  # also catches an alarm that lands between the check's end and the disarm
        result = None
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # someone else's timer was running: give back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - started), 1e-3))
    return result


def call_with_timeout(fn, args: tuple, timeout: float):
    """``(True, fn(*args))``, or ``(False, None)`` when it runs past ``timeout`` seconds.

    Main thread: a SIGALRM interval timer interrupts ``fn``. Other threads (signals are main-thread
    only): ``fn`` runs in a helper thread that is abandoned, not killed, on timeout -- for checkers such
    as reasoning-gym's ``score_answer`` whose state does not pickle into a worker process.
    """
    if timeout is None or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if threading.current_thread() is not threading.main_thread():
        from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout

        ex = ThreadPoolExecutor(1)
        try:
            return True, ex.submit(fn, *args).result(timeout)
        except FutureTimeout:
            return False, None
        finally:
            ex.shutdown(wait=False)
    old_handler = signal.signal(signal.SIGALRM, _alarm_handler)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout)
    started = time.monotonic()
    try:
        try:
            return True, fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _CheckTimeout:
        return False, None
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - started), 1e-3))


_pool = None
_pool_lock = threading.Lock()


def _call_in_worker(gold: str, pred: str, timeout: float) -> bool | None:
    """``_verify_general`` in a worker process, killed on timeout; None on timeout. Any thread."""
    global _pool
    with _pool_lock:  # one check at a time through the single worker
        if _pool is None:
            _pool = multiprocessing.get_context("spawn").Pool(1, initializer=_warm_up)
            _pool.apply(_warm_up)  # wait, untimed, until the worker is up and warm
        try:
            return _pool.apply_async(_verify_general, (gold, pred)).get(timeout)
        except multiprocessing.TimeoutError:
            _pool.terminate()
            _pool = None
            return None


def _verify_with_timeout(gold: str, pred: str, timeout: float) -> bool | None:
    if timeout is None or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if threading.current_thread() is threading.main_thread():
        _warm_up()
        return _call_with_signal_timeout(gold, pred, timeout)
    return _call_in_worker(gold, pred, timeout)


# ---------------------------------------------------------------------------------------------
# batched reward functions


def _per_item(flag: bool | Sequence[bool], n: int) -> list[bool]:
    if isinstance(flag, bool):
        return [flag] * n
    flags = [bool(f) for f in flag]
    if len(flags) != n:
        raise ValueError(f"integer_answers has {len(flags)} entries for {n} completions")
    return flags


def check_answers(
    completions: Sequence[str],
    answers: Sequence[str],
    *,
    timeout: float = 2.0,
    integer_answers: bool | Sequence[bool] = False,
    format_score: float = 0.0,
) -> list[AnswerCheck]:
    r"""Check each completion's last ``\boxed{}`` against its gold answer (see the module docstring).

    ``integer_answers`` is one flag for all items or one per item; an integer item's gold answer must
    itself be a plain integer (``ValueError`` otherwise).

    >>> [c.status for c in check_answers([r"\boxed{410}", r"\boxed{82*5}", "410"], ["410"] * 3,
    ...                                  integer_answers=True)]
    ['correct', 'not_a_number', 'no_box']
    """
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    flags = _per_item(integer_answers, len(completions))
    out: list[AnswerCheck] = []
    for text, gold, integer in zip(completions, answers, flags):
        gold = str(gold).strip()
        boxed = extract_boxed(text)
        if boxed is None:
            out.append(AnswerCheck(0.0, False, None, "no_box"))
            continue
        if integer:
            gold_value = parse_plain_integer(gold)
            if gold_value is None:
                raise ValueError(f"integer_answers=True but the gold answer {gold!r} is not an integer")
            value = parse_plain_integer(boxed)
            if value is None:
                out.append(AnswerCheck(0.0, False, boxed, "not_a_number"))
            elif value == gold_value:
                out.append(AnswerCheck(1.0, True, boxed, "correct"))
            else:
                out.append(AnswerCheck(float(format_score), False, boxed, "wrong"))
            continue
        if len(boxed) > MAX_ANSWER_CHARS:
            out.append(AnswerCheck(float(format_score), False, boxed, "too_long"))
            continue
        ok = _verify_with_timeout(gold, boxed, timeout)
        if ok is None:
            out.append(AnswerCheck(float(format_score), False, boxed, "timeout"))
        elif ok:
            out.append(AnswerCheck(1.0, True, boxed, "correct"))
        else:
            out.append(AnswerCheck(float(format_score), False, boxed, "wrong"))
    return out


def accuracy_reward(
    completions: list[str],
    answers: list[str],
    *,
    timeout: float = 2.0,
    integer_answers: bool | Sequence[bool] = False,
    format_score: float = 0.0,
) -> list[float]:
    r"""1.0 for a correct final ``\boxed{}`` answer, ``format_score`` for a well-formed wrong one, else 0.0.

    >>> accuracy_reward([r"It is \boxed{410}.", r"\boxed{82*5}", r"\boxed{411}", "410"], ["410"] * 4,
    ...                 integer_answers=True, format_score=0.1)
    [1.0, 0.0, 0.1, 0.0]
    >>> accuracy_reward([r"\boxed{0.5}", r"\boxed{\dfrac{2}{4}}", r"\boxed{\frac{1}{3}}"], [r"\frac{1}{2}"] * 3)
    [1.0, 1.0, 0.0]
    """
    return [
        c.reward
        for c in check_answers(
            completions, answers, timeout=timeout, integer_answers=integer_answers, format_score=format_score
        )
    ]


def format_reward(completions: list[str], *, integer_answers: bool | Sequence[bool] = False) -> list[float]:
    r"""1.0 if a completion ends its answer in a closed, non-empty ``\boxed{}`` (a plain number for
    integer items), else 0.0.

    >>> format_reward([r"\boxed{7}", r"\boxed{}", r"\boxed{3+4}", "7", r"\boxed{7"], integer_answers=True)
    [1.0, 0.0, 0.0, 0.0, 0.0]
    >>> format_reward([r"\boxed{3+4}"])
    [1.0]
    """
    flags = _per_item(integer_answers, len(completions))
    out = []
    for text, integer in zip(completions, flags):
        boxed = extract_boxed(text)
        ok = bool(boxed) and (not integer or parse_plain_integer(boxed) is not None)
        out.append(1.0 if ok else 0.0)
    return out
