r"""Checkable-step arithmetic: the verifier on tables of cases and of real SmolLM2-135M outputs, the
task's token-level failure step, planted wrong steps through the collector, the oracle on the LLM."""

from __future__ import annotations

import doctest
import json
import random

import numpy as np
import pytest
import torch

from llm_backend import chain, chain_problems, verifier
from llm_backend.chain import chain_problem, find_equations, iter_chain_problems, verify_chain
from testbed import config as C
from testbed.collector import SamplePool
from testbed.diagnostics import detection_metrics, planted_metrics
from testbed.protocols import StepOutput
from testbed.rollout import Ending
from testbed.stopping import StopContext, make_stop_rule


def test_doctests():
    # the chain task's modules: the task, its generator and its verifier
    results = [doctest.testmod(m) for m in (chain, chain_problems, verifier)]
    assert sum(r.attempted for r in results) >= 8 and sum(r.failed for r in results) == 0


def test_problems_are_chains_with_exact_answers_and_disjoint_splits():
    rng = random.Random(3)
    for steps in (1, 2, 4):
        for digits in (1, 2, 3):
            q, a, operands, key = chain_problem(rng, steps=steps, digits=digits)
            assert eval(q.removeprefix("What is ").rstrip("?")) == a >= 0
            assert len(operands) == steps + 1
    train = [p.meta["key"] for p, _ in zip(iter_chain_problems(0, "train", steps=2, digits=1), range(300))]
    test = [p.meta["key"] for p, _ in zip(iter_chain_problems(0, "test", steps=2, digits=1), range(300))]
    assert not set(train) & set(test)
    again = [p.meta["key"] for p, _ in zip(iter_chain_problems(0, "train", steps=2, digits=1), range(300))]
    assert train == again
    with pytest.raises(ValueError, match="steps"):
        chain_problem(rng, steps=0)


def _digest(problems, n=200):
    import hashlib

    rows = [[p.question, p.answer, p.meta] for p, _ in zip(problems, range(n))]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# sha256 prefixes of the first 200 problems of streams drawn before the long-chain knobs existed
# (computed with the generator as it was at commit 9fd005e): studies and tests rely on these streams.
OLD_STREAMS = [
    ("train", 0, {"steps": 3, "digits": 2, "mul_max": 9, "ops": "+-*"}, "d98091ef4ee59b40"),
    ("test", 0, {"steps": 3, "digits": 2, "mul_max": 9, "ops": "+-*"}, "1b01ade160723fc4"),
    ("train", 0, {"steps": 2, "digits": 1, "mul_max": 9, "ops": "+-*"}, "530f048980838e30"),
    ("test", 0, {"steps": 2, "digits": 1, "mul_max": 9, "ops": "+-*"}, "2229cf864664a27c"),
    ("train", 5, {"steps": 4, "digits": 1, "mul_max": 9, "ops": "+-"}, "23f1a036b886374a"),
    ("test", 5, {"steps": 4, "digits": 1, "mul_max": 9, "ops": "+-"}, "9ff6d2de7634efd4"),
]


@pytest.mark.parametrize("split, seed, knobs, digest", OLD_STREAMS)
def test_existing_problem_streams_are_unchanged(split, seed, knobs, digest):
    assert _digest(iter_chain_problems(seed, split, **knobs)) == digest
    # the task passes every knob, the new ones at their defaults: still the same stream
    assert _digest(iter_chain_problems(seed, split, **knobs, **chain_problems.LATER_KNOBS)) == digest


def test_chain_problem_draws_are_unchanged():
    import hashlib

    rng = random.Random(7)
    drawn = [chain_problem(rng, steps=s, digits=d) for s in (1, 3, 5) for d in (1, 2, 3)]
    assert hashlib.sha256(repr(drawn).encode()).hexdigest()[:16] == "90146173e43f74c3"


def _intermediates(question, operands):
    ops = question.removeprefix("What is ").rstrip("?").replace("(", "").replace(")", "").split()[1::2]
    values, v = [operands[0]], operands[0]
    for op, b in zip(ops, operands[1:]):
        v = v + b if op == "+" else v - b if op == "-" else v * b
        values.append(v)
    return ops, values


def test_steps_range_draws_each_count_and_ops_and_max_value_bound_the_chain():
    rng = random.Random(0)
    counts = set()
    for _ in range(600):
        q, a, operands, key = chain_problem(rng, steps=[4, 8], digits=1, ops="+-", max_value=20)
        ops, values = _intermediates(q, operands)
        counts.add(len(ops))
        assert set(ops) <= {"+", "-"} and "*" not in q and "(" not in q
        assert all(1 <= b <= 9 for b in operands)  # one-digit operands
        assert all(0 <= v <= 20 for v in values), (q, values)  # every intermediate in [0, max_value]
        assert values[-1] == a == eval(q.removeprefix("What is ").rstrip("?"))
    assert counts == {4, 5, 6, 7, 8}
    # without the bound, the same chains climb past it; a bound on '*' turns the step into a '-'
    tall = [max(_intermediates(*chain_problem(rng, steps=8, digits=1, ops="+-")[::2])[1]) for _ in range(200)]
    assert max(tall) > 20
    for _ in range(200):
        q, a, operands, _ = chain_problem(rng, steps=5, digits=1, ops="+-*", max_value=30)
        assert all(0 <= v <= 30 for v in _intermediates(q, operands)[1]), q
    # a fixed count is the range of one value, and a steps pair names the stream like a list
    a = [p.question for p, _ in zip(iter_chain_problems(1, "train", steps=[5, 5], digits=1, ops="+-"), range(20))]
    assert all(len(_intermediates(q, [0] * 6)[0]) == 5 for q in a)
    b = [p.question for p, _ in zip(iter_chain_problems(1, "train", steps=(5, 5), digits=1, ops="+-"), range(20))]
    assert a == b


