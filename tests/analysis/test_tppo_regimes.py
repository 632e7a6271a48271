"""The T-PPO phase diagram: its grid, speed-ups priced by the cost model by hand, the regime checks and
verdicts over one family, on runs with known numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import cost_model
from analysis.experiments.tppo_regimes import analysis as regimes
from analysis.experiments.tppo_regimes import sweep
from analysis.runs import load_runs
from testbed.ops import sweep as ops_sweep
from tests.analysis.test_analysis import make_run

N, STEPS = 8, 20
UNITS = {"gpu": cost_model.UnitCosts(1.0, 0.1, 0.001, 0.01, 0.05, 2.0), "cpu": None}


def counts(decode_steps, length_max=30.0):
    def extra(k):
        rec = {"gen/decode_steps": decode_steps, "gen/value_steps": 0, "gen/kv_row_tokens": 1000,
               "gen/prefill_tokens": 64, "tokens/critic_decode": 0, "tokens/actor_forward": 500, "tokens/critic": 500,
               "updates/actor": 4, "updates/critic": 4, "length/max": length_max, "length/mean": 10.0,
               "config/algo.epochs": 1}
        if k % 5 == 4:
            rec["eval/pass@1"] = min(0.9, 0.1 * (k + 1))  # 0.5, 0.9, 0.9, 0.9
        return rec
    return extra


def test_grid(tmp_path):
    _, specs = ops_sweep.expand(sweep.spec(tmp_path / "runs"))
    by = {s.name: s for s in specs}
    assert len(by) == len(sweep.METHODS) * len(sweep.ENVS) * len(sweep.SEEDS) and len(sweep.ENVS) == len(sweep.TAILS) + 1
    c = by["tppo_w32-tail16-s1"].config
    assert c["tppo"]["window"] == 32 and c["run"]["steps"] == sweep.TPPO_STEPS[32] and c["run"]["eval_every"] == sweep.EVAL_EVERY
    assert c["task"]["env_kwargs"]["length_tail"] == 16.0 and by["ppo-tail4-s0"].config["tppo"]["enabled"] is False
    log, lin = by["ppo-tail16log-s0"].config["task"]["env_kwargs"], by["ppo-tail16-s0"].config["task"]["env_kwargs"]
    assert log == {**lin, "runon_price": "log"} and lin.get("runon_price", "linear") == "linear"  # only the price differs
    for name, spec in by.items():  # every method: one step shape
        assert (spec.config["rollout"]["batch_size"], spec.config["algo"]["epochs"], spec.config["model"]["prompt_input"]) == \
            (sweep.BATCH, 1, True), name


def test_speedups_regime_checks_and_verdicts(tmp_path):
    for s in range(N):
        make_run(tmp_path, f"ppo-tail8-s{s}", steps=STEPS, extra=counts(40))
        make_run(tmp_path, f"tppo_w8-tail8-s{s}", steps=STEPS, extra=counts(8))
    df = load_runs(sorted(tmp_path.iterdir()), axes=sweep.AXES)
    pr = regimes.per_run(df, UNITS)
    ppo = pr[pr["method"] == "ppo"].iloc[0]
    assert ppo["final_eval"] == pytest.approx(0.9) and ppo["level"] == pytest.approx(0.81)
    assert ppo["tail_ratio"] == pytest.approx(3.0)

    def step_cost(S):
        u = UNITS["gpu"]
        return u.decode_step * S + u.decode_row * 50 + u.decode_kv * 1000 + u.prefill_token * 64 + \
            u.train_token * 1000 + u.update * 8

    # tokens/generated is make_run's 100 a step; both reach 0.81 at the evaluation of step 9 (10 steps)
    u = UNITS["gpu"]
    per = {S: step_cost(S) + u.decode_row * (100 - 50) for S in (40, 8)}
    t = pr[pr["method"] == "tppo_w8"].iloc[0]
    assert t["gpu_to_level"] == pytest.approx(10 * per[8])
    assert t["speedup_gpu"] == pytest.approx(per[40] / per[8])
    gen = u.decode_step * 40 + u.decode_row * 100 + u.decode_kv * 1000 + u.prefill_token * 64
    assert ppo["gen_share"] == pytest.approx(gen / per[40]) and ppo["amdahl"] == pytest.approx(1 / (1 - gen / per[40]))
    assert math.isnan(t["speedup_cpu"])  # no measured units given
    v = regimes.verdicts(pr)
    assert [c.word for c in v.claims if "projected cost" in c.text] == ["yes"]
    assert [c.word for c in v.claims if "final evaluation is higher" in c.text][0].startswith("undecided")
    assert "regime check" in v[0] and "Amdahl" in v[0]
    table = regimes.score(pr)
    assert table.set_index("method").loc["tppo_w8", "speedup_gpu"] == pytest.approx(per[40] / per[8])
    assert isinstance(table, pd.DataFrame)


def test_final_evaluation_is_the_final_policys(tmp_path):
    """``final_eval`` is the evaluation after the last step (``final_eval.json``), not the last periodic one, and
    a run that reaches the level only there reaches it at its whole cost."""
    for s in range(2):
        make_run(tmp_path, f"ppo-tail8-s{s}", steps=STEPS, extra=counts(40))
        d = make_run(tmp_path, f"tppo_w8-tail8-s{s}", steps=STEPS, extra=lambda k: {
            **counts(8)(k), **({"eval/pass@1": 0.5} if k % 5 == 4 else {})})
        (d / "final_eval.json").write_text('{"eval/pass@1": 0.875, "eval/step": %d}' % STEPS)
    pr = regimes.per_run(load_runs(sorted(tmp_path.iterdir()), axes=sweep.AXES), UNITS)
    t = pr[pr["method"] == "tppo_w8"]
    assert (t["final_eval"] == 0.875).all()  # the periodic evaluations stay at 0.5
    ppo = pr[pr["method"] == "ppo"]
    assert ppo["final_eval"].tolist() == pytest.approx([0.9, 0.9])  # no final_eval.json: the last periodic one
    u = UNITS["gpu"]
    per_step = u.decode_step * 8 + u.decode_row * 100 + u.decode_kv * 1000 + u.prefill_token * 64 + \
        u.train_token * 1000 + u.update * 8
    assert t["gpu_to_level"].tolist() == pytest.approx([STEPS * per_step] * 2)  # only the final one reaches 0.81


def test_the_sampled_final_policy_is_read_beside_the_greedy_one(tmp_path):
    """``final_eval_sampled.json`` (the ``sampled_success`` measurement) gives ``final_sampled``, counted in
    ``reliable_sampled`` and the regime check; a run without it reads NaN and is left out of that count."""
    for s, sampled in enumerate((0.92, 0.75, None)):
        d = make_run(tmp_path, f"ppo-tail8-s{s}", steps=STEPS, extra=counts(40))
        (d / "final_eval.json").write_text('{"eval/pass@1": 0.625}')
        if sampled is not None:
            (d / "final_eval_sampled.json").write_text(json.dumps({"success": sampled, "samples_per_problem": 128}))
    pr = regimes.per_run(load_runs(sorted(tmp_path.iterdir()), axes=sweep.AXES), UNITS)
    assert pr["final_sampled"].tolist()[:2] == [0.92, 0.75] and np.isnan(pr["final_sampled"].iloc[2])
    row = regimes.score(pr).iloc[0]
    assert row["reliable"] == 0 and row["reliable_sampled"] == 1
    check = next(c for c in regimes.claims(pr) if isinstance(c, str) and "regime check" in c)
    assert ">= 0.8 on 0 of 3 seeds (greedy" in check and "sampled (each problem k times) >= 0.8 on 1 of 2" in check
    assert sweep.measurements() == {"sampled_success": {"k": 128}}


def test_a_confirmation_folder_gets_its_own_report_and_family(tmp_path):
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "tppo_reliability.py"
    spec = importlib.util.spec_from_file_location("tppo_reliability", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = tmp_path / "confirm" / "runs"
    for s in range(30, 30 + N):
        make_run(runs, f"ppo-tail16log-s{s}", steps=STEPS, extra=counts(40))
        make_run(runs, f"tppo_w32-tail16log-s{s}", steps=STEPS, extra=counts(8))
    bench.compare(runs, "the command")
    report = (tmp_path / "confirm" / "report.md").read_text()
    assert "the command" in report and "Seeds 30-37" in report and "their own family" in report
    with open(tmp_path / "confirm" / "verdicts.csv", newline="") as fh:
        rows = {r["claim"]: r for r in csv.DictReader(fh)}
    speed = rows["[tail16log] tppo_w32 reaches 0.9 x PPO's final evaluation in less projected cost (H200) than PPO"]
    assert float(speed["mean"]) > 1 and int(speed["n"]) == N and speed["verdict"] == "yes"  # same 8 speed-ups: decided
    assert (tmp_path / "confirm" / "scores.csv").exists()
