"""Interval estimates and tests shared by every study (rliable / Colas et al.: what few seeds allow).

A study's verdict compares two methods that ran on the same seeds, so the unit is the seed:

- a paired difference over ``n`` seeds gets a **Student-t interval** (``mean ± t_{n-1} s / sqrt(n)``) and an
  **exact paired sign-flip test** (``scipy.stats.permutation_test``, ``permutation_type="samples"``: all
  ``2**n`` sign patterns when there are at most :data:`EXACT_UP_TO` seeds, a fixed-seed Monte Carlo sample
  beyond). A percentile bootstrap over 10 seeds covers a 95% truth only 79-89% of the time; it is not used
  for seed-level statements any more.
- a speed-up ratio gets the **geometric mean** with a t-interval on the logs (:func:`ratio_ci`).
- a report's claims form a **family**: :func:`decide_family` corrects their p-values with Holm-Bonferroni
  and lists the family, so "significant" always names what it was corrected over.
- a verdict needs at least :data:`MIN_SEEDS` seeds; fewer decide nothing (``undecided``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
"""Family-wise error rate of a report's verdicts (after Holm)."""
MIN_SEEDS = 8
"""Fewer seeds than this decide nothing: with fewer, the sign-flip test's smallest p-value
(``2 / 2**n``) cannot survive a correction over a report's family of claims."""
EXACT_UP_TO = 16
"""Sign-flip tests enumerate all ``2**n`` patterns up to this many seeds; beyond, :data:`RESAMPLES`
random patterns with :data:`TEST_SEED` (fixed, so a report is reproducible)."""
RESAMPLES = 100_000
TEST_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds with its 95% Student-t interval and the sign-flip p-value against ``null``."""

    mean: float
    low: float
    high: float
    n: int
    p: float = float("nan")
    """Two-sided exact sign-flip p-value of ``mean == null`` (NaN when it cannot be computed)."""
    null: float = 0.0

    @property
    def decidable(self) -> bool:
        return bool(self.n >= MIN_SEEDS and np.isfinite(self.mean) and np.isfinite(self.p))

    @property
    def significant(self) -> bool:
        """Uncorrected: the test rejects ``null`` at :data:`ALPHA` over at least :data:`MIN_SEEDS` seeds.
        Reports use :func:`decide_family`, which corrects for the family."""
        return bool(self.decidable and self.p < ALPHA)

    def verdict(self) -> str:
        """``significant``, ``not significant`` or, below :data:`MIN_SEEDS` seeds, ``undecided`` (uncorrected)."""
        if self.n < MIN_SEEDS:
            return f"undecided ({self.n} seed{'s' * (self.n != 1)}; a decision needs {MIN_SEEDS})"
        return f"significant (p={self.p:.3g})" if self.significant else f"not significant (p={self.p:.3g})"

    def fmt(self, digits: int = 3) -> str:
        """``+0.120 [+0.050, +0.190]`` (``n/a`` when there is nothing to estimate)."""
        if self.n == 0 or not np.isfinite(self.mean):
            return "n/a"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.mean:+.{digits}f} [n/a]"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def t_interval(x: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of ``x`` (n >= 2); collapses to the mean when every value is equal."""
    from scipy.stats import t

    n, m = x.size, float(x.mean())
    s = float(x.std(ddof=1))
    if s == 0.0:
        return m, m
    h = float(t.ppf(0.5 + confidence / 2, n - 1)) * s / math.sqrt(n)
    return m - h, m + h


