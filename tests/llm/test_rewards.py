r"""Answer-checking rewards: tables of cases, the \boxed{82*5} hack, timeouts, doctests."""

from __future__ import annotations

import doctest
import signal
import threading
import time

import pytest

from llm_backend import rewards
from llm_backend.rewards import (
    accuracy_reward,
    check_answers,
    extract_boxed,
    format_reward,
    parse_plain_integer,
)


def test_doctests():
    result = doctest.testmod(rewards)
    assert result.attempted >= 8 and result.failed == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is \boxed{410}.", "410"),
        (r"\boxed{1} and later \boxed{2}", "2"),  # the last box
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not nest
        (r"\boxed{\boxed{7}} then nothing", r"\boxed{7}"),  # box in a box: the outer one
        (r"\boxed {  12 }", "12"),  # space before the brace; content stripped
        (r"\fbox{3}", "3"),
        (r"\boxed{}", ""),
        ("no box at all: 410", None),
        (r"\boxed{5} and then \boxed{6", None),  # last box never closes: malformed
        (r"\boxed{\frac{1}{2}", None),
        (r"\boxed 5", None),  # unbraced form is not accepted
        (r"\boxedx{5}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, value",
    [("410", 410), ("  410 ", 410), ("-3", -3), ("+3", 3), ("4,100", 4100), ("1,234,567", 1234567),
     ("4{,}100", 4100), (r"4\,100", 4100), ("4 100", 4100), ("007", 7),
     ("82*5", None), (r"82 \times 5", None), ("41,00", None), ("4,1000", None), ("410.0", None),
     ("4.1", None), (r"\frac{820}{2}", None), ("1e3", None), ("", None), ("- ", None), ("x", None),
     (r"\text{410}", None), ("410 apples", None)],
)
def test_parse_plain_integer(text, value):
    assert parse_plain_integer(text) == value


# (completion, gold, expected reward with format_score=0.25, expected status)
INTEGER_CASES = [
    (r"82 * 5 = 410, so \boxed{410}.", "410", 1.0, "correct"),
    (r"\boxed{411}", "410", 0.25, "wrong"),
    ("The answer is 410.", "410", 0.0, "no_box"),
    (r"\boxed{410", "410", 0.0, "no_box"),  # malformed: never closed
    (r"\boxed{\frac{410}{}", "410", 0.0, "no_box"),  # malformed LaTeX, unbalanced
    (r"\boxed{82*5}", "410", 0.0, "not_a_number"),  # the reward hack: an expression that evaluates to 410
    (r"\boxed{82 \times 5}", "410", 0.0, "not_a_number"),
    (r"\boxed{\frac{820}{2}}", "410", 0.0, "not_a_number"),
    (r"\boxed{400+10}", "410", 0.0, "not_a_number"),
    (r"\boxed{410.0}", "410", 0.0, "not_a_number"),
    (r"\boxed{ 410 }", "410", 1.0, "correct"),  # spaces
    (r"\boxed{4,100}", "4100", 1.0, "correct"),  # commas
    (r"\boxed{4{,}100}", "4100", 1.0, "correct"),
    (r"\boxed{4100}", "4,100", 1.0, "correct"),  # gold with commas
    (r"\boxed{-7}", "-7", 1.0, "correct"),
    (r"\boxed{7}", "-7", 0.25, "wrong"),
    (r"\boxed{}", "410", 0.0, "not_a_number"),
]


@pytest.mark.parametrize("completion, gold, reward, status", INTEGER_CASES)
def test_integer_answers(completion, gold, reward, status):
    (check,) = check_answers([completion], [gold], integer_answers=True, format_score=0.25)
    assert (check.reward, check.status, check.correct) == (reward, status, status == "correct")
    assert accuracy_reward([completion], [gold], integer_answers=True, format_score=0.25) == [reward]


def test_expression_hack_is_what_math_verify_would_reward():
    # Why integer mode exists: math-verify alone evaluates the expression and accepts it.
    assert accuracy_reward([r"\boxed{82*5}"], ["410"]) == [1.0]
    assert accuracy_reward([r"\boxed{82*5}"], ["410"], integer_answers=True) == [0.0]


# MATH-style (not integer): math-verify equivalence.
GENERAL_CASES = [
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\dfrac{2}{4}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{1/2}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.25),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", 1.0),
    (r"\boxed{(1, 3]}", r"(1,3]", 1.0),
    (r"\boxed{\frac{1}{}}", r"\frac{1}{2}", 0.25),  # malformed LaTeX inside a closed box: wrong, no error
    (r"\boxed{\frac{1}{2}", r"\frac{1}{2}", 0.0),  # unclosed box
    ("one half", r"\frac{1}{2}", 0.0),
]


@pytest.mark.parametrize("completion, gold, reward", GENERAL_CASES)
def test_general_answers(completion, gold, reward):
    assert accuracy_reward([completion], [gold], format_score=0.25) == [reward]


def test_batched_and_per_item_flags():
    completions = [r"\boxed{82*5}", r"\boxed{82*5}", r"\boxed{3}"]
    assert accuracy_reward(completions, ["410", "410", "4"], integer_answers=[True, False, True]) == [0.0, 1.0, 0.0]
    assert accuracy_reward([], []) == []
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="integer_answers has 1 entries"):
        accuracy_reward(["a", "b"], ["1", "2"], integer_answers=[True])
    with pytest.raises(ValueError, match="not an integer"):
        accuracy_reward([r"\boxed{1}"], [r"\frac{1}{2}"], integer_answers=True)


def test_format_reward():
    texts = [r"\boxed{7}", r"\boxed{3+4}", r"\boxed{}", "7", r"\boxed{7"]
    assert format_reward(texts) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert format_reward(texts, integer_answers=True) == [1.0, 0.0, 0.0, 0.0, 0.0]


def _assert_no_timer_left():
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)


def test_timeout_with_slow_verify(monkeypatch):
    def slow(gold, pred):
        time.sleep(10)
        return True

    monkeypatch.setattr(rewards, "_verify_general", slow)
    start = time.monotonic()
    checks = check_answers([r"\boxed{\frac{1}{2}}", "no box"], [r"\frac{1}{2}"] * 2, timeout=0.2, format_score=0.25)
    assert time.monotonic() - start < 3.0
    assert [c.status for c in checks] == ["timeout", "no_box"]
    assert [c.reward for c in checks] == [0.25, 0.0]  # a timed-out answer is well formed but unverified
    _assert_no_timer_left()


def test_timeout_on_pathological_input():
    # math-verify evaluates 10^(10^8) digit by digit; the guard must stop it.
    start = time.monotonic()
    (check,) = check_answers([r"\boxed{10^{10^{8}}}"], ["5"], timeout=0.3)
    assert check.status == "timeout" and check.reward == 0.0
    assert time.monotonic() - start < 5.0
    _assert_no_timer_left()


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        accuracy_reward([r"\boxed{x}"], ["x"], timeout=0)


def test_outside_main_thread_uses_worker_process():
    out: list = []
    t = threading.Thread(target=lambda: out.append(accuracy_reward([r"\boxed{0.5}", r"\boxed{2}"], [r"\frac12", "3"])))
    t.start()
    t.join(120)
    assert out == [[1.0, 0.0]]
