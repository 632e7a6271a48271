"""analysis/: loaders, scores, verdicts and figures on small run directories with known numbers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import experiments  # noqa: E402
from testbed.ops import sweep as ops_sweep  # noqa: E402
from testbed.ops.studies import stale_runs  # noqa: E402
from analysis.experiments.espo_headline import analysis as headline  # noqa: E402
from analysis.experiments.espo_headline import figures as headline_figures  # noqa: E402
from analysis.experiments.espo_headline import report as headline_report  # noqa: E402
from analysis.experiments.espo_headline import sweep as headline_sweep  # noqa: E402
from analysis.experiments.tppo_speedup import analysis as speedup  # noqa: E402
from analysis.experiments.tppo_speedup import figures as speedup_figures  # noqa: E402
from analysis.plots import markdown_table, plot_runs_cli, summary_table  # noqa: E402
from analysis.runs import (  # noqa: E402
    EARLY_STOP, EOS, LENGTH_CAP, ROW_COLUMNS, WINDOW_CUT, RunDirError, first_reach, load_many_rows, load_rows,
    load_run, load_runs, name_labels,
)

STEPS = 20  # the last 10% of training is the last 2 steps
_fresh = itertools.count()  # distinct folder names for cases built inside one test


# --- fake run directories ---------------------------------------------------------------------------
def make_run(parent: Path, name: str, *, tokens: float = 100.0, success=None, steps: int = STEPS,
             rule: str = "none", warmup: int = 0, step_time: float = 1.0, extra=None, summary: bool = True) -> Path:
    """A run directory: ``tokens`` generated per step, ``success[step]`` (default 0.5 everywhere),
    ``step_time`` seconds of generation per step (actor, critic: 0), ``extra(step) -> dict`` merged in."""
    d = parent / name
    d.mkdir(parents=True)
    success = [0.5] * steps if success is None else list(success)
    cfg = {"run": {"name": name, "seed": 0, "steps": steps, "out_dir": str(parent)},
           "task": {"kind": "sim", "env_id": "testbed/PlantedFailure-v0"},
           "rollout": {"batch_size": 4, "max_len": 8},
           "stop": {"rule": rule, "warmup_steps": warmup}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for k in range(steps):
        rec = {"step": k, "tokens/generated": tokens, "tokens/cumulative": tokens * (k + 1),
               "reward/mean": success[k], "success/rate": success[k], "stop/rate": 0.0,
               "stop/step_hist": [0] * 8, "length/mean": 6.0, "time/gen": step_time, "time/actor": 0.0,
               "time/critic": 0.0, "time/wall": step_time * (k + 1), "loss/policy": 0.0, "loss/value": 0.0,
               "critic/explained_variance": None, "stop/precision": None, "stop/recall": 0.0,
               "stop/false_stop_rate": 0.0, "stop/delay": None, "credit/failure_rank": 0.5,
               "gen/idle_fraction": 0.5, "pool/age_mean": 0.0}
        rec.update(extra(k) if extra else {})
        lines.append(json.dumps(rec))
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        (d / "summary.json").write_text(json.dumps({"name": name, "steps": steps, "complete": True}))
    return d


def stopper(precision=0.8, recall=0.8, fsr=0.1, delay=1.0, warmup=0, hist_pos=3):
    """Per-step detector metrics of a stop rule that stops from ``warmup`` on."""
    def extra(k):
        if k < warmup:
            return {"stop/recall": 0.0}
        h = [0] * 8
        h[hist_pos] = 2
        return {"stop/rate": 0.25, "stop/precision": precision, "stop/recall": recall,
                "stop/false_stop_rate": fsr, "stop/delay": delay, "stop/step_hist": h}
    return extra


def step_success(start: int, steps: int = STEPS):
    """Success 0 before ``start``, 1 from ``start`` on."""
    return [0.0 if k < start else 1.0 for k in range(steps)]


@pytest.fixture
def study(tmp_path):
    """One env, one seed: PPO 100 tokens/step, ESPO 75 (25% saved), random 75, oracle 50."""
    root = tmp_path / "runs"
    make_run(root, "ppo-default-s0", tokens=100, success=step_success(10))
    make_run(root, "espo-default-s0", tokens=75, success=step_success(6), rule="espo", warmup=5,
             extra=stopper(warmup=5, precision=0.6, recall=0.8, fsr=0.2))
    make_run(root, "random-default-s0", tokens=75, success=step_success(10), rule="random", warmup=5,
             extra=stopper(warmup=5, precision=0.3, recall=0.4, fsr=0.5))
    make_run(root, "oracle-default-s0", tokens=50, success=step_success(6), rule="oracle", warmup=5,
             extra=stopper(warmup=5, precision=1.0, recall=1.0, fsr=0.0, delay=0.0))
    return root


def make_rows(run_dir: Path, steps: dict[int, list[tuple]]) -> Path:
    """Write ``rows.jsonl``: ``steps[k]`` lists the rows that finished at step k as
    ``(length, ending, failure_step, success)``."""
    lines = []
    for k, rs in sorted(steps.items()):
        cols = list(zip(*rs)) if rs else [(), (), (), ()]
        lines.append(json.dumps({"step": k, "length": list(cols[0]), "ending": list(cols[1]),
                                 "failure_step": list(cols[2]), "success": list(cols[3])}))
    (run_dir / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir / "rows.jsonl"


S, E, C = EARLY_STOP, EOS, LENGTH_CAP
# ESPO's finished rows (max_len 8, warm-up 1). Step 0 is warm-up: its hit must not count.
# Step 1: a hit stopped 2 tokens after its fatal token; a clean EOS row; a doomed row whose fatal token
# is its last token (not stoppable). Step 2: three false stops; two doomed, stoppable, not-stopped rows;
# a success.
ESPO_ROWS = {
    0: [(4, S, 2, 0)],
    1: [(5, S, 2, 0), (6, E, -1, 0), (4, E, 3, 0)],
    2: [(3, S, -1, 0)] * 3 + [(8, C, 2, 0), (7, E, 5, 0), (6, E, -1, 1)],
}
# per step after warm-up: precision 1/1 and 0/3 (mean 0.5; pooled 1/4), recall 1/1 and 0/2 (mean 0.5;
# pooled 1/3; 1/4 if the unstoppable row counted), false-stop rate 0/1 and 3/4 (mean 0.375; pooled 3/5)
ESPO_STEP_METRICS = {1: {"stop/precision": 1.0, "stop/recall": 1.0, "stop/false_stop_rate": 0.0, "stop/delay": 2.0},
                     2: {"stop/precision": 0.0, "stop/recall": 0.0, "stop/false_stop_rate": 0.75, "stop/delay": None}}
# waste after warm-up: ESPO 2 + 0 + 5 + 1 = 8 of 5+6+4 + 9+8+7+6 = 45 tokens; PPO 7 at each of steps
# 1, 2 (14) and 102 more at step 3, which ESPO's rows do not reach (so not paired)
PPO_ROWS = {0: [(8, E, 0, 0)], 1: [(8, E, 0, 0)], 2: [(8, C, 0, 0)], 3: [(8, E, 0, 0)] * 14 + [(8, E, 5, 0)] * 2}


def espo_step_metrics(k):
    return ESPO_STEP_METRICS.get(k, {"stop/precision": None, "stop/recall": None, "stop/false_stop_rate": None,
                                     "stop/delay": None})


@pytest.fixture
def row_study(tmp_path):
    """PPO and ESPO with rows.jsonl of known content; random without one (falls back to metrics)."""
    root = tmp_path / "rowruns"
    make_rows(make_run(root, "ppo-default-s0", warmup=1), PPO_ROWS)
    make_rows(make_run(root, "espo-default-s0", rule="espo", warmup=1, extra=espo_step_metrics), ESPO_ROWS)
    make_run(root, "random-default-s0", rule="random", warmup=1, extra=stopper(precision=0.3))
    return root


def row(table, method, env="default"):
    r = table[(table["env"] == env) & (table["method"] == method)]
    assert len(r) == 1, f"no single row for {env}/{method}"
    return r.iloc[0]


# --- loaders ----------------------------------------------------------------------------------------
def test_load_run_reads_metrics_nulls_and_derived_time(tmp_path):
    d = make_run(tmp_path, "ppo-default-s0", step_time=2.0)
    r = load_run(d)
    m = r["metrics"]
    assert r["name"] == "ppo-default-s0" and r["summary"]["complete"] is True
    assert len(m) == STEPS and list(m["step"]) == list(range(STEPS))
    assert m["critic/explained_variance"].isna().all()  # JSON null -> NaN
    assert m["stop/step_hist"].iloc[0] == [0] * 8  # lists stay lists
    np.testing.assert_allclose(m["time/compute_cumulative"].iloc[-1], 2.0 * STEPS)


@pytest.mark.parametrize("missing", ["config.yaml", "metrics.jsonl", "summary.json"])
def test_load_run_names_the_missing_file(tmp_path, missing):
    d = make_run(tmp_path, "espo-default-s0")
    (d / missing).unlink()
    with pytest.raises(RunDirError, match=f"{d}.*{missing}"):
        load_run(d)


def test_load_run_names_the_bad_metrics_line(tmp_path):
    d = make_run(tmp_path, "espo-default-s0")
    lines = (d / "metrics.jsonl").read_text().splitlines()
    lines[2] = '{"step": 2, "tokens/cumulative": '
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl:3"):
        load_run(d)


def test_load_run_names_a_record_without_required_keys(tmp_path):
    d = make_run(tmp_path, "espo-default-s0")
    lines = (d / "metrics.jsonl").read_text().splitlines()
    lines[4] = json.dumps({"step": 4})
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl:5.*tokens/cumulative"):
        load_run(d)


def test_load_runs_carries_the_final_evaluations(tmp_path):
    d = make_run(tmp_path, "ppo-default-s0")
    (d / "final_eval.json").write_text(json.dumps({"eval/pass@1": 0.75, "eval/step": STEPS, "eval/correct": [1, 0]}))
    df = load_runs(tmp_path)
    assert (df["final/pass@1"] == 0.75).all() and (df["final/step"] == STEPS).all()
    assert "final/correct" not in df  # lists are per-item outcomes, not columns
    (d / "final_eval.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match=r"final_eval\.json.*JSON object"):
        load_run(d)


def test_load_run_names_bad_yaml_and_bad_summary(tmp_path):
    d = make_run(tmp_path, "a")
    (d / "config.yaml").write_text("run: [unclosed\n")
    with pytest.raises(RunDirError, match=r"config\.yaml"):
        load_run(d)
    d = make_run(tmp_path, "b")
    (d / "summary.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"summary\.json"):
        load_run(d)


def test_load_runs_unfinished_run_and_missing_folder(tmp_path):
    make_run(tmp_path / "runs", "ppo-default-s0", summary=False)
    df = load_runs(tmp_path / "runs")
    assert not df["complete"].any()
    with pytest.raises(RunDirError, match="summary.json"):
        load_runs(tmp_path / "runs", require_summary=True)
    with pytest.raises(RunDirError, match="nowhere"):
        load_runs(tmp_path / "nowhere")


def test_labels_from_name_parts_and_from_sweep_summary(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "regret_only-trap-s2")
    df = load_runs(root, axes=("method", "env", "seed"))
    assert df["label/method"].iloc[0] == "regret_only" and df["label/env"].iloc[0] == "trap"
    assert df["label/seed"].iloc[0] == 2 and df["group"].iloc[0] == "regret_only-trap"
    assert name_labels("espo-s3") == {"label/part0": "espo", "label/seed": 3}
    # a sweep summary in the parent folder wins over the name
    (root / "sweep_summary.jsonl").write_text(json.dumps(
        {"name": "regret_only-trap-s2", "label/method": "R", "label/env": "E", "label/seed": 7}) + "\n")
    df = load_runs(root, axes=("method", "env", "seed"))
    assert (df["label/method"].iloc[0], df["label/env"].iloc[0], df["label/seed"].iloc[0]) == ("R", "E", 7)


def test_row_ending_codes_match_the_testbed():
    from testbed.rollout import Ending  # torch: fine in a test, never in analysis/

    assert (EOS, LENGTH_CAP, WINDOW_CUT, EARLY_STOP) == (
        int(Ending.EOS), int(Ending.LENGTH_CAP), int(Ending.WINDOW_CUT), int(Ending.EARLY_STOP))


def test_load_rows_one_row_per_finished_row_with_derived_flags(tmp_path):
    d = make_run(tmp_path, "espo-default-s0", rule="espo")
    make_rows(d, {0: [(4, S, 3, 0), (3, E, 3, 0), (5, E, -1, 1)], 1: [(2, C, 0, 0)]})
    r = load_rows(d)
    assert list(r.columns) == list(ROW_COLUMNS)
    assert (r["run"] == "espo-default-s0").all()
    assert r["step"].tolist() == [0, 0, 0, 1] and r["length"].tolist() == [4, 3, 5, 2]
    assert r["ending"].tolist() == [S, E, E, C] and r["failure_step"].tolist() == [3, 3, -1, 0]
    assert r["success"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert r["stopped"].tolist() == [True, False, False, False]
    # doomed: 0 <= failure_step <= length - 1 (fatal token 3 is beyond a 3-token row's last index 2)
    assert r["doomed"].tolist() == [True, False, False, True]


def test_load_rows_without_a_file_or_success(tmp_path):
    llm = make_run(tmp_path / "runs", "ppo-default-s0")  # an LLM run writes no rows.jsonl
    r = load_rows(llm)
    assert r.empty and list(r.columns) == list(ROW_COLUMNS)
    sim = make_run(tmp_path / "runs", "espo-default-s0")
    (sim / "rows.jsonl").write_text(json.dumps({"step": 0, "length": [2, 3], "ending": [0, 3],
                                                "failure_step": [-1, 1], "success": []}) + "\n")
    assert load_rows(sim)["success"].isna().all()  # a task without success flags
    both = load_many_rows(tmp_path / "runs")
    assert both["run"].tolist() == ["espo-default-s0"] * 2


@pytest.mark.parametrize("bad, why", [
    ('{"step": 1, "length": [3], "ending": ', "not a JSON object"),
    ('[1, 2]', "expected a JSON object"),
    ('{"step": 1, "length": [3], "ending": [0]}', "failure_step"),
    ('{"step": 1, "length": [3, 4], "ending": [0], "failure_step": [-1], "success": [1]}', "different lengths"),
    ('{"step": 1, "length": [3], "ending": [7], "failure_step": [-1], "success": [1]}', "ending"),
    ('{"step": 1, "length": [3.5], "ending": [0], "failure_step": [-1], "success": [1]}', "integers"),
    ('{"step": 1, "length": [0], "ending": [0], "failure_step": [-1], "success": [1]}', "length"),
    ('{"step": 1, "length": [3], "ending": [0], "failure_step": [-2], "success": [1]}', "failure_step"),
    ('{"step": 0, "length": [3], "ending": [0], "failure_step": [-1], "success": [1]}', "step 0 already"),
])
def test_load_rows_names_the_bad_line(tmp_path, bad, why):
    d = make_run(tmp_path, "espo-default-s0")
    good = make_rows(d, {0: [(3, E, -1, 1)], 2: [(4, S, 1, 0)]})
    lines = good.read_text().splitlines()
    lines.insert(1, "")  # blank lines are skipped but still counted
    lines.insert(2, bad)  # line 3
    good.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=rf"rows\.jsonl:3: .*{why}"):
        load_rows(d)
    with pytest.raises(RunDirError, match=r"rows\.jsonl:3"):
        load_many_rows(tmp_path)


def test_first_reach_uses_the_trailing_average():
    import pandas as pd

    run = pd.DataFrame({"step": range(10), "tokens/cumulative": [10 * (k + 1) for k in range(10)],
                        "success/rate": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]})
    assert first_reach(run, 0.5, window=2) == 40  # mean(0, 1) at step 3
    assert first_reach(run, 0.9, window=2) == 50  # mean(1, 1) at step 4
    assert math.isnan(first_reach(run, 1.5, window=2))


# --- ESPO headline score ----------------------------------------------------------------------------
def test_score_computes_known_numbers(study):
    df = load_runs(study, axes=headline_sweep.AXES)
    t = headline.score(df)
    ppo, espo, rnd, orc = (row(t, m) for m in ("ppo", "espo", "random", "oracle"))
    np.testing.assert_allclose(espo["tokens_saved_pct"], 25.0)
    np.testing.assert_allclose(orc["tokens_saved_pct"], 50.0)
    np.testing.assert_allclose(ppo["tokens_saved_pct"], 0.0)
    np.testing.assert_allclose(espo["tokens"], 75 * STEPS)
    np.testing.assert_allclose(espo["final_success"], 1.0)
    # level = 0.5 * PPO's final success (1.0); 2-step trailing mean first hits 0.5 at the first success step
    np.testing.assert_allclose(espo["level"], 0.5)
    np.testing.assert_allclose(ppo["tokens_to_level"], 100 * 11)
    np.testing.assert_allclose(espo["tokens_to_level"], 75 * 7)
    np.testing.assert_allclose(espo["saved_at_level_pct"], 100 * (1 - 525 / 1100))
    # detector metrics average only the steps after the warm-up (recall is 0 before it)
    np.testing.assert_allclose(espo["recall"], 0.8)
    np.testing.assert_allclose(espo["precision"], 0.6)
    np.testing.assert_allclose(espo["false_stop_rate"], 0.2)
    np.testing.assert_allclose(espo["stop_rate"], 0.25 * 15 / 20)
    # closeness to the oracle: half of its saving, 0.6 of its precision, 0.8 of its recall
    np.testing.assert_allclose(espo["saving_vs_oracle"], 0.5)
    np.testing.assert_allclose(espo["precision_vs_oracle"], 0.6)
    np.testing.assert_allclose(espo["recall_vs_oracle"], 0.8)
    assert espo["n"] == 1 and espo["reached"] == 1 and math.isnan(espo["tokens_saved_pct_std"])


def test_detector_pools_rows_after_warmup_not_the_mean_of_step_ratios(row_study):
    df = load_runs(row_study, axes=headline_sweep.AXES)
    rows = load_many_rows(row_study)
    espo = row(headline.score(df, rows), "espo")
    assert espo["detector_from"] == "rows"
    np.testing.assert_allclose(espo["precision"], 1 / 4)  # the mean of the step ratios is 0.5
    np.testing.assert_allclose(espo["recall"], 1 / 3)  # the row whose fatal token is its last is not stoppable
    np.testing.assert_allclose(espo["false_stop_rate"], 3 / 5)  # mean of step ratios: 0.375
    np.testing.assert_allclose(espo["delay"], 2.0)
    # without the per-row table the same runs fall back to the per-step metrics
    fallback = row(headline.score(df), "espo")
    assert fallback["detector_from"] == "metrics"
    np.testing.assert_allclose([fallback["precision"], fallback["recall"], fallback["false_stop_rate"]],
                               [0.5, 0.5, 0.375])
    # a run without rows.jsonl in the same table falls back on its own
    rnd = row(headline.score(df, rows), "random")
    assert rnd["detector_from"] == "metrics"
    np.testing.assert_allclose(rnd["precision"], 0.3)
    assert math.isnan(rnd["waste_tokens"]) and math.isnan(rnd["waste_removed_pct"])


def test_waste_after_the_fatal_token(row_study):
    df = load_runs(row_study, axes=headline_sweep.AXES)
    t = headline.score(df, load_many_rows(row_study))
    espo, ppo = row(t, "espo"), row(t, "ppo")
    np.testing.assert_allclose(espo["waste_tokens"], 8)  # the warm-up step's 1 token is not counted
    np.testing.assert_allclose(espo["waste_share_pct"], 100 * 8 / 45)
    np.testing.assert_allclose(ppo["waste_tokens"], 7 + 7 + (14 * 7 + 2 * 2))  # steps 1, 2, 3
    np.testing.assert_allclose(ppo["waste_removed_pct"], 0.0)
    np.testing.assert_allclose(espo["waste_removed_pct"], 100 * (1 - 8 / 14))  # paired on steps 1-2 only
    assert math.isnan(row(headline.score(df), "espo")["waste_removed_pct"])  # needs rows


def test_waste_verdict_flips_with_random(tmp_path):
    def line(random_rows):
        root = tmp_path / f"case{next(_fresh)}"
        for seed in range(10):
            make_rows(make_run(root, f"ppo-default-s{seed}"), {0: [(8, E, 0, 0)] * 2})  # waste 14
            make_rows(make_run(root, f"espo-default-s{seed}", rule="espo"), {0: [(4, S, 1, 0), (8, E, 6, 0)]})  # 2 + 1
            make_rows(make_run(root, f"random-default-s{seed}", rule="random"), {0: random_rows})
        root_df = load_runs(root, axes=headline_sweep.AXES)
        v = headline.verdicts(headline.per_run(root_df, load_many_rows(root)))
        (x,) = [x for x in v if "after the fatal token than random" in x]
        return x

    assert ": yes (" in line([(8, E, 3, 0)])  # random leaves 4 of 14
    assert ": no (" in line([(2, S, 0, 0)])  # random leaves 1 of 14
    assert "ESPO +78.6 [+78.6, +78.6] %" in line([(8, E, 3, 0)])  # 1 - 3/14 on every seed


def test_stop_vs_failure_grid_counts_each_stop_once():
    import pandas as pd

    # the 6th row: stopped at index 2 before its fatal token 4 was generated: not doomed, a false stop
    rows = pd.DataFrame({"length": [5, 5, 3, 9, 6, 3], "failure_step": [2, 2, -1, 1, 5, 4],
                         "stopped": [True, True, True, True, False, True],
                         "doomed": [True, True, False, True, True, False]})
    counts, n, n_false = headline_figures.stop_failure_grid(rows, max_len=8)
    assert counts.shape == (9, 8) and counts.sum() == n == 5 and n_false == 2
    assert counts[2 + 1, 4] == 2  # stopped at index 4, fatal token 2
    assert counts[0, 2] == 2  # false stops at index 2: the "none" row
    assert counts[1 + 1, 7] == 1  # a stop beyond max_len - 1 is clipped into the last column


def test_stop_vs_failure_scatter_draws_the_rows_and_writes_nothing(row_study, tmp_path, monkeypatch):
    df = load_runs(row_study, axes=headline_sweep.AXES)
    rows = load_many_rows(row_study)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    fig = headline_figures.plot_stop_vs_failure(df, rows)
    assert isinstance(fig, Figure)
    assert sorted(tmp_path.rglob("*")) == before
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"default: espo", "default: random"}  # PPO stops nothing: no panel
    (mesh,) = panels["default: espo"].collections  # QuadMesh: shares of ESPO's 4 post-warm-up stops
    share = np.ma.filled(mesh.get_array(), 0.0).reshape(8 + 1, 8)
    np.testing.assert_allclose(share[2 + 1, 4], 0.25)  # the hit: stop at index 4, fatal token 2
    np.testing.assert_allclose(share[0, 2], 0.75)  # three false stops at index 2, in the "none" row
    np.testing.assert_allclose(share.sum(), 1.0)  # the warm-up step's hit is left out
    assert any("rows.jsonl" in t.get_text() for t in panels["default: random"].texts)
    assert any("false: 3 (75%)" in t.get_text() for t in panels["default: espo"].texts)
    plt.close(fig)


def test_report_says_where_detector_numbers_come_from(row_study):
    df = load_runs(row_study, axes=headline_sweep.AXES)
    text = headline_report.detector_source(df, load_many_rows(row_study))
    assert "for 2 of 3 runs" in text and "`random-default-s0`" in text
    assert "other 1" in text


def test_score_mean_and_std_over_seeds(tmp_path):
    root = tmp_path / "runs"
    for s, tok in ((0, 80), (1, 60)):  # 20% and 40% saved
        make_run(root, f"ppo-default-s{s}", tokens=100)
        make_run(root, f"espo-default-s{s}", tokens=tok, rule="espo")
    t = headline.score(load_runs(root, axes=headline_sweep.AXES))
    espo = row(t, "espo")
    np.testing.assert_allclose(espo["tokens_saved_pct"], 30.0)
    np.testing.assert_allclose(espo["tokens_saved_pct_std"], np.std([20.0, 40.0], ddof=1))
    assert espo["n"] == 2


def _seeds(root, method, n=10, *, tokens, success, **kw):
    """``n`` seeds of one method; ``tokens`` and ``success`` are per-seed lists (or one value for all)."""
    tok = tokens if isinstance(tokens, list) else [tokens] * n
    suc = success if isinstance(success, list) else [success] * n
    for s in range(n):
        make_run(root, f"{method}-default-s{s}", tokens=tok[s], success=[suc[s]] * STEPS, **kw)


def test_headline_verdict_flips_with_the_interval(tmp_path):
    def claim(espo_tokens, espo_success=0.5, n=10):
        root = tmp_path / f"case{next(_fresh)}"
        _seeds(root, "ppo", n, tokens=100, success=0.5)
        _seeds(root, "espo", n, tokens=espo_tokens, success=espo_success, rule="espo")
        v = headline.verdicts(headline.per_run(load_runs(root, axes=headline_sweep.AXES)))
        return {k: [x for x in v if k in x][0] for k in ("saves >20%", "more often than PPO's")}

    assert ": yes (" in claim([75, 70, 72, 78, 74] * 2)["saves >20%"]  # 22-30% saved on every seed
    assert ": no (" in claim([90, 85, 88, 92, 86] * 2)["saves >20%"]  # 8-15%
    assert ": undecided (not significant after Holm" in claim([60, 95, 62, 96, 70, 61, 94, 63, 97, 71])["saves >20%"]
    assert "saved +25.0 [+25.0, +25.0] %" in claim(75)["saves >20%"]
    assert ": undecided (7 seeds; a decision needs 8)" in claim(75, n=7)["saves >20%"]  # too few seeds
    # success: paired by seed, so a constant +0.1 on every seed is decided despite the spread of seeds
    assert ": yes (" in claim(75, [0.6] * 10)["more often than PPO's"]
    assert ": no (" in claim(75, [0.3, 0.35, 0.4, 0.3, 0.2] * 2)["more often than PPO's"]
    assert ": undecided" in claim(75, [0.9, 0.1, 0.9, 0.1, 0.5] * 2)["more often than PPO's"]
    assert "(training success; the runs have no no-stop evaluation)" in claim(75)["more often than PPO's"]


def test_success_claims_judge_the_policy_without_stopping(tmp_path):
    """With a no-stop evaluation, the claim is about it: ESPO's training success is higher (its stops end
    hard rows before they count), but its final policy, run to the end, is worse."""
    root = tmp_path / "runs"
    _seeds(root, "ppo", tokens=100, success=0.5)
    _seeds(root, "espo", tokens=75, success=0.6, rule="espo")
    for s in range(10):
        for m, ns in (("ppo", 0.5), ("espo", 0.4)):
            (root / f"{m}-default-s{s}" / "final_eval_nostop.json").write_text(
                json.dumps({"rows": 2048, "success": ns + 0.01 * s, "step": STEPS}))
    pr = headline.per_run(load_runs(root, axes=headline_sweep.AXES))
    np.testing.assert_allclose(pr[pr["method"] == "espo"]["nostop_vs_ppo"], -0.1)
    (line,) = [x for x in headline.verdicts(pr) if "more often than PPO's" in x]
    assert "(no-stop evaluation): no (" in line and "training success +0.100" in line


def test_random_and_oracle_verdicts_flip(tmp_path):
    def verdict_lines(random_success, oracle_tokens=60):
        root = tmp_path / f"case{next(_fresh)}"
        _seeds(root, "ppo", tokens=100, success=0.5)
        _seeds(root, "espo", tokens=75, success=0.5, rule="espo", extra=stopper(precision=0.7))
        _seeds(root, "random", tokens=75, success=random_success, rule="random", extra=stopper(precision=0.3))
        _seeds(root, "oracle", tokens=oracle_tokens, success=0.5, rule="oracle", extra=stopper(precision=1.0))
        return headline.verdicts(headline.per_run(load_runs(root, axes=headline_sweep.AXES)))

    worse = [x for x in verdict_lines(0.3) if "random truncation" in x][0]
    same = [x for x in verdict_lines([0.45, 0.55, 0.5, 0.4, 0.6] * 2) if "random truncation" in x][0]
    assert ": yes (" in worse and ": undecided" in same
    oracle = [x for x in verdict_lines(0.5) if "oracle's token saving" in x][0]
    assert ": yes (" in oracle and "ratio +0.625" in oracle  # 25% / 40% of tokens saved
    oracle = [x for x in verdict_lines(0.5, oracle_tokens=10) if "oracle's token saving" in x][0]
    assert ": no (" in oracle and "ratio +0.278" in oracle  # 25% / 90%
    precise = [x for x in verdict_lines(0.5) if "more precise" in x][0]
    assert ": yes (" in precise


def test_verdicts_say_when_a_method_is_missing(tmp_path):
    make_run(tmp_path / "runs", "ppo-default-s0")
    v = headline.verdicts(headline.per_run(load_runs(tmp_path / "runs", axes=headline_sweep.AXES)))
    assert any("not evaluated" in x for x in v)
    assert "reliability: PPO's final success is >= 0.5 on 1 of 1 seeds" in v[0]


def test_score_has_intervals_and_scores_csv_columns(tmp_path):
    root = tmp_path / "runs"
    _seeds(root, "ppo", 5, tokens=100, success=[0.5, 0.6, 0.7, 0.2, 0.9])
    _seeds(root, "espo", 5, tokens=[80, 60, 70, 75, 65], success=0.5, rule="espo")
    t = headline.score(load_runs(root, axes=headline_sweep.AXES))
    espo = row(t, "espo")
    assert espo["tokens_saved_pct_lo"] < espo["tokens_saved_pct"] < espo["tokens_saved_pct_hi"]
    np.testing.assert_allclose(espo["success_vs_ppo"], 0.5 - np.mean([0.5, 0.6, 0.7, 0.2, 0.9]))
    assert row(t, "ppo")["reliable"] == 4 and espo["reliable"] == 5
    from analysis.experiments import write_scores
    import pandas as pd

    back = pd.read_csv(write_scores(t, tmp_path / "study"))
    assert list(back.columns) == list(t.columns) and len(back) == 2
    text = markdown_table(t[["env", "method", "tokens_saved_pct", "tokens_saved_pct_lo", "tokens_saved_pct_hi"]])
    assert f"{espo['tokens_saved_pct']:.3g} [" in text


# --- figures ----------------------------------------------------------------------------------------
def test_plot_functions_return_figures_and_write_nothing(study, tmp_path, monkeypatch):
    df = load_runs(study, axes=headline_sweep.AXES)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    for name, fn in headline_figures.PLOTS.items():
        for rows in (None, load_many_rows(study)):  # study has no rows.jsonl: an empty per-row table
            fig = fn(df, rows=rows)
            assert isinstance(fig, Figure), name
            assert fig.axes, name
            plt.close(fig)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_headline_plots_with_rows_write_nothing(row_study, tmp_path, monkeypatch):
    df = load_runs(row_study, axes=headline_sweep.AXES)
    rows = load_many_rows(row_study)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for name, fn in headline_figures.PLOTS.items():
        fig = fn(df, rows=rows)
        assert isinstance(fig, Figure) and fig.axes, name
        plt.close(fig)
    assert sorted(tmp_path.rglob("*")) == before


def test_plot_runs_cli_writes_report_and_pngs(study, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot_runs_cli([str(study)], out=str(out)) == 0
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "success_vs_tokens.png" in pngs and len(pngs) >= 4
    for p in pngs:
        assert f"({p})" in report
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| espo-default |" in report and "1,500" in report  # ESPO's 75 x 20 tokens


def test_plot_runs_cli_reports_a_bad_directory(tmp_path, capsys):
    d = make_run(tmp_path, "espo-default-s0")
    (d / "metrics.jsonl").write_text("not json\n")
    assert plot_runs_cli([str(d)], out=str(tmp_path / "plots")) == 2
    assert "metrics.jsonl:1" in capsys.readouterr().err


def test_markdown_table_merges_mean_and_std(study):
    t = summary_table(load_runs(study))
    md = markdown_table(t)
    assert md.splitlines()[0].startswith("| group |") and "final_success_std" not in md


# --- T-PPO speed-up (scores, intervals and cost model: tests/analysis/test_tppo_speedup.py) ------------
def test_speedup_plots_return_figures(tmp_path):
    root = tmp_path / "runs"
    for m in ("ppo", "tppo"):
        make_run(root, f"{m}-longtail-s0", success=step_success(5))
    df = load_runs(root, axes=("method", "env", "seed"))
    for name, fn in speedup_figures.PLOTS.items():
        fig = fn(df)
        assert isinstance(fig, Figure), name
        plt.close(fig)


# --- the study registry and sweep settings ----------------------------------------------------------
@pytest.mark.parametrize("name", experiments.names())
def test_registered_studies_have_their_parts(name):
    a, r, s = (experiments.load(name, part) for part in ("analysis", "report", "sweep"))
    assert callable(a.score) and callable(a.verdicts) and not hasattr(a, "PLOTS")  # figures live apart
    if experiments.has_part(name, "figures"):
        f = experiments.load(name, "figures")
        assert f.PLOTS and all(k.isidentifier() and callable(fn) for k, fn in f.PLOTS.items())
    assert callable(r.write) and not hasattr(r, "main")  # a reader: the runner launches, the study does not
    grids = s.grids(Path("/tmp/x"), quick=True)
    assert grids and all(g["out_dir"].startswith("/tmp/x/runs") for g in grids)
    with pytest.raises(KeyError, match="registered"):
        experiments.load("nope")


def test_headline_sweep_expands_to_named_runs(tmp_path):
    runner = ops_sweep
    _, specs = runner.expand(headline_sweep.spec(tmp_path / "runs"))
    names = {s.name: s for s in specs}
    n = len(headline_sweep.METHODS) * len(headline_sweep.DEMO_ENVS) * len(headline_sweep.REPORT_SEEDS)
    assert len(names) == n and "espo_paper-default-s1" in names and "espo-trap-s1" not in names
    for espo, rnd in (("espo", "random"), ("espo_paper", "random_paper")):  # each ESPO has its matched random
        assert names[f"{rnd}-default-s1"].config["stop"]["reference_run"] == str(tmp_path / "runs" / f"{espo}-default-s1")
    # random_paper has the paper preset's stop reward
    paper = names["espo_paper-default-s0"].config["stop"]
    assert {k: names["random_paper-default-s0"].config["stop"][k] for k in ("failure_reward", "stop_penalty")} == \
        {k: paper[k] for k in ("failure_reward", "stop_penalty")}
    assert names["espo-default-s0"].config["stop"]["tau"] == headline_sweep.ESPO_CONSTANTS["stop.tau"]
    _, full = runner.expand(headline_sweep.spec(tmp_path / "runs", full=True))
    full = {s.name: s for s in full}
    assert full["random-trap-s1"].config["stop"]["reference_run"] == str(tmp_path / "runs" / "espo-trap-s1")
    assert full["oracle-trap-s0"].config["task"]["env_id"] == "testbed/PlantedFailureTrap-v0"
    assert not set(headline_sweep.REPORT_SEEDS) & set(headline_sweep.TUNE_SEEDS)
    _, tune = runner.expand(headline_sweep.tune_spec(tmp_path / "tune"))
    assert {s.config["run"]["seed"] for s in tune} == set(headline_sweep.TUNE_SEEDS)


def test_stale_runs_are_detected(tmp_path):
    runner = ops_sweep
    _, specs = runner.expand(headline_sweep.spec(tmp_path / "runs", quick=True))
    by = {s.name: s for s in specs}
    for name in ("espo-default-s0", "random-default-s0", "ppo-default-s0"):
        s = by[name]
        s.run_dir.mkdir(parents=True)
        (s.run_dir / "config.yaml").write_text(yaml.safe_dump(s.config))
    assert stale_runs(specs) == {}
    cfg = dict(by["espo-default-s0"].config, stop={**by["espo-default-s0"].config["stop"], "tau": 123.0})
    (by["espo-default-s0"].run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    stale = stale_runs(specs)
    assert set(stale) == {"espo-default-s0", "random-default-s0"}  # random follows its reference run
    assert "stop.tau" in stale["espo-default-s0"]


@pytest.mark.parametrize("method,preset", [("ppo", "ppo.yaml"), ("espo", "espo.yaml"), ("espo_paper", "espo_paper.yaml")])
def test_the_presets_are_the_headline_settings(tmp_path, method, preset):
    """``testbed run configs/<preset> run.seed=S`` is exactly the headline's cell ``<method>-default-sS``
    (every resolved config value but the run's name and folder), and the trap cell differs only in its env."""
    from testbed import config as config_mod

    runner = ops_sweep
    _, specs = runner.expand(headline_sweep.spec(tmp_path / "runs", full=True))
    by = {s.name: s.config for s in specs}
    for seed in (0, 7):
        want = config_mod.load(headline_sweep.REPO / "configs" / preset, [f"run.seed={seed}"]).to_dict()
        got = by[f"{method}-default-s{seed}"]
        for cfg in (want, got):
            cfg["run"] = {k: v for k, v in cfg["run"].items() if k not in ("name", "out_dir")}
        assert got == want
    trap = dict(by[f"{method}-trap-s0"])
    assert trap.pop("task")["env_id"] == "testbed/PlantedFailureTrap-v0"
    default = dict(by[f"{method}-default-s0"])
    default.pop("task")
    assert {k: v for k, v in trap.items() if k != "run"} == {k: v for k, v in default.items() if k != "run"}


def test_full_headline_has_30_seeds_and_the_ablations(tmp_path):
    runner = ops_sweep
    _, specs = runner.expand(headline_sweep.spec(tmp_path / "runs", full=True))
    assert {s.config["run"]["seed"] for s in specs} == set(range(30))
    names = {s.name for s in specs}
    assert {"regret_only-trap-s29", "value_only-default-s0"} <= names
    assert len(headline_sweep.REPORT_SEEDS) >= 10


def test_eval_curve_uses_only_evaluated_steps():
    import matplotlib.pyplot as plt
    import pandas as pd

    from analysis.plots import plot_eval_vs_tokens

    df = pd.DataFrame({"run": ["a"] * 3, "group": ["a"] * 3, "step": [0, 1, 2],
                       "eval/pass@1": [0.1, None, 0.3], "eval/tokens_cumulative": [0, None, 200]})
    fig = plot_eval_vs_tokens(df)
    import numpy as np

    line = fig.axes[0].get_lines()[0]
    xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    assert xs.min() == 0 and xs.max() == 200  # the unevaluated step (no x) is left out, not drawn at 0
    assert np.isfinite(ys).all() and ys.min() >= 0.1 - 1e-9 and ys.max() <= 0.3 + 1e-9
    plt.close(fig)


# --- ESPO difficulty study --------------------------------------------------------------------------
def test_difficulty_sweep_varies_one_knob_at_a_time(tmp_path):
    from analysis.experiments.espo_difficulty import sweep as diff_sweep

    runner = ops_sweep
    _, default_specs = runner.expand(diff_sweep.spec(tmp_path / "runs"))
    assert {s.labels["env"] for s in default_specs} == {"default", "critical5", "length18", "acceptable4"}
    assert {s.config["run"]["seed"] for s in default_specs} == set(range(10))  # enough to decide its 12 claims
    _, specs = runner.expand(diff_sweep.spec(tmp_path / "runs", full=True))
    by = {s.name: s.config for s in specs}
    assert len(diff_sweep.KNOBS) >= 3 and len(diff_sweep.SEEDS) >= 10
    assert set(diff_sweep.METHODS) >= {"ppo", "espo", "oracle", "random"}
    default = by["espo-default-s0"]
    for knob, vals in diff_sweep.KNOBS.items():
        for v in vals:
            cfg = by[f"espo-{diff_sweep.point_name(knob, v)}-s0"]
            assert len(cfg["task"]["env_kwargs"]) == 1  # one knob moved, nothing else
            assert {k: x for k, x in cfg.items() if k not in ("task", "run")} == \
                   {k: x for k, x in default.items() if k not in ("task", "run")}
    assert by["random-length18-s3"]["stop"]["reference_run"].endswith("espo-length18-s3")
    # the knobs' values are what they claim: count critical positions in the env they build
    import gymnasium as gym
    import envs  # noqa: F401

    for v in diff_sweep.KNOBS["critical"]:
        kw = by[f"ppo-critical{v:g}-s0"]["task"]["env_kwargs"]
        env = gym.make("testbed/PlantedFailure-v0", **kw).unwrapped
        assert (env.critical.sum(axis=1) == v).all()


def test_difficulty_score_reading_and_figures(tmp_path, monkeypatch):
    from analysis.experiments.espo_difficulty import analysis as diff
    from analysis.experiments.espo_difficulty import figures as diff_figures

    root = tmp_path / "runs"
    for env, espo_tok in (("default", 70), ("critical5", 95)):
        for s in range(8):
            make_run(root, f"ppo-{env}-s{s}", tokens=100, success=[0.5] * STEPS)
            make_run(root, f"espo-{env}-s{s}", tokens=espo_tok + s, success=[0.5] * STEPS, rule="espo")
            make_run(root, f"random-{env}-s{s}", tokens=espo_tok, success=[0.3] * STEPS, rule="random")
            make_run(root, f"oracle-{env}-s{s}", tokens=60, success=[0.5] * STEPS, rule="oracle")
    t = diff.score(diff.per_run(load_runs(root, axes=("method", "env", "seed"))))
    e = t[(t["knob"] == "critical") & (t["value"] == 5) & (t["method"] == "espo")].iloc[0]
    np.testing.assert_allclose(e["tokens_saved_pct"], 100 - 95 - 3.5)  # 95 + s tokens, s = 0..7
    np.testing.assert_allclose(e["espo_minus_random"], 0.2)
    assert e["success_basis"] == "final_success"  # these runs have no no-stop evaluation
    # the default point is shared by every knob's curve
    assert set(t[t["env"] == "default"]["knob"]) == {"critical", "length", "acceptable"}
    text = diff.verdicts(t)
    crit5 = [x for x in text if "critical positions per problem = 5]" in x][0]
    assert "saves >20% tokens: no" in crit5 and "better than matched random: yes" in crit5
    assert "saves >20% tokens: yes" in [x for x in text if "= 2 (default)" in x][0]
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for name, fn in diff_figures.PLOTS.items():
        fig = fn(t)
        assert isinstance(fig, Figure) and fn.__doc__
        plt.close(fig)
    assert sorted(tmp_path.rglob("*")) == before


def test_demo_full_is_refused_by_a_study_without_one(capsys):
    from testbed.ops import cli

    assert cli.main(["demo", "--study", "tppo_speedup", "--full", "--out", "/nonexistent/x"]) == 2
    assert "--full: study tppo_speedup has no full version" in capsys.readouterr().err


def test_tppo_amdahl_bound_is_one_over_the_non_generation_share():
    import pandas as pd

    pr = pd.DataFrame({"env": ["e", "e", "e"], "method": ["ppo", "ppo", "tppo"], "gen_s": [1.0, 3.0, 9.0],
                       "compute_s": [4.0, 4.0, 10.0], "gpu_gen_s": [6.0, 6.0, 1.0], "gpu_s": [10.0, 10.0, 1.0]})
    b = speedup.amdahl(pr).iloc[0]
    assert b["gen_share_measured"] == pytest.approx(0.5)  # (1/4 + 3/4) / 2, PPO's seeds only
    assert b["max_speedup_measured"] == pytest.approx(2.0)
    assert b["gen_share_projected"] == pytest.approx(0.6) and b["max_speedup_projected"] == pytest.approx(2.5)
    assert b["goal"] == speedup.GOAL_SPEEDUP
