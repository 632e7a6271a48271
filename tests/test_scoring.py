"""The one detector-scoring module (testbed.scoring): AUROC and its interval, the ProcessBench metrics,
the trainer's detector metrics, the matched random baseline; pinned to the numbers the earlier
hand-written versions gave (same seeds, same outputs)."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.ops import detect as D


def _old_auroc(scores, positive):
    """The hand-written rank AUROC testbed.ops.detect had before scoring.auroc (the oracle for it)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_auroc_equals_the_hand_written_rank_version_exactly():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 30, 200):
        for _ in range(20):
            y = rng.random(n) < 0.4
            s = np.round(rng.normal(size=n), 1)  # rounded: many ties
            old, new = _old_auroc(s, y), D.auroc(s, y)
            assert (old != old and new != new) or old == new


def test_auroc_interval_pinned():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.5
    s = rng.normal(size=300) + 0.8 * y
    assert D.auroc(s, y) == 0.6961451247165533
    assert D.auroc_interval(s, y) == (0.6351348486078866, 0.7556476698435972)
    # a small sample where some draws hold one class only (they are skipped)
    s2 = [-0.5, -0.5, 1.3, 0.4, -1.6, -0.9, 0.7, 1.9, 0.4, 0.3, 1.9, -0.0]
    y2 = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], bool)
    assert D.auroc(s2, y2) == 0.275
    assert D.auroc_interval(s2, y2, resamples=300, seed=3) == (0.0, 0.6)


def test_random_baseline_pinned():
    steps = [np.repeat(np.arange(4), 5)] * 40
    r = D.random_baseline([20] * 40, steps, [1] * 20 + [-1] * 10 + [3] * 10, rate=0.3, fractions=[0.1, 0.5, 0.9],
                          min_tokens=2, repeats=30, seed=5)
    assert r == {'stop_rate': 0.2983333333333333, 'precision': 0.4827773043949514, 'recall': 0.19000000000000003,
                 'delay': 1.1424867724867727, 'false_stop_rate': 0.15583333333333335,
                 'acc_erroneous': 0.04444444444444446, 'acc_correct': 0.7200000000000002, 'f1': 0.08052790793342299,
                 'auroc': 0.5081111111111112}


def test_baseline_scores_by_hand():
    from testbed.scoring import baseline_scores

    b = baseline_scores([0.0, 1.5, 0.5], [0.2, 1.9, 0.6], [1.0, 2.0, 3.0], [0.9, 0.3, 0.5])
    assert b["length"] == 3 and b["mean_nll"] == pytest.approx(0.9) and b["max_nll"] == pytest.approx(1.9)
    assert b["mean_entropy"] == pytest.approx(2.0) and b["max_regret"] == 1.5
    assert b["min_value"] == pytest.approx(-0.3) and b["value_drop"] == pytest.approx(0.6)
    assert np.isnan(baseline_scores([1.0], [1.0], [1.0])["value_drop"])
    with pytest.raises(ValueError, match="same non-zero length"):
        baseline_scores([1.0], [1.0, 2.0], [1.0])


def test_auroc_difference_and_logistic_given_length():
    from testbed.scoring import auroc, auroc_difference, compare_scores, logistic_given_length

    rng = np.random.default_rng(0)
    n = 1500
    length = rng.lognormal(4, 0.5, n)
    z = rng.normal(size=n)  # informative beyond length
    y = rng.random(n) < 1 / (1 + np.exp(-(2.0 * z + 1.0 * (np.log(length) - 4) / 0.5)))
    d, lo, hi = auroc_difference(z, length, y, resamples=300)
    assert d == pytest.approx(auroc(z, y) - auroc(length, y)) and lo <= d <= hi
    assert auroc_difference(length, length, y, resamples=50) == (0.0, 0.0, 0.0)
    fit = logistic_given_length(z, length, y)
    assert fit["coef"] == pytest.approx(2.0, abs=0.3) and fit["p"] < 1e-6
    # a score that is length plus noise carries nothing once length is known
    only_len = np.log(length) + 0.01 * rng.normal(size=n)
    assert logistic_given_length(rng.normal(size=n), length, y)["p"] > 0.001
    assert np.isnan(logistic_given_length(np.ones(n), length, y)["coef"])
    c = compare_scores({"length": length, "z": z, "len_like": only_len, "none": np.full(n, np.nan)}, y, seed=0,
                       resamples=100)
    assert set(c) == {"length", "z", "len_like"} and c["z"]["minus_length"] > 0


def test_logistic_given_length_is_nan_without_warnings_when_the_classes_are_separated():
    import warnings

    from testbed.scoring import logistic_given_length

    rng = np.random.default_rng(1)
    length = rng.lognormal(4, 0.5, 200)
    score = rng.normal(size=200)
    y = score > 0  # the score alone separates the classes: the likelihood has no maximum
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = logistic_given_length(score, length, y)
    assert all(np.isnan(v) for v in fit.values())
    noisy = logistic_given_length(score + rng.normal(size=200), length, y)  # overlap: a finite fit
    assert noisy["coef"] > 0 and noisy["p"] < 1e-3