def sign_flip_p(d: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value of the paired sign-flip test of ``mean(d) == null`` (exact up to :data:`EXACT_UP_TO`).

    Under the null each centred difference ``d_i - null`` is as likely positive as negative;
    ``scipy.stats.permutation_test`` with one sample and ``permutation_type="samples"`` flips signs."""
    from scipy.stats import permutation_test

    x = np.asarray(d, dtype=float) - null
    if x.size == 0:
        return float("nan")
    if np.all(x == 0):
        return 1.0
    exact = x.size <= EXACT_UP_TO
    res = permutation_test((x,), np.mean, permutation_type="samples", vectorized=True, alternative="two-sided",
                           n_resamples=np.inf if exact else RESAMPLES, rng=np.random.default_rng(TEST_SEED))
    return float(res.pvalue)


def mean_ci(values: Sequence[float], *, null: float = 0.0, confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` (NaNs dropped), its Student-t interval and the sign-flip p-value against ``null``.

    With fewer than two values the interval collapses to the mean and there is no test."""
    x = np.sort(_finite(values))  # sorted: nothing may depend on the order runs are read in
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, null=null)
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, m, m, 1, null=null)
    lo, hi = t_interval(x, confidence)
    return Interval(m, lo, hi, int(x.size), sign_flip_p(x, null), null)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], *, null: float = 0.0, **kw) -> Interval:
    """Mean of the per-seed differences ``b[i] - a[i]`` with its t-interval and sign-flip p-value;
    pairs with a NaN are dropped. ``a`` and ``b`` are aligned by seed (same length, same seed order)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [float(y) - float(x) for x, y in zip(a, b)
         if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    return mean_ci(d, null=null, **kw)


def ratio_ci(ratios: Sequence[float], *, null: float = 1.0, confidence: float = CONFIDENCE) -> Interval:
    """Geometric mean of per-seed ratios (speed-ups) with the t-interval and sign-flip test on their logs,
    mapped back (a ratio of 2 and one of 0.5 average to 1, as they should)."""
    x = _finite(ratios)
    x = x[x > 0]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, null=null)
    iv = mean_ci(np.log(x), null=math.log(null), confidence=confidence)
    return Interval(math.exp(iv.mean), math.exp(iv.low), math.exp(iv.high), iv.n, iv.p, null)


def band(curves: np.ndarray, *, lo: float | None = None, hi: float | None = None,
         confidence: float = CONFIDENCE):
    """Mean and pointwise Student-t band of ``curves`` (seeds, points), clipped to ``[lo, hi]``.

    Returns ``(mean, low, high)`` arrays; NaNs are dropped point by point; a point with one finite seed,
    or with no spread, has a band of zero width."""
    from scipy.stats import t

    curves = np.asarray(curves, dtype=float)
    if curves.ndim != 2:
        raise ValueError(f"curves must be (seeds, points), got shape {curves.shape}")
    finite = np.isfinite(curves)
    n = finite.sum(axis=0)
    x = np.sort(np.where(finite, curves, np.nan), axis=0)  # sorted per point: order-independent sums
    with warnings.catch_warnings():  # all-NaN points and single seeds: handled by the where() below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=0) if curves.shape[0] else np.full(curves.shape[1], np.nan)
        sd = np.nanstd(x, axis=0, ddof=1) if curves.shape[0] > 1 else np.zeros(curves.shape[1])
    half = np.where(n > 1, t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * np.nan_to_num(sd) / np.sqrt(np.maximum(n, 1)), 0.0)
    low, high = mean - half, mean + half
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


@dataclass(frozen=True)
class McNemar:
    """Paired items scored by two methods: ``b_only`` items only ``b`` gets right, ``a_only`` only ``a``
    does, ``n`` items in all; ``p``: the exact (binomial) two-sided McNemar test of ``b_only`` against
    ``a_only`` (only the discordant items carry information)."""

    n: int
    a_only: int
    b_only: int
    p: float

    @property
    def diff(self) -> float:
        """Accuracy of ``b`` minus that of ``a`` over the items."""
        return (self.b_only - self.a_only) / self.n if self.n else float("nan")

    def fmt(self) -> str:
        return (f"{self.diff:+.3f} over {self.n} items ({self.b_only} right only with b, {self.a_only} only with a; "
                f"exact McNemar p={self.p:.3g})")


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact McNemar test on paired per-item outcomes (``a[i]``, ``b[i]``: the same item under two methods,
    pooled over seeds by the caller). ``scipy.stats.binomtest`` on the discordant pairs.

    >>> m = mcnemar([1, 1, 0, 0, 0, 1], [1, 0, 1, 1, 1, 1])
    >>> (m.a_only, m.b_only, round(m.p, 3))
    (1, 3, 0.625)
    """
    from scipy.stats import binomtest

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired items need two 1-D sequences of one length, got {x.shape} and {y.shape}")
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    k = a_only + b_only
    p = float(binomtest(b_only, k, 0.5).pvalue) if k else 1.0
    return McNemar(int(x.size), a_only, b_only, p)


