"""The two seams the rollout collector and trainer are written against, once.

A :class:`Backend` is a policy plus a critic that can decode step by step (toy GRU on simulated
envs, a transformers causal LM for math). A :class:`Task` supplies prompts and scores responses
(a planted-failure token-MDP, or math problems with an answer checker). The collector never knows
which implementation it drives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@dataclass
class StepOutput:
    """What one decoding step yields for the ``b`` active rows."""

    logits: Tensor
    """(b, V) float32: raw next-token logits (no temperature applied)."""
    values: Tensor | None
    """(b,) float32: critic V(s_t) of the current state, or None when not requested this step."""
    chunk_values: Tensor | None = None
    """(b, n) float32 or None: values of the last ``n`` states, oldest first, ending with the current
    one (``values``). A backend whose critic catches up over the steps since the previous values
    request in one forward (``stop_check_every > 1``) returns all of them; a backend that values only
    the current state returns ``values[:, None]``; ``n`` never exceeds the states reached since the
    previous request (it may be 0 when values are requested twice at one state). None when values
    were not requested."""


@runtime_checkable
class Backend(Protocol):
    """Policy and critic with step-wise decoding and teacher-forced evaluation.

    Decoding protocol: ``begin(prompts)`` opens a batch of rows; then repeatedly ``step()`` gives
    the next-token logits (and values) of the active rows, and ``advance(tokens, keep)`` appends one
    token to every active row and drops the rows where ``keep`` is False (their cache is freed, no
    compute is spent on them again). Active rows keep their relative order.
    """

    vocab_size: int
    eos_token_id: int
    device: torch.device

    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        """Open a decoding batch; ``prompts[i]`` may already hold carried response tokens (T-PPO)."""
        ...

    def step(self, *, with_values: bool = True) -> StepOutput:
        """Logits (and, if asked, values) at the current state of each active row."""
        ...

    def advance(self, tokens: Tensor, keep: Tensor) -> None:
        """Append ``tokens`` (b,) to the active rows, then keep only rows where ``keep`` (b,) is True."""
        ...

    def policy_forward(
        self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor, *, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced ``(logprobs, entropy)``, both (B, T), of ``tokens`` under softmax(logits / temperature).

        Differentiable with respect to the policy parameters; masked positions hold 0.
        """
        ...

    def critic_forward(self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced values (B, T): V(s_t), the state before response token t. Differentiable."""
        ...

    def policy_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def critic_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


@dataclass
class TaskResult:
    """The task's verdict on finished rows, all ``(b,)`` numpy arrays."""

    reward: np.ndarray
    """float: the task's reward for each row as it stands (an unfinished answer gets what the task gives it)."""
    success: np.ndarray
    """bool: the row solved the problem."""
    failure_step: np.ndarray
    """int: ground-truth index of the fatal response token, -1 if none or unknown."""
    doomed: np.ndarray
    """bool: ground truth: a fatal error had happened by the row's last token (False if unknown)."""


@runtime_checkable
class Task(Protocol):
    """Prompts in slots, per-token feedback, and a verdict when a row ends.

    A task has a fixed number of slots (the batch size). ``reset(slots)`` puts new problems in the
    given slots and returns their prompt token ids; ``observe(slots, tokens)`` reports one decoded token
    per listed slot (simulated envs step here; LLM tasks may ignore it) and returns the ground-truth
    failure step known so far (-1 none); ``finish(slots, responses)`` scores the rows in those slots.
    A task whose ``failure_step`` is real ground truth sets the class attribute ``ground_truth = True``
    (optional, default False): the learner then scores its stops and logs per-row outcomes.
    """

    num_slots: int
    vocab_size: int
    eos_token_id: int

    def reset(self, slots: np.ndarray, *, split: str = "train", group_size: int = 1) -> list[list[int]]:
        """New problems in ``slots``; each run of ``group_size`` consecutive listed slots shares one problem."""
        ...

    def observe(self, slots: np.ndarray, tokens: np.ndarray) -> np.ndarray: ...

    def finish(self, slots: np.ndarray, responses: list[list[int]]) -> TaskResult: ...

    def describe(self, slot: int) -> dict[str, Any]:
        """JSON-able description of the problem in a slot (for logs and eval output)."""
        ...
