"""Greedy decoding through the ``Backend`` protocol, step by step, for backend tests."""

from __future__ import annotations

import torch
from torch.testing import assert_close


def greedy_decode(be, prompts, n, *, eos: int, values_every: int = 0, drop_at=None):
    """Greedy decoding with EOS suppressed, so every row runs ``n`` steps unless dropped.

    ``values_every = k > 0`` asks for values every ``k`` steps (and at the last) and writes each
    request's ``chunk_values`` into the states it covers; ``out.values`` must equal the chunk's last
    column. ``drop_at = {step: rows}`` drops those rows (original indices) after that step. Returns
    tokens (B, n), logits (B, n, V) and values (B, n), NaN where a row was dropped or never valued,
    and the mask of decoded positions."""
    B = len(prompts)
    tokens = torch.zeros(B, n, dtype=torch.long)
    logits = torch.full((B, n, be.vocab_size), float("nan"))
    values = torch.full((B, n), float("nan"))
    mask = torch.zeros(B, n, dtype=torch.bool)
    active = torch.arange(B)
    be.begin(prompts)
    for t in range(n):
        check = values_every > 0 and (t % values_every == values_every - 1 or t == n - 1)
        out = be.step(with_values=check)
        if check:
            k = out.chunk_values.shape[1]
            values[active.unsqueeze(1), torch.arange(t - k + 1, t + 1)] = out.chunk_values.float().cpu()
            if k:
                assert_close(out.values, out.chunk_values[:, -1])
        lg = out.logits.clone()
        lg[:, eos] = -float("inf")
        tok = lg.argmax(-1)
        tokens[active, t], logits[active, t], mask[active, t] = tok.cpu(), out.logits.cpu(), True
        keep = torch.ones(len(active), dtype=torch.bool)
        if drop_at and t in drop_at:
            keep = ~torch.isin(active, torch.tensor(drop_at[t]))
        be.advance(tok, keep)
        active = active[keep]
    return tokens, logits, values, mask
