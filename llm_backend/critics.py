"""The two critic layouts of :class:`llm_backend.backend.HFBackend` (``model.critic``), on the value
models of ``critic.py``: each keeps what decoding needs to value new states and computes teacher-forced
values from a trunk's response states.

Both share one interface: ``begin()`` opens a decoding batch, ``observe(hidden)`` sees the policy's
hidden states of new states, ``values(cols)`` returns the (b, n) values of the states reached since
the last call, ``select``/``trim_left``/``trimmable`` follow the batch's row drops and column trims,
and ``forward(states)`` gives (B, T) fp32 values, where ``states(trunk)`` returns that trunk's (B, T, H)
hidden states at the state before each response token (the backend's shared-prefix aware forward).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .critic import ValueHead, ValueModel
from .kvcache import Columns, Stream, open_stream

CRITIC_LAYOUTS = ("separate", "head")

ResponseStates = Callable[[nn.Module], Tensor]
"""``states(trunk)`` -> (B, T, H) last hidden states of ``trunk`` before each response token."""


class SeparateCritic:
    """``model.critic: separate``: a :class:`ValueModel` (own trunk + fp32 head) with its own
    decoding cache; the value loss trains trunk and head."""

    name = "critic"

    def __init__(self, model: ValueModel, fast_decode: bool = False):
        self.model = model
        self.fast_decode = fast_decode
        self._stream: Stream | None = None

    @property
    def module(self) -> nn.Module:
        return self.model

    def begin(self) -> None:
        self._stream = open_stream(self.model.trunk, self.fast_decode)

    def observe(self, hidden: Tensor) -> None:
        """Policy hidden states of new states: not needed (this critic reads its own trunk)."""

    def values(self, cols: Columns) -> Tensor | None:
        """(b, n) values of the states reached since the last call (None: none)."""
        h = self._stream.catch_up(cols)
        return None if h is None else self.model.head(h)

    def select(self, index: Tensor) -> None:
        self._stream.select(index)

    def trim_left(self, n: int) -> None:
        self._stream.trim_left(n)

    def trimmable(self) -> bool:
        return self._stream.trimmable()

    def forward(self, states: ResponseStates) -> Tensor:
        """(B, T) fp32 teacher-forced values, differentiable w.r.t. trunk and head."""
        return self.model.head(states(self.model.trunk))


class HeadCritic:
    """``model.critic: head``: a :class:`ValueHead` on the policy's *detached* last hidden state
    (see ``critic.py``); decoding values come from the hidden states the policy already computed."""

    name = "value_head"

    def __init__(self, head: ValueHead, trunk: nn.Module):
        self.model = head
        self.trunk = trunk  # the policy's trunk: read, never trained (not in ``module``)
        self._hidden: list[Tensor] = []

    @property
    def module(self) -> nn.Module:
        return self.model

    def begin(self) -> None:
        self._hidden = []

    def observe(self, hidden: Tensor) -> None:
        """(b, n, H) policy hidden states of new states, kept until the next values request."""
        self._hidden.append(hidden)

    def values(self, cols: Columns) -> Tensor | None:
        if not self._hidden:
            return None
        chunk = self.model(torch.cat(self._hidden, dim=1))
        self._hidden = []
        return chunk

    def select(self, index: Tensor) -> None:
        self._hidden = [h[index] for h in self._hidden]

    def trim_left(self, n: int) -> None:
        pass

    def trimmable(self) -> bool:
        return True

    def forward(self, states: ResponseStates) -> Tensor:
        """(B, T) fp32 teacher-forced values, differentiable w.r.t. the head only."""
        with torch.no_grad():  # shared trunk, detached: the value loss trains the head only
            hidden = states(self.trunk)
        return self.model(hidden)
