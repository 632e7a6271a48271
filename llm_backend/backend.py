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
  state covered by that chunk are kept in :attr:`HFBackend.chunk_values`.
- ``advance(tokens, keep)`` appends one column, then drops the rows where ``keep`` is False from the
  ids, masks and every cache (``batch_select_indices``); leading columns that became padding in
  every surviving row are trimmed from the caches too. Dropped rows cost nothing afterwards.

Teacher-forced evaluation builds ``[left pads | prompt | response tokens (right padded)]``; the
state before response token ``t`` is the position ``Lp - 1 + t`` (``Lp`` = padded prompt length),
so ``V(s_0)`` is read at the last prompt token. Log-probs and entropies are computed from the final
hidden states in chunks of valid tokens only (gradient-checkpointed when grads are on), so the
``(B, T, V)`` fp32 logits are never materialised at once.

Prompts may contain carried response tokens (T-PPO re-encodes unfinished rows): nothing here
assumes the prompt is only the problem.

Dropout is disabled in every model: PPO's ratio is 1 on the first minibatch only if the training
forward reproduces the sampling distribution.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from testbed.protocols import StepOutput

from .critic import ValueHead, ValueModel, disable_dropout
from .models import load_causal_lm, torch_dtype

CRITIC_LAYOUTS = ("separate", "head")


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


def _new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=config)


def _cache_select(cache: Any, index: Tensor) -> None:
    if cache is not None and cache.get_seq_length() > 0:
        cache.batch_select_indices(index)


def _cache_trimmable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return cache is None or all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def _cache_trim_left(cache: Any, n: int) -> None:
    """Drop the first ``n`` cached positions of every layer (columns that are padding in every row)."""
    if cache is None or n <= 0:
        return
    for layer in cache.layers:
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[..., n:, :]
            layer.values = layer.values[..., n:, :]


