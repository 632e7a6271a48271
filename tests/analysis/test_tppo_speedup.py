"""The T-PPO speed-up study's scores, paired intervals, verdicts and cost model on run directories
with known numbers."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analysis.experiments.tppo_speedup import analysis as speedup  # noqa: E402
from analysis.experiments.tppo_speedup import sweep  # noqa: E402
from analysis.runs import load_runs  # noqa: E402
from tests.analysis.test_analysis import STEPS, make_run, row, step_success  # noqa: E402

AXES = ("method", "env", "seed")
CAL = {"a_s": 2.0, "b_s": 0.5, "train_token_s": 0.25, "decode_step_b1_s": 2.5, "decode_step_b32_s": 18.0}


def counts(decode_steps, actor_fwd, critic):
    return lambda k: {"gen/decode_steps": decode_steps, "gen/value_steps": 0, "tokens/actor_forward": actor_fwd,
                      "tokens/critic": critic, "pool/finished": 4}


def study(root, tppo_time, seeds=10):
    for s in range(seeds):
        make_run(root, f"ppo-longtail-s{s}", tokens=100, success=step_success(10), step_time=2.0, extra=counts(8, 100, 100))
        make_run(root, f"tppo-longtail-s{s}", tokens=50, success=step_success(10), step_time=tppo_time,
                 extra=counts(2, 50, 30))
    return load_runs(root, axes=AXES)


def test_score_intervals_and_verdict(tmp_path):
    df = study(tmp_path / "fast", 0.5)
    pr = speedup.per_run(df, cal=CAL)
    t = speedup.score(df, cal=CAL)
    tp = row(t, "tppo", "longtail")
    # success reaches 1 at step 10; the trailing mean over 2 steps is >= 0.5 from step 10 on
    np.testing.assert_allclose(tp["compute_to_level"], 0.5 * 11)
    np.testing.assert_allclose(tp["tokens_to_level"], 50 * 11)
    np.testing.assert_allclose(tp["speedup_compute"], 4.0)
    np.testing.assert_allclose(tp["speedup_tokens"], 2.0)
    np.testing.assert_allclose(tp["speedup_decode_steps"], 4.0)
    iv = speedup.intervals(pr)
    r = iv[iv["method"] == "tppo"].iloc[0]
    assert r["speedup_compute"].n == 10 and r["speedup_compute"].low == pytest.approx(4.0)
    assert r["d_final_success"].mean == pytest.approx(0.0)
    v = speedup.verdicts(t, iv)
    goal = lambda lines: [x for x in lines if "a variant reaches" in x][0]  # noqa: E731
    assert goal(v).endswith("less measured wall-clock (its claim above significant in the family): yes: tppo (4.00x)")
    assert "family of this report: 2 claims" in v[-1]  # success + the declared time, nothing screened
    assert "speed-ups not tested (geometric means): measured compute +4.00 [+4.00, +4.00]; projected GPU time +2.59" in " ".join(v)
    # measured 2.0 / 1.8 = 1.11x: significantly short of the goal, whatever the projection says
    slow = study(tmp_path / "slow", 1.8)
    v2 = speedup.verdicts(speedup.score(slow, cal=CAL), speedup.intervals(speedup.per_run(slow, cal=CAL)))
    assert ">= 1.5x faster in measured wall-clock: no (speed-up +1.11 [+1.11, +1.11] (geometric mean), n=10" in " ".join(v2)
    assert goal(v2).endswith(": no")
    # two seeds that agree decide nothing: no method is called faster
    few = study(tmp_path / "few", 0.5, seeds=2)
    v4 = speedup.verdicts(speedup.score(few, cal=CAL), speedup.intervals(speedup.per_run(few, cal=CAL)))
    assert goal(v4).endswith(": undecided (1 of 1 claims undecided)") and ": yes (" not in " ".join(v4)


def test_speedups_are_geometric_means(tmp_path):
    """A seed twice as fast and one twice as slow average to no speed-up (an arithmetic mean says 1.25)."""
    root = tmp_path / "runs"
    for s, t in enumerate((1.0, 4.0)):
        make_run(root, f"ppo-longtail-s{s}", tokens=100, success=step_success(10), step_time=2.0, extra=counts(8, 100, 100))
        make_run(root, f"tppo-longtail-s{s}", tokens=50, success=step_success(10), step_time=t, extra=counts(2, 50, 30))
    iv = speedup.intervals(speedup.per_run(load_runs(root, axes=AXES), cal=CAL))
    assert iv.iloc[0]["speedup_compute"].mean == pytest.approx(1.0)


def test_cost_model_by_hand(tmp_path):
    """Per step: S = 2 decoding steps, R = 50 row-steps, N = epochs(1) * (50 + 30) / 2 = 40 token-passes
    (no re-valuing term: the run's config is not T-PPO). CPU: a*S + b*R + c*N = 4 + 25 + 10 = 39 s;
    GPU: a*S + 3b*N = 4 + 60 = 64 s; rho = 10: 10*S + N = 60."""
    df = study(tmp_path, 0.5)
    run = df[df["run"] == "tppo-longtail-s0"]
    c = speedup.with_costs(run, CAL)
    k = np.arange(1, STEPS + 1)
    np.testing.assert_allclose(c["cost/cpu"], 39.0 * k)
    np.testing.assert_allclose(c["cost/gpu"], 64.0 * k)
    np.testing.assert_allclose(c["cost/rho10"], 60.0 * k)
    t = speedup.score(df, cal=CAL)
    # PPO per step: S = 8, N = 100; GPU 16 + 150 = 166 s; to the level after 11 steps
    np.testing.assert_allclose(row(t, "ppo", "longtail")["gpu_to_level"], 166.0 * 11)
    np.testing.assert_allclose(row(t, "tppo", "longtail")["speedup_gpu"], 166.0 / 64.0)
    nocal = speedup.score(df, cal=None)
    assert math.isnan(row(nocal, "tppo", "longtail")["speedup_gpu"])


def test_calibration_file_errors(tmp_path):
    assert speedup.load_calibration(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text('{"a_s": 1.0}')
    with pytest.raises(ValueError, match="bad.json: calibration lacks"):
        speedup.load_calibration(tmp_path / "bad.json")


def test_sweep_reads_the_ppo_preset(tmp_path):
    (tmp_path / "ppo.yaml").write_text("algo: {estimator: gae, lr_actor: 0.01, epochs: 3}\nmodel: {hidden_size: 16}\n")
    assert sweep.ppo_settings(tmp_path / "ppo.yaml") == {"algo.lr_actor": 0.01, "algo.epochs": 3, "model.hidden_size": 16}
    with pytest.raises(ValueError, match="cannot read the PPO preset"):
        sweep.ppo_settings(tmp_path / "missing.yaml")
    spec = sweep.spec(tmp_path / "runs")
    assert spec["overrides"]["algo.lr_actor"] == sweep.ppo_settings()["algo.lr_actor"]
    assert set(spec["axes"]["method"]) == set(sweep.METHODS) and len(spec["axes"]["seed"]) >= 5


def test_attribution_pairs_by_seed(tmp_path):
    root = tmp_path / "runs"
    for s in (0, 1):
        make_run(root, f"ppo_nocritic-longtail-s{s}", tokens=100, success=step_success(10), extra=counts(8, 100, 100))
        make_run(root, f"tppo_nocritic-longtail-s{s}", tokens=50, success=step_success(5 + 5 * s), extra=counts(2, 50, 30))
        make_run(root, f"ppo-longtail-s{s}", tokens=100, success=step_success(10), extra=counts(8, 100, 100))
    at = speedup.attribution(speedup.per_run(load_runs(root, axes=AXES), cal=CAL))
    r = at[at["method"] == "tppo_nocritic"].iloc[0]
    # decoding steps to the level: PPO 8 * 11; T-PPO 2 * 6 (seed 0) and 2 * 11 (seed 1): ratios 88/12, 4
    assert r["ratio_decode_steps"].mean == pytest.approx(math.sqrt(88 / 12 * 4.0))  # geometric mean
    assert r["ratio_decode_steps"].n == 2
    assert at[at["method"] == "ppo_nocritic"].iloc[0]["ratio_tokens"].mean == pytest.approx(1.0)
