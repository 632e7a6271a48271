"""testbed detect: data loading with named errors, the metrics against hand counts, and (with
transformers) the command end to end on a tiny random model, one-pass regret equal to step-wise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from testbed.ops import detect as D
from testbed.ops.cli import main


ITEMS = [
    {"id": "a", "problem": "What is 2 + 3?", "steps": ["2 + 3 = 5.", "The answer is 5."], "label": -1},
    {"id": "b", "problem": "What is 4 * 6?", "steps": ["4 * 6 = 26.", "So 26."], "label": 0},
    {"id": "c", "problem": "What is 9 - 7?", "steps": ["9 - 7 = 2.", "2 + 0 = 3.", "The answer is 3."], "label": 1},
]


def _write(tmp_path, items, name="items.json", lines=False):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(x) for x in items) if lines else json.dumps(items))
    return p


def test_doctests():
    import doctest

    assert doctest.testmod(D).failed == 0


def test_load_items_json_and_jsonl_and_limit(tmp_path):
    assert [x.id for x in D.load_items(_write(tmp_path, ITEMS))] == ["a", "b", "c"]
    assert [x.label for x in D.load_items(_write(tmp_path, ITEMS, "x.jsonl", lines=True), limit=2)] == [-1, 0]


@pytest.mark.parametrize("bad, match", [
    ({"id": "z", "problem": "p", "steps": ["s"]}, r"item 1 \(id 'z'\): missing 'label'"),
    ({"id": "z", "problem": "p", "steps": [], "label": -1}, "non-empty list"),
    ({"id": "z", "problem": "p", "steps": ["s", 3], "label": -1}, "non-empty list of strings"),
    ({"id": "z", "problem": "p", "steps": ["s"], "label": 1}, r"'label' must be an integer in \[-1, 0\]"),
    ({"id": "z", "problem": "p", "steps": ["s"], "label": True}, "'label'"),
    ({"id": "z", "problem": 5, "steps": ["s"], "label": 0}, "'problem' must be a string"),
    (["not", "an", "object"], "item 1: expected an object"),
])
def test_malformed_items_name_the_file_and_item(tmp_path, bad, match):
    p = _write(tmp_path, [ITEMS[0], bad])
    with pytest.raises(D.DataError, match=match) as e:
        D.load_items(p)
    assert str(p) in str(e.value)


def test_malformed_files(tmp_path, capsys):
    p = tmp_path / "broken.json"
    p.write_text('[{"id": 1,')
    with pytest.raises(D.DataError, match="broken.json: not JSON"):
        D.load_items(p)
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(D.DataError, match="expected a JSON list"):
        D.load_items(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError, match="--data"):
        D.load_items(tmp_path / "missing.json")
    # the CLI reports it as an error, not a traceback
    assert main(["detect", "--data", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_metrics_by_hand():
    # items: (first stop, label): (2, 1) late detection, (0, 3) early = false stop, (-1, -1) right, (1, -1) false stop,
    # (3, 3) exact detection
    m = D.scoring.first_stop_metrics([2, 0, -1, 1, 3], [1, 3, -1, -1, 3])
    assert m["stop_rate"] == 4 / 5
    assert m["precision"] == 2 / 4 and m["recall"] == 2 / 3 and m["delay"] == 0.5
    assert m["false_stop_rate"] == 2 / 5
    assert m["acc_erroneous"] == 1 / 3 and m["acc_correct"] == 1 / 2
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert D.auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0 and D.auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert D.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    # the matched random detector stops at the asked rate
    steps = [np.repeat(np.arange(4), 5)] * 400
    r = D.random_baseline([20] * 400, steps, [1] * 200 + [-1] * 200, rate=0.25, fractions=[], min_tokens=1, repeats=20)
    assert abs(r["stop_rate"] - 0.25) < 0.03 and abs(r["auroc"] - 0.5) < 0.05


def test_auroc_interval():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.5
    s = rng.normal(size=300) + 0.8 * y  # separable by 0.8 sd: AUROC about 0.71
    lo, hi = D.auroc_interval(s, y)
    assert lo < D.auroc(s, y) < hi and 0.5 < lo and hi < 0.85 and hi - lo < 0.2
    assert (lo, hi) == D.auroc_interval(s, y)  # fixed resampling seed
    assert D.auroc_interval([1, 2, 3, 4], [0, 0, 1, 1], resamples=200) == (1.0, 1.0)  # every draw separates
    assert all(x != x for x in D.auroc_interval([1, 2], [1, 1]))


# --- end to end on the tiny random model ------------------------------------------------------------

TINY_CONFIG = """
task: {kind: math}
model: {kind: hf, path: tiny, dtype: float32, critic: head}
rollout: {temperature: 0.7}
run: {threads: 1}
stop: {rule: espo, kappa: 0.0, tau: 0.0, tau_min: 0.5, min_tokens: 1}
"""


@pytest.fixture
def tiny_config(tmp_path):
    pytest.importorskip("transformers")
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_CONFIG)
    return p


def test_detect_end_to_end_tiny(tmp_path, tiny_config):
    data = _write(tmp_path, ITEMS)
    out = tmp_path / "out"
    assert main(["detect", "--data", str(data), "--config", str(tiny_config), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "detect.json").read_text())
    rows = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert summary["n"] == 3 and summary["n_erroneous"] == 2 and summary["rule"].startswith("regret_only")
    assert [r["id"] for r in rows] == ["a", "b", "c"] and [r["label"] for r in rows] == [-1, 0, 1]
    for r, it in zip(rows, ITEMS):
        assert -1 <= r["first_stop_step"] < len(it["steps"]) and r["tokens"] > 0
        assert (r["first_stop_step"] >= 0) == (r["score"] > 0)  # the rule fires exactly where its margin is positive
    # a low threshold fires on every item
    assert all(r["first_stop_step"] >= 0 for r in rows) and summary["stop_rate"] == 1.0
    assert summary["random"]["stop_rate"] == pytest.approx(1.0)
    # the baselines beside the rule: every per-row score, its AUROC, the difference against length
    b = summary["baselines"]
    assert {"rule", "rule_shuffled", "length", "mean_nll", "max_nll", "mean_entropy", "max_regret"} <= set(b)
    assert "min_value" not in b  # no trained critic: no value scores
    assert b["length"]["minus_length"] == 0 and set(b["rule"]) >= {"auroc", "auroc_ci", "minus_length_ci", "given_length"}
    lengths = {r["id"]: r["tokens"] for r in rows}
    assert all(r["baselines"]["length"] == lengths[r["id"]] for r in rows)
    with pytest.raises(Exception, match="value_only needs a trained critic"):
        tiny_config.write_text(TINY_CONFIG.replace("rule: espo", "rule: value_only"))
        D.detect(str(data), out=str(out), config=str(tiny_config), progress=False)


def test_one_pass_regret_equals_stepwise_decoding(tiny_config):
    from testbed import config as C
    from testbed.ops.build import build, load_entry_point

    cfg = C.load(tiny_config)
    task, backend = build(cfg, num_slots=1)
    prompts = [task.prompt_ids("What is 2 + 3?"), task.prompt_ids("What is 12 * 7?")]
    responses = [task.tokenizer("2 + 3 = 5.")["input_ids"], task.tokenizer("12 * 7 = 84. The answer is 84.")["input_ids"]]
    step_r, step_v, step_x = D.teacher_force(backend, prompts, responses, temperature=0.7, with_values=True)
    fn = load_entry_point(D.TEACHER_ENTRY_POINTS["hf"])
    one_r, one_v, one_x = D.teacher_force(backend, prompts, responses, temperature=0.7, with_values=True, regret_fn=fn)
    for a, b in zip(step_r + step_v + step_x["nll"] + step_x["entropy"], one_r + one_v + one_x["nll"] + one_x["entropy"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the regret is the NLL above the best token's: nll_t - regret_t = -max log pi, the same for any token
    assert all((n >= r - 1e-5).all() for n, r in zip(one_x["nll"], one_r))


def test_detect_runs_on_the_processbench_gsm8k_split(tmp_path, tiny_config, shared_data):
    GSM8K = shared_data("processbench", "gsm8k.json")
    items = D.load_items(GSM8K)
    assert len(items) == 400 and sum(x.label >= 0 for x in items) == 207
    s = D.detect(str(GSM8K), out=str(tmp_path / "o"), config=str(tiny_config), limit=6, progress=False)
    assert s["n"] == 6