class HFBackend:
    """Policy (a transformers causal LM) plus critic, implementing :class:`testbed.protocols.Backend`.

    Args:
        policy: a ``*ForCausalLM`` model on its device and dtype (its ``base_model`` is the trunk,
            its output embedding the LM head).
        eos_token_id: the task's end-of-sequence id.
        critic: ``"separate"`` (a :class:`ValueModel` copied from the policy) or ``"head"`` (a
            :class:`ValueHead` on the policy's detached last hidden state, see ``critic.py``).
        reference: keep a frozen copy of the initial policy for :meth:`reference_forward`.
        stop_check_every: how often the collector requests values (stored for it; the critic's
            catch-up makes any schedule correct).
        gradient_checkpointing: checkpoint the trunks' layers in training forwards.
        logit_chunk: tokens per chunk when turning hidden states into log-probs/entropies.
        pad_token_id: id written into padding (never attended to); default ``eos_token_id``.
        seed: seeds the value head's initialisation.
        head_init_std: value-head init std (None: ``1/(hidden+1)``; 0: zero init).

    Attributes:
        policy, critic, value_head, reference: the modules (``critic`` is None for the head layout,
            ``value_head`` None for the separate one, ``reference`` None unless asked for).
        chunk_values: (b, n) fp32 after a ``step(with_values=True)``: values of the ``n`` states
            reached since the previous values request (all states since ``begin`` for the first),
            oldest first; the last column is the current state's value (``n = 0`` if values were
            requested twice at one state). With ``stop_check_every = k`` the catch-up forward
            computes these anyway; a collector may use them instead of a teacher-forced pass.
            States of rows dropped between two requests are never valued.

    ``step()`` returns the backend's own logits tensor: treat it as read-only.
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        eos_token_id: int,
        critic: str = "separate",
        reference: bool = False,
        stop_check_every: int = 1,
        gradient_checkpointing: bool = False,
        logit_chunk: int = 512,
        pad_token_id: int | None = None,
        seed: int = 0,
        head_init_std: float | None = None,
    ):
        if critic not in CRITIC_LAYOUTS:
            raise ValueError(f"critic must be one of {CRITIC_LAYOUTS}, got {critic!r}")
        self.policy = disable_dropout(policy).eval()
        self.critic_layout = critic
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(self.eos_token_id if pad_token_id is None else pad_token_id)
        self.stop_check_every = int(stop_check_every)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.logit_chunk = int(logit_chunk)
        param = next(policy.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        self.vocab_size: int = int(self._lm_head.weight.shape[0])
        hidden = policy.config.get_text_config().hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if critic == "separate":
                self.critic: ValueModel | None = ValueModel.from_policy(policy, head_init_std).eval()
                self.value_head: ValueHead | None = None
            else:
                self.critic = None
                self.value_head = ValueHead(hidden, head_init_std).to(self.device)
        self.reference: nn.Module | None = None
        if reference:
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

    def policy_parameters(self) -> Iterable[nn.Parameter]:
        """The policy's trainable parameters."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    def critic_parameters(self) -> Iterable[nn.Parameter]:
        """The critic's trainable parameters: trunk + head (``separate``) or the head only (``head``)."""
        module = self.critic if self.critic is not None else self.value_head
        return [p for p in module.parameters() if p.requires_grad]

    def parameters(self) -> Iterable[nn.Parameter]:
        """Policy then critic parameters (no reference)."""
        return list(self.policy_parameters()) + list(self.critic_parameters())

    # ------------------------------------------------------------------ decoding

    def _reset_decoding(self) -> None:
        self._ids: Tensor | None = None  # (b, L) long
        self._attn: Tensor | None = None  # (b, L) long
        self._pos: Tensor | None = None  # (b, L) long
        self._prompt_cols = 0  # padded prompt length Lp (columns before the first response token)
        self._p_done = 0  # columns consumed by the policy cache
        self._c_done = 0  # columns consumed by the critic cache (separate critic)
        self._pcache: Any = None
        self._ccache: Any = None
        self._logits: Tensor | None = None  # (b, V) fp32, valid when _p_done == L
        self._values_now: Tensor | None = None  # (b,) fp32 value of the current state, if computed
        self._hidden_hist: list[Tensor] = []  # head layout: last hidden state of states not yet valued
        self.chunk_values: Tensor | None = None  # see the class docstring

    @property
    def num_active(self) -> int:
        """Rows still decoding."""
        return 0 if self._ids is None else int(self._ids.shape[0])

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
        if ids.numel() and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        ids, attn = ids.to(self.device), attn.to(self.device)
        return ids, attn, (attn.cumsum(1) - 1).clamp_(min=0)

    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        """Open a decoding batch. ``prompts[i]`` may already hold carried response tokens (T-PPO)."""
        self._reset_decoding()
        self._ids, self._attn, self._pos = self._left_pad(prompts)
        self._prompt_cols = self._ids.shape[1]
        self._pcache = _new_cache(self.policy.config)
        if self.critic is not None:
            self._ccache = _new_cache(self.critic.config)

    @torch.no_grad()
    def _policy_catch_up(self) -> None:
        L = self._ids.shape[1]
        if self._p_done == L:
            return
        cols = slice(self._p_done, L)
        out = self._trunk(
            input_ids=self._ids[:, cols],
            attention_mask=self._attn,
            position_ids=self._pos[:, cols],
            past_key_values=self._pcache,
            use_cache=True,
        )
        h = out.last_hidden_state[:, -1]
        self._logits = self._lm_head(h).float()
        self._p_done = L
        if self.value_head is not None:
            self._hidden_hist.append(h)

    @torch.no_grad()
    def _critic_catch_up(self) -> Tensor:
        b = self._ids.shape[0]
        if self.value_head is not None:  # head layout: hidden states kept by the policy's steps
            if self._hidden_hist:
                chunk = self.value_head(torch.stack(self._hidden_hist, dim=1))
                self._hidden_hist = []
                self._values_now = chunk[:, -1]
            else:
                chunk = torch.zeros(b, 0, device=self.device)
        else:
            L = self._ids.shape[1]
            if self._c_done < L:
                cols = slice(self._c_done, L)
                vals = self.critic(
                    self._ids[:, cols],
                    attention_mask=self._attn,
                    position_ids=self._pos[:, cols],
                    past_key_values=self._ccache,
                    use_cache=True,
                ).values
                # only response states: from the last prompt column on
                chunk = vals[:, max(self._prompt_cols - 1 - self._c_done, 0):]
                self._c_done = L
                self._values_now = vals[:, -1]
            else:
                chunk = torch.zeros(b, 0, device=self.device)
        self.chunk_values = chunk
        return self._values_now

    def step(self, *, with_values: bool = True) -> StepOutput:
        """Next-token logits (b, V) fp32 of the active rows, and their values (b,) if asked."""
        if self._ids is None:
            raise RuntimeError("step() before begin()")
        if self._ids.shape[0] == 0:
            empty = torch.zeros(0, device=self.device)
            return StepOutput(logits=empty.new_zeros(0, self.vocab_size), values=empty if with_values else None)
        self._policy_catch_up()
        values = self._critic_catch_up() if with_values else None
        return StepOutput(logits=self._logits, values=values)

    def advance(self, tokens: Tensor, keep: Tensor) -> None:
        """Append ``tokens`` (b,) to the active rows, then keep only the rows where ``keep`` (b,) is True."""
        if self._ids is None:
            raise RuntimeError("advance() before begin()")
        b = self._ids.shape[0]
        tokens = torch.as_tensor(tokens, device=self.device).long().reshape(-1)
        keep = torch.as_tensor(keep, device=self.device).bool().reshape(-1)
        if tokens.shape[0] != b or keep.shape[0] != b:
            raise ValueError(f"advance: expected {b} tokens and keep flags, got {tokens.shape[0]} and {keep.shape[0]}")
        self._ids = torch.cat([self._ids, tokens[:, None]], dim=1)
        self._attn = torch.cat([self._attn, self._attn.new_ones(b, 1)], dim=1)
        self._pos = torch.cat([self._pos, self._pos[:, -1:] + 1], dim=1)
        self._logits = None
        self._values_now = None
        if not bool(keep.all()):
            self._select(keep.nonzero().squeeze(1))

    def _select(self, index: Tensor) -> None:
        """Keep rows ``index`` everywhere; then trim columns that are padding in every kept row."""
        self._ids, self._attn, self._pos = self._ids[index], self._attn[index], self._pos[index]
        _cache_select(self._pcache, index)
        _cache_select(self._ccache, index)
        self._hidden_hist = [h[index] for h in self._hidden_hist]
        if index.numel() == 0:
            return
        # leading columns that are padding in every surviving row: no query attends to them
        n = int(self._attn.any(0).long().argmax())
        if n > 0 and _cache_trimmable(self._pcache) and _cache_trimmable(self._ccache):
            self._ids, self._attn, self._pos = self._ids[:, n:], self._attn[:, n:], self._pos[:, n:]
            _cache_trim_left(self._pcache, min(n, self._p_done))
            _cache_trim_left(self._ccache, min(n, self._c_done))
            self._p_done = max(self._p_done - n, 0)
            self._c_done = max(self._c_done - n, 0)
            self._prompt_cols -= n

    # ------------------------------------------------------------------ teacher-forced

    def _teacher_inputs(
        self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, int, Tensor, Tensor]:
        """``[left pads | prompt | response]`` ids, attention mask and positions; ``Lp``; the
        response tokens (masked ones replaced by the pad id) and the bool mask, on the device."""
        p_ids, p_attn, _ = self._left_pad(prompts)
        tokens = tokens.to(self.device).long()
        mask = mask.to(self.device).bool()
        if tokens.shape[0] != p_ids.shape[0] or tokens.shape != mask.shape:
            raise ValueError(
                f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must be (B, T), B = {p_ids.shape[0]}"
            )
        tokens = torch.where(mask, tokens, torch.full_like(tokens, self.pad_token_id))
        ids = torch.cat([p_ids, tokens], dim=1)
        attn = torch.cat([p_attn, mask.long()], dim=1)
        pos = (attn.cumsum(1) - 1).clamp_(min=0)
        return ids, attn, pos, p_ids.shape[1], tokens, mask

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
        ids, attn, pos, Lp, tokens, mask = self._teacher_inputs(prompts, tokens, mask)
        T = tokens.shape[1]
        with _train_mode([model], self.gradient_checkpointing and torch.is_grad_enabled()):
            out = model.base_model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        hidden = out.last_hidden_state
        states = hidden[:, Lp - 1:Lp - 1 + T]  # state before response token t
        lp, ent = self._logprob_entropy(states[mask], tokens[mask], temperature, model.get_output_embeddings())
        zeros = torch.zeros(tokens.shape, dtype=torch.float32, device=self.device)
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
        if self.reference is None:
            raise RuntimeError("reference_forward needs a reference model (model.reference=true)")
        return self._response_logprobs(self.reference, prompts, tokens, mask, temperature)[0]

    def critic_forward(self, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor) -> Tensor:
        """Teacher-forced values (B, T) fp32: V(s_t), read at the position before response token t
        (the last prompt token for t = 0). Differentiable w.r.t. the critic; masked positions hold 0."""
        ids, attn, pos, Lp, tokens, mask = self._teacher_inputs(prompts, tokens, mask)
        T = tokens.shape[1]
        if self.critic is not None:
            with _train_mode([self.critic], self.gradient_checkpointing and torch.is_grad_enabled()):
                values = self.critic(ids, attention_mask=attn, position_ids=pos).values
            values = values[:, Lp - 1:Lp - 1 + T]
        else:  # shared trunk, detached: the value loss trains the head only
            with torch.no_grad():
                out = self._trunk(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
                hidden = out.last_hidden_state
            values = self.value_head(hidden[:, Lp - 1:Lp - 1 + T])
        return torch.where(mask, values, torch.zeros_like(values))

    # ------------------------------------------------------------------ checkpoints

    def _modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"policy": self.policy}
        if self.critic is not None:
            mods["critic"] = self.critic
        if self.value_head is not None:
            mods["value_head"] = self.value_head
        return mods

    @staticmethod
    def _own_state(module: nn.Module) -> dict[str, Tensor]:
        """``module.state_dict()`` without tied aliases (safetensors refuses shared storage)."""
        names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
        return {k: v for k, v in module.state_dict().items() if k in names}

    def state_dict(self) -> dict[str, Tensor]:
        """Policy, critic and value head weights under ``policy.``, ``critic.``, ``value_head.``
        (the frozen reference is rebuilt from the model path and is not included)."""
        out: dict[str, Tensor] = {}
        for prefix, module in self._modules().items():
            out.update({f"{prefix}.{k}": v for k, v in self._own_state(module).items()})
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
            expected = set(self._own_state(module))
            missing = expected - set(parts[prefix])
            if missing:
                raise KeyError(f"missing {prefix} keys: {sorted(missing)[:5]}")
            module.load_state_dict(parts[prefix], strict=False)
            if hasattr(module, "tie_weights"):
                module.tie_weights()

    def save_pretrained(self, directory: str, tokenizer: Any = None) -> None:
        """The policy as a transformers checkpoint (plus ``tokenizer`` if given)."""
        self.policy.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)


def make_backend(model_cfg: Any, task: Any, *, seed: int) -> HFBackend:
    """Entry point ``llm_backend.backend:make_backend``: the backend for a ``model`` config section
    (:class:`testbed.config.ModelSection`) and a task (``vocab_size``, ``eos_token_id``)."""
    policy = load_causal_lm(model_cfg, vocab_size=int(task.vocab_size), seed=seed)
    backend = HFBackend(
        policy,
        eos_token_id=int(task.eos_token_id),
        critic=model_cfg.critic,
        reference=bool(model_cfg.reference),
        stop_check_every=int(model_cfg.stop_check_every),
        gradient_checkpointing=bool(model_cfg.gradient_checkpointing),
        seed=seed,
    )
    if int(task.vocab_size) > backend.vocab_size:
        raise ValueError(f"task vocabulary ({task.vocab_size}) exceeds the model's ({backend.vocab_size})")
    if torch_dtype(model_cfg.dtype) != backend.dtype:
        raise RuntimeError(f"policy dtype {backend.dtype} != model.dtype {model_cfg.dtype}")
    return backend