@pytest.mark.parametrize("knobs, field", [
    ({"steps": 0}, "steps"), ({"steps": [5, 3]}, "steps"), ({"steps": [1, 2, 3]}, "steps"),
    ({"steps": "4-8"}, "steps"), ({"steps": [4.0, 8]}, "steps"), ({"steps": True}, "steps"),
    ({"digits": 0}, "digits"), ({"mul_max": 1}, "mul_max"), ({"ops": "+/"}, "ops"), ({"ops": ""}, "ops"),
    ({"max_value": -1}, "max_value"), ({"max_value": 5, "digits": 1}, "max_value"),
    ({"max_value": 50, "digits": 2}, "max_value"), ({"max_value": 2.5}, "max_value"),
])
def test_bad_knobs_raise_naming_the_field(knobs, field):
    with pytest.raises(ValueError, match=rf"task\.source_kwargs\.{field}:"):
        chain_problem(random.Random(0), **knobs)
    with pytest.raises(ValueError, match=rf"task\.source_kwargs\.{field}:"):
        next(iter_chain_problems(0, "train", **knobs))


def test_canonical_solution_is_one_right_equation_per_step():
    from llm_backend.chain_problems import CHAIN_EXAMPLE, LONG_CHAIN_EXAMPLE, chain_solution
    from llm_backend.problems import split_of

    for example, numbers in ((CHAIN_EXAMPLE, [4, 3, 2, 5]), (LONG_CHAIN_EXAMPLE, [6, 5, 3, 9, 4, 2, 7])):
        assert chain_solution(example[0], numbers) == example[1]
    # the long demonstration's problem is never a held-out one (the short one's, (4 + 3) * 2 - 5, is)
    assert split_of("chain:" + LONG_CHAIN_EXAMPLE[0].removeprefix("What is ").rstrip("?")) == "train"
    rng = random.Random(2)
    for knobs in ({"steps": [6, 10], "digits": 1, "ops": "+-", "max_value": 20}, {"steps": 3, "digits": 2}):
        for _ in range(100):
            q, a, operands, _ = chain_problem(rng, **knobs)
            sol = chain_solution(q, operands)
            v = verify_chain(sol, a, operands)
            assert (v.reason, v.doomed, v.equations) == ("ok", False, len(operands) - 1), (q, sol)
            assert sol.endswith(f"\\boxed{{{a}}}.")


# (text, gold, question numbers, expected (wrong number as text or None, doomed, checkable, reason))
CASES = [
    # right chain, several spellings of the operators
    ("12 + 5 = 17. 17 - 3 = 14. 14 * 4 = 56. The answer is \\boxed{56}.", 56, [12, 5, 3, 4], (None, False, True, "ok")),
    ("12+5=17. 17-3=14. 14*4=56. \\boxed{56}", 56, [12, 5, 3, 4], (None, False, True, "ok")),
    ("$12 + 5 = 17$, $17 - 3 = 14$, $14 \\times 4 = 56$. \\boxed{56}", 56, [12, 5, 3, 4], (None, False, True, "ok")),
    ("12 + 5 = 17. 17 − 3 = 14. 14 × 4 = 56. \\boxed{56}", 56, [12, 5, 3, 4], (None, False, True, "ok")),
    ("\\(14 \\cdot 4 = 56\\) and 12 + 5 = 17, so \\boxed{56}", 56, [12, 5, 3, 4, 14], (None, False, True, "ok")),
    ("14 x 4 = 56. \\boxed{56}", 56, [14, 4], (None, False, True, "ok")),
    # thousands separators, plain and LaTeX
    ("1,200 + 34 = 1,234. 1{,}234 * 2 = 2{,}468. \\boxed{2468}", 2468, [1200, 34, 2], (None, False, True, "ok")),
    ("1200 + 34 = 1\\,234. \\boxed{1234}", 1234, [1200, 34], (None, False, True, "ok")),
    # restated question without its parentheses: left-to-right reading accepted
    ("12 + 5 - 3 * 4 = 56. \\boxed{56}", 56, [12, 5, 3, 4], (None, False, True, "ok")),
    ("(12 + 5 - 3) * 4 = 14 * 4 = 56. \\boxed{56}", 56, [12, 5, 3, 4], (None, False, True, "ok")),
    # chained running computation
    ("12 + 5 = 17 - 3 = 14. \\boxed{14}", 14, [12, 5, 3], (None, False, True, "ok")),
    # arithmetic error: the wrong result
    ("12 + 5 = 17. 17 - 3 = 15. 15 * 4 = 60. \\boxed{60}", 56, [12, 5, 3, 4], ("15", True, True, "arithmetic")),
    ("12 + 5 = 18. \\boxed{18}", 17, [12, 5], ("18", True, True, "arithmetic")),
    # a recovered error is still the first wrong number (the row is not doomed)
    ("12 + 5 = 18. Sorry, 12 + 5 = 17. \\boxed{17}", 17, [12, 5], ("18", False, True, "arithmetic")),
    # a mis-copied operand: the invented number
    ("12 + 6 = 18. 18 - 3 = 15. \\boxed{15}", 14, [12, 5, 3], ("6", True, True, "operand")),
    # right steps, wrong boxed answer
    ("12 + 5 = 17. 17 - 3 = 14. The answer is \\boxed{17}.", 14, [12, 5, 3], ("17", True, True, "answer")),
    # no equations at all
    ("The answer is \\boxed{56}.", 56, [12, 5, 3, 4], (None, False, False, "no_equations")),
    ("I think it is 56.", 56, [12, 5, 3, 4], (None, True, False, "no_equations")),
    # right steps, then no answer: the error cannot be placed
    ("12 + 5 = 17. 17 - 3 = 14. Then", 56, [12, 5, 3, 4], (None, True, False, "unlocated")),
    # words with digits are not operands ("s1 = 12 + 5 = 17")
    ("s1 = 12 + 5 = 17. \\boxed{17}", 17, [12, 5], (None, False, True, "ok")),
    # an identity is not an equation
    ("56 = 56. \\boxed{56}", 56, [56], (None, False, False, "no_equations")),
]


