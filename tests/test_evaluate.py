"""testbed.evaluate.pass_at_k against hand computations and a count of k-subsets."""

from __future__ import annotations

import itertools
from math import comb

import pytest

from testbed.evaluate import pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),  # one draw: the share correct
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2): both draws among the 3 wrong
    (10, 3, 3, 1 - 35 / 120),  # 1 - C(7,3)/C(10,3)
    (4, 0, 2, 0.0),  # nothing correct
    (4, 3, 2, 1.0),  # fewer wrong (1) than draws (2): every pair holds a correct one
    (4, 4, 4, 1.0),
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_k_counts_the_k_subsets_with_a_correct_sample():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                samples = [True] * c + [False] * (n - c)
                hits = sum(any(s) for s in itertools.combinations(samples, k))
                assert pass_at_k(n, c, k) == pytest.approx(hits / comb(n, k), rel=1e-12, abs=1e-15), (n, c, k)
