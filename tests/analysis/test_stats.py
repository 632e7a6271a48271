"""The studies' interval estimates against hand computations."""

import itertools

import numpy as np
import pytest

from analysis.stats import (MIN_SEEDS, Claim, Interval, band, decide_family, holm, mean_ci, paired_diff_ci, ratio_ci,
                            sign_flip_p)


def test_t_interval_matches_the_hand_formula():
    x = [0.2, 0.5, 0.9, 1.0, 0.0]
    iv = mean_ci(x)
    m, s = np.mean(x), np.std(x, ddof=1)
    h = 2.7764451051977987 * s / np.sqrt(5)  # t_{0.975, 4}
    assert iv.mean == pytest.approx(m) and iv.low == pytest.approx(m - h) and iv.high == pytest.approx(m + h)


def test_sign_flip_p_is_exact_by_enumeration():
    """All 2**n sign patterns by hand: p = share with |mean| >= the observed |mean|."""
    d = np.array([0.3, -0.1, 0.4, 0.2, 0.5, -0.05, 0.25, 0.1])
    obs = abs(d.mean())
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    p = np.mean(np.abs((flips * d).mean(1)) >= obs - 1e-12)
    assert sign_flip_p(d) == pytest.approx(p)
    assert mean_ci(d).p == pytest.approx(p)
    assert sign_flip_p(d, null=0.1) == pytest.approx(
        np.mean(np.abs((flips * (d - 0.1)).mean(1)) >= abs((d - 0.1).mean()) - 1e-12))


def test_t_interval_covers_at_least_93_percent_at_ten_seeds():
    """Coverage simulated on normal data at n = 10 (the percentile bootstrap gave 79-89% here; the
    t-interval is exact on normal data, 95%)."""
    rng = np.random.default_rng(0)
    reps, n, truth = 2000, 10, 0.3
    hit = 0
    for _ in range(reps):
        iv = mean_ci(rng.normal(truth, 1.0, size=n))
        hit += iv.low <= truth <= iv.high
    assert hit / reps >= 0.93


def test_paired_difference_is_per_seed():
    a = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.4, 0.6]
    b = [x + 0.1 for x in a]  # b beats a by exactly 0.1 on every seed, though the seeds spread widely
    iv = paired_diff_ci(a, b)
    assert iv.mean == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.p == pytest.approx(2 / 2 ** 8)
    assert iv.significant and iv.verdict().startswith("significant")
    noisy = paired_diff_ci([0.0, 1.0] * 4, [1.0, 0.0] * 4)
    assert not noisy.significant and noisy.low < 0 < noisy.high and noisy.verdict().startswith("not significant")


def test_fewer_than_min_seeds_decide_nothing():
    """Seven seeds that agree exclude 0 from the interval, yet decide nothing."""
    a = [0.1, 0.5, 0.9, 0.3, 0.2, 0.4, 0.6][: MIN_SEEDS - 1]
    iv = paired_diff_ci(a=a, b=[x + 0.1 + 0.01 * i for i, x in enumerate(a)])
    assert iv.low > 0 and iv.n == MIN_SEEDS - 1
    assert not iv.significant and iv.verdict() == f"undecided ({MIN_SEEDS - 1} seeds; a decision needs {MIN_SEEDS})"
    (c,) = decide_family([Claim("x", iv)])
    assert c.word.startswith("undecided") and not np.isfinite(c.p_holm)


def test_ratio_is_a_geometric_mean_with_a_log_t_interval():
    r = [2.0, 0.5, 1.0, 4.0]
    iv = ratio_ci(r)
    assert iv.mean == pytest.approx(np.exp(np.mean(np.log(r))))
    lo, hi = mean_ci(np.log(r)).low, mean_ci(np.log(r)).high
    assert iv.low == pytest.approx(np.exp(lo)) and iv.high == pytest.approx(np.exp(hi))
    assert ratio_ci([2.0, 0.5]).mean == pytest.approx(1.0)


def test_holm_by_hand_and_the_family_decision():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, float("nan")])[1])
    up = Interval(0.2, 0.1, 0.3, 10, p=0.004)
    down = Interval(-0.2, -0.3, -0.1, 10, p=0.02)
    weak = Interval(0.1, -0.1, 0.3, 10, p=0.03)
    cs = decide_family([Claim("up", up), Claim("down", down), Claim("weak", weak)])
    # Holm: 0.004 x 3 = 0.012, 0.02 x 2 = 0.04, max(0.04, 0.03 x 1) = 0.04: all below 0.05
    assert [c.word for c in cs] == ["yes", "no", "yes"]
    assert [c.p_holm for c in cs] == pytest.approx([0.012, 0.04, 0.04])
    # one more claim in the family and the weakest two no longer survive
    cs = decide_family([Claim("up", up), Claim("down", down), Claim("weak", weak),
                        Claim("null", Interval(0.0, -0.1, 0.1, 10, p=0.9))])
    assert cs[0].word == "yes"
    assert cs[1].word.startswith("undecided (not significant after Holm over 4 claims")
    assert cs[2].word.startswith("undecided") and cs[3].word.startswith("undecided")


