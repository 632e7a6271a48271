"""Detector scoring: the one definition of each detector metric, used online and offline.

- :func:`detector_metrics`: precision, recall, false-stop rate and delay of stops against planted or
  verified failures (the trainer's per-step ``stop/*`` metrics, ``analysis``'s pooled ones).
- :func:`first_stop_metrics`: the same counts on step-labelled solutions (``testbed detect``), with
  ProcessBench's F1.
- :func:`auroc` (Mann-Whitney U / (n1 n0), :func:`scipy.stats.mannwhitneyu`) and
  :func:`auroc_interval` (percentile bootstrap over items, :func:`scipy.stats.bootstrap`).
- :func:`random_baseline`: the detector matched in stop rate that ``testbed detect`` compares against.
- :func:`bayes_optimal_stop`: the Bayes-optimal detector on exact ``P(success | prefix)`` curves
  (``envs.solver`` computes them; the ``detector_bayes`` study scores against it).

Torch-free, and numpy-free at import time (numpy and scipy are imported inside the functions that
need them), so that :mod:`testbed.metrics` and ``analysis`` can import :func:`detector_metrics`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

AUROC_RESAMPLES = 2000
"""Bootstrap draws of :func:`auroc_interval`."""

RANDOM_REPEATS = 200
"""Draws of the rate-matched random detector :func:`random_baseline` averages."""


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def detector_metrics(stopped: Any, failure_step: Any, last: Any) -> dict[str, float]:
    """Stops scored against planted failures, one definition for the trainer and ``analysis``.

    Arguments are parallel 1-D arrays over *finished* rows (numpy arrays or torch tensors; only
    elementwise operators and ``.sum()`` are used, so this module needs neither): ``stopped`` (bool,
    the row ended ``EARLY_STOP``), ``failure_step`` (index of the planted fatal token, -1 none) and
    ``last`` (the response index of the row's last token).

    A row is *doomed* when its fatal token is among its tokens (``0 <= failure_step <= last``); a
    *hit* is a stop of a doomed row; a doomed row is *stoppable* when it was stopped or its fatal
    token came before its last token (a row whose fatal token was its last could not have been
    stopped earlier). ``precision`` = hits / stops; ``recall`` = hits / stoppable doomed rows;
    ``false_stop_rate`` = stops of not-doomed rows / not-doomed rows (a false-positive rate, not
    1 - precision); ``delay`` = mean ``last - failure_step`` over hits. NaN where a denominator is 0.
    Also ``count`` (stops), ``doomed_count`` and ``doomed_rate`` (doomed / rows).
    """
    doomed = (failure_step >= 0) & (failure_step <= last)
    hit = stopped & doomed
    stoppable = hit | (doomed & ~stopped & (failure_step < last))
    n_hit, n_stop, n_doomed = float(hit.sum()), float(stopped.sum()), float(doomed.sum())
    return {
        "precision": _ratio(n_hit, n_stop),
        "recall": _ratio(n_hit, float(stoppable.sum())),
        "false_stop_rate": _ratio(float((stopped & ~doomed).sum()), float((~doomed).sum())),
        "delay": _ratio(float((last - failure_step)[hit].sum()), n_hit),
        "count": n_stop,
        "doomed_count": n_doomed,
        "doomed_rate": _ratio(n_doomed, float(len(stopped))),
    }


def first_stop_metrics(first_stop: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Detection metrics of first-stop steps (-1: never stopped) against first-error labels (-1: no
    error), as ``testbed detect`` reports them.

    A *hit* (detection) is the same as in :func:`detector_metrics`: a stop at or after the labelled
    step of an erroneous item. ``precision`` = hits / stops and ``delay`` = mean ``first_stop -
    label`` over hits, as there. Two denominators follow ProcessBench's item-level convention instead
    (an item has no "last token" to judge stoppability by): ``recall`` = hits / erroneous items and
    ``false_stop_rate`` = stops that are not hits / items. ProcessBench's ``f1``: the harmonic mean
    of the accuracy on erroneous items (``first_stop == label``) and on correct items (``first_stop ==
    -1``). Also ``stop_rate``, ``acc_erroneous``, ``acc_correct``.

    >>> m = first_stop_metrics([2, 0, -1, 1], [1, 3, -1, -1])
    >>> m["precision"], m["recall"], m["delay"], m["f1"]
    (0.3333333333333333, 0.5, 1.0, 0.0)
    """
    import numpy as np

    f = np.asarray(first_stop)
    y = np.asarray(labels)
    err = y >= 0
    stopped = f >= 0
    hit = stopped & err & (f >= y)
    n_stop, n_err, n_ok = int(stopped.sum()), int(err.sum()), int((~err).sum())
    acc_err = float((f[err] == y[err]).mean()) if n_err else float("nan")
    acc_ok = float((f[~err] == -1).mean()) if n_ok else float("nan")
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if (acc_err + acc_ok) > 0 else 0.0
    return {
        "stop_rate": n_stop / len(f),
        "precision": int(hit.sum()) / n_stop if n_stop else float("nan"),
        "recall": int(hit.sum()) / n_err if n_err else float("nan"),
        "delay": float((f - y)[hit].mean()) if hit.any() else float("nan"),
        "false_stop_rate": int((stopped & ~hit).sum()) / len(f),
        "acc_erroneous": acc_err,
        "acc_correct": acc_ok,
        "f1": f1,
    }


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the Mann-Whitney U of the positives' scores over n1 n0 (ties count
    half); NaN without both classes.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    import numpy as np
    from scipy.stats import mannwhitneyu

    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    u = mannwhitneyu(s[y], s[~y], alternative="two-sided", method="asymptotic", use_continuity=False).statistic
    return float(u / (n1 * n0))