def _check(text, gold, numbers, expected):
    wrong, doomed, checkable, reason = expected
    v = verify_chain(text, gold, numbers)
    assert (v.doomed, v.checkable, v.reason) == (doomed, checkable, reason), (text, v)
    if wrong is None:
        assert v.failure_char == -1, (text, v)
    else:
        assert text[v.failure_char:].startswith(wrong), (text, v, text[v.failure_char:])


@pytest.mark.parametrize("text, gold, numbers, expected", CASES)
def test_verifier_cases(text, gold, numbers, expected):
    _check(text, gold, numbers, expected)


def test_prefix_mode_waits_for_a_complete_number():
    numbers = [12, 5]
    for partial in ["12 + 5 = 1", "12 + 5 = 18", "12 + 5 = 18.", "12 + 5 = 18 ", "12 + 5 = 18 +", "12 + 5 = 1,23"]:
        assert verify_chain(partial, 0, numbers, prefix=True).failure_char == -1, partial
    for done in ["12 + 5 = 18. ", "12 + 5 = 18, so", "12 + 5 = 18\n"]:
        assert verify_chain(done, 0, numbers, prefix=True).failure_char == 9, done
    # an expression on the right: judged when it ends
    assert verify_chain("5 + 3 + 2 = 5 + 5 = 10. ", 0, [5, 3, 2], prefix=True).failure_char == -1
    assert len(find_equations("12 + 5 = 17. 17 - 3 = 14", prefix=True)) == 1


