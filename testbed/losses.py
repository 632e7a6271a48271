"""Losses: pure tensor functions returning ``(scalar loss, metrics)``.

Token tensors are ``(B, T)`` with a bool ``mask``. Every function first replaces masked positions
of its inputs by 0 with :func:`torch.where`, so pad garbage (even NaN) reaches neither the loss nor
any gradient, and reduces through :func:`testbed.masked.aggregate`. Metrics are dicts of detached
0-dim tensors, always token-means over the mask whatever ``agg`` is; ``.item()`` is the logger's job.

Policy losses sit in :data:`POLICY_LOSSES`, all with the signature
``loss(logprobs, old_logprobs, advantages, mask, params: PolicyLossParams) -> (loss, metrics)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from testbed.masked import aggregate, masked_mean, masked_var
from testbed.registry import Registry

Metrics = dict[str, Tensor]

LOG_RATIO_LIMIT = 20.0
"""|log ratio| is clamped here before exp: exp(20) ~ 5e8 is already far outside any clip range,
and beyond it exp overflows float32/bf16 to inf (inf * 0-advantage = NaN)."""


def _z(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with masked positions replaced by 0 (select, so NaN pads give a 0 gradient)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _frac(cond: Tensor, mask: Tensor) -> Tensor:
    """Detached fraction of valid tokens where ``cond`` (``(B, T)`` bool) holds."""
    return masked_mean(cond.to(torch.float32), mask).detach()


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    agg: str = "token-mean",
    dual_clip: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate with decoupled (clip-higher) bounds and optional dual clip.

    Per token, with ``ratio = exp(logprobs - old_logprobs)``:
    ``l = max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))``; with ``dual_clip = c > 1``
    and ``A < 0``, ``l = min(l, c * |A|)`` (a huge ratio on a bad token cannot blow the loss up).

    Args:
        logprobs: ``(B, T)`` log pi_theta(a_t | s_t), carries the gradient.
        old_logprobs: ``(B, T)`` log pi_old(a_t | s_t) of the sampling policy.
        advantages: ``(B, T)``.
        mask: ``(B, T)`` bool, tokens in the loss.
        clip_low, clip_high: ratio range ``[1 - clip_low, 1 + clip_high]``.
        agg: aggregation mode (see :func:`testbed.masked.aggregate`).
        dual_clip: c > 1 to bound negative-advantage tokens; 0 for off.

    Returns:
        ``(loss, metrics)``: scalar loss; metrics ``clipfrac_low`` (A < 0 tokens below the range),
        ``clipfrac_high`` (A > 0 tokens above it), ``clipfrac_dual``, ``approx_kl`` (k3:
        mean of (ratio - 1) - log ratio), ``ratio_mean``, all detached.
    """
    if dual_clip and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or 0 for off), got {dual_clip}")
    lp, old, adv = _z(logprobs, mask), _z(old_logprobs, mask), _z(advantages, mask)
    log_ratio = (lp - old).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(mask)
    if dual_clip:
        bound = -adv * dual_clip  # = c * |A| where A < 0
        dual_active = (adv < 0) & (per_token > bound)
        per_token = torch.where(dual_active, bound, per_token)
    loss = aggregate(per_token, mask, agg)

    with torch.no_grad():
        r = ratio.detach()
        metrics = {
            # a clip "is active" where it removed the gradient: the side that PPO's max picks
            "clipfrac_low": _frac((r < 1.0 - clip_low) & (adv < 0), mask),
            "clipfrac_high": _frac((r > 1.0 + clip_high) & (adv > 0), mask),
            "clipfrac_dual": _frac(dual_active, mask),
            "approx_kl": masked_mean((r - 1.0) - log_ratio.detach(), mask),
            "ratio_mean": masked_mean(r, mask),
        }
    return loss, metrics


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[returns - values] / Var[returns]`` over valid tokens (``(B, T)`` each); detached
    scalar. 1: perfect critic; 0: no better than a constant (also returned when Var[returns] = 0,
    where the ratio is undefined, so logs stay finite)."""
    with torch.no_grad():
        v, g = _z(values, mask).detach(), _z(returns, mask).detach()
        var_g = masked_var(g, mask, unbiased=False)
        var_res = masked_var(g - v, mask, unbiased=False)
        # Returns that are constant up to float noise (e.g. all-zero rewards) make the ratio
        # meaningless and huge; treat a variance below 1e-10 as zero.
        ok = var_g > 1e-10
        ev = 1.0 - var_res / torch.where(ok, var_g, torch.ones_like(var_g))
        return torch.where(ok, ev, torch.zeros_like(ev))


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float,
    agg: str = "token-mean",
) -> tuple[Tensor, Metrics]:
    """Critic loss: ``0.5 (V - G)^2``, or with ``clip > 0`` the PPO clipped form
    ``0.5 max((V - G)^2, (old + clamp(V - old, -clip, clip) - G)^2)``.

    Args:
        values: ``(B, T)`` current V(s_t), carries the gradient.
        old_values: ``(B, T)`` V(s_t) at rollout time.
        returns: ``(B, T)`` targets G_t.
        mask: ``(B, T)`` bool.
        clip: value clip around ``old_values``; 0 for off.
        agg: aggregation mode.

    Returns:
        ``(loss, metrics)``: metrics ``clipfrac`` (tokens where the clipped error was the larger),
        ``explained_variance`` (of ``values`` for ``returns``), ``value_mean``, all detached.
    """
    v, old, g = _z(values, mask), _z(old_values, mask), _z(returns, mask)
    err = (v - g) ** 2
    if clip > 0:
        v_clipped = old + (v - old).clamp(-clip, clip)
        err_clipped = (v_clipped - g) ** 2
        per_token = 0.5 * torch.maximum(err, err_clipped)
        clipfrac = _frac(err_clipped.detach() > err.detach(), mask)
    else:
        per_token = 0.5 * err
        clipfrac = torch.zeros((), dtype=torch.float32, device=values.device)
    loss = aggregate(per_token, mask, agg)
    metrics = {
        "clipfrac": clipfrac,
        "explained_variance": explained_variance(values, returns, mask),
        "value_mean": masked_mean(v.detach(), mask),
    }
    return loss, metrics


KL_ESTIMATORS: Registry[Callable[[Tensor], Tensor]] = Registry("kl estimator")
"""Per-token estimators of KL(pi || ref) from ``log_ratio = log pi - log ref`` at a token sampled
from pi (Schulman's k1, k3)."""


@KL_ESTIMATORS.register("k1")
def _kl_k1(log_ratio: Tensor) -> Tensor:
    """Unbiased, high variance, can be negative per token."""
    return log_ratio


@KL_ESTIMATORS.register("k3")
def _kl_k3(log_ratio: Tensor) -> Tensor:
    """Unbiased, low variance, >= 0 per token: ``exp(-d) - 1 + d`` with ``d = log pi - log ref``."""
    return torch.expm1(-log_ratio) + log_ratio


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    *,
    kind: str = "k3",
    agg: str = "token-mean",
) -> tuple[Tensor, Metrics]:
    """KL(pi_theta || pi_ref) penalty to *add* (times ``kl_coef``) to the policy loss.

    Args:
        logprobs: ``(B, T)`` log pi_theta of the sampled tokens, carries the gradient.
        ref_logprobs: ``(B, T)`` log pi_ref of the same tokens.
        mask: ``(B, T)`` bool.
        kind: ``k1`` or ``k3`` (:data:`KL_ESTIMATORS`).
        agg: aggregation mode.

    Returns:
        ``(loss, metrics)``: metrics ``kl`` (token-mean of the estimate), detached.
    """
    estimator = KL_ESTIMATORS.get(kind)
    d = (_z(logprobs, mask) - _z(ref_logprobs, mask)).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    per_token = estimator(d)
    loss = aggregate(per_token, mask, agg)
    return loss, {"kl": masked_mean(per_token.detach(), mask)}


