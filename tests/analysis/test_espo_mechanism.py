"""The gate-or-detector study: its grid, its claims and answers on runs with known numbers, and a smoke run."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from analysis.experiments.espo_mechanism import analysis as mech  # noqa: E402
from analysis.experiments.espo_mechanism import figures as mech_figures  # noqa: E402
from analysis.experiments.espo_mechanism import sweep  # noqa: E402
from analysis.runs import load_runs  # noqa: E402
from testbed.ops import sweep as ops_sweep  # noqa: E402
from tests.analysis.test_analysis import make_run  # noqa: E402

N = 10


def _nostop(d, success, entropy=0.3, value=0.4):
    (d / "final_eval_nostop.json").write_text(json.dumps({"rows": 2048, "success": success, "step": 20}))
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    for rec in lines:
        rec.update({"actor/entropy": entropy, "stop/active": int(rec["step"] >= 3),
                    "critic/value_mean": value})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def study(root, gaps: dict):
    """``gaps[(variant, warmup)]``: ESPO's no-stop success minus random's on every seed (random 0.6)."""
    for (v, w), g in gaps.items():
        for s in range(N):
            wobble = 0.01 * (s % 3)  # seeds differ; the paired gap stays exact
            _nostop(make_run(root, f"{v}-{w}-espo-s{s}", rule="espo"), 0.6 + wobble + g, entropy=0.1)
            _nostop(make_run(root, f"{v}-{w}-random-s{s}", rule="random"), 0.6 + wobble, entropy=0.4)
    for s in range(N):
        _nostop(make_run(root, f"none-none-ppo-s{s}"), 0.7)
    return load_runs(root, axes=sweep.AXES)


def test_grid_pairs_each_espo_with_its_random_and_runs_the_warmups():
    runner = ops_sweep
    _, specs = runner.expand(sweep.spec("/tmp/R"))
    by = {s.name: s.config for s in specs}
    assert len(specs) == len(sweep.VARIANTS) * len(sweep.WARMUPS) * 2 * len(sweep.SEEDS) and len(sweep.SEEDS) >= 10
    assert by["paper-critic-random-s3"]["stop"]["reference_run"] == "/tmp/R/paper-critic-espo-s3"
    assert by["paper-critic-espo-s3"]["stop"]["warmup"] == "critic_loss"
    assert by["current-steps30-espo-s0"]["stop"]["warmup_steps"] == 30
    assert by["current-steps-espo-s0"]["stop"]["accumulate"] == "cusum"
    assert by["paper-steps-espo-s0"]["stop"]["gate"] == "max"
    # random keeps its variant's stop reward, and its own warm-up is off (the schedule carries it)
    for v in sweep.VARIANTS:
        r, e = by[f"{v}-critic-random-s0"]["stop"], by[f"{v}-critic-espo-s0"]["stop"]
        assert (r["rule"], r["warmup"], r["warmup_steps"]) == ("random", "steps", 0)
        assert (r["failure_reward"], r["stop_penalty"]) == (e["failure_reward"], e["stop_penalty"])
    assert all(c["run"]["final_eval_rows"] >= 2048 for c in by.values())


def test_a_persisting_gap_is_the_detector_a_closing_one_the_gate(tmp_path):
    cells = {(v, w): 0.0 for v in sweep.VARIANTS for w in sweep.WARMUPS}
    # current: -0.2 at every warm-up (selection); paper: -0.2 at 5 steps, 0 with a later start (gate)
    cells.update({("current", w): -0.2 for w in sweep.WARMUPS})
    cells[("paper", "steps")] = -0.2
    pr = mech.per_run(study(tmp_path / "runs", cells))
    assert pr[pr["method"] == "espo"]["warmup_end"].eq(3).all()
    assert pr["value_at_warmup"].dropna().eq(0.4).all()
    lines = mech.verdicts(pr)
    text = "\n".join(lines)
    assert "[current ESPO, critic warm-up] ESPO's no-stop success is above its matched random's: no (" in text
    assert "[paper ESPO] the no-stop gap to random closes with the critic warm-up instead of 5 steps: yes (" in text
    assert ("current ESPO, critic warm-up (the rule starts at step 3.0 on average, the critic's mean value then "
            "0.400, above the gate's floor 0.2): the gap persists with an informative critic") in text
    assert "paper ESPO, critic warm-up (" in text and "the gap closes with an informative critic" in text
    assert "its final policy's entropy is significantly below its matched random's in 3 of 3 warm-ups" in text
    assert "ESPO's final entropy is above its matched random's: no (" in text  # 0.1 vs 0.4 on every seed
    assert lines[-1].startswith("The family of this report: 16 claims")
    t = mech.score(pr)
    assert set(t["method"]) == {"espo", "random", "ppo"} and (t["n"] == N).all()
    assert t[t["method"] == "ppo"]["nostop_success"].iloc[0] == pytest.approx(0.7)


def test_study_runs_on_a_tiny_setting(tmp_path):
    from testbed.ops.studies import run_study

    assert run_study("espo_mechanism", tmp_path, workers=2, quick=True) == 0
    report = (tmp_path / "quick" / "report.md").read_text()
    assert "gate-or-detector" in report and "undecided (2 seeds; a decision needs 8)" in report
    assert ": yes (" not in report and ": no (" not in report  # two seeds decide nothing
    assert {p.name for p in (tmp_path / "quick").glob("*.png")} == {f"{k}.png" for k in mech_figures.PLOTS}
    rows = (tmp_path / "quick" / "verdicts.csv").read_text().splitlines()
    assert rows[0].startswith("claim,verdict,") and len(rows) == 1 + 16  # every claim of the family


def test_a_warmup_on_an_uninformed_critic_separates_nothing(tmp_path):
    """The paper's warm-up ending while the critic's value is ~0 (nothing succeeds yet) says nothing about
    the gate, even when the gap persists."""
    root = tmp_path / "runs"
    for v in sweep.VARIANTS:
        for w in sweep.WARMUPS:
            for s in range(N):
                _nostop(make_run(root, f"{v}-{w}-espo-s{s}", rule="espo"), 0.4 + 0.01 * s, value=0.01)
                _nostop(make_run(root, f"{v}-{w}-random-s{s}", rule="random"), 0.6 + 0.01 * s, value=0.01)
    text = "\n".join(mech.verdicts(mech.per_run(load_runs(root, axes=sweep.AXES))))
    assert "below the gate's floor 0.2): does not separate the readings" in text and "the gap persists" in text
    assert "informative critic" not in text