# Real outputs of SmolLM2-135M-Instruct (greedy on even rows, temperature 0.7 on odd) on the first
# problems of iter_chain_problems(0, 'train', steps=3, digits=2); verdicts checked by hand.
REAL = [
    ('24 - 12 + 29 + 77 = 24 + 29 + 29 + 77 = 100. 100 - 2 = 101.',
     118, [24, 12, 29, 77], ('24', True, True, 'arithmetic')),  # What is 24 - 12 + 29 + 77?
    ('82 * 81 = 667. 667 * 4 = 2604. 2604 - 667 = 261. 261 - 4 = 27. 27 - 1 = 28. 28 - 8 = 29. Finally, 2',
     2340, [82, 8, 71, 4], ('81', True, True, 'operand')),  # What is (82 * 8 - 71) * 4?
    ('90 - 59 = 19. 19 - 46 = 12. 12 - 46 = 1. 1 + 1 = 2. 2 * 2 = 4. 4 + 1 = 5. 5 + 1 = 6. 6 - 1 = 7. ',
     0, [90, 59, 15, 46], ('19', True, True, 'arithmetic')),  # What is 90 - 59 + 15 - 46?
    ('39 - 23 = 31. 31 - 23 = 3. The answer is \\boxed{3}.',
     0, [39, 23, 14, 2], ('31', True, True, 'arithmetic')),  # What is 39 - 23 - 14 - 2?
    ('61 - 42 = 18. 18 * 8 = 164. 164 - 66 = 88. The answer is \\boxed{88}.',
     86, [61, 42, 8, 66], ('18', True, True, 'arithmetic')),  # What is (61 - 42) * 8 - 66?
    ('38 + 44 = 90. 90 - 44 = 54. The answer is \\boxed{54}.',
     842, [38, 7, 3, 44], ('90', True, True, 'arithmetic')),  # What is 38 * 7 * 3 + 44?
    ('14 + 12 + 38 = 42. 42 - 38 = 1. The answer is \\boxed{1}.',
     26, [14, 12, 38, 38], ('42', True, True, 'arithmetic')),  # What is 14 + 12 + 38 - 38?
    ('46 + 60 - 19 - 13 = 21. 21 - 19 + 13 = 11. 11 - 13 = 1. 1 + 2 = 3. 1 + 3 = 4.',
     74, [46, 60, 19, 13], ('21', True, True, 'arithmetic')),  # What is 46 + 60 - 19 - 13?
    ('43 + 49 = 92. 92 - 31 = 21. 21 - 31 = 1. The answer is \\boxed{1}.',
     215, [43, 49, 2, 31], ('21', True, True, 'arithmetic')),  # What is (43 + 49) * 2 + 31?
    ('4 * (4+1) = 16. 16 - 9 = 6. 6 + 1 = 7. The answer is \\boxed{7}.',
     206, [51, 4, 95, 93], ('1', True, True, 'operand')),  # What is 51 * 4 + 95 - 93?
    ('50 - 37 + 19 - 17 = 12. 12 - 17 = 1. 12 - 17 = 1. The answer is \\boxed{1}.',
     15, [50, 37, 19, 17], ('12', True, True, 'arithmetic')),  # What is 50 - 37 + 19 - 17?
    ('12 + 50 + 70 = 250. 250 - 12 = 188.',
     120, [12, 12, 50, 70], ('250', True, True, 'arithmetic')),  # What is 12 - 12 + 50 + 70?
    ('95 * 5 = 450. 450 - 39 = 22. 22 - 5 = 11. The answer is \\boxed{11}.',
     491, [95, 5, 39, 55], ('450', True, True, 'arithmetic')),  # What is 95 * 5 - 39 + 55?
    ('25 + 9 = 34. 34 - 29 = 22. 22 - 29 = 18. The answer is \\boxed{22}.',
     171, [25, 9, 25, 29], ('22', True, True, 'arithmetic')),  # What is 25 * 9 - 25 - 29?
    ('80 * 2 * 6 = 240. 240 - 6 = 266. 266 - 6 = 272. The answer is \\boxed{272}.',
     5760, [80, 2, 6, 6], ('240', True, True, 'arithmetic')),  # What is 80 * 2 * 6 * 6?
    ('80 * 5 = 400. 400 - 16 = 360. The answer is \\boxed{360}.',
     344, [80, 5, 40, 16], ('360', True, True, 'arithmetic')),  # What is 80 * 5 - 40 - 16?
    ('45 - 35 = 10. 10 * 2 = 20. 20 - 5 = 15. The answer is \\boxed{15}.',
     100, [45, 35, 2, 5], ('15', True, True, 'answer')),  # What is (45 - 35) * 2 * 5?
    ('96 - 70 = 16. 16 * 7 = 101. 101 - 16 = 24. 24 - 16 = 12. Finally, 24 - 7 = 12. The answer is \\boxed{12}.',
     1456, [96, 70, 8, 7], ('16', True, True, 'arithmetic')),  # What is (96 - 70) * 8 * 7?
    ('57 - 43 = 14. 14 - 29 = 11. 11 + 29 = 32. The answer is \\boxed{32}.',
     32, [57, 43, 11, 29], ('11', False, True, 'arithmetic')),  # What is 57 - 43 - 11 + 29?
    ('65 * 6 * 7 = 421. 421 - 58 = 84. The answer is \\boxed{84}.',
     2788, [65, 6, 7, 58], ('421', True, True, 'arithmetic')),  # What is 65 * 6 * 7 + 58?
    ('22 * 8 = 192. 192 + 25 = 227. 227 - 69 = 104. The answer is \\boxed{104}.',
     270, [22, 8, 25, 69], ('192', True, True, 'arithmetic')),  # What is 22 * 8 + 25 + 69?
]


@pytest.mark.parametrize("text, gold, numbers, expected", REAL)
def test_verifier_on_real_model_outputs(text, gold, numbers, expected):
    _check(text, gold, numbers, expected)


