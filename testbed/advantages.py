"""Advantage estimators: pure tensor functions plus one registry whose members share one signature.

Token tensors are ``(B, T)``, right-padded, with a bool ``mask``; per-row tensors are ``(B,)``.
Masked positions never influence valid outputs (their values and rewards may be garbage, even NaN):
the reverse scans *select* with :func:`torch.where`, they never multiply by the mask. A masked
position inside a row (a hole) is treated as absent: the scan steps over it.

The registry :data:`ESTIMATORS` maps a name to ``estimator(rollout, params) -> Advantages``, so the
trainer calls ``ESTIMATORS.get(cfg.algo.estimator)(rollout, params)`` and never branches on the name.
How each row ended (EOS, LENGTH_CAP, WINDOW_CUT, EARLY_STOP) enters only through the rollout: its
``bootstrap`` (the value after each row's last token, written by the collector from DESIGN.md's
ending table) and its :attr:`~testbed.rollout.Rollout.treatment` (which rows are trainable, which
are cut), computed once per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from testbed.registry import Registry
from testbed.rollout import Rollout, last_valid_value

# ---------------------------------------------------------------------------------------------
# Pure functions (contract)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    lam: float | Tensor,
    bootstrap: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded rows.

    Args:
        rewards: ``(B, T)`` reward of each token.
        values: ``(B, T)`` V(s_t), the state before token t.
        mask: ``(B, T)`` bool, valid tokens.
        gamma: discount.
        lam: GAE lambda, a float or a ``(B,)`` tensor (one lambda per row, e.g. length-adaptive).
        bootstrap: ``(B,)`` value after each row's last valid token; zeros if None.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``; ``returns = advantages + values`` on valid tokens;
        masked positions are 0 in both.
    """
    B, T = rewards.shape
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device) if bootstrap is None else bootstrap.to(values.dtype)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)
    gl = gamma * (lam.to(values.dtype) if isinstance(lam, Tensor) else torch.as_tensor(lam, dtype=values.dtype))
    adv = torch.zeros_like(values)
    # Reverse scan over T (vectorised over rows). At a masked position the carried next-value and
    # next-advantage pass through unchanged, so the bootstrap reaches each row's last valid token
    # through its padding and pad garbage is never selected.
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gl * next_adv
        next_adv = torch.where(m, a, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
        adv[:, t] = torch.where(m, a, zero)
    returns = torch.where(mask, adv + values, zero)
    return adv, returns


@torch.no_grad()
def egae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    finished: Tensor,
    *,
    gamma: float,
    lam: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Extended GAE (T-PPO eq. 6): unfinished rows bootstrap with their own last value.

    A row cut by the window (``finished == False``) has no V(s_{l+1}); EGAE substitutes V(s_l), the
    value of the row's last valid state. Finished rows bootstrap with 0 (plain GAE).

    Args:
        rewards, values, mask: ``(B, T)`` as in :func:`gae`.
        finished: ``(B,)`` bool, the row ended for good.
        gamma, lam: as in :func:`gae`.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``.
    """
    last = last_valid_value(values, mask)
    bootstrap = torch.where(finished, torch.zeros_like(last), last)
    return gae(rewards, values, mask, gamma=gamma, lam=lam, bootstrap=bootstrap)


@torch.no_grad()
def mc_returns(rewards: Tensor, mask: Tensor, *, gamma: float, bootstrap: Tensor | None = None) -> Tensor:
    """Discounted reward-to-go ``G_t = sum_{k>=t} gamma^(k-t) r_k (+ gamma^(l-t) bootstrap)``.

    Args:
        rewards: ``(B, T)``; mask: ``(B, T)`` bool.
        gamma: discount.
        bootstrap: optional ``(B,)`` value after the last valid token (an extension of the contract
            signature; zeros if None).

    Returns:
        ``(B, T)`` returns, 0 at masked positions.
    """
    # Monte-Carlo return is GAE with a zero critic and lambda = 1: A_t = G_t - 0.
    zeros = torch.zeros_like(rewards)
    _, returns = gae(rewards, zeros, mask, gamma=gamma, lam=1.0, bootstrap=bootstrap)
    return returns


@torch.no_grad()
def grpo(scores: Tensor, group_ids: Tensor, *, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """Group-normalised scores (GRPO).

    Args:
        scores: ``(B,)`` one scalar score per row.
        group_ids: ``(B,)`` long; rows with equal ids form a group (ids need not be contiguous).
        eps: added to the std before dividing.
        scale: divide by the group's std (unbiased, as ``torch.std``); otherwise only centre.

    Returns:
        ``(B,)`` ``(score - group mean) / (group std + eps)``; every group has mean 0; a group of one
        row (no comparison possible) gives 0.
    """
    _, inv = torch.unique(group_ids, return_inverse=True)
    G = inv.numel()  # an upper bound on the number of groups; avoids a device sync for the exact one
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))
    count = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, inv, torch.ones_like(s))
    count = count.clamp(min=1)  # unused group slots: 0 / 1, never indexed
    mean = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, inv, s) / count
    centred = s - mean[inv]
    if not scale:
        return centred
    sq = torch.zeros(G, dtype=s.dtype, device=s.device).index_add_(0, inv, centred**2)
    # unbiased variance; a singleton group has centred == 0 already, any finite std does
    var = sq / (count - 1).clamp(min=1)
    return centred / (var.sqrt()[inv] + eps)


# ---------------------------------------------------------------------------------------------
# Registry: estimator(rollout, params) -> Advantages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvantageParams:
    """Every knob any estimator reads (one object, so all estimators share one signature)."""

    gamma: float = 1.0
    """Discount."""
    lam_actor: float = 0.95
    """GAE lambda for the policy's advantages."""
    lam_critic: float = 1.0
    """GAE lambda for the critic's targets (decoupled GAE)."""
    lam_adaptive_alpha: float = 0.0
    """If > 0, per-row lambda_actor = clamp(1 - 1/(alpha * length), 0, 1) (length-adaptive GAE)."""
    grpo_scale: bool = True
    """GRPO: divide by the group's std."""

    @classmethod
    def from_config(cls, algo: Any, rollout: Any = None) -> "AdvantageParams":
        """From a :class:`testbed.config.AlgoSection` (``rollout.length_cap`` travels on each
        :class:`~testbed.rollout.Rollout`, not here; the argument is accepted for old callers)."""
        return cls(
            gamma=algo.gamma,
            lam_actor=algo.lam_actor,
            lam_critic=algo.lam_critic,
            lam_adaptive_alpha=algo.lam_adaptive_alpha,
            grpo_scale=algo.grpo_scale,
        )


@dataclass
class Advantages:
    """What an estimator returns. Both ``(B, T)``, 0 at masked positions and on non-trainable rows."""

    advantages: Tensor
    """(B, T) advantages for the policy loss."""
    returns: Tensor
    """(B, T) targets for the critic loss."""


Estimator = Callable[[Rollout, AdvantageParams], Advantages]
ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def loss_mask(rollout: Rollout, length_cap: str | None = None) -> Tensor:
    """``(B, T)`` bool: tokens that may enter any loss (valid, in a trainable row).

    ``length_cap``, if given, must be the rollout's own (a guard against two sources of truth).
    """
    if length_cap is not None and length_cap != rollout.length_cap:
        raise ValueError(f"length_cap {length_cap!r} differs from the rollout's {rollout.length_cap!r}")
    return rollout.mask & rollout.treatment.trainable.unsqueeze(-1)


def actor_lambda(rollout: Rollout, params: AdvantageParams) -> float | Tensor:
    """lambda_actor: the float, or with ``lam_adaptive_alpha > 0`` a ``(B,)`` tensor
    ``clamp(1 - 1/(alpha * length), 0, 1)`` (longer rows look further ahead). ``length`` is the row's
    whole response so far: a T-PPO window's tokens plus those carried from earlier windows
    (``extras["start"]``), so a window does not pass for a short row."""
    if params.lam_adaptive_alpha <= 0:
        return params.lam_actor
    length = (rollout.lengths + rollout.extras.get("start", 0)).to(rollout.values.dtype)
    # length 0 gives 1 - inf = -inf, clamped to 0: harmless, the row has no tokens
    return (1.0 - 1.0 / (params.lam_adaptive_alpha * length)).clamp(0.0, 1.0)


def _finish(rollout: Rollout, adv: Tensor, ret: Tensor) -> Advantages:
    """Zero both outputs outside :func:`loss_mask` (non-trainable rows teach nothing)."""
    keep = loss_mask(rollout)
    zero = torch.zeros((), dtype=adv.dtype, device=adv.device)
    return Advantages(advantages=torch.where(keep, adv, zero), returns=torch.where(keep, ret, zero))


@ESTIMATORS.register("gae")
def gae_estimator(rollout: Rollout, params: AdvantageParams) -> Advantages:
    """Decoupled GAE: advantages with lambda_actor (optionally length-adaptive), returns with
    lambda_critic; the value after each row is ``rollout.bootstrap``."""
    b = rollout.bootstrap.to(rollout.values.dtype)
    r, v, m = rollout.rewards, rollout.values, rollout.mask
    adv, _ = gae(r, v, m, gamma=params.gamma, lam=actor_lambda(rollout, params), bootstrap=b)
    _, ret = gae(r, v, m, gamma=params.gamma, lam=params.lam_critic, bootstrap=b)
    return _finish(rollout, adv, ret)


@ESTIMATORS.register("egae")
def egae_estimator(rollout: Rollout, params: AdvantageParams) -> Advantages:
    """T-PPO's Extended GAE, written through :func:`egae`: a row is "unfinished" when its treatment
    bootstraps from its last value (WINDOW_CUT, and LENGTH_CAP under ``bootstrap``); every other
    row bootstraps with 0. Decoupled lambdas as in ``gae``. It is eq. 6 itself, so it does not read
    ``rollout.bootstrap``; on a rollout from the collector (whose bootstrap is the same V(s_l)) it
    equals ``gae``. Under ``tppo.bootstrap=next`` (``extras["next_value"]``) cut rows bootstrap with
    the measured V(s_{l+1}) the collector wrote into ``rollout.bootstrap``: that is ``gae``."""
    if "next_value" in rollout.extras:
        return gae_estimator(rollout, params)
    unfinished = rollout.treatment.bootstrap_from_last_value
    r, v, m = rollout.rewards, rollout.values, rollout.mask
    adv, _ = egae(r, v, m, ~unfinished, gamma=params.gamma, lam=actor_lambda(rollout, params))
    _, ret = egae(r, v, m, ~unfinished, gamma=params.gamma, lam=params.lam_critic)
    return _finish(rollout, adv, ret)


@ESTIMATORS.register("grpo")
def grpo_estimator(rollout: Rollout, params: AdvantageParams) -> Advantages:
    """GRPO: a row's score is the sum of its rewards; group-normalised among the trainable rows of
    its group (``rollout.group_ids``; None: each row alone, so every advantage is 0) and broadcast
    over its valid tokens. Returns are Monte-Carlo (bootstrap ``rollout.bootstrap``) so a critic
    can still train and be logged."""
    trainable = rollout.treatment.trainable
    B = rollout.batch_size
    device = rollout.rewards.device
    scores = (torch.where(rollout.mask, rollout.rewards, torch.zeros_like(rollout.rewards))).sum(-1)
    gid = rollout.group_ids if rollout.group_ids is not None else torch.arange(B, device=device)
    _, gid = torch.unique(gid, return_inverse=True)
    # a non-trainable row leaves its group (a fresh singleton id): its reward must not set the baseline
    gid = torch.where(trainable, gid, gid.numel() + torch.arange(B, device=device))
    row_adv = grpo(scores, gid, scale=params.grpo_scale).to(rollout.values.dtype)
    adv = row_adv.unsqueeze(-1).expand_as(rollout.values)
    ret = mc_returns(rollout.rewards, rollout.mask, gamma=params.gamma, bootstrap=rollout.bootstrap.to(rollout.values.dtype))
    return _finish(rollout, adv, ret)


grpo_estimator.uses_values = False  # advantages from rewards alone: the trainer then runs no critic


@ESTIMATORS.register("mc")
def mc_estimator(rollout: Rollout, params: AdvantageParams) -> Advantages:
    """REINFORCE with the critic as baseline: returns = discounted reward-to-go (plus
    ``rollout.bootstrap``, so a cut row is not scored as a failure), advantages = returns - values.
    With a zero critic this is plain REINFORCE. Lambdas are ignored (it is GAE with lambda = 1)."""
    ret = mc_returns(rollout.rewards, rollout.mask, gamma=params.gamma, bootstrap=rollout.bootstrap.to(rollout.values.dtype))
    zero = torch.zeros((), dtype=ret.dtype, device=ret.device)
    adv = torch.where(rollout.mask, ret - rollout.values, zero)
    return _finish(rollout, adv, ret)
