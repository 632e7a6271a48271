"""Task adapter for the natively vectorised gymnasium token-MDPs (``model.kind: toy``, ``task.kind: sim``).

Slot ``i`` of the task is row ``i`` of one vector env of ``num_slots`` rows. The env is reached by its
gymnasium id only (the core never imports ``envs``): whoever builds the task registers the ids first
(:func:`testbed.ops.build.make_sim_task` imports ``envs``), or the id names its module (``module:id``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from testbed.errors import UserError
from testbed.protocols import TaskResult

def make_vector_env(env_id: str, num_envs: int, **kwargs):
    """``gymnasium.make_vec`` with the native vectorised implementation; returns the unwrapped env."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    env = env.unwrapped
    for method in ("reset_rows", "step_rows"):
        if not hasattr(env, method):
            raise TypeError(f"{env_id}: the vectorised env has no {method}(); the collector needs row-wise stepping")
    return env


class SimTask:
    """Implements :class:`testbed.protocols.Task` over a planted-failure vector env."""

    ground_truth = True
    """Every row's planted failure step is known (``finish`` reports it): detector metrics and per-row logs."""

    def __init__(self, env_id: str, num_slots: int, *, seed: int, env_kwargs: dict | None = None,
                 eval_problems: str = "random", train_problems: str = "random"):
        if eval_problems not in ("random", "each"):
            raise ValueError(f"eval_problems must be 'random' or 'each', not {eval_problems!r}")
        if train_problems not in ("random", "epochs"):
            raise ValueError(f"train_problems must be 'random' or 'epochs', not {train_problems!r}")
        self.eval_problems = eval_problems
        self.train_problems = train_problems
        self._next_eval_problem = 0  # ``each``: the next held-out row's problem
        self._epoch: list[int] = []  # ``epochs``: the current pass's problems not yet drawn, next last
        self.env = make_vector_env(env_id, num_slots, **(env_kwargs or {}))
        self.env.reset(seed=seed)
        self.env_id = env_id
        self.num_slots = num_slots
        self.vocab_size = int(self.env.vocab_size)
        self.eos_token_id = int(self.env.eos_id)
        self.max_len = int(self.env.max_len)
        self.prompt_len = int(self.env.prompt_len)
        self._reward = np.zeros(num_slots)
        self._success = np.zeros(num_slots, dtype=bool)
        self._failure = np.full(num_slots, -1, dtype=np.int64)
        self._doomed = np.zeros(num_slots, dtype=bool)
        self._problem = np.full(num_slots, -1, dtype=np.int64)
        self._ended = np.zeros(num_slots, dtype=bool)
        st = self.env.structure
        if st.derail > 0 or st.repair_prob > 0:
            # Tokens the env writes itself (a derailed run-on, a repair's REVISEs): the collector appends
            # them whatever was sampled and leaves them out of the policy loss. Absent when the knobs are
            # off, so default runs take the collector's unforced path unchanged.
            self.forced_tokens = lambda slots: self.env.forced_tokens(np.asarray(slots, dtype=np.int64))

    def rewind(self, split: str) -> None:
        """Start the held-out problems again from the first (``eval_problems="each"``; random draws go on)."""
        if split != "train":
            self._next_eval_problem = 0

    def reset(self, slots: np.ndarray, *, split: str = "train", group_size: int = 1) -> list[list[int]]:
        # The simulated problems have no held-out split: every problem is drawn from the same set.
        slots = np.asarray(slots, dtype=np.int64)
        problems = None
        if split != "train" and self.eval_problems == "each":
            n = len(slots) // group_size
            leaders = (self._next_eval_problem + np.arange(n)) % self.env.num_problems
            self._next_eval_problem = int(leaders[-1] + 1) if n else self._next_eval_problem
            problems = np.repeat(leaders, group_size)
        elif split == "train" and self.train_problems == "epochs":
            problems = np.repeat(self._draw_epochs(len(slots) // group_size), group_size)
        elif group_size > 1:
            leaders = self.env.np_random.integers(0, self.env.num_problems, size=len(slots) // group_size)
            problems = np.repeat(leaders, group_size)
        prompts = self.env.reset_rows(slots, problems)
        self._reward[slots] = 0.0
        self._success[slots] = False
        self._failure[slots] = -1
        self._doomed[slots] = False
        self._ended[slots] = False
        self._problem[slots] = self.env.problem[slots] if hasattr(self.env, "problem") else -1
        return [list(map(int, p)) for p in prompts]

    def _draw_epochs(self, n: int) -> np.ndarray:
        """``n`` problems without replacement from shuffled passes over the problems, as a data loader
        with ``shuffle=True`` serves prompts: every problem once per pass, a new order at each pass."""
        out = []
        for _ in range(n):
            if not self._epoch:
                self._epoch = self.env.np_random.permutation(self.env.num_problems).tolist()
            out.append(self._epoch.pop())
        return np.asarray(out, dtype=np.int64)

    def rng_state(self) -> dict:
        """The env's generator and, with ``train_problems="epochs"``, the pass in progress (a resumed run
        draws the problems the uninterrupted one would have)."""
        return {"env_rng": self.env.np_random.bit_generator.state, "epoch": list(self._epoch)}

    def set_rng_state(self, state: dict) -> None:
        if "env_rng" not in state:  # a checkpoint written before the pass was saved: the generator alone
            state = {"env_rng": state, "epoch": []}
        self.env.np_random.bit_generator.state = state["env_rng"]
        self._epoch = [int(p) for p in state["epoch"]]

    def observe(self, slots: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        live = ~self._ended[slots]
        s, a = slots[live], np.asarray(tokens)[live]
        if len(s):
            reward, terminated, truncated, info = self.env.step_rows(s, a)
            self._reward[s] += reward
            self._success[s] = info["success"]
            self._failure[s] = info["failure_step"]
            self._doomed[s] = info["doomed"]
            self._ended[s] = terminated | truncated
        return self._failure[slots].copy()

    def finish(self, slots: np.ndarray, responses: list[list[int]]) -> TaskResult:
        slots = np.asarray(slots, dtype=np.int64)
        return TaskResult(
            reward=self._reward[slots].copy(),
            success=self._success[slots].copy(),
            failure_step=self._failure[slots].copy(),
            doomed=self._doomed[slots].copy(),
        )

    def snapshot(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """The env's episodes in ``slots`` (hidden draws included), for :meth:`restore` in a task over
        the same env: a stopped row continued to see what the stop threw away."""
        return self.env.snapshot_rows(np.asarray(slots, dtype=np.int64))

    def restore(self, slots: np.ndarray, snapshot: dict[str, np.ndarray], src: np.ndarray | None = None) -> None:
        """Continue the snapshot's episodes (``src[i]`` into ``slots[i]``) with their outcome so far
        (rewards are terminal: a live episode has earned nothing yet)."""
        slots = np.asarray(slots, dtype=np.int64)
        self.env.restore_rows(slots, snapshot, src)
        info = self.env.row_info(slots)
        self._reward[slots] = self.env.row_reward(slots)
        self._success[slots] = info["success"]
        self._failure[slots] = info["failure_step"]
        self._doomed[slots] = info["doomed"]
        self._ended[slots] = ~info["live"]
        self._problem[slots] = info["problem"]

    def describe(self, slot: int) -> dict[str, Any]:
        return {"env": self.env_id, "problem": int(self._problem[slot])}


def make_task(task_cfg, model_cfg, *, num_slots: int, seed: int) -> SimTask:
    """Entry point named by ``task.kind: sim``; an unknown env id or bad env kwargs is a user error."""
    try:
        return SimTask(task_cfg.env_id, num_slots, seed=seed, env_kwargs=task_cfg.env_kwargs,
                       eval_problems=task_cfg.eval_problems, train_problems=task_cfg.train_problems)
    except gym.error.Error as e:  # unregistered id, unknown namespace or version
        raise UserError(f"task.env_id: {e}") from None
    except (TypeError, ValueError) as e:  # the env's constructor checks its keyword arguments
        raise UserError(f"task.env_kwargs: {task_cfg.env_id}: {e}") from None
