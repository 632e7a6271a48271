"""Detectors scored against the exact posterior: the importable scoring of the ``detector_bayes`` study.

Input: one run's measurement (``testbed.ops.exact_posterior``: the frozen policy's rows, the first
index at which each stop rule would fire, the exact ``P(success | prefix)`` curves and the executable
stop positions), as numpy arrays. Each rule's n stops are set against, at n stops:

- ``random (matched)``: n rows stopped at random with exactly the rule's stop positions (each
  position goes to a random row still running there); the mean of ``draws`` draws.
- ``bayes (exact P)``: the Bayes-optimal detector (:func:`testbed.scoring.bayes_optimal_stop`): stop a
  row at the first prefix whose exact P(success | prefix) is below a threshold, set so that n rows
  stop (rows tied at it are drawn at random).
- ``oracle (matched)``: stop at the planted fatal token (env ground truth), n doomed rows drawn at
  random (expected values), or every stoppable doomed row when there are fewer than n.
- ``bayes (same lost)``: not count-matched: the first-crossing rule with the largest threshold whose
  expected successes lost stay within the rule's; the most tokens the exact posterior saves at the
  same success cost.

Torch-free and env-free: numpy, and of the core only :mod:`testbed.scoring` (one definition of each
detector metric and of the Bayes-optimal stop).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from testbed.scoring import bayes_optimal_stop, detector_metrics

RANDOM_DRAWS = 200
MC_MIN_VISITS = 100


@dataclass
class Rows:
    """One measurement's rows (the arrays ``testbed.ops.exact_posterior`` writes)."""

    tokens: np.ndarray  # (R, T) response tokens, PAD after the end
    lengths: np.ndarray  # (R,)
    problems: np.ndarray  # (R,)
    success: np.ndarray  # (R,) bool
    failure_step: np.ndarray  # (R,) index of the fatal token, -1 none
    values: np.ndarray  # (R, T) critic V(s_t), NaN after the end
    curves: np.ndarray  # (R, T + 1) exact P(success) after the first k tokens, NaN past the end
    stoppable: np.ndarray  # (R, T) bool: a stop at index s would be executed
    p_critic: np.ndarray  # (R, T) the value gate's p_t, NaN after the end
    fires: dict[str, np.ndarray] = field(default_factory=dict)  # rule -> (R,) first firing index, -1 never

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "Rows":
        fires = {k[len("fire_"):]: a[k] for k in a if k.startswith("fire_")}
        return cls(**{f.name: a[f.name] for f in dataclasses.fields(cls) if f.name != "fires"}, fires=fires)


@dataclass
class Score:
    name: str
    stops: int
    mean_p: float  # mean exact P(success | prefix at stop)
    precision: float  # share of stops at a doomed prefix
    lost: float  # sum of P over stops: expected successes thrown away
    saved: float  # response tokens after the stops
    note: str = ""

    @property
    def lost_per_100(self) -> float:
        return 100.0 * self.lost / self.saved if self.saved > 0 else float("nan")


