"""The critic: a scalar value V(s) for every prefix of a token sequence.

Two layouts (``model.critic``):

- ``separate`` — :class:`ValueModel`: its own transformer trunk (a deep copy of the policy's base
  model, so it starts from the policy's weights) plus a scalar :class:`ValueHead`. Trunk and head are
  the critic's parameters; it has its own KV cache while decoding.
- ``head`` — a :class:`ValueHead` on the policy's trunk. **Gradient choice:** the head reads the
  policy's last hidden state *detached*, so the value loss trains only the head and never moves the
  policy; policy loss and value loss touch disjoint parameter sets, which keeps PPO's actor/critic
  separation (no value-loss coefficient trades off against the policy objective, and clipping or
  learning rates of one never leak into the other). The price: the critic is a linear probe of the
  policy's features, less expressive than a separate trunk.

Values are computed in fp32 whatever the trunk's dtype (the head is an fp32 ``nn.Linear`` applied to
the upcast hidden state), and every dropout in the critic is disabled (values must be a deterministic
function of the prefix for the value loss and for stop rules).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn


def disable_dropout(module: nn.Module) -> nn.Module:
    """Zero every dropout in ``module``: ``nn.Dropout`` layers and float ``*dropout*`` attributes
    (transformers attention reads e.g. ``self.attention_dropout`` in training mode). In place."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for name, value in list(vars(m).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(m, name, 0.0)
    config = getattr(module, "config", None)
    if config is not None:
        for name in list(vars(config)):
            if "dropout" in name and isinstance(getattr(config, name), float):
                setattr(config, name, 0.0)
    return module


class ValueHead(nn.Module):
    """Scalar value of a hidden state, in fp32: ``values = w . h + b``.

    ``init_std`` is the std of the weight's normal init (bias 0). The default ``1/(hidden+1)``
    is small (initial values near 0) but non-zero, so the trunk receives gradient from the first
    step; ``init_std=0`` gives an exactly zero-initialised head.
    """

    def __init__(self, hidden_size: int, init_std: float | None = None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        std = 1.0 / (hidden_size + 1) if init_std is None else init_std
        with torch.no_grad():
            if std > 0:
                self.linear.weight.normal_(0.0, std)
            else:
                self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden`` (..., H) any float dtype -> values (...) fp32."""
        return self.linear(hidden.float()).squeeze(-1)


@functools.lru_cache(maxsize=None)
def _cache_argument(forward: Any) -> str:
    """The name a transformers trunk's ``forward`` takes its KV cache by: ``cache`` from transformers
    5.24 on (which warns on the old name), ``past_key_values`` before."""
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def trunk_forward(trunk: nn.Module, ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any = None) -> Tensor:
    """(B, L, H) last hidden states of a transformers base model; with ``cache`` (a ``DynamicCache``
    holding earlier columns, updated in place) the ids are the columns after the cached ones and
    ``attention_mask`` covers cached and new columns. Never reads ``output.past_key_values``
    (deprecated, and a warning, in transformers >= 5.24)."""
    kwargs: dict[str, Any] = {}
    if cache is not None:
        kwargs[_cache_argument(type(trunk).forward)] = cache
    out = trunk(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=cache is not None, **kwargs)
    return out.last_hidden_state


class ValueModel(nn.Module):
    """Separate critic: a causal-LM trunk plus an fp32 scalar head, no dropout.

    Build it from a policy with :meth:`from_policy` (deep copy of the policy's base model). It has no
    forward of its own: the critic layouts (``critics.py``) run ``trunk`` and ``head`` separately,
    so that decoding can stream the trunk through its own cache.
    """

    def __init__(self, trunk: nn.Module, hidden_size: int, head_init_std: float | None = None):
        super().__init__()
        self.trunk = disable_dropout(trunk)
        self.head = ValueHead(hidden_size, head_init_std).to(device=_device_of(trunk))

    @classmethod
    def from_policy(cls, policy: nn.Module, head_init_std: float | None = None) -> "ValueModel":
        """A critic initialised from ``policy``'s trunk (its ``base_model``, e.g. ``LlamaModel``)."""
        trunk = copy.deepcopy(policy.base_model)
        hidden = policy.config.get_text_config().hidden_size
        return cls(trunk, hidden, head_init_std)

    @property
    def config(self):
        return self.trunk.config


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
