"""The detector_bayes study on small settings: the properties its tables rely on.

One ESPO run on the tiny env is trained (the study's settings) and measured
(``testbed.ops.exact_posterior``) once for the module, then scored (``analysis.experiments.
detector_bayes.scoring``); every check below can fail on a real bug (wrong temperature or prefix
alignment in the exact solver's policy, a stop counted where the collector would not execute it,
per-row rule state leaking across rows, matching that does not match).

Not checked, because it is not guaranteed: that the count-matched Bayes detector has the lowest mean
P(success | prefix at stop). P(success | prefix) is a martingale, so waiting never raises the
expected P at a stop; a detector that stops later can beat the first-crossing rule on that column.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from envs.planted_failure import EOS_ID
from testbed.stopping import StopContext, make_stop_rule

from analysis.experiments.detector_bayes import analysis as dba
from analysis.experiments.detector_bayes import report as dbr
from analysis.experiments.detector_bayes import scoring as dvb
from analysis.experiments.detector_bayes import sweep as dbs
from testbed import config as config_mod
from testbed.ops import exact_posterior as ep
from testbed.ops.trainer import Trainer

STEPS, ROWS, SEED = 60, 3000, 0


def _train(tmp, steps=STEPS, seed=SEED, batch_size=32, name="espo"):
    over = {**dbs.OVERRIDES, "run.steps": steps, "run.checkpoint_every": steps, "rollout.batch_size": batch_size,
            "algo.minibatch_size": min(32, batch_size)}
    cfg = config_mod.load(dbs.BASE_CONFIG, [f"{k}={v}" for k, v in over.items()]
                          + [f"run.out_dir={tmp}", f"run.name={name}", f"run.seed={seed}", "run.threads=1"])
    Trainer(cfg).train()
    return tmp / name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = _train(tmp_path_factory.mktemp("dvb"))
    torch.set_num_threads(1)
    ep.measure_run(run_dir, rows=ROWS, log=lambda *a: None)
    rows, meta = dba.read(run_dir)
    report = dvb.score(rows, seed=SEED, rules=tuple(meta["rules"]), draws=50, meta=meta)
    cfg = config_mod.load(run_dir / "config.yaml", [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"])
    trainer = Trainer(cfg, run_dir)  # the trained weights and rule state, for the replay below
    trainer.close()
    return trainer, report, rows, rows.curves, rows.stoppable


def _p_at(curves, stops):
    b = np.flatnonzero(stops >= 0)
    return b, curves[b, stops[b] + 1]


PINNED = [[('espo', 6, 1.0, 0.0, 0.0, 6.0), ('random (matched)', 6, 0.8266666666666667, 0.0889392090749607, 0.5336352544497642, 7.16), ('bayes (exact P)', 6, 1.0, 0.0, 0.0, 16.0), ('oracle (matched)', 6, 1.0, 0.0, 0.0, 13.945945945945946), ('bayes (same lost)', 1332, 1.0, 0.0, 0.0, 3096.0)], [('regret_only', 1, 1.0, 0.0, 0.0, 1.0), ('random (matched)', 1, 0.52, 0.40482443323200856, 0.40482443323200856, 1.94), ('bayes (exact P)', 1, 1.0, 0.0, 0.0, 4.0), ('oracle (matched)', 1, 1.0, 0.0, 0.0, 2.324324324324324), ('bayes (same lost)', 1332, 1.0, 0.0, 0.0, 3096.0)], [('value_only', 1517, 0.25313117996044826, 0.01844763681195843, 27.98506504374094, 4706.0), ('random (matched)', 1517, 0.15411997363216876, 0.3962065743913481, 601.045373351675, 4048.36), ('bayes (exact P)', 1517, 0.33684904416611733, 0.01173760916876794, 17.805953109020965, 4478.0), ('oracle (matched)', 1332, 1.0, 0.0, 0.0, 3096.0), ('bayes (same lost)', 1531, 0.2599608099281515, 0.018278945162469584, 27.985065043740935, 4720.0)]]
"""(name, stops, precision, mean P@stop, E[lost], tokens saved) of every score at the module's settings, as
the script gave them before its precision went through testbed.scoring (same seeds, same numbers)."""


def test_scores_pinned(run):
    """Names and counts exactly; the float statistics to 1e-6 relative: their float32 sums moved in the 8th
    digit with a fresh install's library versions (0.08893921 -> 0.08893922), which is no change of
    method, while any real change (one stop more or less) moves them by far more."""
    _, report, _, _, _ = run
    got = [[(s.name, s.stops, s.precision, s.mean_p, s.lost, s.saved) for s in b.scores] for b in report.blocks]
    assert [[row[:2] for row in blk] for blk in got] == [[row[:2] for row in blk] for blk in PINNED]
    for blk, want in zip(got, PINNED):
        for row, ref in zip(blk, want):
            assert row[2:] == pytest.approx(ref[2:], rel=1e-6, abs=1e-12), row[0]


def test_something_is_scored(run):
    _, report, _, _, _ = run
    assert report.blocks[0].rule == "espo"
    assert sum(b.scores[0].stops for b in report.blocks) > 0, "no rule fired: every check below would be vacuous"


def test_exact_p_matches_monte_carlo(run):
    _, report, rows, curves, _ = run
    # Every visited prefix has a finite exact P in [0, 1]; the often-visited ones agree with the rows.
    T = rows.tokens.shape[1]
    inside = np.arange(T + 1)[None, :] <= rows.lengths[:, None]
    assert np.isfinite(curves[inside]).all() and (curves[inside] >= 0).all() and (curves[inside] <= 1).all()
    assert np.isnan(curves[~inside]).all()
    assert report.mc_checked >= 5
    assert report.mc_max_z <= 4.0, f"exact P off the sampled success rate by {report.mc_max_z:.2f} standard errors"
    # The last prefix is the outcome itself.
    last = curves[np.arange(len(rows.lengths)), rows.lengths]
    eos = rows.tokens[np.arange(len(rows.lengths)), rows.lengths - 1] == EOS_ID
    assert np.array_equal(last[eos] == 1.0, rows.success[eos])


def test_matching_and_stop_positions(run):
    _, report, rows, curves, ok = run
    for blk in report.blocks:
        own, rand, bayes, oracle, same_lost = blk.scores
        n = own.stops
        assert rand.stops == bayes.stops == n and oracle.stops <= n
        assert int((blk.stops["bayes"] >= 0).sum()) == n
        for key in ("rule", "random", "bayes", "bayes_same_lost", "oracle"):
            st = blk.stops[key]
            b = np.flatnonzero(st >= 0)
            assert ok[b, st[b]].all(), f"{blk.rule}/{key}: a stop the collector would not execute"
        hist = lambda st: np.bincount(st[st >= 0], minlength=ok.shape[1])  # noqa: E731
        assert np.array_equal(hist(blk.stops["random"]), hist(blk.stops["rule"]))
        if n:
            assert 0.0 <= blk.p_value <= 1.0
            assert same_lost.lost <= own.lost + 1e-9  # the same-cost Bayes row never costs more


def test_oracle_stops_only_doomed_rows(run):
    _, report, rows, curves, ok = run
    st = report.blocks[0].stops["oracle"]
    b, p = _p_at(curves, st)
    assert len(b) > 0
    assert (p == 0).all() and (rows.failure_step[b] >= 0).all() and (rows.failure_step[b] <= st[b]).all()
    # ... and every doomed row that can still be stopped at or after its fatal token.
    T = ok.shape[1]
    after = np.arange(T)[None, :] >= np.where(rows.failure_step >= 0, rows.failure_step, T)[:, None]
    assert np.array_equal(st >= 0, (ok & after).any(1))
    for blk in report.blocks:
        oracle = blk.scores[3]
        if oracle.stops:
            assert oracle.mean_p == 0 and oracle.precision == 1 and oracle.lost == 0


def test_bayes_stops_at_the_first_crossing(run):
    _, report, rows, curves, ok = run
    masked = np.where(np.concatenate([np.ones((len(ok), 1), bool), ok], 1), curves, np.nan)[:, 1:]
    for blk in report.blocks:
        st, thr = blk.stops["bayes"], blk.threshold
        if (st >= 0).sum() == 0:
            continue
        b, p = _p_at(curves, st)
        assert (p <= thr).all() and blk.scores[2].mean_p <= thr
        for i in b:  # nothing stoppable before the stop was already below the threshold
            before = masked[i, : st[i]]
            assert not (before[~np.isnan(before)] < thr).any()
        never = np.flatnonzero(st < 0)  # rows left running never went below it
        assert not (np.nan_to_num(masked[never], nan=np.inf) < thr).any()


def _synthetic_masked(seed: int = 3, R: int = 400, T: int = 6) -> np.ndarray:
    """(R, T + 1) success curves on a 0.1 grid (many ties), NaN where no stop can be executed."""
    rng = np.random.default_rng(seed)
    curves = np.round(np.clip(rng.random((R, 1)) + np.cumsum(rng.normal(0, 0.25, (R, T + 1)), 1), 0, 1), 1)
    curves[rng.random((R, T + 1)) < 0.2] = np.nan
    curves[:, 0] = np.nan
    lengths = rng.integers(1, T + 1, R)
    curves[np.arange(T + 1)[None, :] > lengths[:, None]] = np.nan
    return curves


@pytest.mark.parametrize("n", [1, 37, 150, 300])
def test_bayes_matched_counts_and_crossings_synthetic(n):
    masked = _synthetic_masked()
    stoppable_rows = (~np.isnan(masked[:, 1:])).any(1).sum()
    assert n <= stoppable_rows
    st, thr = dvb.bayes_matched(masked, n, np.random.default_rng(0))
    assert (st >= 0).sum() == n
    b, p = _p_at(masked, st)
    assert not np.isnan(p).any() and (p <= thr).all()
    low = np.nanmin(np.where(np.isnan(masked[:, 1:]), np.inf, masked[:, 1:]), 1)
    assert (st[low < thr] >= 0).all(), "a row that went below the threshold was left running"
    assert (low[st < 0] >= thr).all()
    for i in b:
        before = masked[i, 1 : st[i] + 1]
        assert not (before[~np.isnan(before)] < thr).any()
        if p[list(b).index(i)] == thr:  # a tie row stops at its first value at the threshold
            assert not (before[~np.isnan(before)] <= thr).any()
        elif low[i] < thr:
            assert p[list(b).index(i)] < thr


@pytest.mark.parametrize("target", [0.0, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 1e9])
def test_bayes_same_lost_is_the_largest_affordable_threshold_synthetic(target):
    from testbed.scoring import bayes_optimal_stop

    masked = _synthetic_masked()
    st, c = dvb.bayes_same_lost(masked, target)

    def lost(stops):
        b, p = _p_at(masked, stops)
        return p.sum()

    grid = np.unique(masked[:, 1:][~np.isnan(masked[:, 1:])])
    if np.isnan(c):
        assert (st < 0).all() and lost(bayes_optimal_stop(masked, np.nextafter(grid[0], np.inf))) > target
        return
    assert lost(st) <= target + 1e-9
    higher = grid[grid > c]
    if len(higher):
        assert lost(bayes_optimal_stop(masked, np.nextafter(higher[0], np.inf))) > target


def test_random_draw_matches_positions_synthetic():
    rng = np.random.default_rng(1)
    R, T = 300, 6
    lengths = rng.integers(1, T + 1, R)
    ok = np.arange(T)[None, :] < lengths[:, None]  # nested: running at s implies running earlier
    rule = np.where(rng.random(R) < 0.4, rng.integers(0, lengths), -1)
    for seed in range(5):
        st = dvb.random_draw(rule, ok, np.random.default_rng(seed))
        assert np.array_equal(np.bincount(st[st >= 0], minlength=T), np.bincount(rule[rule >= 0], minlength=T))
        b = np.flatnonzero(st >= 0)
        assert ok[b, st[b]].all()


def test_first_fire_replayed_teacher_forced(run):
    """The first-fire positions recorded while decoding step by step (one hidden state per row),
    replayed through fresh rules with teacher-forced logits (the GRU over each whole prefix) and
    teacher-forced critic values: same positions, so the recording neither drops nor invents a
    firing and no per-row state leaks across rows."""
    trainer, report, rows, _, _ = run
    cfg, backend = trainer.cfg, trainer.backend
    idx = np.arange(ROWS)
    n, T = len(idx), rows.tokens.shape[1]
    prompts = [list(map(int, trainer.task.env.structure.prompts[p])) for p in rows.problems[idx]]
    tokens = torch.as_tensor(rows.tokens[idx])
    lengths = torch.as_tensor(rows.lengths[idx])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    with torch.no_grad():
        values = backend.critic_forward(prompts, tokens, mask).float()
    contexts, where = [], []
    for j in range(n):
        for k in range(int(lengths[j])):
            contexts.append(prompts[j] + tokens[j, :k].tolist())
            where.append((j, k))
    probs = ep.gru_probs(backend, contexts, cfg.rollout.temperature)
    logits = torch.zeros(n, T, probs.shape[1])
    for (j, k), pr in zip(where, probs):
        logits[j, k] = torch.as_tensor(np.log(pr), dtype=torch.float32)
    train_step = max(cfg.run.steps, cfg.stop.warmup_steps)
    for name in ep.RULES:
        rule = make_stop_rule(dataclasses.replace(cfg.stop, rule=name), num_slots=n, seed=SEED)
        rule.load_state_dict(trainer.rule.state_dict())
        rule.reset(torch.arange(n), train_step)
        first = torch.full((n,), -1, dtype=torch.long)
        for k in range(T):
            act = torch.nonzero(lengths > k).squeeze(-1)
            tok = tokens[act, k]
            lg = logits[act, k]
            regret = (lg.max(-1).values - lg.gather(-1, tok[:, None]).squeeze(-1)).clamp(min=0)
            ctx = StopContext(slots=act, positions=torch.full_like(act, k), logits=lg, tokens=tok, regret=regret,
                              values=values[act, k], failure_step=torch.full_like(act, -1), train_step=train_step)
            fire = rule(ctx) & (tok != EOS_ID) & (first[act] < 0)
            first[act[fire]] = k
        assert np.array_equal(first.numpy(), rows.fires[name][idx]), name


def test_deterministic_under_seed(tmp_path):
    def once(name):
        d = _train(tmp_path, steps=3, seed=5, batch_size=8, name=name)
        ep.measure_run(d, rows=400, log=lambda *a: None)
        rows, meta = dba.read(d)
        return rows, dbr.format_report(dvb.score(rows, seed=5, rules=tuple(meta["rules"]), draws=10, meta=meta))

    (ra, ta), (rb, tb) = once("a"), once("b")
    assert ta == tb
    assert np.array_equal(ra.tokens, rb.tokens) and np.array_equal(ra.curves, rb.curves, equal_nan=True)


def test_the_reader_and_the_writer_name_the_same_files():
    assert (dba.ARRAYS, dba.META) == (ep.ARRAYS, ep.META)


def test_a_measurement_is_kept_and_redone_when_its_settings_change(tmp_path):
    d = _train(tmp_path, steps=2, batch_size=8)
    ep.measure_run(d, rows=50, log=lambda *a: None)
    stamp = (d / ep.ARRAYS).stat().st_mtime_ns
    ep.measure_run(d, rows=50, log=lambda *a: None)
    assert (d / ep.ARRAYS).stat().st_mtime_ns == stamp  # kept
    ep.measure_run(d, rows=60, log=lambda *a: None)
    rows, meta = dba.read(d)
    assert meta["rows"] == 60 and len(rows.lengths) == 60


def test_an_unfinished_run_is_refused(tmp_path):
    from testbed.errors import UserError

    d = _train(tmp_path, steps=2, batch_size=8)
    cfg = (d / "config.yaml").read_text().replace("steps: 2", "steps: 4")
    (d / "config.yaml").write_text(cfg)
    with pytest.raises(UserError, match="not finished"):
        ep.measure_run(d, rows=50, log=lambda *a: None)