def entropy_bonus(entropy: Tensor, mask: Tensor, *, agg: str = "token-mean") -> tuple[Tensor, Metrics]:
    """Entropy bonus as a loss to *add* (times ``entropy_coef``): ``-aggregate(entropy)``, so
    minimising it raises entropy.

    Args:
        entropy: ``(B, T)`` entropy of pi_theta(. | s_t), carries the gradient.
        mask: ``(B, T)`` bool.
        agg: aggregation mode.

    Returns:
        ``(loss, metrics)``: metrics ``entropy`` (token-mean), detached.
    """
    h = _z(entropy, mask)
    return -aggregate(h, mask, agg), {"entropy": masked_mean(h.detach(), mask)}


# ---------------------------------------------------------------------------------------------
# Registry of policy losses: loss(logprobs, old_logprobs, advantages, mask, params)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossParams:
    """Every knob any policy loss reads (one object, so all members share one signature)."""

    clip_low: float = 0.2
    """Ratio clip below 1."""
    clip_high: float = 0.2
    """Ratio clip above 1."""
    dual_clip: float = 0.0
    """Dual-clip constant c > 1 (0: off)."""
    agg: str = "token-mean"
    """Aggregation mode."""

    @classmethod
    def from_config(cls, algo: Any) -> "PolicyLossParams":
        """From a :class:`testbed.config.AlgoSection`."""
        return cls(clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip, agg=algo.agg)


PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, PolicyLossParams], tuple[Tensor, Metrics]]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


@POLICY_LOSSES.register("ppo")
def ppo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams
) -> tuple[Tensor, Metrics]:
    """:func:`ppo_policy_loss` with its knobs from ``params``. Tensors ``(B, T)``."""
    return ppo_policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=params.clip_low,
        clip_high=params.clip_high,
        agg=params.agg,
        dual_clip=params.dual_clip,
    )