def auroc_interval(scores: Sequence[float], positive: Sequence[bool], *, confidence: float = 0.95,
                   resamples: int = AUROC_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of :func:`auroc` over items (score and label resampled together,
    :func:`scipy.stats.bootstrap` with ``paired=True``); draws holding one class only are skipped; NaNs
    without both classes. Fixed seed: reproducible."""
    import numpy as np
    import warnings

    from scipy.stats import DegenerateDataWarning, bootstrap

    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    if y.all() or not y.any():
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # one-class draws make scipy's interval NaN and warn: not used here
        warnings.simplefilter("ignore", DegenerateDataWarning)
        res = bootstrap((s, y), auroc, paired=True, vectorized=False, n_resamples=resamples, method="percentile",
                        confidence_level=confidence, rng=np.random.default_rng(seed))
    # scipy's own interval propagates the NaNs of one-class draws; the percentiles of the others instead
    draws = res.bootstrap_distribution
    draws = draws[~np.isnan(draws)]
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def random_baseline(n_tokens: Sequence[int], token_steps: Sequence[Any], labels: Sequence[int], *,
                    rate: float, fractions: Sequence[float], min_tokens: int, repeats: int = RANDOM_REPEATS,
                    seed: int = 0) -> dict[str, float]:
    """Mean :func:`first_stop_metrics` (and :func:`auroc`) of a detector that stops each item with
    probability ``rate``, at a relative position drawn from ``fractions`` (uniform when empty), never
    before ``min_tokens``; its scores are uniform noise. ``token_steps[i][t]``: the step of item i's
    token t."""
    import numpy as np

    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(repeats):
        first = []
        for n, steps in zip(n_tokens, token_steps):
            lo = min(max(min_tokens - 1, 0), n - 1)
            if rng.random() >= rate:
                first.append(-1)
                continue
            frac = rng.choice(fractions) if len(fractions) else rng.random()
            t = min(max(int(frac * n), lo), n - 1)
            first.append(int(steps[t]))
        m = first_stop_metrics(first, labels)
        m["auroc"] = auroc(rng.random(len(labels)), np.asarray(labels) >= 0)
        runs.append(m)
    return {k: float(np.nanmean([r[k] for r in runs])) if any(not math.isnan(r[k]) for r in runs) else float("nan")
            for k in runs[0]}


def bayes_optimal_stop(curves: Any, threshold: float, *, min_tokens: int = 0) -> Any:
    """The detector that stops as soon as ``P(success | prefix) < threshold``.

    Stop semantics follow the testbed's stop rules: stopping at response index ``s`` keeps token
    ``s``, so the decision at ``s`` reads ``curves[..., s + 1]``. No stop at ``s < min_tokens``.
    A row whose token ``s`` already ended it (EOS) is still reported if that prefix is below the
    threshold; put NaN there to exclude it. NaN never stops.

    Args:
        curves: ``(..., T + 1)`` from ``envs.solver`` (``PrefixValues.curve`` or ``success_curves``).
        threshold: stop below this success probability.
        min_tokens: earliest response index at which a stop is allowed.

    Returns:
        ``(...)`` int64: the stop index ``s``, or -1 for rows never stopped.
    """
    import numpy as np

    curves = np.asarray(curves, dtype=np.float64)
    below = curves[..., 1:] < threshold  # NaN compares False
    below[..., :min_tokens] = False
    return np.where(below.any(-1), below.argmax(-1), -1).astype(np.int64)


BASELINE_SCORES = ("length", "mean_nll", "max_nll", "mean_entropy", "max_regret", "min_value", "value_drop")
"""Per-row scores a detector must beat (higher = more suspicious); the value ones need a trained critic."""


def baseline_scores(regret: Any, nll: Any, entropy: Any, values: Any = None) -> dict[str, float]:
    """One row's :data:`BASELINE_SCORES` from its per-token regret, NLL (``-log pi(a_t)``), entropy and
    values (``V(s_t)``; NaN scores without): length in tokens, mean and largest NLL (the largest is
    ``-min log pi``), mean entropy, the largest single-token regret, ``-min V`` and ``V_0 - min V``.

    >>> baseline_scores([0.0, 2.0], [0.1, 2.5], [1.0, 3.0], [0.8, 0.2])
    {'length': 2.0, 'mean_nll': 1.3, 'max_nll': 2.5, 'mean_entropy': 2.0, 'max_regret': 2.0, 'min_value': -0.2, 'value_drop': 0.6000000000000001}
    """
    import numpy as np

    g, n, h = (np.asarray(x, dtype=float) for x in (regret, nll, entropy))
    if not (len(g) == len(n) == len(h)) or len(g) == 0:
        raise ValueError(f"baseline_scores: regret, nll and entropy need the same non-zero length, got {len(g)}, {len(n)}, {len(h)}")
    out = {"length": float(len(g)), "mean_nll": float(n.mean()), "max_nll": float(n.max()),
           "mean_entropy": float(h.mean()), "max_regret": float(g.max()),
           "min_value": float("nan"), "value_drop": float("nan")}
    if values is not None:
        v = np.asarray(values, dtype=float)
        out["min_value"], out["value_drop"] = float(-v.min()), float(v[0] - v.min())
    return out


def auroc_difference(a: Sequence[float], b: Sequence[float], positive: Sequence[bool], *, confidence: float = 0.95,
                     resamples: int = AUROC_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """``auroc(a) - auroc(b)`` on the same items with its percentile-bootstrap interval (items resampled
    with both scores and the label; one-class draws skipped)."""
    import numpy as np

    x, z, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(positive, dtype=bool)
    d = auroc(x, y) - auroc(z, y)
    if y.all() or not y.any():
        return d, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        draws.append(auroc(x[i], y[i]) - auroc(z[i], y[i]))
    tail = 100 * (1 - confidence) / 2
    return float(d), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def logistic_given_length(score: Sequence[float], length: Sequence[float], positive: Sequence[bool]) -> dict[str, float]:
    """Logistic fit of the label on ``z(score) + z(log length)`` (standardised, Newton's method): the
    score's coefficient, its Wald standard error and two-sided p-value. Is the score still informative
    once the length is known? NaN when the fit is degenerate (one class, a constant score) or has no
    maximum (score and length together separate the classes)."""
    import numpy as np
    from scipy.special import expit
    from scipy.stats import norm

    s, L, y = np.asarray(score, dtype=float), np.asarray(length, dtype=float), np.asarray(positive, dtype=float)
    nan = {"coef": float("nan"), "se": float("nan"), "p": float("nan")}
    keep = np.isfinite(s) & np.isfinite(L) & (L > 0)
    s, L, y = s[keep], np.log(L[keep]), y[keep]
    if len(y) < 4 or y.min() == y.max() or s.std() == 0:
        return nan
    cols = [np.ones_like(s), (s - s.mean()) / s.std()]
    if L.std() > 0:
        cols.append((L - L.mean()) / L.std())
    X = np.stack(cols, 1)
    w = np.zeros(X.shape[1])
    for _ in range(50):
        p = expit(X @ w)
        H = X.T @ (X * (p * (1 - p))[:, None])
        try:
            step = np.linalg.solve(H, X.T @ (y - p))
        except np.linalg.LinAlgError:
            return nan
        w += step
        if np.abs(step).max() < 1e-10:
            break
    else:  # no maximum: the classes are separated (w runs off to infinity) and a Wald test means nothing
        return nan
    p = expit(X @ w)
    try:
        cov = np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))
    except np.linalg.LinAlgError:
        return nan
    se = float(np.sqrt(cov[1, 1]))
    if not np.isfinite(se) or se == 0:
        return nan
    return {"coef": float(w[1]), "se": se, "p": float(2 * norm.sf(abs(w[1] / se)))}


def compare_scores(scores: dict[str, Sequence[float]], positive: Sequence[bool], *, seed: int = 0,
                   resamples: int = AUROC_RESAMPLES) -> dict[str, dict]:
    """For each named per-item score: AUROC with its interval, the paired AUROC difference against
    ``scores["length"]`` with its interval, and :func:`logistic_given_length`. Scores that are all NaN
    (value scores without a critic) are left out."""
    import numpy as np

    length = np.asarray(scores["length"], dtype=float)
    out = {}
    for name, sc in scores.items():
        x = np.asarray(sc, dtype=float)
        if not np.isfinite(x).any():
            continue
        x = np.where(np.isfinite(x), x, x[np.isfinite(x)].min())  # a row where the rule never ran scores as its lowest
        d = auroc_difference(x, length, positive, seed=seed, resamples=resamples) if name != "length" else (0.0, 0.0, 0.0)
        out[name] = {"auroc": auroc(x, positive), "auroc_ci": list(auroc_interval(x, positive, seed=seed, resamples=resamples)),
                     "minus_length": d[0], "minus_length_ci": [d[1], d[2]],
                     "given_length": logistic_given_length(x, length, positive) if name != "length" else None}
    return out