# The same model on iter_chain_problems(0, 'train', steps=2, digits=1); verdicts checked by hand. Off-plan
# steps with right arithmetic (rows 6 and 15: '24 - 6 = 18' for 1 * 4 * 6) are located at the boxed answer.
REAL_EASY = [
    ('3 * 8 = 24. 24 - 8 = 12. The answer is \\boxed{12}.',
     32, [3, 8, 8], ('12', True, True, 'arithmetic')),  # What is 3 * 8 + 8?
    ('6 + 2 = 8. 8 - 4 = 2. The answer is \\boxed{2}.',
     4, [6, 2, 4], ('2', True, True, 'arithmetic')),  # What is 6 + 2 - 4?
    ('6 + 1 = 7. 7 * 3 = 18. 18 - 1 = 19. The answer is \\boxed{19}.',
     21, [6, 1, 3], ('18', True, True, 'arithmetic')),  # What is (6 + 1) * 3?
    ('5 + 3 + 9 = 27. 27 - 5 = 22. The final answer is \\boxed{22}.',
     17, [5, 3, 9], ('27', True, True, 'arithmetic')),  # What is 5 + 3 + 9?
    ('1 - 1 + 3 = 2. 2 * 3 = 6. 6 - 2 = 4. The answer is \\boxed{4}.',
     3, [1, 1, 3], ('2', True, True, 'arithmetic')),  # What is 1 - 1 + 3?
    ('1 * 4 * 6 = 24. 24 - 6 = 18. The answer is \\boxed{18}.',
     24, [1, 4, 6], ('18', True, True, 'answer')),  # What is 1 * 4 * 6?
    ('7 - 2 = 3. 3 + 4 = 7. 7 - 2 = 4. The answer is \\boxed{4}.',
     9, [7, 2, 4], ('3', True, True, 'arithmetic')),  # What is 7 - 2 + 4?
    ('3 + 1 - 2 = 4. 4 - 2 = 2. The answer is \\boxed{2}.',
     2, [3, 1, 2], ('4', False, True, 'arithmetic')),  # What is 3 + 1 - 2?
    ('2 - 2 = 0. 0 + 9 = 9. The answer is \\boxed{9}.',
     9, [2, 2, 9], (None, False, True, 'ok')),  # What is 2 - 2 + 9?
    ('9 * 3 = 27. 27 - 4 = 21. The answer is \\Box{12}.',
     23, [9, 3, 4], ('21', True, True, 'arithmetic')),  # What is 9 * 3 - 4?
    ('3 - 1 = 2. 2 * 1 = 2. 2 - 1 = 1. The answer is \\boxed{1}.',
     1, [3, 1, 1], (None, False, True, 'ok')),  # What is 3 - 1 - 1?
    ('13. 13 - 4 = 10. 10 - 4 = 4. The answer is \\boxed{4}.',
     17, [9, 4, 4], ('13', True, True, 'operand')),  # What is 9 + 4 + 4?
    ('3 + 5 + 9 = 27. 27 - 1 = 26. The answer is \\boxed{26}.',
     17, [3, 5, 9], ('27', True, True, 'arithmetic')),  # What is 3 + 5 + 9?
    ('7 - 1 = 6, 6 * 5 = 30. This is the result of (10 - 1) * 5.',
     30, [7, 1, 5], (None, True, False, 'unlocated')),  # What is (7 - 1) * 5?
    ('4 - 3 = 1. 1 * 3 = 3. 3 + 3 = 6. The answer is \\boxed{6}.',
     4, [4, 3, 3], ('6', True, True, 'answer')),  # What is 4 - 3 + 3?
    ('3 + 3 = 6. 6 * 7 = 42. 42 - 5 = 47. The answer is \\boxed{47}.',
     42, [3, 3, 7], ('5', True, True, 'operand')),  # What is (3 + 3) * 7?
]


@pytest.mark.parametrize("text, gold, numbers, expected", REAL_EASY)
def test_verifier_on_real_model_outputs_easy(text, gold, numbers, expected):
    _check(text, gold, numbers, expected)


