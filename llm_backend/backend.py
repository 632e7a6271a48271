"""A transformers causal LM as a :class:`testbed.protocols.Backend`: step-wise KV-cached decoding
with per-step logits and values, and teacher-forced log-probs / values for training.

Decoding layout. ``begin(prompts)`` left-pads the prompts into one ``(b, L)`` id matrix with an
attention mask and position ids ``cumsum(mask) - 1`` (pads get position 0), exactly as
``model.generate()`` does, so greedy decoding through ``step``/``advance`` reproduces ``generate``
token for token. Every model (policy, separate critic) keeps a count of the columns it has consumed
into its own ``DynamicCache`` and *catches up* lazily:

- ``step()`` runs the policy over its unconsumed columns (one token after each ``advance``, the
  whole prompt after ``begin``) and returns the last position's logits;
- with ``with_values=True`` a separate critic runs over *all* columns appended since its last call
  in one chunked forward through its cache. With ``stop_check_every = k`` the collector asks for
  values every k tokens, so k tokens cost the critic one forward instead of k. The values of every
  state covered by that chunk travel in ``StepOutput.chunk_values``.
- ``advance(tokens, keep)`` appends one column, then drops the rows where ``keep`` is False from the
  ids, masks and every cache (``batch_select_indices``); leading columns that became padding in
  every surviving row are trimmed from the caches too. Dropped rows cost nothing afterwards.

Shared prefix (``shared_prefix=True``, the default). Chat prompts start with the same system message
and one-shot example, and a GRPO group repeats one whole prompt. :func:`plan_prefix` finds the
longest prefix common to all rows (``P`` tokens, at most every prompt's length minus one) and the
distinct remainders (``u`` of them). Rows are then laid out as ``[prefix | left pads | remainder]``
(same positions as above; pads in the middle are masked exactly like pads on the left):

- decoding prefills the prefix once (batch 1), expands its KV cache along the batch to the ``u``
  distinct remainders, prefills those, then gathers the cache to the ``b`` rows;
- training (:meth:`HFBackend.policy_forward`, :meth:`HFBackend.critic_forward`) does the same with
  gradient: the prefix's keys/values are expanded (not copied) across rows, so every row's loss flows
  back into the one prefix forward; the response tokens then run against the gathered cache.

Work saved per batch: ``(b - 1) P`` prefix tokens plus the repeated remainders; the attention of each
row over the prefix is still computed (that is per row by nature). With gradient checkpointing on,
transformers refuses caches in training forwards, so the training path falls back to the plain one.

Teacher-forced evaluation builds ``[left pads | prompt | response tokens (right padded)]`` (plain)
or the shared layout above; the state before response token ``t`` is the position ``Lp - 1 + t``
(``Lp`` = padded prompt length), so ``V(s_0)`` is read at the last prompt token. Log-probs and
entropies are computed from the final hidden states of response positions only (the LM head never
sees a prompt position), in chunks of valid tokens (gradient-checkpointed when grads are on), so the
``(B, T, V)`` fp32 logits are never materialised at once.

Prompts may contain carried response tokens (T-PPO re-encodes unfinished rows): nothing here
assumes the prompt is only the problem.

Dropout is disabled in every model: PPO's ratio is 1 on the first minibatch only if the training
forward reproduces the sampling distribution.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from testbed.protocols import StepOutput

from .critic import ValueHead, ValueModel, disable_dropout, trunk_forward
from .critics import CRITIC_LAYOUTS, HeadCritic, SeparateCritic
from .kvcache import Columns, Stream, cache_select, new_cache, open_stream
from .models import load_causal_lm, quiet_progress, torch_dtype
from .prefix import PrefixPlan, plan_prefix, prefill

__all__ = ["CRITIC_LAYOUTS", "HFBackend", "HeadCritic", "PrefixPlan", "SeparateCritic", "make_backend", "plan_prefix"]


@contextmanager
def _train_mode(modules: Iterable[nn.Module | None], on: bool) -> Iterator[None]:
    """Temporarily put modules in train mode (for transformers' gradient checkpointing, which only
    runs in training mode; dropout is disabled, so train and eval compute the same function)."""
    mods = [m for m in modules if m is not None]
    if not on:
        yield
        return
    before = [m.training for m in mods]
    for m in mods:
        m.train()
    try:
        yield
    finally:
        for m, was in zip(mods, before):
            m.train(was)


def _used_columns(mask: Tensor) -> int:
    """Columns up to the last one any row uses (right padding beyond it is never computed)."""
    used = mask.any(0).nonzero()
    return int(used[-1]) + 1 if used.numel() else 0


class HFBackend:
    """Policy (a transformers causal LM) plus critic, implementing :class:`testbed.protocols.Backend`.

    Args:
        policy: a ``*ForCausalLM`` model on its device and dtype (its ``base_model`` is the trunk,
            its output embedding the LM head).
        eos_token_id: the task's end-of-sequence id.
        critic: ``"separate"`` (:class:`SeparateCritic`, a :class:`ValueModel` copied from the policy)
            or ``"head"`` (:class:`HeadCritic`, a :class:`ValueHead` on the policy's detached last
            hidden state, see ``critic.py``).
        reference: keep a frozen copy of the initial policy for :meth:`reference_forward`.
        gradient_checkpointing: checkpoint the trunks' layers in training forwards.
        logit_chunk: tokens per chunk when turning hidden states into log-probs/entropies.
        pad_token_id: id written into padding (never attended to); default ``eos_token_id``.
        seed: seeds the value head's initialisation.
        head_init_std: value-head init std (None: ``1/(hidden+1)``; 0: zero init).
        shared_prefix: compute the rows' common prompt prefix once (decoding and training), see the
            module docstring; False gives the plain full-sequence forwards.
        fast_decode: decode plain Llama trunks through :mod:`llm_backend.fastdecode` (pre-allocated KV
            cache, a plain-torch forward; same hooks); other trunks and LoRA use transformers.

    Attributes:
        policy, reference: the modules (``reference`` None unless asked for).
        critic_impl: the :class:`SeparateCritic` or :class:`HeadCritic` (None after :meth:`drop_critic`);
            ``critic`` and ``value_head`` name its module for the layout that has one (else None).

    ``step()`` returns the backend's own logits tensor: treat it as read-only.
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        eos_token_id: int,
        critic: str = "separate",
        reference: bool = False,
        gradient_checkpointing: bool = False,
        logit_chunk: int = 512,
        pad_token_id: int | None = None,
        seed: int = 0,
        head_init_std: float | None = None,
        shared_prefix: bool = True,
        lora: dict | None = None,
        fast_decode: bool = False,
    ):
        if critic not in CRITIC_LAYOUTS:
            raise ValueError(f"critic must be one of {CRITIC_LAYOUTS}, got {critic!r}")
        self.policy = disable_dropout(policy).eval()
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(self.eos_token_id if pad_token_id is None else pad_token_id)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.logit_chunk = int(logit_chunk)
        self.shared_prefix = bool(shared_prefix)
        self.fast_decode = bool(fast_decode)
        param = next(policy.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        self.vocab_size: int = int(self._lm_head.weight.shape[0])
        hidden = policy.config.get_text_config().hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if critic == "separate":
                self.critic_impl: SeparateCritic | HeadCritic | None = SeparateCritic(
                    ValueModel.from_policy(policy, head_init_std).eval(), self.fast_decode)
            else:
                self.critic_impl = HeadCritic(ValueHead(hidden, head_init_std).to(self.device), self._trunk)
        # LoRA after the critic is built: a separate critic copies the base weights, not the adapters
        self.peft_model = apply_lora(self.policy, lora) if lora else None
        self.reference: nn.Module | None = None
        self.reference_adapters_off = bool(reference and self.peft_model is not None)
        if reference and self.peft_model is None:
            self.reference = copy.deepcopy(policy).eval()
            self.reference.requires_grad_(False)
        if self.gradient_checkpointing:
            for m in (self.policy, self.critic.trunk if self.critic is not None else None):
                if m is None:
                    continue
                if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x name
                    m.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._check_trunk_head_split()
        self._reset_decoding()

    # ------------------------------------------------------------------ model pieces

    @property
    def critic(self) -> ValueModel | None:
        """The separate critic's :class:`ValueModel` (None for the head layout or without a critic)."""
        return self.critic_impl.model if isinstance(self.critic_impl, SeparateCritic) else None

    @property
    def value_head(self) -> ValueHead | None:
        """The head layout's :class:`ValueHead` (None for the separate layout or without a critic)."""
        return self.critic_impl.model if isinstance(self.critic_impl, HeadCritic) else None

    @property
    def _trunk(self) -> nn.Module:
        return self.policy.base_model

    @property
    def _lm_head(self) -> nn.Module:
        return self.policy.get_output_embeddings()

    def _check_trunk_head_split(self) -> None:
        """This backend computes logits as ``lm_head(trunk(x))`` (to share the trunk's hidden state
        with a value head and to chunk the vocabulary projection). Models that post-process logits
        (soft-capping, scaling) would silently differ from ``generate()``: refuse them."""
        ids = torch.tensor([[1, 2, 3]], device=self.device) % self.vocab_size
        with torch.no_grad():
            full = self.policy(input_ids=ids, use_cache=False).logits
            split = self._lm_head(self._trunk(input_ids=ids, use_cache=False).last_hidden_state)
        if not torch.allclose(full.float(), split.float(), rtol=1e-3, atol=1e-3):
            raise ValueError(f"{type(self.policy).__name__}: logits are not lm_head(base_model(x)); unsupported model")

    def drop_critic(self) -> None:
        """Free the critic (for estimators and stop rules that use no values, e.g. GRPO): afterwards
        ``critic_parameters()`` is empty, the state dict holds the policy only, and values cannot be
        requested."""
        self.critic_impl = None

    def policy_parameters(self) -> Iterable[nn.Parameter]:
        """The policy's trainable parameters."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    def critic_parameters(self) -> Iterable[nn.Parameter]:
        """The critic's trainable parameters: trunk + head (``separate``) or the head only (``head``)."""
        if self.critic_impl is None:
            return []
        return [p for p in self.critic_impl.module.parameters() if p.requires_grad]

    def parameters(self) -> Iterable[nn.Parameter]:
        """Policy then critic parameters (no reference)."""
        return list(self.policy_parameters()) + list(self.critic_parameters())

    def _plan(self, prompts: Sequence[Sequence[int]]) -> PrefixPlan | None:
        return plan_prefix(prompts, pad_token_id=self.pad_token_id, device=self.device) if self.shared_prefix else None

    # ------------------------------------------------------------------ decoding

    def _reset_decoding(self) -> None:
        self._cols: Columns | None = None
        self._pstream: Stream | None = None
        self._logits: Tensor | None = None  # (b, V) fp32, valid while the policy has consumed every column
        self._values_now: Tensor | None = None  # (b,) fp32 value of the current state, if computed

    @property
    def num_active(self) -> int:
        """Rows still decoding."""
        return 0 if self._cols is None else int(self._cols.ids.shape[0])

    def _check_ids(self, ids: Tensor) -> None:
        if ids.numel() and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")

    def _left_pad(self, prompts: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        lens = [len(p) for p in prompts]
        if any(n == 0 for n in lens):
            raise ValueError("every prompt needs at least one token")
        width = max(lens, default=1)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            attn[i, width - len(p):] = 1
        self._check_ids(ids)
        ids, attn = ids.to(self.device), attn.to(self.device)
        return ids, attn, (attn.cumsum(1) - 1).clamp_(min=0)

    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        """Open a decoding batch. ``prompts[i]`` may already hold carried response tokens (T-PPO)."""
        self._reset_decoding()
        plan = self._plan(prompts)
        if plan is None:
            ids, attn, pos = self._left_pad(prompts)
        else:
            self._check_ids(plan.prefix)
            self._check_ids(plan.rest)
            ids, attn = plan.rows()
            pos = (attn.cumsum(1) - 1).clamp_(min=0)
        self._cols = Columns(ids, attn, pos, int(ids.shape[1]), plan)
        self._pstream = open_stream(self._trunk, self.fast_decode)
        if self.critic_impl is not None:
            self.critic_impl.begin()

    @torch.no_grad()
    def _policy_catch_up(self) -> None:
        h = self._pstream.catch_up(self._cols)
        if h is None:
            return
        self._logits = self._pstream.logits(self._lm_head, h[:, -1]).float()
        if self.critic_impl is not None:
            self.critic_impl.observe(h)

    @torch.no_grad()
    def _critic_values(self) -> Tensor:
        """(b, n) values of the states reached since the previous request (n may be 0)."""
        if self.critic_impl is None:
            raise RuntimeError("values requested from a backend without a critic (drop_critic() was called)")
        chunk = self.critic_impl.values(self._cols)
        if chunk is None:
            chunk = torch.zeros(self.num_active, 0, device=self.device)
        return chunk

    def step(self, *, with_values: bool = True) -> StepOutput:
        """Next-token logits (b, V) fp32 of the active rows; if asked, their values (b,) and
        ``chunk_values`` (b, n): the values of the ``n`` states reached since the previous values
        request (all states since ``begin`` for the first), oldest first, the last column being
        ``values`` (``n = 0`` if values were requested twice at one state; then ``values`` repeats the
        last ones). States of rows dropped between two requests are never valued."""
        if self._cols is None:
            raise RuntimeError("step() before begin()")
        b = self.num_active
        if b == 0:
            empty = torch.zeros(0, device=self.device)
            return StepOutput(logits=empty.new_zeros(0, self.vocab_size), values=empty if with_values else None,
                              chunk_values=empty.new_zeros(0, 0) if with_values else None)
        self._policy_catch_up()
        if not with_values:
            return StepOutput(logits=self._logits, values=None)
        chunk = self._critic_values()
        if chunk.shape[1]:
            self._values_now = chunk[:, -1]
        return StepOutput(logits=self._logits, values=self._values_now, chunk_values=chunk)

    def advance(self, tokens: Tensor, keep: Tensor) -> None:
        """Append ``tokens`` (b,) to the active rows, then keep only the rows where ``keep`` (b,) is True."""
        if self._cols is None:
            raise RuntimeError("advance() before begin()")
        c = self._cols
        b = c.ids.shape[0]
        tokens = torch.as_tensor(tokens, device=self.device).long().reshape(-1)
        keep = torch.as_tensor(keep, device=self.device).bool().reshape(-1)
        if tokens.shape[0] != b or keep.shape[0] != b:
            raise ValueError(f"advance: expected {b} tokens and keep flags, got {tokens.shape[0]} and {keep.shape[0]}")
        c.ids = torch.cat([c.ids, tokens[:, None]], dim=1)
        c.attn = torch.cat([c.attn, c.attn.new_ones(b, 1)], dim=1)
        c.pos = torch.cat([c.pos, c.pos[:, -1:] + 1], dim=1)
        self._logits = None
        self._values_now = None
        if not bool(keep.all()):
            self._select(keep.nonzero().squeeze(1))

    def _select(self, index: Tensor) -> None:
        """Keep rows ``index`` everywhere; then trim columns that are padding in every kept row."""
        c = self._cols
        c.ids, c.attn, c.pos = c.ids[index], c.attn[index], c.pos[index]
        if c.plan is not None:
            c.plan = c.plan.select(index)
        self._pstream.select(index)
        crit = self.critic_impl
        if crit is not None:
            crit.select(index)
        if index.numel() == 0:
            return
        # leading columns that are padding in every surviving row: no query attends to them (never
        # with a shared prefix, whose first column every row attends)
        n = int(c.attn.any(0).long().argmax())
        if n > 0 and self._pstream.trimmable() and (crit is None or crit.trimmable()):
            c.ids, c.attn, c.pos = c.ids[:, n:], c.attn[:, n:], c.pos[:, n:]
            self._pstream.trim_left(n)
            if crit is not None:
                crit.trim_left(n)
            c.prompt_cols -= n

    # ------------------------------------------------------------------ teacher-forced

    def _teacher_inputs(
        self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, int, Tensor, Tensor]:
        """``[left pads | prompt | response]`` ids, attention mask and positions; ``Lp``; the
        response tokens (masked ones replaced by the pad id) and the bool mask, on the device."""
        p_ids, p_attn, _ = self._left_pad(prompts)
        tokens, mask = self._response_inputs(tokens, mask, p_ids.shape[0])
        ids = torch.cat([p_ids, tokens], dim=1)
        attn = torch.cat([p_attn, mask.long()], dim=1)
        pos = (attn.cumsum(1) - 1).clamp_(min=0)
        return ids, attn, pos, p_ids.shape[1], tokens, mask

    def _response_inputs(self, tokens: Tensor, mask: Tensor, B: int) -> tuple[Tensor, Tensor]:
        tokens = tokens.to(self.device).long()
        mask = mask.to(self.device).bool()
        if tokens.shape[0] != B or tokens.shape != mask.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must be (B, T), B = {B}")
        return torch.where(mask, tokens, torch.full_like(tokens, self.pad_token_id)), mask

    def response_states(self, trunk: nn.Module, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, T, H) last hidden states of ``trunk`` at the state before each response token (the
        last prompt token for t = 0), through the shared prefix when there is one. Differentiable
        when grads are enabled; rows at masked positions are meaningless (never read unmasked)."""
        grad_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        plan = None if grad_ckpt else self._plan(prompts)
        if plan is None:
            ids, attn, pos, Lp, tokens, mask = self._teacher_inputs(prompts, tokens, mask)
            T = tokens.shape[1]
            with _train_mode([trunk], grad_ckpt):
                hidden = trunk_forward(trunk, ids, attn, pos)
            return hidden[:, Lp - 1:Lp - 1 + T]
        self._check_ids(plan.prefix)
        self._check_ids(plan.rest)
        B = plan.inverse.shape[0]
        tokens, mask = self._response_inputs(tokens, mask, B)
        T = tokens.shape[1]
        R = plan.rest.shape[1]
        cache = new_cache(trunk.config)
        if plan.identity:  # every row its own remainder: remainder and response in one forward
            tail = (tokens[:, :T - 1], mask[:, :T - 1]) if T > 1 else None
            return prefill(trunk, plan, cache, tail)[:, R - 1:R - 1 + T]
        # distinct remainders once, then every row's response against its gathered cache
        first = prefill(trunk, plan, cache)[:, -1][plan.inverse]  # (B, H): state before token 0
        if T <= 1:
            return first[:, None, :][:, :T]
        cache_select(cache, plan.inverse)
        rest_attn = plan.rest_attn[plan.inverse]
        attn = torch.cat([torch.ones(B, plan.P, dtype=torch.long, device=self.device), rest_attn,
                          mask[:, :T - 1].long()], dim=1)
        pos = (plan.P + rest_attn.sum(1, keepdim=True)) + torch.arange(T - 1, device=self.device)
        later = trunk_forward(trunk, tokens[:, :T - 1], attn, pos, cache)
        return torch.cat([first[:, None, :], later], dim=1)

    def _logprob_entropy(self, hidden: Tensor, tokens: Tensor, temperature: float, lm_head: nn.Module):
        """(n, H) hidden states and (n,) tokens -> (n,) log-probs and entropies of softmax(logits / T)."""

        def chunk_fn(h: Tensor, tok: Tensor) -> tuple[Tensor, Tensor]:
            logits = lm_head(h).float()
            if temperature != 1.0:
                logits = logits / temperature
            logz = torch.logsumexp(logits, dim=-1)
            lp = logits.gather(-1, tok[:, None]).squeeze(-1) - logz
            ent = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
            return lp, ent

        grad = torch.is_grad_enabled() and hidden.requires_grad
        lps, ents = [], []
        for s in range(0, hidden.shape[0], self.logit_chunk):
            h, tok = hidden[s:s + self.logit_chunk], tokens[s:s + self.logit_chunk]
            if grad:
                lp, ent = checkpoint(chunk_fn, h, tok, use_reentrant=False)
            else:
                lp, ent = chunk_fn(h, tok)
            lps.append(lp)
            ents.append(ent)
        if not lps:
            z = hidden.new_zeros(0, dtype=torch.float32)
            return z, z
        return torch.cat(lps), torch.cat(ents)

    def _response_logprobs(
        self, model: nn.Module, prompts, tokens: Tensor, mask: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor]:
        tokens, mask = self._response_inputs(tokens, mask, len(prompts))
        zeros = torch.zeros(tokens.shape, dtype=torch.float32, device=self.device)
        n = _used_columns(mask)  # a minibatch's rows may all be shorter than the batch's longest
        states = self.response_states(model.base_model, prompts, tokens[:, :n], mask[:, :n])
        m = mask[:, :n]
        lp, ent = self._logprob_entropy(states[m], tokens[:, :n][m], temperature, model.get_output_embeddings())
        return zeros.masked_scatter(mask, lp), zeros.masked_scatter(mask, ent)

    def policy_forward(
        self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor, *, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced ``(logprobs, entropy)``, both (B, T) fp32, of ``tokens`` under
        softmax(logits / temperature). Differentiable w.r.t. the policy; masked positions hold 0."""
        return self._response_logprobs(self.policy, prompts, tokens, mask, temperature)

    @torch.no_grad()
    def reference_forward(
        self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor, *, temperature: float
    ) -> Tensor:
        """(B, T) log-probs of ``tokens`` under the frozen initial policy (needs ``reference=True``)."""
        if self.reference_adapters_off:  # the base model is the initial policy: no second copy
            with torch.no_grad(), self.peft_model.disable_adapter():
                return self._response_logprobs(self.policy, prompts, tokens, mask, temperature)[0]
        if self.reference is None:
            raise RuntimeError("reference_forward needs a reference model (model.reference=true)")
        return self._response_logprobs(self.reference, prompts, tokens, mask, temperature)[0]

    def critic_forward(self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced values (B, T) fp32: V(s_t), read at the position before response token t
        (the last prompt token for t = 0). Differentiable w.r.t. the critic; masked positions hold 0."""
        if self.critic_impl is None:
            raise RuntimeError("critic_forward on a backend without a critic (drop_critic() was called)")
        tokens, mask = self._response_inputs(tokens, mask, len(prompts))
        n = _used_columns(mask)
        values = torch.zeros(mask.shape, dtype=torch.float32, device=self.device)
        used_tokens, used_mask = tokens[:, :n], mask[:, :n]
        values[:, :n] = self.critic_impl.forward(lambda trunk: self.response_states(trunk, prompts, used_tokens, used_mask))
        return torch.where(mask, values, torch.zeros_like(values))

    # ------------------------------------------------------------------ checkpoints

    def _modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"policy": self.policy}
        if self.critic_impl is not None:
            mods[self.critic_impl.name] = self.critic_impl.module
        return mods

    @staticmethod
    def _own_state(module: nn.Module) -> dict[str, Tensor]:
        """``module.state_dict()`` without tied aliases (safetensors refuses shared storage)."""
        names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
        return {k: v for k, v in module.state_dict().items() if k in names}

    def _state(self, prefix: str, module: nn.Module) -> dict[str, Tensor]:
        """What a checkpoint holds of one module: with LoRA, the policy's adapters only (the base
        weights are rebuilt from the model path, as the reference is)."""
        state = self._own_state(module)
        if prefix == "policy" and self.peft_model is not None:
            state = {k: v for k, v in state.items() if "lora_" in k}
        return state

    def state_dict(self) -> dict[str, Tensor]:
        """Policy, critic and value head weights under ``policy.``, ``critic.``, ``value_head.``
        (the frozen reference is rebuilt from the model path and is not included; with LoRA the
        policy's part is its adapters)."""
        out: dict[str, Tensor] = {}
        for prefix, module in self._modules().items():
            out.update({f"{prefix}.{k}": v for k, v in self._state(prefix, module).items()})
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`state_dict`; raises on missing or unexpected keys."""
        mods = self._modules()
        parts: dict[str, dict[str, Tensor]] = {p: {} for p in mods}
        unknown = []
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix in parts:
                parts[prefix][rest] = value
            else:
                unknown.append(key)
        if unknown:
            raise KeyError(f"unexpected keys for this backend's layout: {unknown[:5]}")
        for prefix, module in mods.items():
            expected = set(self._state(prefix, module))
            missing = expected - set(parts[prefix])
            if missing:
                raise KeyError(f"missing {prefix} keys: {sorted(missing)[:5]}")
            module.load_state_dict(parts[prefix], strict=False)
            if hasattr(module, "tie_weights"):
                module.tie_weights()

    def save_pretrained(self, directory: str, tokenizer: Any = None) -> None:
        """The policy as a transformers checkpoint (plus ``tokenizer`` if given)."""
        with quiet_progress():
            if self.peft_model is None:
                self.policy.save_pretrained(directory)
            else:  # the merged model loads anywhere; the adapters alone beside it, for peft users
                copy.deepcopy(self.peft_model).merge_and_unload().save_pretrained(directory)
                self.peft_model.save_pretrained(str(Path(directory) / "adapter"))
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)


LORA_KEYS = {"r": 8, "alpha": 16.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0}
"""``model.lora`` keys and their defaults."""


def apply_lora(policy: nn.Module, spec: dict) -> Any:
    """Inject LoRA adapters (``peft``) into ``policy`` in place, freeze its other weights, and return the
    ``PeftModel`` around it (its ``disable_adapter()`` gives the base model back). ``spec``: ``model.lora``."""
    unknown = set(spec) - set(LORA_KEYS)
    if unknown:
        raise ValueError(f"model.lora: unknown key(s) {sorted(unknown)}; known: {sorted(LORA_KEYS)}")
    s = {**LORA_KEYS, **spec}
    if not isinstance(s["r"], int) or s["r"] < 1:
        raise ValueError(f"model.lora.r: must be an integer >= 1, got {s['r']!r}")
    if not float(s["alpha"]) > 0:
        raise ValueError(f"model.lora.alpha: must be > 0, got {s['alpha']!r}")
    if not 0 <= float(s["dropout"]) < 1:
        raise ValueError(f"model.lora.dropout: must be in [0, 1), got {s['dropout']!r}")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("model.lora needs peft: pip install -e '.[llm]'") from None
    targets = list(s["target_modules"])
    names = {n.rsplit(".", 1)[-1] for n, m in policy.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"model.lora.target_modules: {missing} are not linear layers of this model; it has {sorted(names)}")
    cfg = LoraConfig(r=s["r"], lora_alpha=float(s["alpha"]), lora_dropout=float(s["dropout"]), target_modules=targets,
                     bias="none")
    return get_peft_model(policy, cfg)


def make_backend(model_cfg: Any, task: Any, *, seed: int) -> HFBackend:
    """Entry point ``llm_backend.backend:make_backend``: the backend for a ``model`` config section
    (:class:`testbed.config.ModelSection`) and a task (``vocab_size``, ``eos_token_id``)."""
    policy = load_causal_lm(model_cfg, vocab_size=int(task.vocab_size), seed=seed)
    backend = HFBackend(
        policy,
        eos_token_id=int(task.eos_token_id),
        critic=model_cfg.critic,
        reference=bool(model_cfg.reference),
        gradient_checkpointing=bool(model_cfg.gradient_checkpointing),
        seed=seed,
        shared_prefix=bool(model_cfg.shared_prefix),
        lora=dict(model_cfg.lora or {}),
        fast_decode=bool(model_cfg.fast_decode),
    )
    if int(task.vocab_size) > backend.vocab_size:
        raise ValueError(f"task vocabulary ({task.vocab_size}) exceeds the model's ({backend.vocab_size})")
    if torch_dtype(model_cfg.dtype) != backend.dtype:
        raise RuntimeError(f"policy dtype {backend.dtype} != model.dtype {model_cfg.dtype}")
    return backend
