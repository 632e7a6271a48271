"""reasoning-gym as a task source: splits that never overlap, score_answer as the reward (skipped
when the optional extra is not installed)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("reasoning_gym")
pytest.importorskip("transformers")

from llm_backend import rewards  # noqa: E402
from llm_backend.task import make_task  # noqa: E402
from testbed.config import ModelSection, TaskSection  # noqa: E402


def _task(dataset, *, seed=0, num_slots=4, **kw):
    cfg = TaskSection(kind="math", source="reasoning_gym",
                      source_kwargs={"dataset": dataset, "test_size": 50, "chunk": 200, **kw})
    return make_task(cfg, ModelSection(kind="hf"), num_slots=num_slots, seed=seed)


def _encode(task, text):
    return task.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("dataset, config", [("basic_arithmetic", {}), ("chain_sum", {"min_terms": 2, "max_terms": 3})])
def test_splits_are_disjoint_seeded_and_scored_by_score_answer(dataset, config):
    task = _task(dataset, config=config)
    train = [task.source.draw("train") for _ in range(400)]
    test = [task.source.draw("test") for _ in range(50)]
    assert not {p.question for p in train} & {p.question for p in test}
    again = _task(dataset, config=config)
    assert [again.source.draw("train").question for _ in range(400)] == [p.question for p in train]
    other = _task(dataset, config=config, seed=1)
    assert [other.source.draw("train").question for _ in range(50)] != [p.question for p in train[:50]]
    assert [other.source.draw("test").question for _ in range(50)] == [p.question for p in test]  # fixed held-out set

    slots = np.arange(4)
    task.reset(slots)
    answers = [task._problems[s].answer for s in slots]
    responses = [_encode(task, f"So \\boxed{{{answers[0]}}}."),  # right
                 _encode(task, "So \\boxed{123456789}."),  # wrong
                 _encode(task, f"It is {answers[2]}."),  # no box
                 _encode(task, f"\\boxed{{{answers[3]}}}")]
    res = task.finish(slots, responses)
    assert res.reward.tolist() == [1.0, 0.0, 0.0, 1.0] and res.success.tolist() == [True, False, False, True]
    assert "Put your final answer within" in task.tokenizer.decode(task.prompt_ids(task._problems[0].question))


def test_bad_names_and_knobs_are_named():
    with pytest.raises(ValueError, match="source_kwargs"):
        _task("no_such_dataset_xyz")
    with pytest.raises(ValueError, match="unknown reasoning_gym knob"):
        _task("basic_arithmetic", sizes=3)
    with pytest.raises(ValueError, match="source_kwargs.dataset"):
        _task("")


def test_score_runs_under_the_timeout():
    def slow(a, b):
        time.sleep(5)
        return 1.0

    t0 = time.monotonic()
    assert rewards.call_with_timeout(slow, (1, 2), 0.2) == (False, None)
    assert time.monotonic() - t0 < 2
    assert rewards.call_with_timeout(lambda a, b: a + b, (1, 2), 1.0) == (True, 3)