# Real greedy outputs of SmolLM2-135M-Instruct on the held-out long chains of configs/llm/long_chain_ppo.yaml
# (steps [6, 10], one-digit operands, + and -, results in [0, 20], the long example), after its model.sft
# stage (bench/long_chain_stats.py --sft), and two of the base model (steps [4, 6]; it runs on to the length
# cap). Verdicts checked by hand: (text before the wrong number, the wrong number, doomed, checkable, reason).
# The verifier judges arithmetic, not the plan: a step that applies the wrong operator or skips one with
# right arithmetic ('11 + 8 = 19' for '- 8' in row 2, '4 + 3' for '- 3' in row 7, '18 + 7' for '- 6' in
# row 10, '2 + 3' for '- 2' in row 12) is passed over, and the row's first wrong number comes later.
REAL_LONG = [
    ('9 + 4 = 13. 13 + 5 = 18. 18 - 6 = 12. 12 - 3 = 11. 11 - 6 = 4. 4 - 3 = 1. 1 + 8 = 9. The answer is \\boxed{9}.',
     8, [9, 4, 5, 6, 3, 6, 3, 8], ('12 - 3 = ', '11', True, True, 'arithmetic')),  # 9 + 4 + 5 - 6 - 3 - 6 - 3 + 8
    ('3 - 3 = 0. 0 + 6 = 6. 6 + 5 = 11. 11 + 8 = 19. 19 + 3 = 22. 22 - 3 = 21. The answer is \\boxed{21}.',
     11, [3, 3, 6, 5, 8, 3, 8, 3], ('22 - 3 = ', '21', True, True, 'arithmetic')),  # 3 - 3 + 6 + 5 - 8 + 3 + 8 - 3
    ('7 - 6 = 1. 1 + 4 = 5. 5 - 3 = 2. 2 + 6 = 8. 8 + 8 = 16. 16 - 1 = 15. The answer is \\boxed{15}.',
     15, [7, 6, 4, 3, 6, 8, 1], (None, None, False, True, 'ok')),  # 7 - 6 + 4 - 3 + 6 + 8 - 1
    ('7 - 2 = 5. 5 - 1 = 4. 4 - 1 = 3. 3 + 1 = 4. 4 + 4 = 8. 8 - 7 = 1. 1 - 6 = 3. The answer is \\boxed{3}.',
     1, [7, 2, 1, 1, 1, 4, 7, 1, 7, 6], ('1 - 6 = ', '3', True, True, 'arithmetic')),  # 7 - 2 - 1 - 1 + 1 + 4 - 7 - 1 + 7 - 6
    ('6 + 7 = 13. 13 + 7 = 20. 20 - 6 = 14. 14 + 5 = 19. 19 - 7 = 12. 12 + 3 = 15. 15 - 2 = 13. 13 + 5 = 18. '
     '18 - 3 = 15. 15 + 4 = 19. The answer is \\boxed{19}.',
     19, [6, 7, 7, 6, 5, 7, 3, 2, 5, 3, 4], (None, None, False, True, 'ok')),  # 6 + 7 + 7 - 6 + 5 - 7 + 3 - 2 + 5 - 3 + 4
    ('6 + 8 = 14. 14 - 8 = 7. 7 - 4 = 3. 3 + 7 = 10. 10 + 3 = 13. 13 + 7 = 10. The answer is \\boxed{10}.',
     19, [6, 8, 8, 4, 7, 3, 7], ('14 - 8 = ', '7', True, True, 'arithmetic')),  # 6 + 8 - 8 - 4 + 7 + 3 + 7
    ('8 - 6 = 2. 2 + 6 = 8. 8 - 3 = 5. 5 - 4 = 1. 1 + 3 = 4. 4 + 3 = 7. 7 - 1 = 6. 6 - 6 = 0. The answer is \\boxed{0}.',
     4, [8, 6, 6, 3, 4, 3, 3, 1, 5, 5, 6], ('The answer is \\boxed{', '0', True, True, 'answer')),  # 8 - 6 + 6 - 3 - 4 + 3 - 3 - 1 + 5 + 5 - 6
    ('8 - 3 = 5. 5 - 4 = 1. 1 - 4 = 3. 3 + 1 = 4. 4 + 2 = 6. 6 - 2 = 4. 4 - 1 = 3. 3 - 1 = 2. 2 + 3 = 5. '
     'The answer is \\boxed{5}.',
     3, [8, 3, 4, 1, 2, 2, 1, 1, 3], ('1 - 4 = ', '3', True, True, 'arithmetic')),  # 8 - 3 - 4 + 1 + 2 - 2 - 1 - 1 + 3
    ('7 + 2 = 9. 9 + 3 = 12. 12 - 6 = 4. 4 + 7 = 11. 11 - 2 = 11. 11 - 4 = 8. 8 - 3 = 5. 5 - 4 = 2. '
     'The answer is \\boxed{2}.',
     0, [7, 2, 3, 6, 7, 2, 4, 3, 4], ('12 - 6 = ', '4', True, True, 'arithmetic')),  # 7 + 2 + 3 - 6 + 7 - 2 - 4 - 3 - 4
    ('2 + 5 = 7. 7 + 9 = 16. 16 + 2 = 18. 18 + 7 = 25. 25 - 6 = 19. 19 + 7 = 26. 26 - 3 = 23. 23 - 9 = 12. '
     '12 + 2 = 14. 14 + 7 = 21. The answer is \\boxed{21}.',
     16, [2, 5, 9, 2, 6, 7, 3, 9, 2, 7], ('23 - 9 = ', '12', True, True, 'arithmetic')),  # 2 + 5 + 9 + 2 - 6 + 7 - 3 - 9 + 2 + 7
    # two wrong results that cancel: the first is located, and the row is not doomed
    ('4 - 1 = 3. 3 + 8 = 11. 11 - 2 = 11. 11 - 6 = 4. 4 + 8 = 12. 12 - 7 = 4. 4 - 1 = 3. 3 - 2 = 1. '
     'The answer is \\boxed{1}.',
     1, [4, 1, 8, 2, 6, 8, 7, 1, 2], ('11 - 2 = ', '11', False, True, 'arithmetic')),  # 4 - 1 + 8 - 2 - 6 + 8 - 7 - 1 - 2
    # the base model, cut at the length cap (no box: doomed)
    ('6 - 4 = 2. 2 + 3 = 5. 5 - 6 = 1. 1 + 2 = 3. 3 + 6 = 9. 9 + 7 = 16. 16 - 7 = 11. 11 - 8 = 1. 11 - 10 = 1. '
     '11 + 10 = 21. 21 - 10 = 1. 11 + 11 = 22. 22 - 11 = 2. 22 - 11 = 3. 22 - 11 = 4. 22 - 1',
     5, [6, 4, 2, 3, 6, 4], ('5 - 6 = ', '1', True, True, 'arithmetic')),  # 6 - 4 - 2 + 3 + 6 - 4
    ('1 + 6 + 9 = 18. 18 - 1 = 19. 19 - 1 = 18. 18 + 1 = 20. 20 - 1 = 21. 21 - 1 = 22. 22 - 1 = 23. 23 - 1 = 24. '
     '24 - 1 = 25. 25 - 1 = 26. 26 - 1 = 27. 27 - 1 = 28. 28 - 1 = 29. 29 - 1 = 30. 30 - ',
     16, [8, 7, 1, 1, 6, 9], ('1 + 6 + 9 = ', '18', True, True, 'arithmetic')),  # 8 - 7 - 1 + 1 + 6 + 9
]


