"""Fast step-wise decoding for Llama-family trunks: a pre-allocated KV cache and a plain-torch forward.

Why. A decode step of the default 135M model through transformers costs ~38 ms at batch 1 and ~54 ms at
batch 16 (``docs/roofline_output.txt``): nearly flat in batch, so neither the FLOPs nor reading the
weights explains it; the per-layer Python of the generic forward (mask building, cache objects,
attention dispatch, hooks) does. :class:`FastTrunk` computes the same function with one short loop over
the layers, reading the trunk's own parameters by reference (no conversion, so new weights after every
update are picked up for free), and :class:`StaticStream` keeps each layer's keys and values in one
pre-allocated tensor that grows by doubling, so a step appends one column in place.

Same interface as :class:`llm_backend.kvcache.Stream` (``catch_up``, ``select``, ``trim_left``), so the
backend's per-token hooks are unchanged: logits and hidden states of every new state, a separate
critic's chunked values, rows dropped mid-batch, columns trimmed on the left, the shared prefix.

Numerics follow transformers' Llama op for op (fp32 RMSNorm statistics, fp32 rotary tables cast to the
model dtype, SDPA attention), so greedy decoding reproduces ``generate()``; the tests check it.
:func:`supports` says which trunks qualify (``nn.Linear`` projections, plain or wrapped in peft's LoRA
layers, default rotary, no sliding window, on the CPU); the others and other devices use the transformers
path. A LoRA layer is decoded through its merged weight ``W + scaling * B @ A`` (computed in the packed copy,
never written back), refreshed when an adapter moves, as a plain weight is.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kvcache import Stream
from .prefix import PrefixPlan


def supports(trunk: nn.Module) -> bool:
    """True when :class:`FastTrunk` computes exactly what ``trunk`` (a transformers base model) does."""
    cfg = getattr(trunk, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    if any(p.device.type != "cpu" for p in trunk.parameters()):  # measured and tested on the CPU only
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default" or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    rot = getattr(trunk, "rotary_emb", None)
    if rot is None or float(getattr(rot, "attention_scaling", 1.0)) != 1.0:
        return False
    for layer in trunk.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(lin) is not nn.Linear and not _plain_lora(lin):  # quantised, DoRA, ...: something else
                return False
        if getattr(a, "sliding_window", None):
            return False
    return True


class StaticCache:
    """Per-layer keys and values in ``(b, kv_heads, capacity, head_dim)`` fp32 tensors; columns
    ``[start, start + n)`` are live (``start`` moves right when the backend trims padding columns).

    fp32, not the model's dtype: attention over it is two fp32 batched products (what SDPA's CPU kernels
    accumulate in), and a bf16 cache measured no faster here (its bf16 products are slower)."""

    headroom = 256
    """Columns reserved beyond the prompt at the first allocation (each later growth copies the cache)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.shape = (kv_heads, head_dim)
        self.num_layers, self.dtype, self.device = layers, dtype, device
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.start = 0
        self.n = 0

    def reserve(self, b: int, extra: int) -> None:
        """Room for ``extra`` more columns (batch ``b``); grows (at least doubling) when it runs out."""
        need = self.start + self.n + extra
        cap = self.keys[0].shape[2] if self.keys else 0
        if self.keys and need <= cap:
            return
        # room for a typical response up front: each growth copies the whole cache
        new_cap = max(need + self.headroom, 2 * cap)
        h, d = self.shape
        for store in (self.keys, self.values):
            for i in range(self.num_layers):
                t = torch.empty(b, h, new_cap, d, dtype=self.dtype, device=self.device)
                if store and i < len(store) and self.n:
                    t[:, :, :self.n] = store[i][:, :, self.start:self.start + self.n]
                if i < len(store):
                    store[i] = t
                else:
                    store.append(t)
        self.start = 0

    def select(self, index: Tensor) -> None:
        if self.keys:
            self.keys = [k.index_select(0, index) for k in self.keys]
            self.values = [v.index_select(0, index) for v in self.values]

    def trim_left(self, n: int) -> None:
        n = min(n, self.n)
        self.start += n
        self.n -= n


