"""Interval estimates shared by every study: paired-by-seed differences with percentile-bootstrap CIs.

A study's verdict compares two methods that ran on the same seeds, so the unit of resampling is the
seed: the statistic is the mean of the per-seed differences ``b - a``, resampled with
``scipy.stats.bootstrap`` (percentile method, a fixed resampling seed so a report is reproducible).
A difference is called significant only when its interval excludes 0 and rests on at least
:data:`MIN_SEEDS` seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
"""The resampling seed: fixed, so the same runs give the same interval."""
MIN_SEEDS = 5
"""Fewer seeds than this decide nothing: a percentile bootstrap of 2-4 values covers poorly (with two
seeds the interval is just the span of the two)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval over ``n`` seeds."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (both ends strictly on one side) over at least :data:`MIN_SEEDS` seeds."""
        return bool(self.n >= MIN_SEEDS and (self.low > 0 or self.high < 0))

    def verdict(self) -> str:
        """``significant``, ``not significant`` or, below :data:`MIN_SEEDS` seeds, ``undecided``."""
        if self.n < MIN_SEEDS:
            return f"undecided ({self.n} seed{'s' * (self.n != 1)}; a decision needs {MIN_SEEDS})"
        return "significant (the interval excludes 0)" if self.significant else "not significant"

    def fmt(self, digits: int = 3) -> str:
        """``+0.120 [+0.050, +0.190]`` (``n/a`` when there is nothing to estimate)."""
        if self.n == 0 or not np.isfinite(self.mean):
            return "n/a"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.mean:+.{digits}f} [n/a]"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Interval:
    """Mean of ``values`` (NaNs dropped) with a percentile-bootstrap interval.

    With fewer than two values, or when every value is equal, the interval collapses to the mean
    (there is no spread to resample)."""
    # Sorted: the mean does not depend on the order, so neither may its interval (runs are read in
    # directory order, which differs between machines; the resampling seed alone does not fix that).
    x = np.sort(np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float))
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    m = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return Interval(m, m, m, int(x.size))
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    return Interval(m, float(res.confidence_interval.low), float(res.confidence_interval.high), int(x.size))


def paired_diff_ci(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """Mean of the per-seed differences ``b[i] - a[i]`` with its interval; pairs with a NaN are dropped.

    ``a`` and ``b`` are aligned by seed (same length, same seed order)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [float(y) - float(x) for x, y in zip(a, b)
         if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    return mean_ci(d, **kw)


def band(curves: np.ndarray, *, lo: float | None = None, hi: float | None = None,
         confidence: float = CONFIDENCE, resamples: int = 2_000, seed: int = BOOTSTRAP_SEED):
    """Mean and bootstrap band of ``curves`` (seeds, points) at each point, clipped to ``[lo, hi]``.

    Returns ``(mean, low, high)`` arrays; a point with one finite seed, or with no spread, has a band of
    zero width. Curves without NaNs are resampled in one ``scipy.stats.bootstrap`` call along the seed
    axis (the same seeds drawn for every point, so the band is one resampling of whole curves)."""
    curves = np.asarray(curves, dtype=float)
    if curves.ndim != 2:
        raise ValueError(f"curves must be (seeds, points), got shape {curves.shape}")
    if curves.shape[0] >= 2 and np.isfinite(curves).all():
        from scipy.stats import bootstrap

        curves = curves[np.lexsort(curves.T[::-1])]  # whole curves in a fixed order, as in mean_ci

        mean = curves.mean(axis=0)
        flat = np.all(curves == curves[:1], axis=0)
        low, high = mean.copy(), mean.copy()
        if not flat.all():
            res = bootstrap((curves[:, ~flat],), np.mean, axis=0, confidence_level=confidence, n_resamples=resamples,
                            method="percentile", vectorized=True, rng=np.random.default_rng(seed))
            low[~flat], high[~flat] = res.confidence_interval.low, res.confidence_interval.high
    else:
        mean = np.full(curves.shape[1], np.nan)
        low, high = mean.copy(), mean.copy()
        for j in range(curves.shape[1]):
            iv = mean_ci(curves[:, j], confidence=confidence, resamples=resamples, seed=seed)
            mean[j], low[j], high[j] = iv.mean, iv.low, iv.high
    if lo is not None or hi is not None:
        low, high, mean = (np.clip(v, lo, hi) for v in (low, high, mean))
    return mean, low, high


def paired_by_seed(per_run, metric: str, a: str, b: str, *, where: dict | None = None,
                   group: str = "method", seed: str = "seed", **kw) -> Interval:
    """:func:`paired_diff_ci` of ``metric`` between the runs of ``group == b`` and ``group == a`` that share a seed.

    ``per_run`` is a DataFrame with one row per run (columns ``group``, ``seed``, ``metric`` and the
    keys of ``where``, which selects the rows first, e.g. ``{"env": "trap"}``). Seeds that only one of
    the two has are dropped."""
    t = per_run
    for k, v in (where or {}).items():
        t = t[t[k] == v]
    xa = t[t[group] == a].set_index(seed)[metric]
    xb = t[t[group] == b].set_index(seed)[metric]
    common = sorted(set(xa.index) & set(xb.index))
    return paired_diff_ci(xa.loc[common].tolist(), xb.loc[common].tolist(), **kw)
