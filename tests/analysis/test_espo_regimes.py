"""The ESPO phase diagram: its grid, the measured R by hand, and verdicts cell by cell on runs with known numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.experiments.espo_regimes import analysis as regimes
from analysis.experiments.espo_regimes import sweep
from analysis.runs import load_runs
from testbed.ops import sweep as ops_sweep
from tests.analysis.test_analysis import make_run

N = 8


def COUNTS(k):
    """The cost model's counters of one step: the same for every run, so PPO's cost is known."""
    return {"gen/decode_steps": 10, "gen/value_steps": 0, "gen/kv_row_tokens": 500, "gen/prefill_tokens": 8,
            "tokens/actor_forward": 100, "tokens/critic": 100, "updates/actor": 2, "updates/critic": 2}


def test_grid_cells_methods_and_matched_randoms(tmp_path):
    _, specs = ops_sweep.expand(sweep.spec(tmp_path / "runs"))
    by = {s.name: s for s in specs}
    cells = len(sweep.DERAIL) * len(sweep.REPAIR) + len(sweep.POSITIONS)
    assert len(by) == len(sweep.METHODS) * cells * len(sweep.SEEDS)
    late = by["oracle-R3_rep0.5_late-s0"].config["task"]["env_kwargs"]
    assert late == {"derail": 3.0, "repair_prob": 0.5, "repair_cost": 3, "critical_zone": [2 / 3, 1.0]}
    assert sweep.axis_values("R3_rep0.5_late") == (3.0, 0.5) and sweep.position("R3_rep0.5_late") == "late"
    assert sweep.position("R3_rep0.5") == sweep.ANYWHERE
    task = by["espo_paper-R3_rep0.5-s4"].config["task"]
    assert task["env_id"] == sweep.ENV_ID and task["env_kwargs"] == {"derail": 3.0, "repair_prob": 0.5, "repair_cost": 3}
    assert by["random_paper-R1_rep0-s2"].config["stop"]["reference_run"] == str(tmp_path / "runs" / "espo_paper-R1_rep0-s2")
    assert sweep.axis_values("R3_rep0.5") == (3.0, 0.5)
    _, full = ops_sweep.expand(sweep.spec(tmp_path / "runs", full=True))
    assert len(full) == len(sweep.METHODS) * (9 + len(sweep.POSITIONS)) * len(sweep.FULL_SEEDS)


def test_measured_R_by_hand():
    rows = pd.DataFrame({"step": [0, 0, 6, 8, 9, 10], "length": [99, 99, 30, 10, 14, 40],
                         "doomed": [True, False, True, False, False, True], "success": [0, 1, 0, 1, 1, 0]})
    # second half of steps 0..10: steps >= 5; doomed mean (30 + 40) / 2, successful (10 + 14) / 2
    assert regimes.measured_R(rows) == pytest.approx(35 / 12)
    assert pd.isna(regimes.measured_R(rows[rows["doomed"]]))


def _nostop(d, success):
    (d / "final_eval_nostop.json").write_text(json.dumps({"rows": 2048, "success": success, "step": 20}))


def test_verdicts_cell_by_cell_over_one_family(tmp_path):
    # R3: ESPO saves 30% (above 20) and beats PPO; R1: it saves 10% (below) and loses to PPO
    for cell, saved, gap in (("R3_rep0", 0.3, 0.05), ("R1_rep0", 0.1, -0.05)):
        for s in range(N):
            w = 0.01 * (s % 3)
            _nostop(make_run(tmp_path, f"ppo-{cell}-s{s}", extra=COUNTS), 0.6 + w)
            _nostop(make_run(tmp_path, f"espo-{cell}-s{s}", tokens=100 * (1 - saved - w / 10), rule="espo",
                             extra=(lambda k: {**COUNTS(k), "gen/decode_steps": 5}) if cell == "R3_rep0" else None),
                    0.6 + w + gap)
            _nostop(make_run(tmp_path, f"random-{cell}-s{s}", rule="random"), 0.6 + w)
    df = load_runs(sorted(p for p in tmp_path.iterdir()), axes=sweep.AXES)
    pr = regimes.per_run(df, None)
    assert set(pr["derail"]) == {1.0, 3.0}
    ppo = pr[pr["method"] == "ppo"]
    assert (ppo["cost_saved_pct"] == 0).all() and ppo["gen_share"].between(0, 1).all()
    espo = pr[pr["method"] == "espo"].set_index("env")["cost_saved_pct"]
    assert espo["R1_rep0"].isna().all() and (espo["R3_rep0"] > 0).all()  # R1: no counters logged, not priced
    sens = regimes.cost_sensitivity(df, pr, "R3_rep0", "espo").set_index("constant")
    assert sens.loc["decode_step", "x2"] > sens.loc["decode_step", "base"] > sens.loc["decode_step", "x0.5"] > 0
    assert sens.loc["update", "x2"] < sens.loc["update", "base"]  # a cost both pay alike dilutes the saving
    assert regimes.cost_sensitivity(df, pr, "R1_rep0", "espo").empty
    v = regimes.verdicts(pr)
    words = {k: regimes.word_grid(pr, v.claims, "espo", k) for k in ("saves", "vs_ppo", "vs_random")}
    assert words["saves"] == {"R3_rep0": "yes", "R1_rep0": "no"}
    assert words["vs_ppo"] == {"R3_rep0": "yes", "R1_rep0": "no"}
    assert words["vs_random"]["R3_rep0"] == "yes"
    assert all(c.p_holm >= c.iv.p for c in v.claims)  # corrected over the whole diagram
    assert "6 claims" in v[-1]
    table = regimes.score(pr)
    assert list(dict.fromkeys(table["env"])) == ["R1_rep0", "R3_rep0"]  # the sweep's order


def test_paper_like_preset_is_the_diagram_cell(tmp_path):
    from dataclasses import asdict

    from analysis.experiments.espo_headline.sweep import REPO
    from testbed import config as config_mod

    _, specs = ops_sweep.expand(sweep.spec(tmp_path / "runs"))
    cell = {s.name: s for s in specs}["espo_paper-R3_rep0.5-s0"].config
    preset = asdict(config_mod.load(REPO / "configs" / "regimes" / "espo_paper_like.yaml"))
    for section in ("task", "model", "rollout", "algo", "stop"):
        assert preset[section] == cell[section], section


def test_position_cells_are_scored_and_drawn_apart_from_the_grid(tmp_path):
    from analysis.experiments.espo_regimes import figures

    for cell, saved in (("R3_rep0.5", 0.3), ("R3_rep0.5_early", 0.1), ("R3_rep0.5_late", 0.5)):
        for s in range(3):
            _nostop(make_run(tmp_path, f"ppo-{cell}-s{s}", extra=COUNTS), 0.6)
            _nostop(make_run(tmp_path, f"espo-{cell}-s{s}", tokens=100 * (1 - saved) - s, rule="espo"), 0.6)
    df = load_runs(sorted(p for p in tmp_path.iterdir()), axes=sweep.AXES)
    pr = regimes.per_run(df, None)
    table = regimes.score(pr)
    assert list(table.drop_duplicates("env")["position"]) == ["any", "early", "late"]  # the sweep's order
    espo = table[table["method"] == "espo"].set_index("position")["tokens_saved_pct"]
    assert espo["early"] == pytest.approx(11.0) and espo["late"] == pytest.approx(51.0)
    lines = [str(x) for x in regimes.verdicts(pr)]
    assert any("failures late]" in x for x in lines) and any(x.startswith("[R=3, recovery 0.5] ") for x in lines)
    fig = figures.plot_by_position(table)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(sweep.POSITIONS)
    heat = figures.plot_tokens_saved(table)  # the grid's heatmap holds only the cell with failures anywhere
    assert len(heat.axes[0].texts) == 1


def test_stop_values_read_per_run_and_reported_beside_matched_random(tmp_path):
    assert sweep.measurements() == {"stop_value": sweep.STOP_VALUE}
    for s in range(N):
        _nostop(make_run(tmp_path, f"ppo-R3_rep0.5-s{s}"), 0.6)
        for method, p in (("espo", 0.1 + 0.01 * s), ("random", 0.4)):
            d = make_run(tmp_path, f"{method}-R3_rep0.5-s{s}", rule=method)
            _nostop(d, 0.6)
            (d / regimes.STOP_VALUE_FILE).write_text(json.dumps({"stops": 10, "p_thrown": p, "precision": 0.5}))
    dirs = sorted(p for p in tmp_path.iterdir())
    pr = regimes.per_run(load_runs(dirs, axes=sweep.AXES), None, regimes.stop_values(dirs))
    by = pr.set_index("run")
    assert by.loc["espo-R3_rep0.5-s3", "p_thrown"] == pytest.approx(0.13)
    assert by.loc["random-R3_rep0.5-s0", "final_precision"] == 0.5 and pd.isna(by.loc["ppo-R3_rep0.5-s0", "p_thrown"])
    line = next(x for x in regimes.verdicts(pr) if isinstance(x, str) and "ESPO's stops throw away" in x)
    # ESPO's mean 0.135 over seeds, random's 0.4, their paired difference -0.265; not a claim of the family
    assert "P(success) +0.1" in line and "random's +0.40 [+0.40, +0.40]" in line and "random -0.2" in line, line
    assert "not tested" in line
    table = regimes.score(pr).set_index("method")
    assert table.loc["espo", "p_thrown"] == pytest.approx(0.135)