def _plain_lora(lin: nn.Module) -> bool:
    """A peft LoRA ``Linear`` around an ``nn.Linear`` whose adapters are plain low-rank products (no DoRA or
    other variant, no bias on B, weights not transposed): it computes ``x @ (W + scaling * B @ A).T + b``."""
    if not hasattr(lin, "base_layer"):
        return False
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return False
    return (type(lin) is LoraLinear and type(lin.base_layer) is nn.Linear and not lin.fan_in_fan_out
            and not any(lin.use_dora.values()) and not getattr(lin, "lora_variant", None)
            and not any(getattr(lin, "lora_bias", {}).values()))


def _adapters(lin: nn.Module) -> list[str]:
    """The adapters a LoRA layer applies now (none while disabled, e.g. under ``disable_adapter()``, or merged)."""
    if not hasattr(lin, "base_layer") or lin.merged or lin.disable_adapters:
        return []
    return [name for name in lin.active_adapters if name in lin.lora_A]


def _weight(lin: nn.Module) -> Tensor:
    """The (out, in) weight ``lin`` applies: a LoRA layer's base weight plus its adapters' scaled products
    (peft's merge, in fp32, cast to the weight's dtype)."""
    if not hasattr(lin, "base_layer"):
        return lin.weight.detach()
    w = lin.base_layer.weight.detach()
    names = _adapters(lin)
    if not names:
        return w
    delta = sum((lin.lora_B[n].weight.detach().float() @ lin.lora_A[n].weight.detach().float()) * lin.scaling[n]
                for n in names)
    return (w.float() + delta).to(w.dtype)