def test_fixed_test_seed_and_nan_pairs():
    a, b = [0.1, 0.4, np.nan, 0.8, 0.2], [0.3, 0.3, 0.5, 0.9, 0.6]
    assert paired_diff_ci(a, b) == paired_diff_ci(a, b)
    assert paired_diff_ci(a, b).n == 4
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff_ci([1.0], [1.0, 2.0])


def test_degenerate_inputs():
    assert mean_ci([]).fmt() == "n/a"
    assert mean_ci([0.5]) == Interval(0.5, 0.5, 0.5, 1)
    assert not mean_ci([0.5]).significant


def test_band_is_clipped_to_the_metric_range():
    curves = np.array([[0.0, 0.0, 1.0], [0.0, 0.2, 1.0], [0.0, 0.0, 0.9]])
    mean, lo, hi = band(curves, lo=0.0, hi=1.0)
    assert (lo >= 0).all() and (hi <= 1).all()
    np.testing.assert_allclose(mean, curves.mean(0))
    assert lo[0] == hi[0] == 0.0


def test_band_matches_pointwise_intervals():
    """Each point's band is mean_ci's t-interval of that point; NaN seeds are dropped point by point."""
    rng = np.random.default_rng(1)
    curves = rng.random((8, 5))
    curves[:, 2] = 0.25  # no spread at this point
    curves[0, 4] = np.nan
    mean, lo, hi = band(curves)
    for j in (0, 1, 3, 4):
        iv = mean_ci(curves[:, j])
        assert mean[j] == pytest.approx(iv.mean)
        assert lo[j] == pytest.approx(iv.low) and hi[j] == pytest.approx(iv.high)
    assert lo[2] == hi[2] == mean[2] == 0.25


def test_paired_by_seed_aligns_seeds_and_filters():
    import pandas as pd

    from analysis.stats import paired_by_seed

    pr = pd.DataFrame({
        "env": ["e"] * 5 + ["f"],
        "method": ["ppo", "ppo", "ppo", "espo", "espo", "espo"],
        "seed": [0, 1, 2, 1, 0, 0],  # espo has no seed 2 in env e; env f's row is filtered out
        "x": [0.1, 0.5, 0.9, 0.7, 0.3, 99.0],
    })
    iv = paired_by_seed(pr, "x", "ppo", "espo", where={"env": "e"})
    assert iv.n == 2 and iv.mean == pytest.approx(0.2) and iv.low == pytest.approx(0.2)


def test_intervals_do_not_depend_on_the_order_of_the_runs():
    """Runs are read in directory order, which differs between machines: same values, same interval."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=10)
    assert mean_ci(x) == mean_ci(x[::-1]) == mean_ci(rng.permutation(x))
    curves = rng.normal(size=(6, 4))
    for a, b in zip(band(curves), band(curves[::-1])):
        np.testing.assert_array_equal(a, b)


def test_a_field_added_since_a_run_does_not_make_it_stale():
    """A finished run's config.yaml predates a new field: the run is not stale (re-running would delete
    finished runs); a changed value of a field it has is."""
    from testbed.ops.studies import config_diff

    wanted = {"model": {"kind": "toy", "shared_prefix": True}, "algo": {"lr_actor": 0.003}}
    found = {"model": {"kind": "toy"}, "algo": {"lr_actor": 0.003}}
    assert config_diff(wanted, found) == []
    found["algo"]["lr_actor"] = 0.001
    assert config_diff(wanted, found) == ["algo.lr_actor: 0.001 -> 0.003"]


def test_family_note_says_when_no_claim_can_be_decided():
    from analysis.stats import Claim, decide_family, family_note, mean_ci, smallest_p

    assert smallest_p(8) == 2 / 256 and smallest_p(10) == 2 / 1024
    same = [1.0] * 8  # all signs alike: the smallest p-value, 2/256
    small = decide_family([Claim(f"c{i}", mean_ci(same)) for i in range(6)])  # 6 x 2/256 < 0.05
    assert all(c.word == "yes" for c in small) and "none can be decided" not in family_note(small)
    big = decide_family([Claim(f"c{i}", mean_ci(same)) for i in range(7)])  # 7 x 2/256 > 0.05
    assert all(c.word.startswith("undecided") for c in big)
    assert "With 8 seeds the smallest possible p-value is 0.00781" in family_note(big)


def test_mcnemar_by_hand():
    from scipy.stats import binomtest

    from analysis.stats import mcnemar

    # 10 items only b gets right, none only a: p = 2 * 0.5**10
    m = mcnemar([0] * 10 + [1] * 5, [1] * 10 + [1] * 5)
    assert (m.n, m.a_only, m.b_only) == (15, 0, 10) and m.p == pytest.approx(2 * 0.5**10)
    assert m.diff == pytest.approx(10 / 15)
    # concordant items never move it; the discordant split decides
    a, b = [1, 0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 0, 0]
    m = mcnemar(a + [1] * 50 + [0] * 50, b + [1] * 50 + [0] * 50)
    assert (m.a_only, m.b_only) == (2, 1) and m.p == pytest.approx(binomtest(1, 3, 0.5).pvalue)
    assert mcnemar([1, 0], [1, 0]).p == 1.0 and mcnemar([1, 0], [1, 0]).diff == 0.0
    with pytest.raises(ValueError, match="one length"):
        mcnemar([1, 0], [1])
