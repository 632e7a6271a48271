"""KV caches of step-wise decoding: ``DynamicCache`` helpers, the decoding batch's columns, and one
trunk's stream (its cache and how many columns it has consumed), shared by the policy and a separate
critic. See ``llm_backend/backend.py``'s module docstring for the decoding layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .critic import trunk_forward
from .prefix import PrefixPlan, prefill


def new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=config)


def cache_select(cache: Any, index: Tensor) -> None:
    if cache is not None and cache.get_seq_length() > 0:
        cache.batch_select_indices(index)


def cache_trimmable(cache: Any) -> bool:
    """Plain growing layers only (sliding-window or quantized layers keep other state)."""
    from transformers.cache_utils import DynamicLayer

    return cache is None or all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def cache_trim_left(cache: Any, n: int) -> None:
    """Drop the first ``n`` cached positions of every layer (columns that are padding in every row)."""
    if cache is None or n <= 0:
        return
    for layer in cache.layers:
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[..., n:, :]
            layer.values = layer.values[..., n:, :]


class Stream:
    """One trunk's decoding KV cache and the number of the batch's columns it has consumed."""

    def __init__(self, trunk: nn.Module):
        self.trunk = trunk
        self.cache = new_cache(trunk.config)
        self.done = 0

    def catch_up(self, cols: "Columns") -> Tensor | None:
        """Consume every column not yet seen; return the (b, n, H) hidden states of the states from the
        last prompt column on among them (None if there were none)."""
        L = cols.ids.shape[1]
        parts = []
        if self.done == 0 and cols.plan is not None:  # the prompt, shared
            h = self._prefill(cols.plan)[:, -1:]
            if not cols.plan.identity:
                self.select(cols.plan.inverse)
                h = h[cols.plan.inverse]
            parts.append(h)
            self.done = cols.prompt_cols
        if self.done < L:
            h = self._forward(cols.ids[:, self.done:L], cols.attn, cols.pos[:, self.done:L])
            parts.append(h[:, max(cols.prompt_cols - 1 - self.done, 0):])
            self.done = L
        return torch.cat(parts, dim=1) if parts else None

    def _prefill(self, plan: PrefixPlan) -> Tensor:
        """(u, R, H) hidden states of the shared-prefix prompt's remainders; the cache then holds u rows."""
        return prefill(self.trunk, plan, self.cache)

    def _forward(self, ids: Tensor, attn: Tensor, pos: Tensor) -> Tensor:
        """(b, n, H) hidden states of the new columns ``ids``; ``attn`` covers cached and new columns."""
        return trunk_forward(self.trunk, ids, attn, pos, self.cache)

    def select(self, index: Tensor) -> None:
        cache_select(self.cache, index)

    def trim_left(self, n: int) -> None:
        cache_trim_left(self.cache, min(n, self.done))
        self.done = max(self.done - n, 0)

    def trimmable(self) -> bool:
        return cache_trimmable(self.cache)

    def logits(self, lm_head: nn.Module, hidden: Tensor) -> Tensor:
        return lm_head(hidden)


def open_stream(trunk: nn.Module, fast: bool) -> Any:
    """A decoding stream for ``trunk``: :class:`llm_backend.fastdecode.StaticStream` when ``fast`` and the
    trunk qualifies (:func:`llm_backend.fastdecode.supports`), else the transformers :class:`Stream`."""
    if fast:
        from .fastdecode import StaticStream, supports

        if supports(trunk):
            return StaticStream(trunk)
    return Stream(trunk)


@dataclass
class Columns:
    """The decoding batch: (b, L) ids, attention mask and positions; the padded prompt width; the plan."""

    ids: Tensor
    attn: Tensor
    pos: Tensor
    prompt_cols: int
    plan: PrefixPlan | None
