r"""reasoning-gym (PyPI ``reasoning-gym``, Apache-2.0) as a task source: ``task.source: reasoning_gym``.

``task.source_kwargs``: ``dataset`` (a reasoning-gym dataset name, e.g. ``basic_arithmetic``,
``chain_sum``, ``gsm_symbolic``), ``config`` (that dataset's keyword arguments), ``test_size``
(held-out items, default 200), ``chunk`` (training items generated at a time, default 1000).

Splits: the test split is ``test_size`` items generated with a fixed seed (every run evaluates on
the same items); training items come from datasets generated with seeds derived from the run's seed,
one chunk after another, and any item whose question is in the test split is skipped, so the splits
never overlap even where the generator's problem space is small.

Reward: the dataset's own ``score_answer`` on the response's last ``\boxed{}`` content (no box: 0),
under the task's ``reward_timeout`` (a timed-out check scores 0); success is a score of 1.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np

from llm_backend.problems import Problem
from llm_backend.rewards import call_with_timeout, extract_boxed
from llm_backend.task import MathTask
from testbed.protocols import TaskResult

RG_KNOBS = {"dataset": "", "config": {}, "test_size": 200, "chunk": 1000}
"""``task.source_kwargs`` of this source and their defaults (``dataset`` is required)."""

_TEST_SEED = 271828
"""Seed of the held-out items (fixed: independent of the run's seed)."""


def _require():
    try:
        import reasoning_gym
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("task.source: reasoning_gym needs the optional extra: pip install -e '.[rg]'") from e
    return reasoning_gym


def _train_seed(seed: int, chunk: int) -> int:
    return int.from_bytes(hashlib.sha256(f"rg-train|{seed}|{chunk}".encode()).digest()[:4], "big")


class RGSource:
    """Endless training draws and a fixed, cycled test order of reasoning-gym items."""

    def __init__(self, name: str, config: dict, *, seed: int, test_size: int, chunk: int):
        rg = _require()
        if test_size < 1 or chunk < 1:
            raise ValueError(f"task.source_kwargs: test_size and chunk must be >= 1, got {test_size}, {chunk}")
        try:
            self.test_ds = rg.create_dataset(name, seed=_TEST_SEED, size=test_size, **config)
        except Exception as e:  # an unknown name or a bad config: name the field
            raise ValueError(f"task.source_kwargs: reasoning-gym cannot build {name!r} with config {config!r}: {e}") from None
        self.rg, self.name, self.config, self.seed, self.chunk = rg, name, dict(config), seed, chunk
        self.test = [self._problem(e, "test", i) for i, e in enumerate(self.test_ds)]
        self.test_questions = {p.question for p in self.test}
        self._pos = {"test": 0}
        self._train: Iterator[Problem] | None = None
        self._drawn = 0

    def _problem(self, entry: dict, split: str, i: int) -> Problem:
        return Problem(entry["question"], str(entry["answer"]),
                       {"id": f"rg-{self.name}-{split}-{i}", "split": split, "source": "reasoning_gym",
                        "dataset": self.name, "entry": entry, "integer_answer": False})

    def _train_stream(self) -> Iterator[Problem]:
        k = 0
        while True:
            ds = self.rg.create_dataset(self.name, seed=_train_seed(self.seed, k), size=self.chunk, **self.config)
            for i, e in enumerate(ds):
                if e["question"] not in self.test_questions:
                    yield self._problem(e, "train", k * self.chunk + i)
            k += 1

    def draw(self, split: str) -> Problem:
        if split == "test":
            p = self.test[self._pos["test"] % len(self.test)]
            self._pos["test"] += 1
            return p
        if self._train is None:
            self._train = self._train_stream()
        self._drawn += 1
        return next(self._train)

    def rewind(self, split: str) -> None:
        if split == "test":
            self._pos["test"] = 0
        else:
            self._train, self._drawn = None, 0

    def state(self) -> dict:
        return {"train_drawn": self._drawn}

    def set_state(self, state: dict) -> None:
        self.rewind("train")
        for _ in range(int(state["train_drawn"])):
            self.draw("train")

    def score(self, boxed: str | None, entry: dict, timeout: float) -> float:
        """``score_answer`` of the dataset (0 on no answer, an error or a timeout)."""
        if boxed is None:
            return 0.0
        try:
            ok, value = call_with_timeout(self.test_ds.score_answer, (boxed, entry), timeout)
        except Exception:  # a checker that raises on odd input scores it as wrong
            return 0.0
        return float(value) if ok and value is not None else 0.0


class RGTask(MathTask):
    """:class:`llm_backend.task.MathTask` over reasoning-gym items, scored by ``score_answer``."""

    def finish(self, slots, responses) -> TaskResult:
        idx = self._check_slots(slots)
        if len(responses) != len(idx):
            raise ValueError(f"{len(responses)} responses for {len(idx)} slots")
        rewards = np.zeros(len(idx))
        for j, (s, r) in enumerate(zip(idx, responses)):
            p = self._problems[s]
            if p is None:
                raise RuntimeError(f"slot {s} has no problem: call reset() first")
            boxed = extract_boxed(self.tokenizer.decode([int(t) for t in r], skip_special_tokens=True))
            rewards[j] = self.source.score(boxed, p.meta["entry"], self.reward_timeout)
            self._verdicts[s] = {"boxed": boxed, "status": "scored", "reward": float(rewards[j])}
        n = len(idx)
        return TaskResult(reward=rewards, success=rewards >= 1.0, failure_step=np.full(n, -1, dtype=np.int64),
                          doomed=np.zeros(n, dtype=bool))


def make_rg_task(task_cfg, model_cfg, *, num_slots: int, seed: int) -> RGTask:
    """``task.source: reasoning_gym``; knobs in ``task.source_kwargs`` (:data:`RG_KNOBS`)."""
    from llm_backend.tokenizer import load_tokenizer

    kw: dict[str, Any] = dict(task_cfg.source_kwargs or {})
    unknown = set(kw) - set(RG_KNOBS)
    if unknown:
        raise ValueError(f"task.source_kwargs: unknown reasoning_gym knob(s) {sorted(unknown)}; valid: {', '.join(RG_KNOBS)}")
    knobs = {**RG_KNOBS, **kw}
    if not knobs["dataset"]:
        raise ValueError("task.source_kwargs.dataset: name a reasoning-gym dataset (e.g. basic_arithmetic)")
    if not isinstance(knobs["config"], dict):
        raise ValueError(f"task.source_kwargs.config: expected a mapping, got {knobs['config']!r}")
    source = RGSource(knobs["dataset"], knobs["config"], seed=seed, test_size=int(knobs["test_size"]),
                      chunk=int(knobs["chunk"]))
    tokenizer = load_tokenizer(model_cfg.path, getattr(model_cfg, "cache_dir", ""))
    return RGTask(tokenizer, source, num_slots=num_slots, reward_timeout=task_cfg.reward_timeout,
                  format_score=task_cfg.format_score, system_prompt=task_cfg.system_prompt)
