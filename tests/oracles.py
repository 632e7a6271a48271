"""Deliberately naive oracles: pure-Python loops over rows and tokens, in Python floats (double).

Each mirrors a fast function in ``testbed.masked``, ``testbed.advantages`` or ``testbed.losses``,
written the slow, obvious way from the definitions (and, for the estimators, from DESIGN.md's ending
table directly rather than through ``testbed.rollout.treatment``). Inputs are tensors; each oracle
reads only valid positions (a row is the list of its valid indices) and returns nested lists of floats,
0.0 at masked positions.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import Tensor

EOS, LENGTH_CAP, WINDOW_CUT, EARLY_STOP = 0, 1, 2, 3


def _rows(x: Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in x.tolist()]


def _valid(mask: Tensor) -> list[list[int]]:
    """For each row, the indices of its valid tokens."""
    return [[t for t, m in enumerate(row) if m] for row in mask.tolist()]


# ------------------------------------------------------------------------------------ masked


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None):
    """Scalar (dim None) or per-row (dim -1 / 1) or per-column (dim 0) sums of a 2-D ``x``."""
    xs, ms = _rows(x), mask.tolist()
    B, T = len(xs), (len(xs[0]) if xs else 0)
    if dim is None:
        return sum(xs[b][t] for b in range(B) for t in range(T) if ms[b][t])
    if dim in (-1, 1):
        return [sum(xs[b][t] for t in range(T) if ms[b][t]) for b in range(B)]
    return [sum(xs[b][t] for b in range(B) if ms[b][t]) for t in range(T)]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None):
    ms = mask.tolist()
    B, T = len(ms), (len(ms[0]) if ms else 0)
    s = masked_sum(x, mask, dim)
    if dim is None:
        n = sum(ms[b][t] for b in range(B) for t in range(T))
        return s / n if n else 0.0
    if dim in (-1, 1):
        ns = [sum(row) for row in ms]
    else:
        ns = [sum(ms[b][t] for b in range(B)) for t in range(T)]
    return [si / n if n else 0.0 for si, n in zip(s, ns)]


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> float:
    vals = [v for row, idx in zip(_rows(x), _valid(mask)) for v in (row[t] for t in idx)]
    n = len(vals)
    if n == 0 or (unbiased and n == 1):
        return 0.0
    mean = sum(vals) / n
    ss = sum((v - mean) ** 2 for v in vals)
    return ss / (n - 1) if unbiased else ss / n


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8):
    vals = [v for row, idx in zip(_rows(x), _valid(mask)) for v in (row[t] for t in idx)]
    mean = sum(vals) / len(vals) if vals else 0.0
    std = math.sqrt(masked_var(x, mask) + eps)
    out = []
    for row, mrow in zip(_rows(x), mask.tolist()):
        out.append([((v - mean) / std + (0.0 if shift_mean else mean)) if m else 0.0 for v, m in zip(row, mrow)])
    return out


def aggregate(loss: Tensor, mask: Tensor, mode: str) -> float:
    xs, idx = _rows(loss), _valid(mask)
    if mode == "token-mean":
        toks = [xs[b][t] for b in range(len(xs)) for t in idx[b]]
        return sum(toks) / len(toks) if toks else 0.0
    per_row = []
    for b in range(len(xs)):
        if not idx[b]:
            continue  # a fully masked row is absent from the seq-mean
        s = sum(xs[b][t] for t in idx[b])
        per_row.append(s if mode == "seq-mean-token-sum" else s / len(idx[b]))
    return sum(per_row) / len(per_row) if per_row else 0.0


# ------------------------------------------------------------------------------------ advantages


def gae(rewards, values, mask, gamma, lam, bootstrap=None):
    """Per row: compress to the valid tokens, run the textbook backward recursion, scatter back.
    ``lam`` is a float or a list of per-row floats; ``bootstrap`` a list of per-row floats or None."""
    rs, vs, idx = _rows(rewards), _rows(values), _valid(mask)
    B, T = len(rs), len(rs[0]) if rs else 0
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        lam_b = lam[b] if isinstance(lam, (list, tuple)) else lam
        boot = 0.0 if bootstrap is None else bootstrap[b]
        r = [rs[b][t] for t in idx[b]]
        v = [vs[b][t] for t in idx[b]]
        n = len(r)
        a = [0.0] * n
        running = 0.0
        for k in reversed(range(n)):
            v_next = v[k + 1] if k + 1 < n else boot
            delta = r[k] + gamma * v_next - v[k]
            running = delta + gamma * lam_b * running
            a[k] = running
        for k, t in enumerate(idx[b]):
            adv[b][t] = a[k]
            ret[b][t] = a[k] + v[k]
    return adv, ret


def last_value(values, mask) -> list[float]:
    vs, idx = _rows(values), _valid(mask)
    return [vs[b][idx[b][-1]] if idx[b] else 0.0 for b in range(len(vs))]


def egae(rewards, values, mask, finished, gamma, lam):
    last = last_value(values, mask)
    boot = [0.0 if f else last[b] for b, f in enumerate(finished.tolist())]
    return gae(rewards, values, mask, gamma, lam, boot)


def mc_returns(rewards, mask, gamma, bootstrap=None):
    """G_t as the explicit forward sum over the rest of the row (no recursion)."""
    rs, idx = _rows(rewards), _valid(mask)
    B, T = len(rs), len(rs[0]) if rs else 0
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        r = [rs[b][t] for t in idx[b]]
        n = len(r)
        boot = 0.0 if bootstrap is None else bootstrap[b]
        for k, t in enumerate(idx[b]):
            out[b][t] = sum(gamma ** (j - k) * r[j] for j in range(k, n)) + gamma ** (n - k) * boot
    return out


def grpo(scores, group_ids, eps=1e-6, scale=True) -> list[float]:
    s, g = [float(v) for v in scores.tolist()], group_ids.tolist()
    out = []
    for i in range(len(s)):
        members = [s[j] for j in range(len(s)) if g[j] == g[i]]
        mean = sum(members) / len(members)
        if not scale:
            out.append(s[i] - mean)
            continue
        var = sum((m - mean) ** 2 for m in members) / (len(members) - 1) if len(members) > 1 else 0.0
        out.append((s[i] - mean) / (math.sqrt(var) + eps))
    return out


def ending_table(ending: int, length_cap: str) -> tuple[str, bool]:
    """DESIGN.md's ending table: (bootstrap kind in 'zero'/'last_value'/'given', trainable)."""
    if ending in (EOS, EARLY_STOP):
        return "zero", True
    if ending == WINDOW_CUT:
        return "last_value", True
    # LENGTH_CAP
    if length_cap == "terminal":
        return "zero", True
    if length_cap == "bootstrap":
        return "last_value", True
    return "given", False