def _at(curves: np.ndarray, stops: np.ndarray, rows: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For stop indices ``stops`` (R,) with -1 = none: (stopped rows, P at the stops, doomed at the stops)."""
    b = np.flatnonzero(stops >= 0)
    s = stops[b]
    p = curves[b, s + 1]
    fs = rows.failure_step[b]
    doomed = (p == 0) | ((fs >= 0) & (fs <= s))
    return b, p, doomed


def score_stops(name: str, curves: np.ndarray, stops: np.ndarray, rows: Rows, note: str = "") -> Score:
    """The stops scored; ``precision`` is :func:`testbed.scoring.detector_metrics`'s (hits / stops), with a
    prefix at exact P == 0 counted as doomed at the stop even before a planted fatal token."""
    b, p, doomed = _at(curves, stops, rows)
    n = len(b)
    saved = float((rows.lengths[b] - (stops[b] + 1)).sum())
    if n == 0:
        return Score(name, 0, float("nan"), float("nan"), 0.0, 0.0, note)
    s = stops[b]
    failure = np.where(doomed, np.minimum(np.where(rows.failure_step[b] >= 0, rows.failure_step[b], s), s), -1)
    precision = detector_metrics(np.ones(n, dtype=bool), failure, s)["precision"]
    return Score(name, n, float(p.mean()), precision, float(p.sum()), saved, note)


def random_draw(rule_stops: np.ndarray, ok: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random detector with the same count and stop positions as ``rule_stops`` (-1 = none).

    Rows still running at a later index are also running at every earlier one (the sets of eligible
    rows are nested), so giving the latest positions out first always finds a free row.
    """
    wanted = np.bincount(rule_stops[rule_stops >= 0], minlength=ok.shape[1])
    stops = np.full(len(rule_stops), -1, dtype=np.int64)
    for s in range(ok.shape[1] - 1, -1, -1):
        if wanted[s]:
            free = np.flatnonzero(ok[:, s] & (stops < 0))
            stops[rng.choice(free, size=wanted[s], replace=False)] = s
    return stops


def random_matched(curves: np.ndarray, rule_stops: np.ndarray, rows: Rows, ok: np.ndarray,
                   rng: np.random.Generator, draws: int) -> tuple[Score, np.ndarray]:
    """:func:`random_draw` scored, averaged over ``draws`` draws; also each draw's mean P@stop."""
    n = int((rule_stops >= 0).sum())
    if n == 0:
        return Score("random (matched)", 0, float("nan"), float("nan"), 0.0, 0.0), np.zeros(0)
    per_draw = [score_stops("random", curves, random_draw(rule_stops, ok, rng), rows) for _ in range(draws)]
    mean = lambda attr: float(np.mean([getattr(d, attr) for d in per_draw]))  # noqa: E731
    score = Score("random (matched)", n, mean("mean_p"), mean("precision"), mean("lost"), mean("saved"),
                  f"mean of {draws} draws")
    return score, np.array([d.mean_p for d in per_draw])


def bayes_matched(masked: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """First-crossing stops of the exact ``P(success | prefix)`` for exactly ``n`` rows.

    ``masked`` is ``(R, T + 1)`` curves with NaN where no stop can be executed. Rows whose smallest
    stoppable P is below the n-th smallest are stopped at their first P below it; rows tied at it
    fill the rest at random, each at its first P at or below it. Returns stops and the threshold.
    """
    R = masked.shape[0]
    stops = np.full(R, -1, dtype=np.int64)
    if n == 0:
        return stops, float("nan")
    lowest = np.nanmin(np.where(np.isnan(masked[:, 1:]), np.inf, masked[:, 1:]), axis=1)
    thr = float(np.sort(lowest)[n - 1])
    below = lowest < thr
    stops[below] = bayes_optimal_stop(masked[below], thr)
    tied = np.flatnonzero(lowest == thr)
    pick = rng.choice(tied, size=n - int(below.sum()), replace=False)
    stops[pick] = bayes_optimal_stop(masked[pick], np.nextafter(thr, np.inf))
    return stops, thr


def bayes_same_lost(masked: np.ndarray, target_lost: float) -> tuple[np.ndarray, float]:
    """First-crossing stops ``P(success | prefix) <= c`` with the largest ``c`` whose expected
    successes lost stay within ``target_lost``: the most tokens the exact-posterior rule saves for
    the same success cost. Raising ``c`` moves each row's first crossing no later, to a prefix worth
    no less, so lost and saved both grow with ``c`` and a bisection over the visited P values finds it.
    Returns stops (all -1 if even the lowest value costs too much) and ``c``.
    """
    grid = np.unique(masked[:, 1:][~np.isnan(masked[:, 1:])])

    def stops_at(c: float) -> np.ndarray:
        return bayes_optimal_stop(masked, np.nextafter(c, np.inf))

    def lost(c: float) -> float:
        st = stops_at(c)
        b = np.flatnonzero(st >= 0)
        return float(masked[b, st[b] + 1].sum())

    lo, hi = -1, len(grid) - 1  # invariant: grid[lo] fits (lo = -1: nothing), grid[hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lost(grid[mid]) <= target_lost + 1e-12:
            lo = mid
        else:
            hi = mid - 1
    if lo < 0:
        return np.full(masked.shape[0], -1, dtype=np.int64), float("nan")
    return stops_at(grid[lo]), float(grid[lo])


def oracle_stops(rows: Rows, ok: np.ndarray) -> np.ndarray:
    """Stop at the planted fatal token (the first executable index at or after it); -1 = none."""
    T = ok.shape[1]
    after = np.arange(T)[None, :] >= np.where(rows.failure_step >= 0, rows.failure_step, T)[:, None]
    cand = ok & after
    return np.where(cand.any(1), cand.argmax(1), -1).astype(np.int64)


def oracle_scores(curves: np.ndarray, rows: Rows, ok: np.ndarray, n: int) -> Score:
    """:func:`oracle_stops` scored for n of its rows drawn at random (in expectation), or all of
    them when fewer than n can be stopped."""
    if n == 0:
        return Score("oracle (matched)", 0, float("nan"), float("nan"), 0.0, 0.0)
    full = score_stops("oracle", curves, oracle_stops(rows, ok), rows)
    if full.stops <= n:
        note = f"only {full.stops} doomed rows stoppable" if full.stops < n else ""
        return dataclasses.replace(full, name="oracle (matched)", note=note)
    f = n / full.stops  # expectation over a uniformly random n-subset of the doomed rows
    return Score("oracle (matched)", n, full.mean_p, full.precision, full.lost * f, full.saved * f,
                 f"{n} of {full.stops} doomed rows")


@dataclass
class Block:
    """One stop rule against its matched detectors."""

    rule: str
    scores: list[Score]
    """rule, random (matched), bayes (matched count), oracle (matched), bayes (same E[lost])."""
    stops: dict[str, np.ndarray]
    """(R,) stop index per row (-1 none) of: the rule, one random draw, bayes, bayes_same_lost, oracle (all)."""
    threshold: float
    """The count-matched Bayes detector's threshold (ties at it broken at random)."""
    p_value: float
    """Share of random draws whose mean P@stop is at most the rule's (NaN without stops)."""


@dataclass
class Report:
    """One run's measurement scored."""

    blocks: list[Block]
    rows: int
    success_rate: float
    doomed_rate: float
    stoppable_doomed: int
    drop_share: float  # share of rows whose exact P falls by more than 0.3 at one token
    mc_checked: int
    mc_max_z: float
    critic_mae: float
    critic_corr: float
    meta: dict = field(default_factory=dict)
    """The measurement's settings (``exact_posterior.json``)."""


def mc_check(curves: np.ndarray, rows: Rows, min_visits: int) -> tuple[int, float]:
    """Exact P against the empirical success rate of the sampled rows through each prefix visited at
    least ``min_visits`` times (prefixes that are not yet ended). Returns (prefixes checked, max |z|)."""
    counts: dict[tuple, list[int]] = {}
    for b in range(len(rows.lengths)):
        toks = tuple(int(t) for t in rows.tokens[b, : rows.lengths[b]])
        for k in range(len(toks)):  # prefixes toks[:k], k < length: the row continued from each
            c = counts.setdefault((int(rows.problems[b]), toks[:k]), [0, 0, b, k])
            c[0] += 1
            c[1] += int(rows.success[b])
    checked, worst = 0, 0.0
    for (_, _), (n, wins, b, k) in counts.items():
        if n < min_visits:
            continue
        p = curves[b, k]
        emp = wins / n
        se = np.sqrt(p * (1 - p) / n)
        z = 0.0 if emp == p else (abs(emp - p) / se if se > 0 else np.inf)
        checked += 1
        worst = max(worst, z)
    return checked, float(worst)


def score(rows: Rows, *, seed: int, rules: tuple[str, ...] | None = None, draws: int = RANDOM_DRAWS,
          mc_min_visits: int = MC_MIN_VISITS, meta: dict | None = None) -> Report:
    """Every rule of ``rows.fires`` (or ``rules``) against its matched detectors; deterministic under ``seed``."""
    curves, ok = rows.curves, rows.stoppable
    masked = curves.copy()
    masked[:, 1:][~ok] = np.nan
    oracle_all = oracle_stops(rows, ok)
    blocks = []
    for i, name in enumerate(rules or tuple(rows.fires)):
        rng = np.random.default_rng([seed, 17, i])
        stops = rows.fires[name]
        own = score_stops(name, curves, stops, rows)
        n = own.stops
        rand, rand_means = random_matched(curves, stops, rows, ok, rng, draws)
        b_stops, thr = bayes_matched(masked, n, rng)
        tied = n > 0 and (masked[b_stops >= 0, b_stops[b_stops >= 0] + 1] == thr).any()
        bayes = score_stops("bayes (exact P)", curves, b_stops, rows,
                            (f"P <= {thr:.3g}, ties at random" if tied else f"P < {thr:.3g}") if n else "")
        oracle = oracle_scores(curves, rows, ok, n)
        l_stops, c = bayes_same_lost(masked, own.lost) if n else (np.full(len(stops), -1), float("nan"))
        same_lost = score_stops("bayes (same lost)", curves, l_stops, rows,
                                f"P <= {c:.3g}: most saved at E[lost] <= {name}'s" if n else "")
        p_value = float((rand_means <= own.mean_p + 1e-12).mean()) if n else float("nan")
        blocks.append(Block(name, [own, rand, bayes, oracle, same_lost],
                            dict(rule=stops, random=random_draw(stops, ok, rng), bayes=b_stops,
                                 bayes_same_lost=l_stops, oracle=oracle_all), thr, p_value))

    mc_n, mc_z = mc_check(curves, rows, mc_min_visits)
    # Critic: p_t from V(s_t) against the exact P of the same state (prefix before token t).
    valid = ~np.isnan(rows.p_critic)
    p_critic, p_exact = rows.p_critic[valid], curves[:, :-1][valid]
    mae = float(np.abs(p_critic - p_exact).mean())
    corr = float(np.corrcoef(p_critic, p_exact)[0, 1]) if p_critic.std() > 0 and p_exact.std() > 0 else float("nan")
    drops = np.nanmax(curves[:, :-1] - curves[:, 1:], axis=1)
    return Report(blocks=blocks, rows=len(rows.lengths), success_rate=float(rows.success.mean()),
                  doomed_rate=float((rows.failure_step >= 0).mean()), stoppable_doomed=int((oracle_all >= 0).sum()),
                  drop_share=float((drops > 0.3).mean()), mc_checked=mc_n, mc_max_z=mc_z, critic_mae=mae,
                  critic_corr=corr, meta=dict(meta or {}))
