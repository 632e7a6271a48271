"""Shared-prefix planning: rows that share a prompt prefix compute it once.

Chat prompts start with the same system message and one-shot example, and a GRPO group repeats one
whole prompt. :func:`plan_prefix` finds the longest prefix common to all rows (``P`` tokens, at most
every prompt's length minus one) and the distinct remainders (``u`` of them); rows are then laid out as
``[prefix | left pads | remainder]`` (:meth:`PrefixPlan.rows`). :func:`prefill` runs a trunk over
the prefix once (batch 1), expands its KV cache along the batch to the ``u`` remainders (a view, so
with gradients every row's loss flows back into the one prefix forward) and runs the remainders.
How the backend uses it in decoding and training: ``llm_backend/backend.py``'s module docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .critic import trunk_forward


def cache_expand(cache: Any, n: int) -> None:
    """Batch-1 cache -> a view of ``n`` identical rows (no copy: the next update concatenates; the
    backward of ``expand`` sums the rows' gradients into the one prefix)."""
    if n == 1:
        return
    for layer in cache.layers:
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys.expand(n, -1, -1, -1)
            layer.values = layer.values.expand(n, -1, -1, -1)


@dataclass
class PrefixPlan:
    """How ``B`` prompts share work: one common prefix and ``u`` distinct remainders.

    Row ``i``'s prompt is ``prefix + remainder[inverse[i]]``; its layout is ``[prefix | left pads |
    remainder]`` (:meth:`rows`), with positions ``0 .. len - 1`` over its real tokens.
    """

    prefix: Tensor
    """(P,) long, P >= 1: tokens every prompt starts with."""
    rest: Tensor
    """(u, R) long: the distinct remainders, left-padded (R >= 1: every remainder has a token)."""
    rest_attn: Tensor
    """(u, R) long: 1 on the remainders' real tokens."""
    inverse: Tensor
    """(B,) long: row -> its remainder."""

    @property
    def P(self) -> int:
        return int(self.prefix.shape[0])

    @property
    def u(self) -> int:
        return int(self.rest.shape[0])

    @property
    def identity(self) -> bool:
        """Every row has its own remainder, in row order (nothing to gather)."""
        return self.u == self.inverse.shape[0] and bool((self.inverse == torch.arange(self.u, device=self.inverse.device)).all())

    def rows(self) -> tuple[Tensor, Tensor]:
        """(B, P + R) ids and attention mask of the rows' layout."""
        B = self.inverse.shape[0]
        ids = torch.cat([self.prefix.expand(B, -1), self.rest[self.inverse]], dim=1)
        attn = torch.cat([torch.ones_like(ids[:, :self.P]), self.rest_attn[self.inverse]], dim=1)
        return ids, attn

    def rest_positions(self) -> Tensor:
        """(u, R) positions of the remainder columns (pads: P, never attended)."""
        return self.P + (self.rest_attn.cumsum(1) - 1).clamp(min=0)

    def select(self, index: Tensor) -> "PrefixPlan":
        """The plan for rows ``index`` (remainders no row uses any more are still computed, once)."""
        return PrefixPlan(self.prefix, self.rest, self.rest_attn, self.inverse[index])


def plan_prefix(prompts: Sequence[Sequence[int]], *, pad_token_id: int, device: torch.device | str = "cpu") -> PrefixPlan | None:
    """The shared-prefix plan for ``prompts``, or None when there is nothing to share.

    ``P`` is the longest common prefix, capped at the shortest prompt's length minus one so that every
    row keeps a remainder token (the state before the first response token is a remainder position).
    Remainders are deduplicated in order of first appearance (a GRPO group's repeated prompt is
    computed once). None for fewer than two rows or no common token.

    >>> p = plan_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 4]], pad_token_id=0)
    >>> p.prefix.tolist(), p.rest.tolist(), p.inverse.tolist()
    ([1, 2], [[3, 4], [0, 5]], [0, 1, 0])
    """
    B = len(prompts)
    if B < 2:
        return None
    lens = [len(p) for p in prompts]
    if min(lens) < 2:
        return None
    first = list(prompts[0])
    P = min(lens) - 1
    for p in prompts[1:]:
        n = 0
        while n < P and p[n] == first[n]:
            n += 1
        P = n
        if P == 0:
            return None
    index: dict[tuple[int, ...], int] = {}
    inverse = [index.setdefault(tuple(p[P:]), len(index)) for p in prompts]
    rests = list(index)
    R = max(len(r) for r in rests)
    rest = torch.full((len(rests), R), int(pad_token_id), dtype=torch.long)
    attn = torch.zeros((len(rests), R), dtype=torch.long)
    for j, r in enumerate(rests):
        rest[j, R - len(r):] = torch.as_tensor(r, dtype=torch.long)
        attn[j, R - len(r):] = 1
    return PrefixPlan(torch.as_tensor(first[:P], dtype=torch.long).to(device), rest.to(device), attn.to(device),
                      torch.as_tensor(inverse, dtype=torch.long, device=device))


def prefill(trunk: nn.Module, plan: PrefixPlan, cache: Any, tail: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Run ``trunk`` over the prefix once (batch 1), then over the ``u`` remainders (and ``tail``
    (u, n) ids and mask, appended after each remainder) against the expanded prefix cache.

    Returns the (u, R + n, H) hidden states of the remainder (and tail) columns; ``cache`` then holds
    ``u`` rows of ``P + R + n`` columns. Differentiable when grads are enabled.
    """
    dev = plan.prefix.device
    P, u = plan.P, plan.u
    trunk_forward(trunk, plan.prefix[None], torch.ones(1, P, dtype=torch.long, device=dev),
                  torch.arange(P, device=dev)[None], cache)
    cache_expand(cache, u)
    ids, attn, pos = plan.rest, plan.rest_attn, plan.rest_positions()
    if tail is not None:
        t_ids, t_mask = tail
        end = P + plan.rest_attn.sum(1, keepdim=True)  # position after each remainder's last token
        ids = torch.cat([ids, t_ids], dim=1)
        attn = torch.cat([attn, t_mask.long()], dim=1)
        pos = torch.cat([pos, end + torch.arange(t_ids.shape[1], device=dev)], dim=1)
    full_attn = torch.cat([torch.ones(u, P, dtype=torch.long, device=dev), attn], dim=1)
    return trunk_forward(trunk, ids, full_attn, pos, cache)