# --- a report's family of claims --------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN and do not count.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass
class Claim:
    """One statement of a report: "``quantity`` exceeds ``iv.null``", decided from ``iv``.

    ``text`` is the claim; ``detail`` the numbers shown after the verdict. ``word`` and ``p_holm`` are
    filled in by :func:`decide_family`."""

    text: str
    iv: Interval
    detail: str = ""
    word: str = ""
    p_holm: float = float("nan")
    tags: dict = field(default_factory=dict)

    def line(self) -> str:
        p = (f"; p={self.iv.p:.3g}, Holm {self.p_holm:.3g}" if np.isfinite(self.p_holm) else "")
        return f"{self.text}: {self.word} ({self.detail}{p})"


def decide_family(claims: list[Claim], alpha: float = ALPHA) -> list[Claim]:
    """Decide every claim of one family with Holm-corrected sign-flip p-values.

    ``yes`` (the quantity exceeds the null) or ``no`` (it is below) only when the Holm-adjusted p-value
    is below ``alpha`` over at least :data:`MIN_SEEDS` seeds; otherwise ``undecided`` with the reason.
    Claims below :data:`MIN_SEEDS` seeds are not in the family (they cannot be decided)."""
    members = [c for c in claims if c.iv.decidable]
    for c, q in zip(members, holm([c.iv.p for c in members])):
        c.p_holm = q
    for c in claims:
        iv = c.iv
        if iv.n == 0 or not np.isfinite(iv.mean):
            c.word = "undetermined (missing numbers)"
        elif iv.n < MIN_SEEDS:
            c.word = f"undecided ({iv.n} seed{'s' * (iv.n != 1)}; a decision needs {MIN_SEEDS})"
        elif not iv.decidable:
            c.word = "undetermined (no test)"
        elif c.p_holm < alpha:
            c.word = "yes" if iv.mean > iv.null else "no"
        else:
            c.word = f"undecided (not significant after Holm over {len(members)} claims)"
    return claims


class Verdicts(list):
    """A report's verdict lines (a ``list`` of ``str``) that carry the family they were decided from
    (``.claims``), so a runner can write the claims as a table beside the report."""

    def __init__(self, lines, claims=()):
        super().__init__(lines)
        self.claims = list(claims)

    @classmethod
    def of(cls, items: list, name: str = "this report") -> "Verdicts":
        """Lines of ``items`` (decided :class:`Claim` s and context strings, in report order), the family note last."""
        cs = [c for c in items if isinstance(c, Claim)]
        return cls([c.line() if isinstance(c, Claim) else c for c in items] + ([family_note(cs, name)] if cs else []), cs)


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value the exact sign-flip test can give over ``n`` seeds (all signs alike)."""
    return 2.0 / 2.0 ** n if n <= EXACT_UP_TO else 1.0 / (RESAMPLES + 1)


def family_note(claims: list[Claim], name: str = "this report") -> str:
    """One paragraph naming the family a report's verdicts were corrected over, and saying so when its
    size leaves no claim decidable (the smallest p-value times the family's size is not below ALPHA)."""
    members = [c for c in claims if np.isfinite(c.p_holm)]
    text = (f"The family of {name}: {len(members)} claims with at least {MIN_SEEDS} seeds, each tested with an "
            f"exact paired sign-flip test (two-sided; Student-t 95% intervals shown) and decided at a "
            f"family-wise error rate of {ALPHA:g} with Holm-Bonferroni; a claim with fewer seeds is undecided "
            "and not in the family.")
    if members:
        n = max(c.iv.n for c in members)  # the best-placed claim: if even it cannot pass, none can
        floor = smallest_p(n) * len(members)
        if floor >= ALPHA:
            text += (f" With {n} seeds the smallest possible p-value is {smallest_p(n):.3g}, so after Holm over "
                     f"{len(members)} claims none can be decided: more seeds are needed.")
    return text
