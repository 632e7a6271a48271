"""The learner: one PPO / T-PPO training step, top to bottom like the paper's pseudocode.

    collect -> advantages -> epochs of minibatch updates (actor, critic) -> log record -> update the
    stop rule (regret normaliser, threshold controller, warm-up)

Given a task and a backend (built by the application layer, :mod:`testbed.ops.build`), a
:class:`Learner` holds the algorithm's state: the stop rule, the T-PPO sample pool, the estimator,
the losses and the optimisers. It knows nothing of files: the run (directory, lock, checkpoints,
evaluations, resume) is :class:`testbed.ops.trainer.Trainer`, a Learner with a run directory.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from testbed import config as config_mod
from testbed.advantages import ESTIMATORS, AdvantageParams, loss_mask, mc_returns
from testbed.collector import SamplePool, StepBatch
from testbed.config import Config
from testbed.diagnostics import detection_metrics, failure_rank, planted_metrics, stop_rate_metrics
from testbed.errors import UserError
from testbed.losses import POLICY_LOSSES, PolicyLossParams, entropy_bonus, explained_variance, kl_penalty, value_loss
from testbed.masked import masked_mean, masked_whiten as whiten
from testbed.rollout import Ending, Rollout, table_bootstrap
from testbed.stopping import make_stop_rule


class Learner:
    """The algorithm's state for one run over ``task`` and ``backend``; :meth:`train_step` is one step.

    ``critic_state``: critic tensors to start from (``model.critic_init``: a finished run's weights,
    read by the caller), copied in before the optimisers see the parameters.
    """

    def __init__(self, cfg: Config, task: Any, backend: Any, *, critic_state: dict[str, Tensor] | None = None,
                 critic_source: str = "model.critic_init: the checkpoint"):
        self.cfg = cfg
        self.task, self.backend = task, backend
        B = cfg.rollout.batch_size
        try:
            self.rule = make_stop_rule(cfg.stop, num_slots=B, seed=cfg.run.seed, total_steps=cfg.run.steps)
        except (OSError, ValueError) as e:  # the random rule's stop.reference_run is missing or unreadable
            raise UserError(str(e)) from e
        self.estimator = ESTIMATORS.get(cfg.algo.estimator)
        # No critic when neither the estimator (GRPO) nor the stop rule reads values: no critic forward
        # in decoding, no critic update, no critic optimiser state.
        self.uses_critic = getattr(self.estimator, "uses_values", True) or getattr(self.rule, "uses_values", True)
        if not self.uses_critic and hasattr(self.backend, "drop_critic"):
            self.backend.drop_critic()
        self.pool = SamplePool(self.task, self.rule, cfg, seed=cfg.run.seed, with_values=self.uses_critic)
        self.adv_params = AdvantageParams.from_config(cfg.algo, cfg.rollout)
        self.policy_loss = POLICY_LOSSES.get(cfg.algo.policy_loss)
        self.loss_params = PolicyLossParams.from_config(cfg.algo)
        self.actor_params = list(self.backend.policy_parameters())
        self.critic_params = list(self.backend.critic_parameters()) if self.uses_critic else []
        if critic_state is not None:
            self.load_critic(critic_state, critic_source)
        eps = cfg.algo.adam_eps
        self.opt_actor = torch.optim.Adam(self.actor_params, lr=cfg.algo.lr_actor, eps=eps)
        self.opt_critic = (torch.optim.Adam(self.critic_params, lr=cfg.algo.lr_critic, eps=eps)
                           if self.uses_critic else None)
        self.shuffle = torch.Generator().manual_seed(cfg.run.seed + 1)
        # Tasks that know each row's failure step declare it (simulated envs, LLM tasks that verify steps).
        self.ground_truth = bool(getattr(self.task, "ground_truth", False))
        self.step = 0
        self.cumulative_tokens = 0
        self._valued: tuple[StepBatch, float] | None = None  # (batch, seconds) of the last finished_rows pass
        self.started = time.perf_counter()

    def train_step(self) -> tuple[StepBatch, dict[str, Any]]:
        """One training step; returns the batch and its metrics record, and advances :attr:`step`."""
        self.schedule_lr()
        batch = self.pool.collect(self.backend, self.step)  # collect
        adv = self.estimator(batch.rollout, self.adv_params)  # advantages
        actor = self.update_policy(batch, adv.advantages)  # epochs of minibatch updates
        critic = self.update_critic(batch, adv.returns)
        record = self.record(batch, adv.advantages, actor, critic)
        record.update(self.rule.metrics(self.step))  # the threshold and warm-up this batch ran with
        # once per batch: the regret normaliser, the threshold controller, the critic-loss warm-up
        self.rule.update(batch.rollout.regret, self.sampled_mask(batch.rollout), train_step=self.step,
                         stop_rate=record["stop/rate"], critic_loss=critic.get("loss/value"))
        self.step += 1
        return batch, record

    def load_critic(self, state: dict[str, Tensor], source: str = "model.critic_init: the checkpoint") -> None:
        """Copy the critic's parameters from ``state`` (a checkpoint's tensors); ``source`` names it in errors."""
        ptrs = {p.data_ptr() for p in self.critic_params}
        own = {k: v for k, v in self.backend.state_dict().items() if v.data_ptr() in ptrs}
        bad = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
        if bad or not own:
            raise config_mod.ConfigError(f"{source} does not fit this critic "
                                         f"(missing or differently shaped: {', '.join(bad[:5]) or 'no critic tensors'})")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k].to(v.dtype))

    def schedule_lr(self) -> None:
        """Set the optimisers' learning rates for this step (``algo.lr_schedule``); computed from the step, so
        a resumed run matches. A constant schedule leaves them as they are."""
        if self.cfg.algo.lr_schedule == "constant":
            return
        # linear: cleanrl's anneal_lr, 1 at the first step and 1/steps at the last, so every step still learns
        f = 1.0 - self.step / max(self.cfg.run.steps, 1)
        for opt, lr in ((self.opt_actor, self.cfg.algo.lr_actor), (self.opt_critic, self.cfg.algo.lr_critic)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr * f

    # --- updates --------------------------------------------------------------------------------
    def policy_mask(self, rollout: Rollout) -> Tensor:
        """Tokens the policy trains on: valid, trainable rows, minus T-PPO's ignored tail, minus filtered groups."""
        c = self.cfg
        m = loss_mask(rollout, c.rollout.length_cap)
        k = c.tppo.ignore_last_k
        if c.tppo.enabled and k > 0:
            # Drop the last k tokens of rows cut by the window (k = 0 drops none: no x[-0:] slicing).
            lengths = rollout.mask.sum(-1, keepdim=True)
            pos = torch.arange(rollout.mask.shape[1]).unsqueeze(0)
            tail = (pos >= lengths - k) & (rollout.ending == Ending.WINDOW_CUT).unsqueeze(1)
            m = m & ~tail
        if c.algo.dynamic_sampling and rollout.group_ids is not None:
            m = m & _informative_groups(rollout).unsqueeze(1)
        return m & self.sampled_mask(rollout)

    @staticmethod
    def sampled_mask(rollout: Rollout) -> Tensor:
        """(B, T) bool: valid tokens the policy sampled (forced, planted tokens are not its actions)."""
        return rollout.mask if rollout.sampled is None else rollout.mask & rollout.sampled

    def _minibatches(self, n: int):
        mb = self.cfg.algo.minibatch_size
        for _ in range(self.cfg.algo.epochs):
            perm = torch.randperm(n, generator=self.shuffle)
            for i in range(0, n, mb):
                yield perm[i : i + mb]

    def update_policy(self, batch: StepBatch, advantages: Tensor) -> dict[str, float]:
        """This step's actor update: none during ``algo.critic_warmup_steps``; otherwise, by ``tppo.credit``,
        the window's tokens (``advantages``, (B, W)), the rows that finished (deferred), or both."""
        c = self.cfg
        if self.step < c.algo.critic_warmup_steps:
            return {"loss/policy": float("nan"), "time/actor": 0.0, "tokens/actor": 0, "tokens/actor_forward": 0,
                    "actor/frozen": 1.0}
        credit = c.tppo.credit if c.tppo.enabled else "window"
        out: dict[str, float] = {"actor/frozen": 0.0}
        if credit != "deferred":
            out.update(self.update_actor(batch.rollout, advantages))
        if credit != "window":
            d = self.update_deferred(batch)
            if credit == "deferred":
                out.update(d)
            else:  # both: the finishing update's metrics under deferred/, its time and tokens added
                out.update({k if k.startswith("deferred/") else "deferred/" + k.replace("/", "_"): v for k, v in d.items()})
                for k in ("time/actor", "tokens/actor", "tokens/actor_forward", "updates/actor"):
                    out[k] += d.get(k, 0)
        return out

    def update_deferred(self, batch: StepBatch) -> dict[str, float]:
        """T-PPO deferred credit: the rows that finished this step, trained once on all their tokens
        against the log-probs they were sampled with. A token sampled k steps ago is off-policy by k
        updates; the ratio is clipped as usual and the staleness logged (``deferred/age_*``, steps)."""
        r = self.finished_rows(batch)
        if r is None:
            return {"loss/policy": float("nan"), "time/actor": 0.0, "tokens/actor": 0, "tokens/actor_forward": 0,
                    "deferred/rows": 0}
        adv = self.estimator(r, self.adv_params)  # whole rows: terminal, or bootstrapped per length_cap
        out = self.update_actor(r, adv.advantages)
        age = (self.step - r.policy_version)[r.mask].float()
        out.update({"deferred/rows": r.batch_size, "deferred/age_mean": float(age.mean()),
                    "deferred/age_max": float(age.max())})
        return out

    def finished_rows(self, batch: StepBatch) -> Rollout | None:
        """T-PPO: the rows that finished this step, whole, with ``values`` (n, L) from the current critic and
        the ending table's ``bootstrap`` from them. Computed once per batch (deferred credit and the critic
        share it)."""
        r = batch.finished
        if r is None or (self._valued is not None and self._valued[0] is batch):
            return r
        t0 = time.perf_counter()
        with torch.no_grad():
            dev = self.backend.device
            r.values = self.backend.critic_forward(r.prompts, r.tokens.to(dev), r.mask.to(dev)).float().cpu()
        r.bootstrap = table_bootstrap(r.treatment, r.values, r.mask)  # the ending table's, as the collector's rows
        self._valued = (batch, time.perf_counter() - t0)
        return r

    def update_actor(self, rollout: Rollout, advantages: Tensor) -> dict[str, float]:
        c, a = self.cfg, self.cfg.algo
        t0 = time.perf_counter()
        mask = self.policy_mask(rollout)
        if a.normalize_advantages:
            advantages = whiten(advantages, mask)
        dev = self.backend.device
        ref = self.reference_logprobs(rollout) if a.kl_coef else None
        means = _Means()
        for idx in self._minibatches(rollout.batch_size):
            m = mask[idx]
            if not m.any():
                continue
            prompts = [rollout.prompts[i] for i in idx.tolist()]
            logp, ent = self.backend.policy_forward(prompts, rollout.tokens[idx].to(dev), rollout.mask[idx].to(dev),
                                                    temperature=c.rollout.temperature)
            logp, ent = logp.float().cpu(), ent.float().cpu()
            loss, met = self.policy_loss(logp, rollout.logprobs[idx], advantages[idx], m, self.loss_params)
            if a.entropy_coef:
                l_ent, m_ent = entropy_bonus(ent, m, agg=a.agg)
                loss = loss + a.entropy_coef * l_ent
                met = {**met, **m_ent}
            else:
                met = {**met, "entropy": masked_mean(ent.detach(), m)}
            if a.kl_coef:
                l_kl, m_kl = kl_penalty(logp, ref[idx], m, kind=a.kl_type, agg=a.agg)
                loss = loss + a.kl_coef * l_kl
                met = {**met, **m_kl}
            gn = _optimizer_step(self.opt_actor, self.actor_params, loss, a.max_grad_norm)
            means.add({"loss/policy": loss.detach(), "actor/grad_norm": gn, **{f"actor/{k}": v for k, v in met.items()}})
        out = means.result() or {"loss/policy": float("nan")}
        out["updates/actor"] = means.count  # optimizer steps: the cost model's fixed cost per update
        out["time/actor"] = time.perf_counter() - t0
        # Per epoch, for the cost model: tokens in the loss, and response positions forwarded (a T-PPO
        # window is teacher-forced after the row's carried tokens, which the forward re-encodes).
        out["tokens/actor"] = int(mask.sum())
        trained = mask.any(-1)
        out["tokens/actor_forward"] = int((rollout.lengths + rollout.extras.get("start", 0))[trained].sum())
        return out

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> Tensor:
        """(B, T) log-probs under the frozen reference, once per batch (it never changes), computed in
        minibatch-sized chunks."""
        c, dev = self.cfg, self.backend.device
        out = torch.zeros(rollout.tokens.shape)
        mb = c.algo.minibatch_size
        for s in range(0, rollout.batch_size, mb):
            rows = slice(s, s + mb)
            out[rows] = self.backend.reference_forward(rollout.prompts[rows], rollout.tokens[rows].to(dev),
                                                       rollout.mask[rows].to(dev),
                                                       temperature=c.rollout.temperature).float().cpu()
        return out

    def critic_data(self, batch: StepBatch, returns: Tensor) -> tuple[Rollout, Tensor, Tensor] | None:
        """(rows, returns, old values) for the value loss.

        PPO: this step's rows with the estimator's returns. T-PPO: the rows that finished this step,
        whole responses, Monte-Carlo returns, and old values recomputed with the current critic. A row
        that hit max_len under ``rollout.length_cap=bootstrap`` bootstraps with that critic's V(s_l),
        as the actor's advantages do (the ending table's :func:`testbed.rollout.table_bootstrap`).
        """
        if not self.cfg.tppo.enabled:
            r = batch.rollout
            return r, returns, r.values
        r = self.finished_rows(batch)
        if r is None:
            return None
        ret = mc_returns(r.rewards, r.mask, gamma=self.cfg.algo.gamma, bootstrap=r.bootstrap)
        return r, ret, r.values

    def update_critic(self, batch: StepBatch, returns: Tensor) -> dict[str, float]:
        a = self.cfg.algo
        # the finished rows' values may have been computed already for deferred credit: count them here
        earlier = self._valued[1] if self._valued is not None and self._valued[0] is batch else 0.0
        t0 = time.perf_counter() - earlier
        out: dict[str, float] = {"loss/value": float("nan"), "critic/explained_variance": float("nan")}
        if not self.uses_critic:
            return {**out, "time/critic": 0.0}
        if a.lr_critic == 0:
            # frozen (the T-PPO study's control): Adam at lr 0 would not move it, so skip forward, backward and
            # step; draw the minibatch permutations all the same, so the run equals one that runs the update
            rows = batch.finished if self.cfg.tppo.enabled else batch.rollout
            for _ in self._minibatches(rows.batch_size if rows is not None else 0):
                pass
            return {**out, "critic/frozen": 1.0, "time/critic": time.perf_counter() - t0}
        data = self.critic_data(batch, returns)
        if data is not None:
            rows, ret, old = data
            mask = loss_mask(rows, self.cfg.rollout.length_cap)
            out["critic/explained_variance"] = float(explained_variance(old, ret, mask))
            out["tokens/critic"] = int(mask.sum())  # per epoch: the cost model's training tokens
            dev = self.backend.device
            means = _Means()
            for idx in self._minibatches(rows.batch_size):
                m = mask[idx]
                if not m.any():
                    continue
                v = self.backend.critic_forward([rows.prompts[i] for i in idx.tolist()], rows.tokens[idx].to(dev),
                                                rows.mask[idx].to(dev)).float().cpu()
                loss, met = value_loss(v, old[idx], ret[idx], m, clip=a.value_clip, agg=a.agg)
                gn = _optimizer_step(self.opt_critic, self.critic_params, a.value_coef * loss, a.max_grad_norm)
                means.add({"loss/value": loss.detach(), "critic/grad_norm": gn, **{f"critic/{k}": x for k, x in met.items()}})
            out.update(means.result())
            out["updates/critic"] = means.count
        out["time/critic"] = time.perf_counter() - t0
        return out

    # --- logging --------------------------------------------------------------------------------
    def record(self, batch: StepBatch, advantages: Tensor, actor: dict, critic: dict) -> dict[str, Any]:
        r = batch.rollout
        fin = r.finished
        generated = int(r.mask.sum())
        self.cumulative_tokens += generated
        final_reward = r.rewards.sum(-1)
        rec: dict[str, Any] = {
            "step": self.step,
            "tokens/generated": generated,
            "tokens/cumulative": self.cumulative_tokens,
            "reward/mean": float(final_reward[fin].mean()) if fin.any() else float("nan"),
            "reward/task_mean": float(r.task_reward[fin].mean()) if fin.any() else float("nan"),
            "success/rate": float(r.success[fin].float().mean()) if fin.any() else float("nan"),
            "length/mean": float((r.extras["start"] + r.lengths)[fin].float().mean()) if fin.any() else float("nan"),
            "length/max": int((r.extras["start"] + r.lengths)[fin].max()) if fin.any() else 0,
            "ending/eos": float((r.ending == Ending.EOS).float().mean()),
            "ending/length_cap": float((r.ending == Ending.LENGTH_CAP).float().mean()),
            "ending/window_cut": float((r.ending == Ending.WINDOW_CUT).float().mean()),
            "regret/mean": float(masked_mean(r.regret, r.mask)),
            "time/wall": time.perf_counter() - self.started,
        }
        rec.update(stop_rate_metrics(r, self.cfg.rollout.max_len))
        if self.ground_truth:
            rec.update(detection_metrics(r))
            rec["credit/failure_rank"] = failure_rank(r, advantages)
            rec.update(planted_metrics(r))
        rec.update(batch.stats)
        rec.update(actor)
        rec.update(critic)
        return rec


def _optimizer_step(opt: torch.optim.Optimizer, params: list[Tensor], loss: Tensor, max_norm: float) -> Tensor:
    """One clipped gradient step on ``loss``; returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return norm


class _Means:
    """Running means of per-minibatch metrics; ``.item()`` happens here, not in the losses."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def result(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}


def _informative_groups(rollout: Rollout) -> Tensor:
    """(B,) bool: rows whose group's rewards are not all equal (DAPO dynamic sampling filter)."""
    score = rollout.rewards.sum(-1)
    g = rollout.group_ids
    out = torch.zeros_like(g, dtype=torch.bool)
    for gid in g.unique():
        rows = g == gid
        out[rows] = bool(score[rows].max() > score[rows].min())
    return out