def _pack(weight: Tensor) -> Tensor | None:
    """oneDNN's pre-packed copy of a (out, in) CPU weight (None where the op is unavailable). A decode
    step's products have a few rows, so they are bound by reading the weights; oneDNN otherwise
    re-lays them out on every call, and packed products are ~1.3-1.5x faster here with bit-identical
    results (tests)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 16)
    except (RuntimeError, AttributeError):
        return None


class Linear:
    """``F.linear`` with the weights of several ``nn.Linear`` (or LoRA layers) stacked along the output (q, k,
    v in one product; gate and up in another), from a packed copy refreshed when a weight changes: the copy
    is keyed on every source tensor's storage and in-place version counter (an optimiser step bumps it) and
    on which adapters apply, so weights updated between decoding batches are always the ones used."""

    def __init__(self, *linears: nn.Linear):
        self.linears = linears
        self._key: tuple = ()
        self.weight: Tensor | None = None
        self.packed: Tensor | None = None
        self.bias: Tensor | None = None

    def _sources(self) -> list[Tensor]:
        out = []
        for lin in self.linears:
            base = getattr(lin, "base_layer", lin)
            out += [t for t in (base.weight, base.bias) if t is not None]
            out += [m[n].weight for n in _adapters(lin) for m in (lin.lora_A, lin.lora_B)]
        return out

    def refresh(self) -> None:
        flags = tuple((tuple(_adapters(lin)), tuple(getattr(lin, "scaling", {}).items())) for lin in self.linears)
        key = (flags, *((t.data_ptr(), t._version) for t in self._sources()))
        if key == self._key:
            return
        ws = [_weight(lin) for lin in self.linears]
        self.weight = ws[0] if len(ws) == 1 else torch.cat(ws)
        biases = [getattr(lin, "base_layer", lin).bias for lin in self.linears]
        self.bias = None if all(b is None for b in biases) else torch.cat([
            b.detach() if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(biases, ws)])
        self.packed = _pack(self.weight)
        self._key = key

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class FastTrunk:
    """The forward of a Llama trunk (``LlamaModel``) over a :class:`StaticCache`, its products through
    packed copies of the trunk's weights (:class:`Linear`, refreshed by :meth:`refresh`); norms and the
    embedding are read by reference."""

    def __init__(self, trunk: nn.Module):
        if not supports(trunk):
            raise ValueError(f"{type(trunk).__name__} is not a plain Llama trunk; use the transformers path")
        cfg = trunk.config
        self.trunk = trunk
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.eps = float(cfg.rms_norm_eps)
        self.scale = self.head_dim ** -0.5
        self.products = [(Linear(L.self_attn.q_proj, L.self_attn.k_proj, L.self_attn.v_proj), Linear(L.self_attn.o_proj),
                          Linear(L.mlp.gate_proj, L.mlp.up_proj), Linear(L.mlp.down_proj)) for L in trunk.layers]

    def refresh(self) -> None:
        """Re-pack every weight that changed since the last call (cheap when none did)."""
        for group in self.products:
            for lin in group:
                lin.refresh()

    def new_cache(self) -> StaticCache:
        w = self.trunk.embed_tokens.weight
        return StaticCache(len(self.trunk.layers), self.kv_heads, self.head_dim, torch.float32, w.device)

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def _rope(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        inv = self.trunk.rotary_emb.inv_freq.float()
        freqs = pos.float()[..., None] * inv  # (b, n, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (b, 1, n, hd)

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, bias: Tensor) -> Tensor:
        """Grouped-query attention in fp32 (as SDPA's CPU kernels accumulate) of (b, H, n, D) queries
        over fp32 (b, K, total, D) keys/values; ``bias`` (b K, G n, total) is 0 or -inf. Returns
        (b, n, H * D) in the queries' dtype. The G query heads sharing a key head are one matrix of the
        batched product, so nothing is repeated; SDPA's fused CPU kernel costs ~0.8 ms a layer at n = 1
        here, this ~0.1-0.2 ms."""
        b, H, n, D = q.shape
        K, total = keys.shape[1], keys.shape[2]
        G = H // K
        qg = q.float().reshape(b * K, G * n, D)
        scores = torch.baddbmm(bias, qg, keys.reshape(b * K, total, D).transpose(1, 2), alpha=self.scale)
        o = torch.bmm(scores.softmax(-1), values.reshape(b * K, total, D))  # (b K, G n, D)
        return o.view(b, K, G, n, D).permute(0, 3, 1, 2, 4).reshape(b, n, H * D).to(q.dtype)

    @torch.no_grad()
    def forward(self, ids: Tensor, pos: Tensor, attn: Tensor, cache: StaticCache) -> Tensor:
        """Append the (b, n) columns ``ids`` at positions ``pos`` to ``cache``; ``attn`` (b, live + n)
        marks the real columns among the cached and new ones. Returns (b, n, H) last hidden states."""
        t = self.trunk
        b, n = ids.shape
        cache.reserve(b, n)
        s0, s1 = cache.start, cache.start + cache.n  # live columns before this call
        total = cache.n + n
        keep = attn.bool()[:, None, None, :]  # (b, 1, 1, total)
        if n > 1:
            causal = torch.ones(n, total, dtype=torch.bool, device=ids.device).tril(total - n)
            # a query that attends nothing (a padding column before any real one) attends itself, so
            # the softmax stays finite; its output is never read
            own = torch.zeros(n, total, dtype=torch.bool, device=ids.device)
            own[torch.arange(n), torch.arange(total - n, total)] = True
            keep = keep & causal | own
        bias = torch.zeros(keep.shape, device=ids.device).masked_fill_(~keep, float("-inf"))
        G = self.heads // self.kv_heads
        bias = bias[:, :, None].expand(b, self.kv_heads, G, n, total).reshape(b * self.kv_heads, G * n, total)
        x = t.embed_tokens(ids)
        cos, sin = self._rope(pos, x.dtype)
        H, K, D = self.heads, self.kv_heads, self.head_dim
        inter = self.trunk.layers[0].mlp.gate_proj.weight.shape[0]
        for i, layer in enumerate(t.layers):
            qkv, out, gate_up, down = self.products[i]
            h = self._norm(x, layer.input_layernorm.weight)
            qk, v = qkv(h).split([(H + K) * D, K * D], dim=-1)
            qk = self._rotate(qk.reshape(b, n, H + K, D).transpose(1, 2), cos, sin)  # q and k in one pass
            q, k = qk[:, :H], qk[:, H:]
            v = v.reshape(b, n, K, D).transpose(1, 2)
            cache.keys[i][:, :, s1:s1 + n] = k
            cache.values[i][:, :, s1:s1 + n] = v
            o = self._attend(q, cache.keys[i][:, :, s0:s1 + n], cache.values[i][:, :, s0:s1 + n], bias)
            x = x + out(o)
            h = self._norm(x, layer.post_attention_layernorm.weight)
            g, u = gate_up(h).split([inter, inter], dim=-1)
            x = x + down(F.silu(g) * u)
        cache.n = total
        return self._norm(x, t.norm.weight)


_FAST: "weakref.WeakKeyDictionary[nn.Module, FastTrunk]" = weakref.WeakKeyDictionary()
_HEADS: "weakref.WeakKeyDictionary[nn.Module, Linear]" = weakref.WeakKeyDictionary()


def fast_trunk(trunk: nn.Module) -> FastTrunk:
    """The trunk's :class:`FastTrunk` (built once, its packed weights refreshed on every call)."""
    fast = _FAST.get(trunk)
    if fast is None:
        fast = _FAST[trunk] = FastTrunk(trunk)
    fast.refresh()
    return fast


class StaticStream(Stream):
    """:class:`llm_backend.kvcache.Stream` on a :class:`FastTrunk` and a :class:`StaticCache`: the same
    catching up, select and trims; weights (trunk and LM head) are re-packed once per decoding batch."""

    def __init__(self, trunk: nn.Module):
        self.trunk = trunk
        self.fast = fast_trunk(trunk)
        self.cache = self.fast.new_cache()
        self.done = 0
        self._head: Linear | None = None

    def _prefill(self, plan: PrefixPlan) -> Tensor:
        """Prefix once (batch 1), its cache copied to the ``u`` remainders, then the remainders."""
        dev = plan.prefix.device
        P, u = plan.P, plan.u
        ones = torch.ones(1, P, dtype=torch.long, device=dev)
        self.fast.forward(plan.prefix[None], torch.arange(P, device=dev)[None], ones, self.cache)
        self.cache.select(torch.zeros(u, dtype=torch.long, device=dev))
        attn = torch.cat([ones.expand(u, -1), plan.rest_attn], dim=1)
        return self.fast.forward(plan.rest, plan.rest_positions(), attn, self.cache)

    def _forward(self, ids: Tensor, attn: Tensor, pos: Tensor) -> Tensor:
        return self.fast.forward(ids, pos, attn, self.cache)

    @torch.no_grad()
    def logits(self, lm_head: nn.Module, hidden: Tensor) -> Tensor:
        """``lm_head(hidden)`` through a packed copy of its weight (plain ``nn.Linear`` heads)."""
        if type(lm_head) is not nn.Linear:
            return lm_head(hidden)
        if self._head is None:  # first step of this batch: look up the head's copy, re-pack if it changed
            self._head = _HEADS.get(lm_head)
            if self._head is None:
                self._head = _HEADS[lm_head] = Linear(lm_head)
            self._head.refresh()
        return self._head(hidden)

    def select(self, index: Tensor) -> None:
        self.cache.select(index)

    def trim_left(self, n: int) -> None:
        n = min(n, self.done)
        self.cache.trim_left(n)
        self.done -= n

    def trimmable(self) -> bool:
        return True
