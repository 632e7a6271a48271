"""The one data type: a right-padded, batch-major batch of response-token rows.

Every rollout, simulated or LLM, becomes a :class:`Rollout`. How a row ended decides how it is
treated by every estimator; that table lives here, once (:func:`treatment`), and each rollout applies
it once (:attr:`Rollout.treatment`). The collector writes the table's bootstrap into
``Rollout.bootstrap`` (:func:`table_bootstrap`); estimators read that field and never re-derive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor


class Ending(IntEnum):
    """How a row ended. Stored per row as a long tensor of these codes."""

    EOS = 0
    """The policy emitted end-of-sequence: terminal, task reward at the last token."""
    LENGTH_CAP = 1
    """The row hit ``max_len`` total tokens: treated per ``length_cap`` mode (see :class:`LengthCap`)."""
    WINDOW_CUT = 2
    """T-PPO: the window ended before the row did. Not terminal; EGAE bootstraps with V(s_l)."""
    EARLY_STOP = 3
    """A stop rule stopped the row: absorbing failure, ``stop_reward`` at the last token."""


class LengthCap:
    """Treatments of ``LENGTH_CAP`` rows (a config choice, see DESIGN.md)."""

    TERMINAL = "terminal"
    """Terminal with the task's reward for the unfinished answer (default)."""
    BOOTSTRAP = "bootstrap"
    """Not terminal: bootstrap with the value of the last state (the episode was cut, not ended)."""
    MASKED = "masked"
    """Dropped from every loss: the row teaches nothing."""

    ALL = ("terminal", "bootstrap", "masked")


@dataclass(frozen=True)
class Treatment:
    """Per-row consequences of the ending, for advantage estimation and losses. All ``(B,)``."""

    terminal: Tensor
    """bool: the episode really ended (bootstrap 0)."""
    bootstrap_from_last_value: Tensor
    """bool: the value after the last token is V(s_l) of the row's own last state (EGAE / bootstrap)."""
    trainable: Tensor
    """bool: the row contributes to losses at all."""


def treatment(ending: Tensor, length_cap: str = LengthCap.TERMINAL) -> Treatment:
    """DESIGN.md's ending table as tensors. ``ending`` is ``(B,)`` long of :class:`Ending` codes."""
    if length_cap not in LengthCap.ALL:
        raise ValueError(f"length_cap must be one of {LengthCap.ALL}, got {length_cap!r}")
    is_cap = ending == Ending.LENGTH_CAP
    cut = ending == Ending.WINDOW_CUT
    terminal = (ending == Ending.EOS) | (ending == Ending.EARLY_STOP)
    if length_cap == LengthCap.TERMINAL:
        terminal = terminal | is_cap
        bootstrap = cut
    elif length_cap == LengthCap.BOOTSTRAP:
        bootstrap = cut | is_cap
    else:
        bootstrap = cut
    trainable = ~is_cap if length_cap == LengthCap.MASKED else torch.ones_like(terminal)
    return Treatment(terminal=terminal, bootstrap_from_last_value=bootstrap, trainable=trainable)


