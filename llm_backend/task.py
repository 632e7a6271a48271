r"""Math problems for a chat language model: the :class:`testbed.protocols.Task` of the LLM backend.

Prompts are the tokenizer's chat template (``add_generation_prompt=True``) around a one-shot
demonstration (:data:`EXAMPLE`: without it SmolLM2-135M never boxes its answer) and the question plus
:data:`ANSWER_INSTRUCTION`; responses are decoded and scored by
:func:`llm_backend.rewards.check_answers` -- exact integer match with a plain-number box for
integer answers (closes the ``\boxed{82*5}`` hack), math-verify otherwise.

Problems come from the procedural generator (:mod:`llm_backend.problems`, ``task.difficulty``) or a
local dataset file (:mod:`llm_backend.datasets`, ``task.dataset``). ``split="train"`` draws from the
training split with the run's seed; ``split="test"`` draws from the held-out split in a fixed order
that does not depend on the run's seed (every run evaluates on the same problems); call
:meth:`MathTask.rewind` before an evaluation to start that order again.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from llm_backend.datasets import load_dataset
from llm_backend.problems import DIFFICULTIES, SPLITS, Problem, iter_problems
from llm_backend.rewards import check_answers
from llm_backend.tokenizer import end_of_turn_id, load_tokenizer, stop_strings
from testbed.config import ConfigError
from testbed.protocols import TaskResult

__all__ = ["ANSWER_INSTRUCTION", "EVAL_SEED", "EXAMPLE", "MathTask", "make_task"]

ANSWER_INSTRUCTION = "Put your final answer within \\boxed{}."
"""Appended (on its own line) to every question in the user message."""

EXAMPLE = ("What is 2 + 3?", "2 + 3 = 5. The answer is \\boxed{5}.")
"""One-shot demonstration (a user turn and the assistant's reply) placed before the question.

Measured with SmolLM2-135M-Instruct, greedy, 16 problems per case: with an instruction alone (five
phrasings tried) it answers like "3 + 7 = 10" and boxes at most 3 of 16 answers, none correctly; with
this demonstration every answer is boxed, 16/16 correct on ``sum1`` and 3/16 on ``sum2`` (DESIGN.md:
about 80% and 25%). The demonstrated problem (2 + 3) is in the training split, never in ``test``."""

EVAL_SEED = 0
"""Seed of the held-out (``test``) order: fixed, so runs with different seeds evaluate alike."""


class _Source:
    """Endless draws of problems per split."""

    def draw(self, split: str) -> Problem:  # pragma: no cover - interface
        raise NotImplementedError

    def rewind(self, split: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def state(self) -> dict:  # pragma: no cover - interface
        """JSON-able position of the train draws (for checkpoints)."""
        raise NotImplementedError

    def set_state(self, state: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _StreamSource(_Source):
    """Problems from a seeded generator ``stream(seed, split)``: train on the run's seed, test on the
    fixed :data:`EVAL_SEED`; its position is the number of train draws."""

    def __init__(self, seed: int, stream: Callable[[int, str], Iterator[Problem]]):
        self.stream = stream
        self.seeds = {"train": seed, "test": EVAL_SEED}
        self._streams: dict[str, Iterator[Problem]] = {}
        self._drawn = {s: 0 for s in SPLITS}

    def draw(self, split: str) -> Problem:
        if split not in self._streams:
            self._streams[split] = self.stream(self.seeds[split], split)
        self._drawn[split] += 1
        return next(self._streams[split])

    def rewind(self, split: str) -> None:
        self._streams.pop(split, None)
        self._drawn[split] = 0

    def state(self) -> dict:
        return {"train_drawn": self._drawn["train"]}

    def set_state(self, state: dict) -> None:
        # The stream is a seeded generator: replaying the same number of draws restores its position.
        self.rewind("train")
        for _ in range(int(state["train_drawn"])):
            self.draw("train")


class _GeneratorSource(_StreamSource):
    def __init__(self, difficulty: str, seed: int):
        if difficulty not in DIFFICULTIES:
            raise ConfigError(f"task.difficulty: unknown {difficulty!r}; valid: {', '.join(DIFFICULTIES)}")
        self.difficulty = difficulty
        super().__init__(seed, lambda s, split: iter_problems(difficulty, s, split))


class _DatasetSource(_Source):
    """Train: reshuffled every epoch with the run's seed. Test: one fixed shuffle (``EVAL_SEED``), cycled."""

    def __init__(self, problems: Sequence[Problem], seed: int, name: str):
        self.name = name
        self.pools = {s: [p for p in problems if p.meta.get("split") == s] for s in SPLITS}
        self._rngs = {"train": np.random.default_rng(seed)}
        self._order = {"test": np.random.default_rng(EVAL_SEED).permutation(len(self.pools["test"]))}
        self._pos = {s: 0 for s in SPLITS}
        if self.pools["train"]:
            self._order["train"] = self._rngs["train"].permutation(len(self.pools["train"]))

    def draw(self, split: str) -> Problem:
        pool = self.pools[split]
        if not pool:
            raise ValueError(f"{self.name}: no problems in the {split!r} split (the file is too small to split)")
        if self._pos[split] == len(pool):
            self._pos[split] = 0
            if split == "train":
                self._order["train"] = self._rngs["train"].permutation(len(pool))
        i = self._order[split][self._pos[split]]
        self._pos[split] += 1
        return pool[int(i)]

    def rewind(self, split: str) -> None:
        if split == "test":
            self._pos["test"] = 0

    def state(self) -> dict:
        order = self._order.get("train")
        return {"rng": self._rngs["train"].bit_generator.state, "pos": self._pos["train"],
                "order": None if order is None else [int(i) for i in order]}

    def set_state(self, state: dict) -> None:
        self._rngs["train"].bit_generator.state = state["rng"]
        self._pos["train"] = int(state["pos"])
        if state["order"] is not None:
            self._order["train"] = np.asarray(state["order"], dtype=np.int64)


class MathTask:
    """Math problems in ``num_slots`` slots, scored on the final ``\\boxed{}`` answer.

    Attributes: ``num_slots``, ``vocab_size`` (``len(tokenizer)``), ``eos_token_id`` (the chat
    template's end-of-turn token, ``<|im_end|>`` = 2 for SmolLM2, which is what the model emits),
    ``stop_strings`` (text equivalents for backends that stop on strings), ``tokenizer``.
    """

    def __init__(
        self,
        tokenizer,
        source: _Source,
        *,
        num_slots: int,
        reward_timeout: float = 2.0,
        format_score: float = 0.0,
        system_prompt: str = "",
        one_shot: bool = True,
        example: tuple[str, str] = EXAMPLE,
    ):
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.tokenizer = tokenizer
        self.source = source
        self.num_slots = int(num_slots)
        self.vocab_size = len(tokenizer)
        self.eos_token_id = end_of_turn_id(tokenizer)
        self.stop_strings = stop_strings(tokenizer)
        self.reward_timeout = float(reward_timeout)
        self.format_score = float(format_score)
        self.system_prompt = system_prompt
        self.one_shot = bool(one_shot)
        self.example = example
        self._problems: list[Problem | None] = [None] * self.num_slots
        self._verdicts: list[dict[str, Any] | None] = [None] * self.num_slots
        self._prompt_cache: dict[str, list[int]] = {}

    # -- prompts ---------------------------------------------------------------------------

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat messages of a question: a system message if ``system_prompt`` is set, the
        ``example`` exchange (default :data:`EXAMPLE`) if ``one_shot``, then the question with :data:`ANSWER_INSTRUCTION`."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if self.one_shot:
            msgs.append({"role": "user", "content": f"{self.example[0]}\n{ANSWER_INSTRUCTION}"})
            msgs.append({"role": "assistant", "content": self.example[1]})
        msgs.append({"role": "user", "content": f"{question}\n{ANSWER_INSTRUCTION}"})
        return msgs

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the chat prompt for ``question``, ending with the assistant turn's header."""
        ids = self._prompt_cache.get(question)
        if ids is None:
            text = self.tokenizer.apply_chat_template(
                self.messages(question), tokenize=False, add_generation_prompt=True
            )
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._prompt_cache) < 100_000:
                self._prompt_cache[question] = ids
        return list(ids)

    # -- Task protocol ---------------------------------------------------------------------

    def _check_slots(self, slots: np.ndarray) -> list[int]:
        out = [int(s) for s in np.asarray(slots).reshape(-1)]
        bad = [s for s in out if not 0 <= s < self.num_slots]
        if bad:
            raise IndexError(f"slots {bad} out of range [0, {self.num_slots})")
        return out

    def reset(self, slots: np.ndarray, *, split: str = "train", group_size: int = 1) -> list[list[int]]:
        """New problems in ``slots`` (each run of ``group_size`` consecutive slots shares one); prompt ids."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        idx = self._check_slots(slots)
        if group_size < 1 or len(idx) % group_size:
            raise ValueError(f"{len(idx)} slots do not split into groups of {group_size}")
        prompts: list[list[int]] = []
        for g in range(0, len(idx), group_size):
            problem = self.source.draw(split)
            ids = self.prompt_ids(problem.question)
            for s in idx[g : g + group_size]:
                self._problems[s] = problem
                self._verdicts[s] = None
                prompts.append(list(ids))
        return prompts

    def rewind(self, split: str = "test") -> None:
        """Start ``split``'s draw order again (call before each evaluation to reuse the same problems)."""
        self.source.rewind(split)

    def rng_state(self) -> dict:
        """JSON-able position of the training draws, saved in checkpoints so a resumed run draws the same problems."""
        return self.source.state()

    def set_rng_state(self, state: dict) -> None:
        self.source.set_state(state)

    def observe(self, slots: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """No ground-truth failure step for language models: all -1."""
        return np.full(len(self._check_slots(slots)), -1, dtype=np.int64)

    def finish(self, slots: np.ndarray, responses: list[list[int]]) -> TaskResult:
        """Decode each response (special tokens dropped) and score its final ``\\boxed{}`` answer."""
        idx = self._check_slots(slots)
        if len(responses) != len(idx):
            raise ValueError(f"{len(responses)} responses for {len(idx)} slots")
        problems = []
        for s in idx:
            if self._problems[s] is None:
                raise RuntimeError(f"slot {s} has no problem: call reset() first")
            problems.append(self._problems[s])
        texts = [self.tokenizer.decode([int(t) for t in r], skip_special_tokens=True) for r in responses]
        checks = check_answers(
            texts,
            [p.answer for p in problems],
            timeout=self.reward_timeout,
            integer_answers=[bool(p.meta.get("integer_answer", False)) for p in problems],
            format_score=self.format_score,
        )
        for s, c in zip(idx, checks):
            self._verdicts[s] = {"boxed": c.boxed, "status": c.status, "reward": c.reward}
        n = len(idx)
        return TaskResult(
            reward=np.array([c.reward for c in checks], dtype=np.float64),
            success=np.array([c.correct for c in checks], dtype=bool),
            failure_step=np.full(n, -1, dtype=np.int64),
            doomed=np.zeros(n, dtype=bool),
        )

    def describe(self, slot: int) -> dict[str, Any]:
        """``question``, ``answer``, ``id`` (and, once finished, the ``boxed`` answer and ``status``)."""
        problem = self._problems[self._check_slots(np.array([slot]))[0]]
        if problem is None:
            return {}
        out: dict[str, Any] = {"question": problem.question, "answer": problem.answer, "id": problem.meta.get("id")}
        verdict = self._verdicts[int(slot)]
        if verdict is not None:
            out.update(verdict)
        return out


SOURCES: dict[str, str] = {
    "generator": "llm_backend.task:make_generator_task",
    "chain": "llm_backend.chain:make_chain_task",
    "reasoning_gym": "llm_backend.rg_source:make_rg_task",
}
"""``task.source`` -> ``'module:function'`` building its task, ``(task_cfg, model_cfg, *, num_slots, seed)
-> MathTask`` (imported only when chosen). A new source is one entry here and its name among
``testbed.config``'s choices for ``task.source`` (a test checks that the two lists agree)."""


def make_task(task_cfg, model_cfg, *, num_slots: int, seed: int) -> MathTask:
    """A :class:`MathTask` from ``testbed.config.TaskSection`` and ``ModelSection``, built by the
    ``task.source`` entry of :data:`SOURCES`: ``generator`` (this module), ``chain`` and
    ``reasoning_gym`` (the tasks of :mod:`llm_backend.chain` and :mod:`llm_backend.rg_source`)."""
    kind = getattr(task_cfg, "source", "generator")
    if kind not in SOURCES:
        raise ConfigError(f"task.source: unknown source {kind!r}; valid names: {', '.join(sorted(SOURCES))}")
    module, _, name = SOURCES[kind].partition(":")
    return getattr(importlib.import_module(module), name)(task_cfg, model_cfg, num_slots=num_slots, seed=seed)


def make_generator_task(task_cfg, model_cfg, *, num_slots: int, seed: int) -> MathTask:
    """``task.source: generator``: procedural problems of ``task.difficulty``, or ``task.dataset`` when
    set (tokenizer from ``model_cfg.path``, cached under ``model_cfg.cache_dir``)."""
    if task_cfg.dataset:
        problems = load_dataset(task_cfg.dataset, task_cfg.dataset_format)
        source: _Source = _DatasetSource(problems, seed, task_cfg.dataset)
    else:
        source = _GeneratorSource(task_cfg.difficulty, seed)
    tokenizer = load_tokenizer(model_cfg.path, getattr(model_cfg, "cache_dir", ""))
    return MathTask(
        tokenizer,
        source,
        num_slots=num_slots,
        reward_timeout=task_cfg.reward_timeout,
        format_score=task_cfg.format_score,
        system_prompt=task_cfg.system_prompt,
    )
