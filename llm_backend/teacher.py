"""Teacher-forced regret of given responses in one forward pass (for ``testbed detect``).

``HFBackend.policy_forward`` returns log-probs of the given tokens only; the regret also needs the
best token's log-prob, ``g_t = max_a log pi(a|s_t) - log pi(a_t|s_t)``, under the same
temperature-scaled softmax the collector samples from (``testbed.sampling``). One forward over
``[prompt | response]`` gives it for every response token at once, which is far cheaper than
replaying the responses through step-wise decoding.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def teacher_stats(backend, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor, *,
                  temperature: float) -> dict[str, Tensor]:
    """(B, T) fp32 per-token ``regret``, ``nll`` (``-log pi(a_t|s_t)``) and ``entropy`` of the
    temperature-scaled policy, for ``tokens`` (B, T) after ``prompts``; 0 where ``mask`` is False."""
    ids, attn, pos, Lp, tokens, mask = backend._teacher_inputs(prompts, tokens, mask)
    T = tokens.shape[1]
    policy = backend.policy
    hidden = policy.base_model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    states = hidden[:, Lp - 1:Lp - 1 + T][mask]  # (n, H): the state before each valid response token
    head = policy.get_output_embeddings()
    parts: dict[str, list[Tensor]] = {"regret": [], "nll": [], "entropy": []}
    for s in range(0, states.shape[0], 512):  # bounded (chunk, V) logits
        logp = torch.log_softmax(head(states[s:s + 512]).float() / temperature, dim=-1)
        chosen = logp.gather(-1, tokens[mask][s:s + 512, None]).squeeze(-1)
        parts["regret"].append((logp.amax(-1) - chosen).clamp(min=0.0))
        parts["nll"].append(-chosen)
        parts["entropy"].append(-(logp.exp() * logp).sum(-1))
    out = {}
    for k, chunks in parts.items():
        full = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        out[k] = (full.masked_scatter(mask, torch.cat(chunks)) if chunks else full).cpu()
    return out


def teacher_regret(backend, prompts: Sequence[Sequence[int]], tokens: Tensor, mask: Tensor, *,
                   temperature: float) -> Tensor:
    """(B, T) fp32 regret of ``tokens`` (B, T) after ``prompts`` under the backend's policy; 0 where ``mask`` is False."""
    return teacher_stats(backend, prompts, tokens, mask, temperature=temperature)["regret"]
