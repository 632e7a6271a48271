"""A small GRU (or causal transformer) policy and critic over token prefixes: the backend used on simulated envs.

It implements :class:`testbed.protocols.Backend` exactly like the transformers backend, so the
collector and trainer are written once. A trunk's decoding state is one tensor per row: the GRU's
recurrent state, or the transformer's KV cache with its last hidden vector.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from testbed.protocols import StepOutput


class GRUTrunk(nn.Module):
    """Token + position embedding, one-layer GRU; ``out_dim`` outputs per position (logits, or 1 for a value).

    The position input (the token's column in prompt + response, clamped to ``max_positions - 1``)
    lets the policy learn *where* EOS goes: without it a GRU must learn to count, and PPO on the
    planted-failure env either found the EOS position within the budget or never did (final
    success 0.05 / 0.63 / 0.00 on three seeds; docs/espo_headline.md, "Baseline reliability").
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, out_dim: int, max_positions: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.max_positions = max_positions
        self.pos_embed = nn.Embedding(max_positions, embed_size) if max_positions > 0 else None
        self.gru = nn.GRU(embed_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, out_dim)
        self.prompt_input = 0
        self.prompt_embed: nn.Embedding | None = None
        self.readout_pos: nn.Embedding | None = None
        self.readout: nn.Linear | None = None

    def add_prompt_input(self, n: int) -> None:
        """Feed the mean embedding of each row's first ``n`` tokens at every step (a new table)."""
        self.prompt_input = n
        self.prompt_embed = nn.Embedding(self.embed.num_embeddings, self.embed.embedding_dim)

    def add_prompt_readout(self) -> None:
        """Add ``readout(prompt ⊙ readout_pos(column))`` to the head: a term bilinear in the prompt and the
        predicted token's column, as a transformer's attention from a position to its prompt gives it. It
        lets the output (the end token's logit above all) depend on problem and position jointly, which
        the GRU's summed inputs reach only through its state. Zero-initialised: the policy starts as without it."""
        if self.prompt_embed is None or self.max_positions <= 0:
            raise ValueError("the prompt readout needs the prompt input and the position embedding")
        self.readout_pos = nn.Embedding(self.max_positions, self.embed.embedding_dim)
        self.readout = nn.Linear(self.embed.embedding_dim, self.head.out_features, bias=False)
        nn.init.zeros_(self.readout.weight)

    def output(self, h: Tensor, columns: Tensor, prompt: Tensor | None) -> Tensor:
        """The head at states ``h`` (..., H) whose next token sits at ``columns`` (same leading shape)."""
        out = self.head(h)
        if self.readout is not None:
            pos = self.readout_pos(columns.clamp(max=self.max_positions - 1))
            out = out + self.readout((prompt.unsqueeze(1) if pos.dim() == 3 else prompt) * pos)
        return out

    def prompt_vector(self, seqs: Tensor) -> Tensor | None:
        """(B, E): the mean embedding of each row's first ``prompt_input`` tokens (None when off)."""
        if self.prompt_embed is None:
            return None
        return self.prompt_embed(seqs[:, : self.prompt_input]).mean(1)

    def _inputs(self, tokens: Tensor, positions: Tensor, prompt: Tensor | None = None) -> Tensor:
        """Embeddings of ``tokens`` at column ``positions`` (same shape): (..., E), plus the prompt vector."""
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions.clamp(max=self.max_positions - 1))
        if prompt is not None:
            x = x + (prompt.unsqueeze(1) if x.dim() == 3 else prompt)
        return x

    def encode(self, seqs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Run right-padded ``seqs`` (B, L); return per-position hidden (B, L, H) and the state after each row's last token (B, H)."""
        cols = torch.arange(seqs.shape[1]).expand_as(seqs)
        out, _ = self.gru(self._inputs(seqs, cols, self.prompt_vector(seqs)))
        last = out[torch.arange(len(seqs)), lengths - 1]
        return out, last

    def start(self, seqs: Tensor, lengths: Tensor) -> Tensor:
        """The decoding state after each row's last token of right-padded ``seqs`` (B, L)."""
        return self.encode(seqs, lengths)[1]

    @staticmethod
    def last(state: Tensor) -> Tensor:
        """The hidden vector the head reads, from a decoding state."""
        return state

    def step(self, tokens: Tensor, positions: Tensor, h: Tensor, prompt: Tensor | None = None) -> Tensor:
        """Feed one token per row (b,) sitting at column ``positions`` (b,) to state ``h`` (b, H); return the new state.
        ``prompt``: the rows' :meth:`prompt_vector` (b, E) when the trunk has a prompt input."""
        _, h_new = self.gru(self._inputs(tokens, positions, prompt).unsqueeze(1), h.unsqueeze(0))
        return h_new.squeeze(0)


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention and MLP (GPT-2's block)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"model.hidden_size {d} must be a multiple of model.heads {heads}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def _split(self, x: Tensor) -> Tensor:  # (..., L, d) -> (..., heads, L, d / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A causal pass over (B, L, d); returns the output and the keys and values (B, L, d) for a cache."""
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), is_causal=True)
        x = x + self.proj(a.transpose(-3, -2).flatten(-2))
        return x + self.mlp(self.ln2(x)), k, v

    def step(self, x: Tensor, keys: Tensor, values: Tensor, positions: Tensor) -> Tensor:
        """One token per row (b, d) at column ``positions``; ``keys``/``values`` (b, P, d) are the row's cache,
        written in place at that column; attention reads the columns up to it."""
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        rows = torch.arange(len(x))
        keys[rows, positions], values[rows, positions] = k, v
        seen = torch.arange(keys.shape[1]) <= positions.unsqueeze(1)  # (b, P)
        a = F.scaled_dot_product_attention(self._split(q.unsqueeze(1)), self._split(keys), self._split(values),
                                           attn_mask=seen[:, None, None, :])
        x = x + self.proj(a.transpose(-3, -2).flatten(-2).squeeze(1))
        return x + self.mlp(self.ln2(x))


