"""The reliability pilot's spec: every change reaches every run's config, env kwargs included."""

from __future__ import annotations

import csv
import json

import pytest

from analysis.experiments.tppo_regimes import pilot
from analysis.experiments.tppo_regimes import sweep
from testbed.ops import sweep as ops_sweep


def test_changes_win_over_the_cell_and_the_method(tmp_path):
    changes = pilot.parse_changes(["task.env_kwargs.recoverable_cost=0.003", "task.env_kwargs.num_problems=10",
                                   "algo.entropy_coef=0.01", "model.prompt_readout=true"])
    _, runs = ops_sweep.expand(pilot.pilot_spec(tmp_path, "tail16", [0, 3], changes))
    assert [r.name for r in runs] == ["ppo-tail16-s0", "ppo-tail16-s3"]
    c = runs[1].config
    # recoverable_cost and num_problems are also set by the cell: a common override would have lost them.
    assert c["task"]["env_kwargs"]["recoverable_cost"] == 0.003 and c["task"]["env_kwargs"]["num_problems"] == 10
    assert c["algo"]["entropy_coef"] == 0.01 and c["model"]["prompt_readout"] is True
    assert c["task"]["env_kwargs"]["length_tail"] == 16.0 and c["tppo"]["enabled"] is False and c["run"]["seed"] == 3
    # Without changes it is the diagram's own PPO run of that cell.
    _, plain = ops_sweep.expand(pilot.pilot_spec(tmp_path, "tail4", [1], {}))
    _, diagram = ops_sweep.expand(sweep.spec(tmp_path))
    ref = next(r for r in diagram if r.name == "ppo-tail4-s1").config
    assert {**plain[0].config, "run": {**plain[0].config["run"], "threads": ref["run"]["threads"]}} == ref


def test_more_methods_make_a_confirmation_diagram_of_the_diagrams_own_runs(tmp_path):
    _, runs = ops_sweep.expand(pilot.pilot_spec(tmp_path, "tail16log", [12], {}, ("ppo", "tppo_w32")))
    _, diagram = ops_sweep.expand(sweep.spec(tmp_path, full=True))
    by = {r.name: r.config for r in diagram}
    assert [r.name for r in runs] == ["ppo-tail16log-s12", "tppo_w32-tail16log-s12"]
    for r in runs:  # seed 12 is outside the diagram's seeds; seed aside, each is the diagram's run of that cell
        ref = by[r.name.replace("s12", "s2")]
        got = {**r.config, "run": {**r.config["run"], "threads": ref["run"]["threads"], "seed": 2,
                                   "name": ref["run"]["name"]}}
        assert got == ref, r.name
    with pytest.raises(ValueError, match="--methods.*tppo_w32"):
        pilot.pilot_spec(tmp_path, "tail16", [0], {}, ("ppo", "tppo_w16"))


def test_bad_input_names_it():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        pilot.parse_changes(["algo.entropy_coef"])
    with pytest.raises(ValueError, match="--seeds"):
        pilot.parse_seeds("0-x")
    with pytest.raises(ValueError, match="tail16"):
        pilot.pilot_spec("x", "tail99", [0], {})
    assert pilot.parse_seeds("2-4") == [2, 3, 4] and pilot.parse_seeds("0,5") == [0, 5]


def test_the_runner_refuses_a_name_that_is_not_a_folder_name(capsys):
    """The name becomes a folder in a YAML path: ``a: b`` would be read as a mapping, far from the cause."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "tppo_reliability.py"
    spec = importlib.util.spec_from_file_location("tppo_reliability", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit):
        bench.main(["epochs: stage 1", "task.train_problems=epochs"])
    assert "name: 'epochs: stage 1' is a folder name" in capsys.readouterr().err


def test_read_run_and_csv(tmp_path):
    d = tmp_path / "ppo-tail16-s7"
    d.mkdir()
    lines = [{"step": 0, "eval/pass@1": 0.0}, {"step": 49}, {"step": 50, "eval/pass@1": 0.875}, {"step": 99}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    row = pilot.read_run(d)
    assert row["seed"] == 7 and row["finished"] is False and row["last_step"] == 99 and row["peak_eval"] == 0.875
    (d / "final_eval.json").write_text(json.dumps({"eval/pass@1": 0.75}))
    row = pilot.read_run(d)
    assert row["finished"] and row["final_policy_eval"] == 0.75 and row["evals"] == "0:0.000 50:0.875"
    out = tmp_path / "p.csv"
    pilot.append_csv(out, "x: a=1", [row])
    pilot.append_csv(out, "y", [row])
    got = list(csv.DictReader(out.open()))
    assert [r["pilot"] for r in got] == ["x: a=1", "y"] and got[0]["final_policy_eval"] == "0.75"
    assert pilot.read_run(tmp_path / "missing") is None


def test_regime_line_reads_the_diagram_checks(tmp_path):
    from tests.analysis.test_tppo_regimes import counts
    from tests.analysis.test_analysis import make_run

    for s in (0, 1):
        make_run(tmp_path, f"ppo-tail16-s{s}", steps=10, extra=counts(40, length_max=30.0))  # length/mean 10
    checks = pilot.regime_checks(tmp_path, ["ppo-tail16-s0", "ppo-tail16-s1"])
    assert set(checks) == {"ppo-tail16-s0", "ppo-tail16-s1"}
    assert checks["ppo-tail16-s0"]["tail_ratio"] == 3.0 and 0 < checks["ppo-tail16-s0"]["gen_share"] < 1
    line = pilot.regime_line(checks)
    assert line.startswith("longest / mean row +3.00 [") and "generation +0." in line


def test_a_table_from_before_a_column_gains_it_and_keeps_its_rows(tmp_path):
    out = tmp_path / "p.csv"
    old = [f for f in pilot.CSV_FIELDS if f not in ("final_sampled_eval", "tail_ratio", "gen_share")]
    out.write_text(",".join(old) + "\n" + ",".join(["old", "ppo-tail16-s1", "1"] + [""] * (len(old) - 3)) + "\n")
    pilot.append_csv(out, "new", [{"run": "ppo-tail16-s2", "seed": 2, "final_sampled_eval": 0.91, "tail_ratio": 2.6}])
    got = list(csv.DictReader(out.open()))
    assert [r["pilot"] for r in got] == ["old", "new"]
    assert got[0]["final_sampled_eval"] == got[0]["tail_ratio"] == "" and got[1]["final_sampled_eval"] == "0.91"
    assert got[1]["tail_ratio"] == "2.6" and got[1]["gen_share"] == ""
    bad = tmp_path / "bad.csv"
    bad.write_text("pilot,colour\nx,red\n")
    with pytest.raises(ValueError, match="colour"):
        pilot.append_csv(bad, "y", [])
