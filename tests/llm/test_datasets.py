"""Local dataset loaders: GSM8K / MATH / AIME JSONL and DAPO-Math parquet, errors and skip reports."""

from __future__ import annotations

import doctest
import json
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_backend import datasets as datasets_mod
from llm_backend.datasets import DatasetError, detect_format, load_dataset, read_dataset

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def _jsonl(path, records, raw_lines=()):
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_doctests():
    result = doctest.testmod(datasets_mod)
    assert result.attempted >= 1 and result.failed == 0


def test_gsm8k(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(
        "\n".join([
            json.dumps({"question": "Natalia sold 48 clips ... How many?", "answer": "48/2 = 24\n48+24 = 72\n#### 72"}),
            "",  # a blank line is not a record
            json.dumps({"question": "Big?", "answer": "so\n#### 1,234"}),
            json.dumps({"question": "Negative?", "answer": "#### -5"}),
            json.dumps({"question": "No final?", "answer": "it is 7"}),  # skipped: no ####
            json.dumps({"question": "Big?", "answer": "again\n#### 1234"}),  # skipped: duplicate
        ]) + "\n"
    )
    with pytest.warns(UserWarning, match=r"kept 3 of 5 records; skipped 2.*1 duplicate.*lines 6.*1 no_answer.*lines 5"):
        problems = load_dataset(path)
    assert [(p.question, p.answer) for p in problems] == [
        ("Natalia sold 48 clips ... How many?", "72"), ("Big?", "1234"), ("Negative?", "-5")
    ]
    p = problems[0]
    assert p.meta["format"] == "gsm8k" and p.meta["line"] == 1 and p.meta["integer_answer"] is True
    assert p.meta["split"] in ("train", "test") and p.meta["id"].startswith("gsm8k-")
    assert problems[1].meta["line"] == 3
    _, report = read_dataset(path)
    assert report.skipped == {"no_answer": [5], "duplicate": [6]} and report.kept == 3 and report.records == 5


def test_no_warning_when_nothing_skipped(tmp_path):
    path = _jsonl(tmp_path / "ok.jsonl", [{"question": "q", "answer": "#### 1"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(path, "gsm8k")) == 1


def test_math_boxed_extraction(tmp_path):
    path = _jsonl(tmp_path / "math.jsonl", [
        {"problem": "Simplify.", "solution": r"We get \boxed{\frac{1}{\sqrt{2}}} after \boxed{3} no wait: \boxed{\frac{\sqrt{2}}{2}}."},
        {"problem": "Set?", "solution": r"It is $\boxed{\{1, 2\}}$."},
        {"problem": "Given answer", "solution": "long text", "answer": "5"},  # MATH-500 style: answer wins
        {"problem": "Unboxed", "solution": "The answer is 5."},  # skipped
        {"problem": "Unclosed", "solution": r"\boxed{\frac{1}{2}"},  # skipped: malformed box
    ])
    problems, report = read_dataset(path)
    assert report.format == "math"
    assert [p.answer for p in problems] == [r"\frac{\sqrt{2}}{2}", r"\{1, 2\}", "5"]
    assert [p.meta["integer_answer"] for p in problems] == [False, False, True]
    assert report.skipped == {"no_answer": [4, 5]}


def test_aime(tmp_path):
    path = _jsonl(tmp_path / "aime.jsonl", [
        {"ID": "2024-I-1", "Problem": "Find m+n.", "Answer": 204},  # capitalised keys, numeric answer
        {"id": "x", "problem": "Find k.", "answer": "033"},
    ])
    problems = load_dataset(path)
    assert [(p.question, p.answer) for p in problems] == [("Find m+n.", "204"), ("Find k.", "33")]
    assert problems[0].meta["format"] == "aime"


def _dapo_table(rows):
    return pa.table({
        "data_source": ["math_dapo"] * len(rows),
        "prompt": [[{"content": DAPO_PREFIX + q + DAPO_SUFFIX, "role": "user"}] for q, _ in rows],
        "ability": ["MATH"] * len(rows),
        "reward_model": [{"ground_truth": a, "style": "rule-lighteval/MATH_v2"} for _, a in rows],
        "extra_info": [{"index": str(i)} for i in range(len(rows))],
    })


def test_dapo_parquet(tmp_path):
    path = tmp_path / "dapo-math-17k.parquet"
    rows = [("Let $x$ be 3. Find $2x$.", "6"), ("Compute $7^2$.", "49"), ("Let $x$ be 3. Find $2x$.", "6"),
            ("Empty answer?", "")]
    pq.write_table(_dapo_table(rows), path)
    with pytest.warns(UserWarning, match=r"dapo: kept 2 of 4 records.*1 duplicate.*lines 3.*1 no_answer.*lines 4"):
        problems = load_dataset(path)
    assert [(p.question, p.answer) for p in problems] == [("Let $x$ be 3. Find $2x$.", "6"), ("Compute $7^2$.", "49")]
    assert problems[1].meta["line"] == 2 and problems[1].meta["format"] == "dapo"


def test_dapo_without_template_and_verl_list_ground_truth(tmp_path):
    path = _jsonl(tmp_path / "verl.jsonl", [
        {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 6*7?"}],
         "reward_model": {"style": "rule", "ground_truth": ["42"]}},
    ])
    (p,) = load_dataset(path)
    assert (p.question, p.answer) == ("What is 6*7?", "42")


def test_gsm8k_parquet_and_json_array(tmp_path):
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["#### 1", "#### 2"]}), tmp_path / "g.parquet")
    assert [p.answer for p in load_dataset(tmp_path / "g.parquet")] == ["1", "2"]
    (tmp_path / "a.json").write_text(json.dumps([{"problem": "p", "answer": 7}]))
    assert [p.answer for p in load_dataset(tmp_path / "a.json")] == ["7"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "#### 1"}], raw_lines=["{not json"])
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: invalid JSON"):
        load_dataset(path)
    path = _jsonl(tmp_path / "list.jsonl", [{"question": "q", "answer": "#### 1"}, [1, 2]])
    with pytest.raises(DatasetError, match=r"list\.jsonl:2: expected a JSON object"):
        load_dataset(path)
    path = _jsonl(tmp_path / "missing.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q2"}])
    with pytest.raises(DatasetError, match=r"missing\.jsonl:2: gsm8k record has no 'answer' field"):
        load_dataset(path)
    path = _jsonl(tmp_path / "type.jsonl", [{"problem": "q", "answer": {"x": 1}}])
    with pytest.raises(DatasetError, match=r"type\.jsonl:1: field 'answer' should be text"):
        load_dataset(path)
    path = tmp_path / "bad_dapo.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"], "reward_model": [{"style": "rule"}, {"style": "rule"}]}), path)
    with pytest.raises(DatasetError, match=r"bad_dapo\.parquet:1: dapo 'reward_model' should be a mapping with 'ground_truth'"):
        load_dataset(path)


def test_format_detection_and_errors(tmp_path):
    assert detect_format({"prompt": [], "reward_model": {}}) == "dapo"
    assert detect_format({"problem": "p", "solution": "s", "answer": "a"}) == "math"
    assert detect_format({"text": "?"}) is None
    path = _jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(DatasetError, match=r"odd\.jsonl:1: cannot detect the dataset format"):
        load_dataset(path)
    gsm = _jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(DatasetError, match=r"gsm\.jsonl:1: math record has no 'problem' field"):
        load_dataset(gsm, "math")
    with pytest.raises(ValueError, match="unknown dataset format 'csv'"):
        load_dataset(gsm, "csv")
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_dataset(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="no records"):
        load_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_dataset(tmp_path / "x.csv")


def test_split_is_stable_and_held_out(tmp_path):
    records = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(200)]
    a = load_dataset(_jsonl(tmp_path / "a.jsonl", records))
    b = load_dataset(_jsonl(tmp_path / "b.jsonl", list(reversed(records))))  # same content, other order
    split_a = {p.question: p.meta["split"] for p in a}
    assert split_a == {p.question: p.meta["split"] for p in b}
    n_test = sum(s == "test" for s in split_a.values())
    assert 20 <= n_test <= 60  # about 20% of 200