@pytest.mark.parametrize("text, gold, numbers, expected", REAL_LONG)
def test_verifier_on_real_long_chain_outputs(text, gold, numbers, expected):
    before, wrong, doomed, checkable, reason = expected
    v = verify_chain(text, gold, numbers)
    assert (v.doomed, v.checkable, v.reason) == (doomed, checkable, reason), (text, v)
    if wrong is None:
        assert v.failure_char == -1, (text, v)
    else:  # the exact occurrence: numbers repeat in long chains
        assert text[:v.failure_char].endswith(before) and text[v.failure_char:].startswith(wrong), (text, v)
        assert text.find(before) + len(before) == v.failure_char, "the first occurrence of that equation"


# --- the task through the collector, with a backend that writes a fixed script -------------------

pytest.importorskip("transformers")
from llm_backend import tokenizer as tokenizer_mod  # noqa: E402

try:
    tokenizer_mod.embedded_gguf_path()
except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - environment without the model
    pytest.skip(f"embedded SmolLM2 tokenizer unavailable: {e}", allow_module_level=True)


class ScriptedBackend:
    """Writes ``script[i]`` in row ``i`` (greedy: all logit mass on the next script token, then EOS);
    values are constant. Enough of :class:`testbed.protocols.Backend` for the collector."""

    device = torch.device("cpu")

    def __init__(self, scripts, vocab_size, eos):
        self.scripts, self.vocab_size, self.eos_token_id = scripts, vocab_size, eos

    def begin(self, prompts):
        self.rows = list(range(len(prompts)))
        self.pos = [0] * len(prompts)

    def step(self, *, with_values=True):
        logits = torch.zeros(len(self.rows), self.vocab_size)
        for j, i in enumerate(self.rows):
            s = self.scripts[i]
            logits[j, s[self.pos[i]] if self.pos[i] < len(s) else self.eos_token_id] = 30.0
        return StepOutput(logits=logits, values=torch.full((len(self.rows),), 0.5) if with_values else None)

    def advance(self, tokens, keep):
        for i in self.rows:
            self.pos[i] += 1
        self.rows = [i for i, k in zip(self.rows, keep.tolist()) if k]

    def critic_forward(self, prompts, tokens, mask):
        return torch.full(tokens.shape, 0.5)


def _setup(scripts_text, overrides):
    from llm_backend.task import make_task

    n = len(scripts_text)
    cfg = C.from_dict({"task": {"kind": "math", "source": "chain", "source_kwargs": {"steps": 2, "digits": 2}},
                       "model": {"kind": "hf"}, "rollout": {"batch_size": n, "max_len": 48, "temperature": 1.0}},
                      overrides)
    task = make_task(cfg.task, cfg.model, num_slots=n, seed=0)
    task.reset(np.arange(n))
    scripts = []
    for i, text in enumerate(scripts_text):
        p = task._problems[i]
        a, b, c = p.meta["operands"]
        q = p.question.removeprefix("What is ").rstrip("?")
        scripts.append(task.tokenizer(text.format(q=q, a=a, b=b, c=c, ans=int(p.answer)),
                                      add_special_tokens=False)["input_ids"])
    backend = ScriptedBackend(scripts, task.vocab_size, task.eos_token_id)
    # The pool refills empty slots itself: hand it the problems the scripts were written for.
    pool = SamplePool(task, make_stop_rule(cfg.stop, num_slots=n), cfg, seed=0)
    pool.refill = lambda step, split="train": np.zeros(0, dtype=np.int64)
    from testbed.collector import _Slot

    pool.slots = [_Slot(prompt=[1, 2, 3], group=i) for i in range(n)]
    return task, backend, pool


def _wrong_token_text(task, tokens, f):
    return task.tokenizer.decode(tokens[f:f + 3])


def test_failure_step_is_the_first_token_of_the_wrong_number():
    right = "{q} = {ans}. The answer is \\boxed{{{ans}}}."
    task, backend, pool = _setup([right, "{q} = 9999. The answer is \\boxed{{9999}}.", "It is \\boxed{{{ans}}}."], [])
    batch = pool.collect(backend, 0)
    r = batch.rollout
    assert (r.ending == Ending.EOS).all()
    f = r.failure_step.tolist()
    assert f[0] == -1 and f[2] == -1
    assert f[1] >= 0 and task.tokenizer.decode(r.tokens[1, f[1]:f[1] + 1]).strip().startswith("9")
    assert task.tokenizer.decode(r.tokens[1, :f[1]]).rstrip().endswith("=")
    assert r.success.tolist() == [True, False, True]  # the verifier's doomed row is the one the task fails
    assert r.extras["checkable"].tolist() == [True, True, False]  # right answer, but no equation to check
    assert r.sampled is not None and r.sampled[r.mask].all()  # nothing planted


