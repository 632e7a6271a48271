"""The LLM detection study end to end on a tiny setting (tiny random model, 2 steps, one seed)."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("transformers")

from analysis import experiments  # noqa: E402
from analysis.experiments.llm_detection import analysis, sweep  # noqa: E402
from testbed.ops.studies import run_study  # noqa: E402
from analysis.stats import MIN_SEEDS  # noqa: E402

TINY = {"model.path": "tiny", "model.dtype": "float32", "rollout.max_len": 24, "run.threads": 1,
        "run.progress": False, "run.steps": 2, "run.eval_every": 2, "run.eval_size": 4,
        "rollout.batch_size": 4, "algo.minibatch_size": 4, "stop.warmup_steps": 0, "stop.tau": 0.0,
        "stop.tau_min": -1.0, "stop.min_tokens": 4}


def test_registered():
    assert "llm_detection" in experiments.names()
    assert sweep.FULL_FOLDER == ""  # --full reuses the runs of the default seeds


def test_study_runs_on_a_tiny_setting(tmp_path):
    assert run_study("llm_detection", tmp_path, workers=1, quick=True, extra=TINY) == 0
    root = tmp_path / "quick"
    report = (root / "report.md").read_text()
    assert "LLM detection study" in report and "Planted wrong steps" in report
    with open(root / "scores.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == list(sweep.METHODS)
    by = {r["method"]: r for r in table}
    assert float(by["ppo"]["stop_rate"]) == 0.0 and float(by["ppo"]["tokens_saved_pct"]) == 0.0
    # a negative threshold stops every row after the first update: ESPO saves tokens
    assert float(by["espo"]["stop_rate"]) > 0 and float(by["espo"]["tokens_saved_pct"]) > 0
    # one seed decides nothing, so no comparison may be called significant
    assert ": yes (" not in report and ": no (" not in report
    assert f"undecided (1 seed; a decision needs {MIN_SEEDS})" in report
    assert "not a confidence statement" in report


def test_full_adds_seeds_to_the_same_runs():
    base, full = sweep.spec("R"), sweep.spec("R", full=True)
    assert base["out_dir"] == full["out_dir"] and set(base["axes"]["seed"]) < set(full["axes"]["seed"])
    assert len(full["axes"]["seed"]) >= MIN_SEEDS


def test_pooled_detector_by_hand():
    import pandas as pd

    rows = pd.DataFrame({"length": [10, 10, 10, 10, 10], "ending": [3, 3, 0, 0, 3],
                         "failure_step": [4, -1, 3, -1, 9], "checkable": [1, 0, 1, 1, 0]})
    m = analysis.pooled_detector(rows)
    # stops: row 0 (hit, delay 5), row 1 (false stop, judged because stopped), row 4 (hit, delay 0)
    assert m["precision"] == 2 / 3 and m["delay"] == 2.5
    assert m["recall"] == 2 / 3  # stoppable doomed: rows 0, 2, 4
    assert m["false_stop_rate"] == 1 / 2  # rows without a wrong number: 1 (stopped), 3