class TransformerTrunk(nn.Module):
    """A small causal transformer with learned absolute positions: the same interface as :class:`GRUTrunk`.

    Attention reads the prompt and every earlier column at every step, so it needs neither the GRU's prompt
    input nor its readout. The decoding state of a row is one tensor (1 + 2 x layers x P, d): the last hidden
    vector, then each layer's keys and values at columns 0..P-1 (``P = max_positions``: the prompt plus the
    longest response).
    """

    def __init__(self, vocab_size: int, width: int, out_dim: int, max_positions: int, layers: int = 2, heads: int = 2):
        super().__init__()
        if max_positions <= 0:
            raise ValueError("the transformer needs positions (model.positions=true)")
        self.embed = nn.Embedding(vocab_size, width)
        self.max_positions = max_positions
        self.pos_embed = nn.Embedding(max_positions, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)

    def _columns(self, cols: Tensor) -> Tensor:
        if cols.numel() and int(cols.max()) >= self.max_positions:
            raise ValueError(f"column {int(cols.max())} is beyond the transformer's {self.max_positions} positions")
        return cols

    def output(self, h: Tensor, columns: Tensor, prompt: Tensor | None) -> Tensor:
        return self.head(h)

    def prompt_vector(self, seqs: Tensor) -> None:
        return None

    def _forward(self, seqs: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        cols = self._columns(torch.arange(seqs.shape[1]).expand_as(seqs))
        x, kv = self.embed(seqs) + self.pos_embed(cols), []
        for block in self.blocks:
            x, k, v = block(x)
            kv.append((k, v))
        return self.ln_f(x), kv

    def encode(self, seqs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Per-position hidden (B, L, d) of right-padded ``seqs`` and the hidden after each row's last token."""
        out, _ = self._forward(seqs)
        return out, out[torch.arange(len(seqs)), lengths - 1]

    def start(self, seqs: Tensor, lengths: Tensor) -> Tensor:
        out, kv = self._forward(seqs)
        B, L = seqs.shape
        P = self.max_positions
        state = out.new_zeros(B, 1 + 2 * len(kv) * P, out.shape[-1])
        state[:, 0] = out[torch.arange(B), lengths - 1]
        for i, (k, v) in enumerate(kv):  # right pads sit at columns >= length: overwritten before they are read
            state[:, 1 + 2 * i * P: 1 + 2 * i * P + L] = k
            state[:, 1 + (2 * i + 1) * P: 1 + (2 * i + 1) * P + L] = v
        return state

    @staticmethod
    def last(state: Tensor) -> Tensor:
        return state[:, 0]

    def step(self, tokens: Tensor, positions: Tensor, state: Tensor, prompt: Tensor | None = None) -> Tensor:
        """Feed one token per row at column ``positions``; writes into ``state`` (a copy the caller owns) and returns it."""
        P = self.max_positions
        x = self.embed(tokens) + self.pos_embed(self._columns(positions))
        for i, block in enumerate(self.blocks):
            keys = state[:, 1 + 2 * i * P: 1 + (2 * i + 1) * P]
            values = state[:, 1 + (2 * i + 1) * P: 1 + (2 * i + 2) * P]
            x = block.step(x, keys, values, positions)
        state[:, 0] = self.ln_f(x)
        return state


def _pad(prompts: Sequence[Sequence[int]], tokens: Tensor | None = None, mask: Tensor | None = None):
    """Right-pad prompt (+ response) rows into one (B, L) tensor; returns it and the prompt lengths."""
    B = len(prompts)
    plen = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    if (plen == 0).any():
        raise ValueError("every prompt needs at least one token")
    T = 0 if tokens is None else tokens.shape[1]
    seqs = torch.zeros(B, int(plen.max()) + T, dtype=torch.long)
    for i, p in enumerate(prompts):
        seqs[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    if tokens is not None:
        # Response token t of row i sits at column plen_i + t; pads beyond the mask stay harmless
        # because right padding never feeds into earlier positions of a causal GRU.
        cols = plen.unsqueeze(1) + torch.arange(T)
        seqs.scatter_(1, cols, torch.where(mask, tokens, torch.zeros_like(tokens)).long())
    return seqs, plen


class ToyBackend(nn.Module):
    """Policy + separate critic, both GRU or both transformer trunks (+ a frozen copy of the initial policy with
    ``reference=True``, for the KL penalty). Decoding keeps one state per active row."""

    def __init__(self, vocab_size: int, eos_token_id: int, *, embed_size: int = 32, hidden_size: int = 64, seed: int = 0,
                 reference: bool = False, max_positions: int = 0, eos_bias: float = 0.0, prompt_input: int = 0,
                 prompt_readout: bool = False, arch: str = "gru", layers: int = 2, heads: int = 2):
        super().__init__()
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            if arch == "transformer":
                if prompt_input or prompt_readout:
                    raise ValueError("model.prompt_input and model.prompt_readout are GRU inputs; a transformer "
                                     "attends to its prompt (set them false)")
                self.policy = TransformerTrunk(vocab_size, hidden_size, vocab_size, max_positions, layers, heads)
                self.critic = TransformerTrunk(vocab_size, hidden_size, 1, max_positions, layers, heads)
            elif arch == "gru":
                self.policy = GRUTrunk(vocab_size, embed_size, hidden_size, vocab_size, max_positions)
                self.critic = GRUTrunk(vocab_size, embed_size, hidden_size, 1, max_positions)
            else:
                raise ValueError(f"model.arch: {arch!r} is not 'gru' or 'transformer'")
            nn.init.zeros_(self.critic.head.weight)
            nn.init.zeros_(self.critic.head.bias)
            if prompt_input > 0:  # drawn last, so every other weight starts as without it
                self.policy.add_prompt_input(prompt_input)
                self.critic.add_prompt_input(prompt_input)
            if prompt_readout:  # after the prompt input, for the same reason
                self.policy.add_prompt_readout()
                self.critic.add_prompt_readout()
            if eos_bias:
                with torch.no_grad():
                    self.policy.head.bias[eos_token_id] += eos_bias
        # Part of state_dict, so a resumed run keeps the same reference; never in policy_parameters().
        self.reference = copy.deepcopy(self.policy).requires_grad_(False) if reference else None
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.device = torch.device("cpu")
        self._hp: Tensor | None = None
        self._hc: Tensor | None = None
        self._col: Tensor | None = None  # (b,) column of each active row's next input token
        self._pp: Tensor | None = None  # (b, E) prompt vectors of the active rows (policy, critic), or None
        self._pc: Tensor | None = None

    # --- decoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        seqs, plen = _pad(prompts)
        self._hp, self._hc = self.policy.start(seqs, plen), self.critic.start(seqs, plen)
        self._col = plen.clone()
        self._pp, self._pc = self.policy.prompt_vector(seqs), self.critic.prompt_vector(seqs)

    @torch.no_grad()
    def step(self, *, with_values: bool = True) -> StepOutput:
        logits = self.policy.output(self.policy.last(self._hp), self._col, self._pp).float()
        if not with_values:
            return StepOutput(logits=logits, values=None)
        values = self.critic.output(self.critic.last(self._hc), self._col, self._pc).squeeze(-1).float()
        return StepOutput(logits=logits, values=values, chunk_values=values[:, None])

    @torch.no_grad()
    def advance(self, tokens: Tensor, keep: Tensor) -> None:
        keep = keep.to(torch.bool)
        tokens, hp, hc, col = tokens[keep], self._hp[keep], self._hc[keep], self._col[keep]
        pp = self._pp[keep] if self._pp is not None else None
        pc = self._pc[keep] if self._pc is not None else None
        if len(tokens):
            hp, hc = self.policy.step(tokens, col, hp, pp), self.critic.step(tokens, col, hc, pc)
        self._hp, self._hc, self._col, self._pp, self._pc = hp, hc, col + 1, pp, pc

    # --- training -------------------------------------------------------------------------------
    def _response_outputs(self, trunk: GRUTrunk | TransformerTrunk, prompts, tokens: Tensor, mask: Tensor) -> Tensor:
        """Head outputs at the state before each response token: (B, T, out_dim)."""
        seqs, plen = _pad(prompts, tokens, mask)
        hidden, _ = trunk.encode(seqs, plen)
        T = tokens.shape[1]
        idx = (plen.unsqueeze(1) - 1 + torch.arange(T)).clamp(max=seqs.shape[1] - 1)
        h = hidden.gather(1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return trunk.output(h, plen.unsqueeze(1) + torch.arange(T), trunk.prompt_vector(seqs))

    def policy_forward(self, prompts, tokens: Tensor, mask: Tensor, *, temperature: float) -> tuple[Tensor, Tensor]:
        logits = self._response_outputs(self.policy, prompts, tokens, mask).float() / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        zero = torch.zeros_like(logp)
        return torch.where(mask, logp, zero), torch.where(mask, entropy, zero)

    @torch.no_grad()
    def reference_forward(self, prompts, tokens: Tensor, mask: Tensor, *, temperature: float) -> Tensor:
        """(B, T) log-probs of ``tokens`` under the frozen initial policy (needs ``reference=True``)."""
        if self.reference is None:
            raise RuntimeError("reference_forward needs a reference policy (model.reference=true)")
        logits = self._response_outputs(self.reference, prompts, tokens, mask).float() / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return torch.where(mask, logp, torch.zeros_like(logp))

    def critic_forward(self, prompts, tokens: Tensor, mask: Tensor) -> Tensor:
        v = self._response_outputs(self.critic, prompts, tokens, mask).squeeze(-1).float()
        return torch.where(mask, v, torch.zeros_like(v))

    def policy_parameters(self) -> Iterable[nn.Parameter]:
        return self.policy.parameters()

    def critic_parameters(self) -> Iterable[nn.Parameter]:
        return self.critic.parameters()


def make_backend(model_cfg, task, *, seed: int) -> ToyBackend:
    """Entry point named by ``model.kind: toy``."""
    return ToyBackend(
        task.vocab_size,
        task.eos_token_id,
        embed_size=model_cfg.embed_size,
        hidden_size=model_cfg.hidden_size,
        seed=seed,
        reference=bool(model_cfg.reference),
        # every column a sim row can reach: prompt plus response (a task without these has no positions)
        max_positions=(int(getattr(task, "prompt_len", 0)) + int(getattr(task, "max_len", 0))
                       if model_cfg.positions else 0),
        eos_bias=float(model_cfg.eos_bias),
        # the sim prompt's tokens (the first prompt_len of every context, carried rows included)
        prompt_input=int(getattr(task, "prompt_len", 0)) if model_cfg.prompt_input else 0,
        prompt_readout=bool(model_cfg.prompt_readout),
        arch=model_cfg.arch,
        layers=int(model_cfg.layers),
        heads=int(model_cfg.heads),
    )