def test_planted_wrong_step_is_forced_not_sampled_and_is_the_failure_step():
    right = "{q} = {ans}. {q} = {ans}. The answer is \\boxed{{{ans}}}."
    task, backend, pool = _setup([right, right], ["task.source_kwargs.plant_fraction=1.0",
                                                  "task.source_kwargs.plant_step=2"])
    r = pool.collect(backend, 0).rollout
    for i in range(2):
        forced = (~r.sampled[i] & r.mask[i]).nonzero().squeeze(-1)
        assert len(forced) >= 1
        at = int(task.planted_at[i])
        assert at in forced.tolist() and at - int(forced[0]) <= 1  # at most a lone space token before it
        # the second equation's result was replaced; the verifier finds exactly that token
        assert int(r.failure_step[i]) == at
        text = task.tokenizer.decode(r.tokens[i, :at])
        assert text.count("=") == 2 and text.rstrip().endswith("=")
        wrong = int(task.tokenizer.decode(r.tokens[i, at:int(forced[-1]) + 1]).strip())
        assert wrong != int(task._problems[i].answer) and abs(wrong - int(task._problems[i].answer)) <= 3
        assert r.success[i]  # the script still boxes the right answer: a recovered error
    met = planted_metrics(r)
    assert met["plant/rows"] == 2 and met["plant/stop_rate"] == 0.0


def test_oracle_stops_llm_rows_at_the_wrong_number():
    right = "{q} = {ans}. The answer is \\boxed{{{ans}}}."
    wrong = "{q} = 9999. The answer is \\boxed{{9999}}."
    task, backend, pool = _setup([right, wrong], ["stop.rule=oracle", "stop.warmup_steps=0", "stop.min_tokens=1"])
    r = pool.collect(backend, 0).rollout
    assert r.ending.tolist() == [Ending.EOS, Ending.EARLY_STOP]
    f, last = int(r.failure_step[1]), int(r.lengths[1]) - 1
    # known once the number is complete: "9999." could still be 9999.5, so the stop comes on the token after
    assert task.tokenizer.decode(r.tokens[1, f:last]).strip() == "9999."
    met = detection_metrics(r)
    assert met["stop/precision"] == 1.0 and met["stop/recall"] == 1.0 and met["stop/false_stop_rate"] == 0.0
    assert met["stop/delay"] == last - f


def test_espo_statistic_ignores_forced_tokens():
    cfg = C.from_dict({"stop": {"rule": "espo", "warmup_steps": 0, "min_tokens": 1, "kappa": 0.0}})
    rule = make_stop_rule(cfg.stop, num_slots=2)
    rule.update(torch.tensor([[0.0, 2.0]]), torch.ones(1, 2, dtype=torch.bool))
    ctx = StopContext(slots=torch.arange(2), positions=torch.zeros(2, dtype=torch.long), logits=torch.zeros(2, 3),
                      tokens=torch.zeros(2, dtype=torch.long), regret=torch.tensor([5.0, 5.0]),
                      values=torch.ones(2), failure_step=torch.full((2,), -1), train_step=5,
                      sampled=torch.tensor([True, False]))
    rule(ctx)
    assert rule.score[0] > 0 and rule.score[1] == 0


def test_policy_mask_and_normaliser_leave_out_forced_tokens():
    from types import SimpleNamespace

    from testbed.rollout import Rollout
    from testbed.ops.trainer import Trainer

    B, T = 2, 5
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    sampled = torch.ones(B, T, dtype=torch.bool)
    sampled[1, 2:4] = False
    z = torch.zeros(B, T)
    r = Rollout(tokens=torch.zeros(B, T, dtype=torch.long), logprobs=z, regret=z, values=z, rewards=z, mask=mask,
                ending=torch.zeros(B, dtype=torch.long), bootstrap=torch.zeros(B), failure_step=torch.full((B,), -1),
                policy_version=torch.zeros(B, T, dtype=torch.long), sampled=sampled)
    r.validate()
    fake = SimpleNamespace(cfg=C.from_dict({}), sampled_mask=Trainer.sampled_mask)
    m = Trainer.policy_mask(fake, r)
    assert m.tolist() == (mask & sampled).tolist()
    assert Trainer.sampled_mask(r).sum() == mask.sum() - 2


def test_trainer_logs_ground_truth_metrics_and_rows_on_the_chain_task(tmp_path):
    from pathlib import Path

    from testbed.metrics import read_metrics
    from testbed.ops.trainer import Trainer

    root = Path(__file__).resolve().parents[2]
    cfg = C.load(root / "configs" / "llm" / "chain_espo.yaml",
                 [f"run.out_dir={tmp_path}", "run.steps=2", "model.path=tiny", "model.dtype=float32",
                  "rollout.batch_size=4", "rollout.max_len=12", "algo.minibatch_size=4", "run.progress=false",
                  "run.threads=1", "run.eval_every=0", "task.source_kwargs.plant_fraction=1.0"])
    Trainer(cfg).train()
    run = tmp_path / cfg.run.name
    recs = read_metrics(run / "metrics.jsonl")
    for key in ("stop/precision", "stop/recall", "stop/delay", "stop/false_stop_rate", "credit/failure_rank",
                "stats/judged_rate", "plant/rows"):
        assert key in recs[0], key
    rows = [json.loads(x) for x in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and len(rows[0]["checkable"]) == 4 and len(rows[0]["planted_at"]) == 4
