"""testbed.evaluate.pass_at_k against hand computations and a count of k-subsets."""

from __future__ import annotations

import itertools
from math import comb

import pytest

from testbed.evaluate import pass_at_k


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),  # one draw: the share correct
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2): both draws among the 3 wrong
    (10, 3, 3, 1 - 35 / 120),  # 1 - C(7,3)/C(10,3)
    (4, 0, 2, 0.0),  # nothing correct
    (4, 3, 2, 1.0),  # fewer wrong (1) than draws (2): every pair holds a correct one
    (4, 4, 4, 1.0),
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_k_counts_the_k_subsets_with_a_correct_sample():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                samples = [True] * c + [False] * (n - c)
                hits = sum(any(s) for s in itertools.combinations(samples, k))
                assert pass_at_k(n, c, k) == pytest.approx(hits / comb(n, k), rel=1e-12, abs=1e-15), (n, c, k)


def test_the_sampled_final_policy_is_each_problem_k_times_and_is_kept(tmp_path, monkeypatch):
    """``measure_sampled``: each problem ``k`` times at the rollout temperature, the same rows as ``testbed eval``
    (same seed); a second call reads the kept file; a file without ``success`` is measured again."""
    import json

    from testbed.ops import evaluate as ev
    from testbed.ops.trainer import Trainer
    from tests.toyruns import small

    Trainer(small(tmp_path, "task.env_kwargs={max_len: 16, target_len: 8, num_problems: 4}", name="r")).train()
    run = tmp_path / "r"
    res = json.loads(ev.measure_sampled(run, k=8, log=lambda *a: None).read_text())
    assert res["problems"] == 4 and res["samples_per_problem"] == 8 and res["greedy"] is False
    assert res["success"] == res["avg@8"] and 0 <= res["success"] <= 1
    ref = ev.evaluate_from_cli(str(run / "config.yaml"), [], checkpoint=str(run), n=4, k=8)
    assert ref["avg@8"] == res["success"]
    real = ev.evaluate_from_cli
    monkeypatch.setattr(ev, "evaluate_from_cli", lambda *a, **k: pytest.fail("not read from the kept file"))
    ev.measure_sampled(run, k=8, log=lambda *a: None)
    monkeypatch.setattr(ev, "evaluate_from_cli", real)
    (run / ev.SAMPLED).write_text(json.dumps({"samples_per_problem": 8}))  # an older file, without success
    assert json.loads(ev.measure_sampled(run, k=8, log=lambda *a: None).read_text())["success"] == res["success"]


def test_the_sampled_measurement_refuses_a_language_model_run(tmp_path):
    from testbed.errors import UserError
    from testbed.ops.evaluate import measure_sampled

    (tmp_path / "config.yaml").write_text("task: {kind: math}\nmodel: {kind: hf, path: tiny}\n")
    with pytest.raises(UserError, match="task.kind sim"):
        measure_sampled(tmp_path, k=2)