def table_bootstrap(rollout) -> list[float]:
    """The ending table's bootstrap per row (what the collector writes into ``rollout.bootstrap``):
    0, V(s_l), or the given value for rows the table leaves open (masked LENGTH_CAP: no loss sees them)."""
    last = last_value(rollout.values, rollout.mask)
    given = [float(v) for v in rollout.bootstrap.tolist()]
    kinds = [ending_table(int(e), rollout.length_cap)[0] for e in rollout.ending.tolist()]
    return [{"zero": 0.0, "last_value": last[b], "given": given[b]}[k] for b, k in enumerate(kinds)]


def estimator(name: str, rollout, params):
    """Oracle for ``ESTIMATORS.get(name)(rollout, params)``; returns (advantages, returns) lists.

    gae, mc and grpo use ``rollout.bootstrap`` as given (the collector's ending table); egae is
    T-PPO eq. 6 and bootstraps cut rows with their own last value whatever the field says."""
    B = rollout.tokens.shape[0]
    idx = _valid(rollout.mask)
    last = last_value(rollout.values, rollout.mask)
    boot = [float(v) for v in rollout.bootstrap.tolist()]
    trainable = [ending_table(int(e), rollout.length_cap)[1] for e in rollout.ending.tolist()]
    if params.lam_adaptive_alpha > 0:
        lam_actor = []
        for b in range(B):
            n = len(idx[b])
            lam_b = 1.0 - 1.0 / (params.lam_adaptive_alpha * n) if n else 0.0
            lam_actor.append(min(1.0, max(0.0, lam_b)))
    else:
        lam_actor = params.lam_actor
    g = params.gamma
    if name in ("gae", "egae"):
        if name == "egae":  # eq. 6: V(s_l) after cut rows, 0 after every other row
            kinds = [ending_table(int(e), rollout.length_cap)[0] for e in rollout.ending.tolist()]
            boot = [last[b] if kinds[b] == "last_value" else 0.0 for b in range(B)]
        adv, _ = gae(rollout.rewards, rollout.values, rollout.mask, g, lam_actor, boot)
        _, ret = gae(rollout.rewards, rollout.values, rollout.mask, g, params.lam_critic, boot)
    elif name == "mc":
        ret = mc_returns(rollout.rewards, rollout.mask, g, boot)
        vs = _rows(rollout.values)
        adv = [[(ret[b][t] - vs[b][t]) if t in idx[b] else 0.0 for t in range(len(vs[b]))] for b in range(B)]
    elif name == "grpo":
        rs = _rows(rollout.rewards)
        gids = list(range(B)) if rollout.group_ids is None else rollout.group_ids.tolist()
        row_adv = []
        for b in range(B):
            if not trainable[b]:
                row_adv.append(0.0)
                continue
            members = [sum(rs[j][t] for t in idx[j]) for j in range(B) if trainable[j] and gids[j] == gids[b]]
            mean = sum(members) / len(members)
            score = sum(rs[b][t] for t in idx[b])
            if params.grpo_scale:
                var = sum((m - mean) ** 2 for m in members) / (len(members) - 1) if len(members) > 1 else 0.0
                row_adv.append((score - mean) / (math.sqrt(var) + 1e-6))
            else:
                row_adv.append(score - mean)
        T = len(rs[0]) if rs else 0
        adv = [[row_adv[b] if t in idx[b] else 0.0 for t in range(T)] for b in range(B)]
        ret = mc_returns(rollout.rewards, rollout.mask, g, boot)
    else:
        raise KeyError(name)
    for b in range(B):
        if not trainable[b]:
            adv[b] = [0.0] * len(adv[b])
            ret[b] = [0.0] * len(ret[b])
    return adv, ret


