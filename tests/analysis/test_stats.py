"""The studies' interval estimates against hand computations."""

import itertools

import numpy as np
import pytest

from analysis.stats import MIN_SEEDS, Interval, band, mean_ci, paired_diff_ci


def _exact_bootstrap_quantiles(x, qs):
    """Every one of the n**n equally likely resamples of a tiny sample, enumerated by hand."""
    means = np.sort([np.mean(c) for c in itertools.product(x, repeat=len(x))])
    return [np.quantile(means, q, method="inverted_cdf") for q in qs]


@pytest.mark.parametrize("x", [[0.0, 1.0, 2.0], [0.0, 0.0, 1.0, 3.0], [0.2, 0.5, 0.9, 1.0, 0.0]])
def test_percentile_interval_matches_the_enumerated_bootstrap(x):
    iv = mean_ci(x)
    lo, hi = _exact_bootstrap_quantiles(x, [0.025, 0.975])
    assert iv.mean == pytest.approx(np.mean(x))
    # 10k resamples estimate the exact quantiles; the bootstrap distribution is discrete, so allow one
    # atom's worth of slack around each exact quantile.
    step = (max(x) - min(x)) / len(x)
    assert lo - step <= iv.low <= lo + step
    assert hi - step <= iv.high <= hi + step
    assert iv.low <= iv.mean <= iv.high


def test_paired_difference_is_per_seed():
    a = [0.1, 0.5, 0.9, 0.3, 0.7]
    b = [0.2, 0.6, 1.0, 0.4, 0.8]  # b beats a by exactly 0.1 on every seed, though the seeds spread widely
    iv = paired_diff_ci(a, b)
    assert iv.mean == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.significant and iv.verdict().startswith("significant")
    noisy = paired_diff_ci([0.0, 1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0, 1.0])
    assert not noisy.significant and noisy.low < 0 < noisy.high and noisy.verdict() == "not significant"


def test_fewer_than_min_seeds_decide_nothing():
    """Four seeds that agree exclude 0 from the bootstrap interval, yet decide nothing."""
    iv = paired_diff_ci(a=[0.1, 0.5, 0.9, 0.3], b=[0.2, 0.6, 1.0, 0.4])
    assert iv.low > 0 and iv.n == MIN_SEEDS - 1
    assert not iv.significant and iv.verdict() == f"undecided (4 seeds; a decision needs {MIN_SEEDS})"


def test_fixed_resampling_seed_and_nan_pairs():
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


def test_band_vectorised_matches_pointwise_intervals():
    """The one-call band (whole curves resampled) gives each point the interval of mean_ci's
    percentile bootstrap up to resampling noise, and collapses where the seeds agree."""
    rng = np.random.default_rng(1)
    curves = rng.random((8, 5))
    curves[:, 2] = 0.25  # no spread at this point
    mean, lo, hi = band(curves, resamples=20_000)
    for j in (0, 1, 3, 4):
        iv = mean_ci(curves[:, j], resamples=20_000)
        assert mean[j] == pytest.approx(iv.mean)
        assert lo[j] == pytest.approx(iv.low, abs=0.02) and hi[j] == pytest.approx(iv.high, abs=0.02)
    assert lo[2] == hi[2] == mean[2] == 0.25
    with_nan = curves.copy()
    with_nan[0, 0] = np.nan  # falls back to per-point intervals over the finite seeds
    m, _, _ = band(with_nan)
    assert m[0] == pytest.approx(np.nanmean(with_nan[:, 0]))


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
    from analysis.experiments import config_diff

    wanted = {"model": {"kind": "toy", "shared_prefix": True}, "algo": {"lr_actor": 0.003}}
    found = {"model": {"kind": "toy"}, "algo": {"lr_actor": 0.003}}
    assert config_diff(wanted, found) == []
    found["algo"]["lr_actor"] = 0.001
    assert config_diff(wanted, found) == ["algo.lr_actor: 0.001 -> 0.003"]