def table_bootstrap(tr: Treatment, values: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` the ending table's value after each row's last token: V(s_l) (the row's own last
    value, EGAE's V(s_{l+1}) := V(s_l)) where the treatment bootstraps from it, else 0."""
    return torch.where(tr.bootstrap_from_last_value, last_valid_value(values, mask), torch.zeros_like(values[:, 0]))


def last_valid_index(mask: Tensor) -> Tensor:
    """``(B,)`` index of each row's last valid token (``-1`` for an empty row). ``mask`` is ``(B, T)``."""
    T = mask.shape[-1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).amax(dim=-1)


def last_valid_value(values: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` V(s_l): the value at each row's last valid token; 0 for an empty row."""
    last = last_valid_index(mask)
    picked = values.gather(-1, last.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(last >= 0, picked, torch.zeros_like(picked))


@dataclass
class Rollout:
    """A batch of B response rows, right-padded to T tokens. Shapes are in each field's doc.

    Rows are independent; the prompt of row ``i`` is ``prompts[i]`` (token ids, not padded).
    """

    tokens: Tensor
    """(B, T) long: sampled response tokens (pad positions hold 0)."""
    logprobs: Tensor
    """(B, T) float: log pi_old(a_t | s_t) under the sampling distribution (temperature applied)."""
    regret: Tensor
    """(B, T) float: g_t = max_a log pi(a|s_t) - log pi(a_t|s_t) >= 0, same distribution."""
    values: Tensor
    """(B, T) float: critic V(s_t), the state before token t."""
    rewards: Tensor
    """(B, T) float: zero except at a row's last token."""
    mask: Tensor
    """(B, T) bool: response tokens that exist."""
    ending: Tensor
    """(B,) long: :class:`Ending` code of each row."""
    bootstrap: Tensor
    """(B,) float: value used after the last token (0 unless the ending is not terminal)."""
    failure_step: Tensor
    """(B,) long: ground-truth index of the fatal token, -1 if none (or unknown)."""
    policy_version: Tensor
    """(B, T) long: training step whose weights sampled each token."""
    prompts: list[list[int]] = field(default_factory=list)
    """B token-id lists: the context before each row's ``tokens`` (for a T-PPO window, the prompt plus
    the row's carried response tokens), what the backend teacher-forces the row's tokens after."""
    group_ids: Tensor | None = None
    """(B,) long: rows sharing a prompt share a group id (GRPO); None when each row is its own group."""
    task_reward: Tensor | None = None
    """(B,) float: the task's own reward for each row as it stands (before stop treatment)."""
    success: Tensor | None = None
    """(B,) bool: the task counts the row as solved."""
    sampled: Tensor | None = None
    """(B, T) bool: the token was sampled by the policy; False where a task forced it (a planted wrong
    step): such tokens are left out of the policy loss and of the stop rule. None: all sampled."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Optional per-row or per-token tensors (e.g. ``start``: response tokens before this segment)."""
    length_cap: str = LengthCap.TERMINAL
    """How this rollout's ``LENGTH_CAP`` rows are treated (``rollout.length_cap``); with ``ending`` it
    fixes :attr:`treatment`."""

    @property
    def treatment(self) -> Treatment:
        """The ending table for these rows, computed once per rollout (again only if ``ending`` or
        ``length_cap`` is replaced; ``ending`` is never edited in place)."""
        cached = self.__dict__.get("_treatment")
        if cached is None or cached[0] is not self.ending or cached[1] != self.length_cap:
            cached = (self.ending, self.length_cap, treatment(self.ending, self.length_cap))
            self.__dict__["_treatment"] = cached
        return cached[2]

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(B,) number of valid response tokens."""
        return self.mask.sum(-1)

    @property
    def finished(self) -> Tensor:
        """(B,) bool: the row will not be continued (every ending but ``WINDOW_CUT``)."""
        return self.ending != Ending.WINDOW_CUT

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field whose shape or dtype is wrong."""
        B, T = self.tokens.shape
        for name in ("logprobs", "regret", "values", "rewards", "mask", "policy_version", "sampled"):
            t = getattr(self, name)
            if t is None:
                continue
            if tuple(t.shape) != (B, T):
                raise ValueError(f"Rollout.{name} has shape {tuple(t.shape)}, expected {(B, T)}")
        for name in ("ending", "bootstrap", "failure_step"):
            t = getattr(self, name)
            if tuple(t.shape) != (B,):
                raise ValueError(f"Rollout.{name} has shape {tuple(t.shape)}, expected {(B,)}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"Rollout.mask must be bool, got {self.mask.dtype}")
        if self.prompts and len(self.prompts) != B:
            raise ValueError(f"Rollout.prompts has {len(self.prompts)} rows, expected {B}")
        bad = (self.treatment.terminal & (self.bootstrap != 0)).nonzero().squeeze(-1)
        if len(bad):
            raise ValueError(f"Rollout.bootstrap must be 0 on terminal rows (ending table); rows {bad.tolist()[:5]}")