# ------------------------------------------------------------------------------------ losses


def _agg_lists(per_token: list[list[float]], mask: Tensor, mode: str) -> float:
    return aggregate(torch.tensor(per_token, dtype=torch.float64), mask, mode)


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, agg, dual_clip=0.0) -> float:
    lp, old, adv, ms = _rows(logprobs), _rows(old_logprobs), _rows(advantages), mask.tolist()
    per_token = []
    for b in range(len(lp)):
        row = []
        for t in range(len(lp[b])):
            if not ms[b][t]:
                row.append(0.0)
                continue
            ratio = math.exp(lp[b][t] - old[b][t])
            a = adv[b][t]
            surr1 = -a * ratio
            surr2 = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            l = max(surr1, surr2)
            if dual_clip and a < 0:
                l = min(l, -a * dual_clip)
            row.append(l)
        per_token.append(row)
    return _agg_lists(per_token, mask, agg)


def value_loss(values, old_values, returns, mask, clip, agg) -> float:
    v, old, g, ms = _rows(values), _rows(old_values), _rows(returns), mask.tolist()
    per_token = []
    for b in range(len(v)):
        row = []
        for t in range(len(v[b])):
            if not ms[b][t]:
                row.append(0.0)
                continue
            e = (v[b][t] - g[b][t]) ** 2
            if clip > 0:
                vc = old[b][t] + min(max(v[b][t] - old[b][t], -clip), clip)
                e = max(e, (vc - g[b][t]) ** 2)
            row.append(0.5 * e)
        per_token.append(row)
    return _agg_lists(per_token, mask, agg)


def explained_variance(values, returns, mask) -> float:
    v, g, idx = _rows(values), _rows(returns), _valid(mask)
    gs = [g[b][t] for b in range(len(g)) for t in idx[b]]
    res = [g[b][t] - v[b][t] for b in range(len(g)) for t in idx[b]]
    if not gs:
        return 0.0

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)

    return 1.0 - var(res) / var(gs) if var(gs) > 0 else 0.0


def kl_penalty(logprobs, ref_logprobs, mask, kind, agg) -> float:
    lp, ref, ms = _rows(logprobs), _rows(ref_logprobs), mask.tolist()
    per_token = []
    for b in range(len(lp)):
        row = []
        for t in range(len(lp[b])):
            d = lp[b][t] - ref[b][t]
            if not ms[b][t]:
                row.append(0.0)
            elif kind == "k1":
                row.append(d)
            else:  # k3: ratio ref/pi, r - 1 - log r
                r = math.exp(-d)
                row.append(r - 1 - math.log(r))
        per_token.append(row)
    return _agg_lists(per_token, mask, agg)


# ------------------------------------------------------------------------------------ test data
# Random ragged batches for the property tests: hypothesis draws the structure (shape, lengths,
# endings, holes, a seed); the float contents come from a seeded torch generator (fast to shrink).



@st.composite
def ragged(draw, max_b: int = 6, max_t: int = 8, min_len: int = 0, holes: bool = False):
    """A dict with ``mask`` ``(B, T)`` bool (right-padded; with ``holes`` some interior tokens are
    masked too), ``lengths`` list, ``ending`` ``(B,)`` long covering all four endings, and ``gen``,
    a seeded ``torch.Generator`` for float contents."""
    B = draw(st.integers(1, max_b))
    T = draw(st.integers(max(1, min_len), max_t))
    lengths = draw(st.lists(st.integers(min_len, T), min_size=B, max_size=B))
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    if holes:
        hole = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B)))
        mask = mask & ~hole
    ending = torch.tensor(draw(st.lists(st.sampled_from([EOS, LENGTH_CAP, WINDOW_CUT, EARLY_STOP]), min_size=B, max_size=B)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return {"B": B, "T": T, "mask": mask, "lengths": lengths, "ending": ending, "gen": gen}


def randn(shape, gen, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype)


def garbage(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, nan: bool = True) -> torch.Tensor:
    """``x`` with every masked position overwritten: huge values, and NaN / inf when ``nan``."""
    junk = 1e6 * torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    if nan:
        pick = torch.randint(0, 3, x.shape, generator=gen)
        junk = torch.where(pick == 0, torch.full_like(junk, float("nan")), junk)
        junk = torch.where(pick == 1, torch.full_like(junk, float("inf")), junk)
    return torch.where(mask, x, junk)


def as_tensor(x) -> torch.Tensor:
    """Oracle output (nested floats) as a float64 tensor."""
    return torch.as_tensor(x, dtype=torch.float64)
