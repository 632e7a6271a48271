"""testbed.masked: masked reductions agree with naive loops, ignore pad garbage, and never give NaN."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.masked import AGG_MODES, aggregate, masked_mean, masked_sum, masked_var, masked_whiten
from tests import oracles
from tests.oracles import as_tensor, garbage, ragged, randn

TOL = dict(rtol=1e-9, atol=1e-9)

# deadline off: timing on a shared 2-core machine is noise, not a property of the code
relaxed = settings(deadline=None)


@relaxed
@given(ragged(), st.sampled_from([None, 0, -1]))
def test_sum_and_mean_match_loops_and_ignore_pads(b, dim):
    x = garbage(randn((b["B"], b["T"]), b["gen"]), b["mask"], b["gen"])
    torch.testing.assert_close(masked_sum(x, b["mask"], dim), as_tensor(oracles.masked_sum(x, b["mask"], dim)), **TOL)
    torch.testing.assert_close(masked_mean(x, b["mask"], dim), as_tensor(oracles.masked_mean(x, b["mask"], dim)), **TOL)


@relaxed
@given(ragged(), st.booleans(), st.booleans())
def test_var_and_whiten_match_loops_and_ignore_pads(b, unbiased, shift_mean):
    x = garbage(3.0 + 2.0 * randn((b["B"], b["T"]), b["gen"]), b["mask"], b["gen"])
    torch.testing.assert_close(masked_var(x, b["mask"], unbiased), as_tensor(oracles.masked_var(x, b["mask"], unbiased)), **TOL)
    torch.testing.assert_close(
        masked_whiten(x, b["mask"], shift_mean), as_tensor(oracles.masked_whiten(x, b["mask"], shift_mean)), rtol=1e-7, atol=1e-7
    )


@relaxed
@given(ragged(), st.sampled_from(AGG_MODES))
def test_aggregate_matches_loops_and_ignores_pads(b, mode):
    x = randn((b["B"], b["T"]), b["gen"])
    clean = aggregate(x, b["mask"], mode)
    dirty = aggregate(garbage(x, b["mask"], b["gen"]), b["mask"], mode)
    torch.testing.assert_close(clean, as_tensor(oracles.aggregate(x, b["mask"], mode)), **TOL)
    torch.testing.assert_close(dirty, clean, rtol=0, atol=0)


def test_aggregate_modes_by_hand():
    # row 0: 3 tokens [1, 2, 3]; row 1: 1 token [10]; row 2: empty (must not count as a row)
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 99.0, 99.0], [7.0, 7.0, 7.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    expect = {
        "token-mean": (1 + 2 + 3 + 10) / 4,  # 4.0
        "seq-mean-token-sum": ((1 + 2 + 3) + 10) / 2,  # 8.0
        "seq-mean-token-mean": ((1 + 2 + 3) / 3 + 10) / 2,  # 6.0
    }
    for mode, value in expect.items():
        torch.testing.assert_close(aggregate(x, m, mode), torch.tensor(value, dtype=torch.float64), rtol=0, atol=1e-12)


def test_whiten_gives_zero_mean_unit_variance_on_valid_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 1e9], [4.0, 5.0, float("nan"), 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    w = masked_whiten(x, m)
    torch.testing.assert_close(masked_mean(w, m), torch.tensor(0.0, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(masked_var(w, m), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-7)
    assert (w[~m] == 0).all()
    # scale-only keeps the mean (3.0)
    torch.testing.assert_close(masked_mean(masked_whiten(x, m, shift_mean=False), m), torch.tensor(3.0, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_empty_mask_gives_zero_and_finite_gradients(mode):
    x = torch.full((2, 3), float("nan"), dtype=torch.float64, requires_grad=True)
    m = torch.zeros(2, 3, dtype=torch.bool)
    outs = [masked_sum(x, m), masked_mean(x, m), masked_mean(x, m, -1).sum(), masked_var(x, m), masked_whiten(x, m).sum(), aggregate(x, m, mode)]
    for out in outs:
        torch.testing.assert_close(out.detach(), torch.tensor(0.0, dtype=torch.float64), rtol=0, atol=0)
    sum(outs).backward()
    assert torch.isfinite(x.grad).all()


def test_nan_pads_give_zero_gradient_through_var_and_whiten():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 0.0]], dtype=torch.float64, requires_grad=True)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    (masked_var(x, m) + (masked_whiten(x, m) * torch.arange(3.0, dtype=torch.float64)).sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~m] == 0).all()


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), "token-sum")
