"""Stop rules: decide, at each decoding step, which active rows to stop now.

A rule sees only the active rows of the decoding batch (:class:`StopContext`), keeps its per-row
state indexed by *slot* (the row's place in the batch, stable across T-PPO windows), and returns a
``(b,)`` bool of rows to stop; the sampled token is kept as the stopped row's last token.

Every rule is built the same way, ``RULES.get(name)(cfg, num_slots=..., seed=..., total_steps=...)``, so
the trainer never branches on a rule's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from testbed.config import StopSection
from testbed.registry import Registry


@dataclass
class StopContext:
    """One decoding step, active rows only (``b`` of them)."""

    slots: Tensor
    """(b,) long: slot of each active row (index into the rule's per-row state)."""
    positions: Tensor
    """(b,) long: response index of the token just sampled (0 for the first response token)."""
    logits: Tensor
    """(b, V) float: raw logits the token was sampled from."""
    tokens: Tensor
    """(b,) long: the sampled tokens."""
    regret: Tensor
    """(b,) float: g_t of the sampled token under the sampling distribution."""
    values: Tensor | None
    """(b,) float: V(s_t) of the state the token was sampled in; None on steps the critic skipped."""
    failure_step: Tensor
    """(b,) long: ground-truth fatal-token index known so far (-1 none; simulation only)."""
    train_step: int
    """The training step whose rollout this is."""
    ends_anyway: Tensor | None = None
    """(b,) bool: rows whose sampled token ends them regardless (EOS); a rule never stops these."""
    sampled: Tensor | None = None
    """(b,) bool: False where the task forced the token (a planted step): its regret is not the
    policy's choice, so accumulating rules leave their statistic unchanged there. None: all sampled."""


class RegretNormalizer:
    """Exponential moving mean and variance of regret over earlier training batches.

    Two variance modes (``stop.norm_var``):

    - ``moment`` (default): EMAs of the batch means of g and of g², ``var = E[g²] - mu²``; a drift of the
      mean between batches widens the variance, as it should for a z-score applied to the next batch.
    - ``batch`` (the paper's): an EMA of the batch variances Var(g_B) beside the EMA of batch means;
      a drift of the mean between batches does not widen it.

    ``update`` is called once per training batch, after its rollout; between updates the statistics are
    frozen, so a decision never depends on tokens of its own batch. The first update sets the
    statistics to that batch's.
    """

    def __init__(self, beta: float = 0.9, var_mode: str = "moment", delta: float = 0.0, clip: float = math.inf):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ema_beta must be in [0, 1), got {beta}")
        if var_mode not in ("moment", "batch"):
            raise ValueError(f"norm_var must be 'moment' or 'batch', got {var_mode!r}")
        self.beta, self.var_mode, self.delta, self.clip = beta, var_mode, delta, clip
        self.mean: float | None = None
        self.second: float | None = None
        """``moment``: EMA of the batch means of g²; ``batch``: EMA of the batch variances."""

    @property
    def ready(self) -> bool:
        return self.mean is not None

    @property
    def var(self) -> float | None:
        if self.mean is None:
            return None
        if self.var_mode == "batch":
            return self.second
        return max(0.0, self.second - self.mean ** 2)  # clamped at 0 against rounding

    def update(self, regret: Tensor, mask: Tensor) -> None:
        """Fold one batch's valid regrets (``(B, T)`` with bool ``mask``) into the statistics."""
        g = regret[mask].double()
        if g.numel() == 0:
            return
        m = g.mean().item()
        # the batch's population variance (every valid token of the batch is the population)
        m2 = (g * g).mean().item() if self.var_mode == "moment" else ((g - m) ** 2).mean().item()
        if self.mean is None:
            self.mean, self.second = m, m2
        else:
            b = self.beta
            self.mean = b * self.mean + (1 - b) * m
            self.second = b * self.second + (1 - b) * m2

    def normalize(self, regret: Tensor) -> Tensor:
        """``clip((g - mu) / (sqrt(var + delta) + 1e-6), -clip, clip)``; the 1e-6 guards a zero variance."""
        if self.mean is None:
            raise RuntimeError("RegretNormalizer has no statistics yet; call update() first")
        z = (regret - self.mean) / (math.sqrt(self.var + self.delta) + 1e-6)
        return z.clamp(-self.clip, self.clip) if math.isfinite(self.clip) else z

    def state_dict(self) -> dict:
        return {"beta": self.beta, "mean": self.mean, "sq": self.second, "var_mode": self.var_mode}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.mean, self.second = state["beta"], state["mean"], state["sq"]
        self.var_mode = state.get("var_mode", "moment")


class Warmup:
    """When a rule may start stopping (``stop.warmup``).

    - ``steps``: from training step ``warmup_steps`` on.
    - ``critic_loss`` (the paper's): from the step after the critic's loss has been below
      ``warmup_loss_below``, or has changed by less than ``warmup_loss_change`` from the step before, on
      ``warmup_patience`` consecutive steps (each criterion counted on its own); in any case from step
      ``ceil(warmup_cap * total_steps)`` on. The trainer hands each step's critic loss to
      :meth:`observe`; a NaN loss (no critic update) resets both counts.
    """

    def __init__(self, cfg: StopSection, total_steps: int = 0):
        self.cfg = cfg
        self.cap = math.ceil(cfg.warmup_cap * total_steps) if total_steps > 0 else None
        self.on_at: int | None = None
        """First training step the critic-loss criterion allows (None: not yet)."""
        self.below = 0
        self.flat = 0
        self.last: float | None = None

    def over(self, train_step: int) -> bool:
        c = self.cfg
        if c.warmup == "steps":
            return train_step >= c.warmup_steps
        if self.on_at is not None and train_step >= self.on_at:
            return True
        return self.cap is not None and train_step >= self.cap

    def observe(self, train_step: int, critic_loss: float | None) -> None:
        """Step ``train_step``'s critic loss (after its update)."""
        c = self.cfg
        if c.warmup != "critic_loss" or self.on_at is not None:
            return
        if critic_loss is None or not math.isfinite(critic_loss):
            self.below = self.flat = 0
            self.last = None
            return
        self.below = self.below + 1 if critic_loss < c.warmup_loss_below else 0
        flat = self.last is not None and abs(critic_loss - self.last) < c.warmup_loss_change
        self.flat = self.flat + 1 if flat else 0
        self.last = critic_loss
        if max(self.below, self.flat) >= c.warmup_patience:
            self.on_at = train_step + 1

    def force_on(self) -> None:
        """Offline scoring (``testbed detect``): the warm-up is long over."""
        self.on_at = 0

    def state_dict(self) -> dict:
        return {"on_at": self.on_at, "below": self.below, "flat": self.flat, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.on_at, self.below, self.flat, self.last = state["on_at"], state["below"], state["flat"], state["last"]


class StopRule:
    """Base class: no stops. Subclasses override :meth:`decide`."""

    uses_values = False
    """Whether :meth:`decide` reads ``ctx.values`` (if no rule or estimator does, no critic runs)."""

    def __init__(self, cfg: StopSection, *, num_slots: int, seed: int = 0, total_steps: int = 0):
        self.cfg = cfg
        self.num_slots = num_slots
        self.warmup = Warmup(cfg, total_steps)

    def reset(self, slots: Tensor, train_step: int) -> None:
        """New rows were placed in ``slots``: forget their per-row state."""

    def active(self, train_step: int) -> bool:
        """Whether the rule may stop rows of training step ``train_step`` at all."""
        return self.warmup.over(train_step)

    def __call__(self, ctx: StopContext) -> Tensor:
        stop = self.decide(ctx)
        # Never stop before min_tokens response tokens, nor during warm-up.
        allowed = (ctx.positions + 1) >= self.cfg.min_tokens
        if not self.active(ctx.train_step):
            allowed = torch.zeros_like(allowed)
        if ctx.ends_anyway is not None:
            allowed = allowed & ~ctx.ends_anyway.to(allowed.device)
        return stop & allowed

    def decide(self, ctx: StopContext) -> Tensor:
        return torch.zeros_like(ctx.tokens, dtype=torch.bool)

    def update(self, regret: Tensor, mask: Tensor, *, train_step: int | None = None, stop_rate: float | None = None,
               critic_loss: float | None = None) -> None:
        """Called once per training batch after its rollout and updates: ``(B, T)`` regret and mask, and,
        from the trainer, the batch's training step, realised stop rate and critic loss."""
        if train_step is not None:
            self.warmup.observe(train_step, critic_loss)

    def metrics(self, train_step: int) -> dict[str, float]:
        """The rule's state as used for training step ``train_step`` (logged every step)."""
        return {"stop/active": float(self.active(train_step))}

    def state_dict(self) -> dict:
        return {"warmup": self.warmup.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "warmup" in state:
            self.warmup.load_state_dict(state["warmup"])


RULES: Registry[type[StopRule]] = Registry("stop rule")
RULES.register("none")(StopRule)


def success_probability(values: Tensor, cfg: StopSection) -> Tensor:
    """p_t = clip((V - r_fail) / (r_success - r_fail), 0, 1)."""
    span = cfg.r_success - cfg.r_fail
    if span <= 0:
        raise ValueError("stop.r_success must exceed stop.r_fail")
    return ((values - cfg.r_fail) / span).clamp(0.0, 1.0)


def espo_margin(score: Tensor | None, values: Tensor, cfg: StopSection, tau: float, *, use_regret: bool = True,
                use_value: bool = True) -> Tensor:
    """ESPO's decision as a margin: a row stops where the margin is > 0. The one definition, used by the
    online rule and by offline scoring (``testbed detect``).

    ``score`` (b,) is the accumulated statistic S (None for ``value_only``), ``values`` (b,) the critic's
    V(s_t), ``tau`` the threshold scale in force (the controller moves it). Gates: ``scaled``
    ``S - (tau p + tau_min)``, ``and`` ``min(S - tau, rho - p)``, ``max`` ``S - tau max(V, value_floor)``;
    ablations: ``regret_only`` ``S - (tau + tau_min)`` (or ``S - tau max(1, ...)`` = ``S - tau`` under
    ``max``: the gate as if the row were sure to succeed), ``value_only`` ``rho - p``.
    """
    c = cfg
    p = success_probability(values, c)
    if not use_regret:
        return c.rho - p
    if not use_value:
        return score - (tau if c.gate == "max" else tau + c.tau_min)
    if c.gate == "scaled":
        return score - (tau * p + c.tau_min)
    if c.gate == "and":
        return torch.minimum(score - tau, c.rho - p)
    return score - tau * values.clamp(min=c.value_floor)  # "max"


@RULES.register("espo")
class ESPORule(StopRule):
    """ESPO: accumulated normalised regret against a value-gated threshold (DESIGN.md, steps 1-5), with
    the paper's options (z clip, batch-variance normaliser, smoothed statistic, ``max`` gate,
    termination-rate controller, critic-loss warm-up; ``configs/espo_paper.yaml``)."""

    use_regret = True
    use_value = True
    uses_values = True  # every variant decides only at steps that carry values (the ablations too)

    def __init__(self, cfg: StopSection, *, num_slots: int, seed: int = 0, total_steps: int = 0):
        super().__init__(cfg, num_slots=num_slots, seed=seed, total_steps=total_steps)
        self.normalizer = RegretNormalizer(cfg.ema_beta, cfg.norm_var, cfg.z_delta, cfg.z_clip)
        self.score = torch.zeros(num_slots, dtype=torch.float64)
        self.tau = float(cfg.tau)
        """Threshold scale in force: ``stop.tau``, then wherever the controller moved it."""
        self.last_margin: Tensor | None = None
        """(b,) margins of the last :meth:`decide` call (-inf where nothing could stop)."""

    def reset(self, slots: Tensor, train_step: int) -> None:
        self.score[slots] = 0.0

    def active(self, train_step: int) -> bool:
        return self.normalizer.ready and super().active(train_step)  # no statistics, no stops

    def accumulate(self, ctx: StopContext) -> Tensor:
        """Advance S for the active rows and return it (b,)."""
        z = self.normalizer.normalize(ctx.regret.double().cpu())
        s = self.score[ctx.slots.cpu()]
        kind = self.cfg.accumulate
        if kind == "cusum":
            s = (s + z - self.cfg.kappa).clamp(min=0.0)
        elif kind == "sum":
            s = s + (z - self.cfg.kappa).clamp(min=0.0)
        elif kind == "ema":  # smoothing within the row, weight alpha on the new token
            s = (1 - self.cfg.alpha) * s + self.cfg.alpha * z
        else:  # "smooth", the paper's: weight alpha_s on the previous statistic
            s = self.cfg.alpha_s * s + (1 - self.cfg.alpha_s) * z
        if ctx.sampled is not None:
            s = torch.where(ctx.sampled.cpu(), s, self.score[ctx.slots.cpu()])
        self.score[ctx.slots.cpu()] = s
        return s

    def decide(self, ctx: StopContext) -> Tensor:
        no = torch.zeros_like(ctx.tokens, dtype=torch.bool)
        self.last_margin = torch.full(no.shape, -math.inf, dtype=torch.float64)
        if not self.normalizer.ready:
            return no  # no statistics before the first update: nothing stops
        s = self.accumulate(ctx) if self.use_regret else None
        if ctx.values is None:
            return no  # the critic skipped this step; regret still accumulated above
        self.last_margin = espo_margin(s, ctx.values.double().cpu(), self.cfg, self.tau,
                                       use_regret=self.use_regret, use_value=self.use_value)
        return (self.last_margin > 0).to(ctx.tokens.device)

    def update(self, regret: Tensor, mask: Tensor, *, train_step: int | None = None, stop_rate: float | None = None,
               critic_loss: float | None = None) -> None:
        c = self.cfg
        # The controller reacts only to batches the rule could stop in (warm-up batches stop nothing).
        if c.target_rate > 0 and train_step is not None and stop_rate is not None and math.isfinite(stop_rate) \
                and self.active(train_step):
            self.tau = min(c.tau_high, max(c.tau_low, self.tau + c.rate_eta * (stop_rate - c.target_rate)))
        super().update(regret, mask, train_step=train_step, stop_rate=stop_rate, critic_loss=critic_loss)
        self.normalizer.update(regret.detach().cpu(), mask.cpu())

    def metrics(self, train_step: int) -> dict[str, float]:
        return {**super().metrics(train_step), "stop/tau": self.tau}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "normalizer": self.normalizer.state_dict(), "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.normalizer.load_state_dict(state["normalizer"])
        self.tau = float(state.get("tau", self.cfg.tau))


@RULES.register("regret_only")
class RegretOnlyRule(ESPORule):
    """Ablation: accumulated regret alone, threshold ``tau + tau_min`` (the gate as if p_t = 1)."""

    use_value = False


@RULES.register("value_only")
class ValueOnlyRule(ESPORule):
    """Ablation: stop when the critic's success probability p_t drops below ``rho``.

    Needs the normaliser only to share ESPO's warm-up behaviour (no stops before the first update).
    """

    use_regret = False


@dataclass(frozen=True)
class StopSchedule:
    """Per training step: the fraction of rows stopped and the histogram of stop positions."""

    rates: list[float]
    histograms: list[list[float]]

    def at(self, step: int) -> tuple[float, np.ndarray]:
        if not self.rates:
            return 0.0, np.zeros(1)
        k = min(step, len(self.rates) - 1)
        return self.rates[k], np.asarray(self.histograms[k], dtype=float)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "StopSchedule":
        """Read ``stop/rate`` and ``stop/step_hist`` from a reference run's ``metrics.jsonl``."""
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"stop.reference_run: no metrics.jsonl in {run_dir}")
        from testbed.metrics import iter_jsonl

        rates, hists = [], []
        for n, rec in iter_jsonl(path):
            try:
                rates.append(float(rec["stop/rate"]))
                hists.append(list(rec.get("stop/step_hist", [])))
            except (KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: cannot read stop/rate and stop/step_hist ({e!r})") from None
        return cls(rates, hists)


@RULES.register("random")
class RandomRule(StopRule):
    """Random truncation matched to a reference ESPO run, step by step.

    At ``reset`` each new row is marked for stopping at a position drawn from the reference's
    stop-position histogram at this training step. A marked row that ends on its own before that
    position is not stopped (no stop can happen after the end), so marking with the reference's rate
    would stop fewer rows than the reference did; the marking probability is therefore the
    reference's rate divided by the share of marked rows that were actually stopped (``hit_rate``),
    capped at 1. The share is measured over the last ``stop.hit_window`` training steps only, so it
    follows the policy's lengths as they change (a whole-run ratio lags behind them). The realised
    stop rate then tracks the reference's.
    """

    MIN_MARKED = 20
    """Marked rows the window needs before its hit rate is trusted (1 is used until then)."""

    def __init__(self, cfg: StopSection, *, num_slots: int, seed: int = 0, total_steps: int = 0,
                 schedule: StopSchedule | None = None):
        super().__init__(cfg, num_slots=num_slots, seed=seed, total_steps=total_steps)
        if cfg.hit_window < 1:
            raise ValueError(f"stop.hit_window: must be >= 1 training step, got {cfg.hit_window}")
        if schedule is None:
            if not cfg.reference_run:
                raise ValueError("stop.reference_run: the random rule needs a reference ESPO run directory")
            schedule = StopSchedule.from_run(cfg.reference_run)
        self.schedule = schedule
        self.rng = np.random.default_rng(seed + 7919)
        self.stop_at = torch.full((num_slots,), -1, dtype=torch.long)
        self.counts: dict[int, list[int]] = {}
        """training step -> [rows marked at that step, stops executed at that step], last hit_window steps."""

    def _count(self, train_step: int, marked: int = 0, fired: int = 0) -> None:
        c = self.counts.setdefault(int(train_step), [0, 0])
        c[0] += marked
        c[1] += fired
        for k in [k for k in self.counts if k <= train_step - self.cfg.hit_window]:
            del self.counts[k]

    @property
    def hit_rate(self) -> float:
        """Share of marked rows that were stopped over the window (1 before enough evidence)."""
        marked = sum(c[0] for c in self.counts.values())
        fired = sum(c[1] for c in self.counts.values())
        return fired / marked if marked >= self.MIN_MARKED and fired > 0 else 1.0

    def reset(self, slots: Tensor, train_step: int) -> None:
        rate, hist = self.schedule.at(train_step)
        n = len(slots)
        marked = self.rng.random(n) < min(1.0, rate / self.hit_rate)
        self._count(train_step, marked=int(marked.sum()))
        if hist.sum() > 0:
            pos = self.rng.choice(len(hist), size=n, p=hist / hist.sum())
        else:
            pos = np.zeros(n, dtype=int)
        self.stop_at[slots.cpu()] = torch.as_tensor(np.where(marked, pos, -1), dtype=torch.long)

    def decide(self, ctx: StopContext) -> Tensor:
        at = self.stop_at[ctx.slots.cpu()].to(ctx.positions.device)
        return (at >= 0) & (ctx.positions >= at)

    def __call__(self, ctx: StopContext) -> Tensor:
        stop = super().__call__(ctx)
        # Count executed stops once per row (the collector drops a stopped row at once; rows ending at
        # EOS are never reported as stopped, see StopRule.__call__).
        self._count(ctx.train_step, fired=int(stop.sum()))
        return stop

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": self.rng.bit_generator.state,
                "counts": {str(k): list(v) for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]
        self.counts = {int(k): list(v) for k, v in state["counts"].items()}


@RULES.register("oracle")
class OracleRule(StopRule):
    """Privileged: stop ``delay`` tokens after the fatal token, once the task knows it (simulated
    envs; LLM tasks whose verifier runs on the decoded prefix, ``llm_backend.chain``)."""

    def decide(self, ctx: StopContext) -> Tensor:
        f = ctx.failure_step
        return (f >= 0) & (ctx.positions >= f + self.cfg.delay)


def make_stop_rule(cfg: StopSection, *, num_slots: int, seed: int = 0, total_steps: int = 0) -> StopRule:
    """The rule ``cfg.rule``; ``total_steps`` (the run's ``run.steps``) sets the critic-loss warm-up's cap."""
    return RULES.get(cfg.rule)(cfg, num_slots=num_slots, seed=seed, total_steps=total_steps)
