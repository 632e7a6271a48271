"""The one masked-reduction helper: every reduction over token tensors goes through here.

Token tensors are ``(B, T)`` with a bool ``mask`` of the same shape. Masked positions may hold garbage
(including NaN or inf): every function selects with :func:`torch.where` before reducing, so garbage
never reaches a valid output, nor a gradient (``0 * nan`` would). An empty mask reduces to 0, not NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
"""Loss aggregation modes accepted by :func:`aggregate` (also ``algo.agg``)."""


def _zero_pads(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with masked positions set to exactly 0 (a select, not a product, so NaN pads vanish)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over valid positions. ``x``, ``mask``: same shape (e.g. ``(B, T)``).

    ``dim=None`` gives a scalar; otherwise ``dim`` is reduced (e.g. ``dim=-1`` gives ``(B,)``).
    """
    x = _zero_pads(x, mask)
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions; 0 where nothing is valid. Shapes as :func:`masked_sum`."""
    n = mask.sum() if dim is None else mask.sum(dim=dim)
    # clamp the count so an empty mask gives 0 / 1 = 0 rather than 0 / 0 = NaN
    return masked_sum(x, mask, dim) / n.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Scalar variance of ``x`` over all valid positions (``x``, ``mask`` same shape).

    ``unbiased`` applies Bessel's correction n / (n - 1) when n > 1 (as verl's whitening does);
    with n <= 1 the variance is 0.
    """
    # zero the pads first: a NaN pad in (x - mean) ** 2 would put 0 * NaN into mean's gradient
    x = _zero_pads(x, mask)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum().to(x.dtype)
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), torch.zeros_like(var))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to unit (unbiased) variance over valid positions; same shape as ``x``.

    ``shift_mean=True`` also centres it on 0; ``False`` keeps the original mean (scale only).
    Masked positions are 0 in the output.
    """
    x = _zero_pads(x, mask)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _zero_pads(out, mask)


def aggregate(loss: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce a per-token ``loss`` ``(B, T)`` with ``mask`` ``(B, T)`` to a scalar.

    - ``token-mean``: sum over all valid tokens / number of valid tokens (long rows weigh more).
    - ``seq-mean-token-sum``: per-row token sum, then mean over rows (Dr. GRPO style).
    - ``seq-mean-token-mean``: per-row token mean, then mean over rows (original GRPO).

    Seq-mean modes average over rows with at least one valid token: a fully masked row (e.g. a
    non-trainable row) is absent, not a zero that dilutes the mean. Empty mask: 0.
    """
    if mode == "token-mean":
        return masked_mean(loss, mask)
    if mode == "seq-mean-token-sum":
        per_row = masked_sum(loss, mask, dim=-1)
    elif mode == "seq-mean-token-mean":
        per_row = masked_mean(loss, mask, dim=-1)
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {', '.join(AGG_MODES)}")
    return masked_mean(per_row, mask.any(dim=-1))
