"""The training loop, top to bottom like the paper's pseudocode.

    collect -> advantages -> epochs of minibatch updates (actor, critic) -> log -> update the stop
    rule (regret normaliser, threshold controller, warm-up) -> checkpoint

Task and backend are reached through string entry points (``task.kind``, ``model.kind``), so this
module never imports ``envs`` or ``llm_backend``. What the run directory holds (``config.yaml``, the
resume checks, checkpoint files, the final evaluations and summary) is written and read by
:mod:`testbed.rundir`; the trainer decides when, and what goes into a checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from testbed import config as config_mod
from testbed import rundir
from testbed.advantages import ESTIMATORS, AdvantageParams, loss_mask, mc_returns
from testbed.collector import SamplePool, StepBatch
from testbed.build import BACKEND_ENTRY_POINTS, TASK_ENTRY_POINTS, build, build_task, load_entry_point  # noqa: F401 (re-exported)
from testbed.config import Config
from testbed.evaluate import evaluate
from testbed.errors import Interrupted, UserError
from testbed.lock import RunLock
from testbed.memory import check_batch_fits
from testbed.diagnostics import detection_metrics, failure_rank, planted_metrics, row_records, stop_rate_metrics
from testbed.losses import POLICY_LOSSES, PolicyLossParams, entropy_bonus, explained_variance, kl_penalty, value_loss
from testbed.masked import masked_mean, masked_whiten as whiten
from testbed.metrics import MetricsLogger, TensorBoardLogger
from testbed.rollout import Ending, Rollout, table_bootstrap
from testbed.rundir import CHANGES_NAME, NO_OLDER_CHECKPOINT, RESUME_MAY_CHANGE  # noqa: F401 (re-exported)
from testbed.runfiles import WEIGHTS, checkpoint_dir
from testbed.stopping import make_stop_rule


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run in ``run.out_dir/run.name``; resumes from the run's last checkpoint.

    A resume may change only :data:`RESUME_MAY_CHANGE` (each accepted change is appended to
    :data:`CHANGES_NAME` with the step it took effect); any other difference from the run's
    ``config.yaml`` is refused before anything in the directory changes, finished runs included.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.run.out_dir) / cfg.run.name
        # Refuse a directory another process trains in before building anything; a new directory is
        # created (and locked) only once everything below was built, so a failing config leaves none.
        self.lock = RunLock(self.run_dir)
        self._changes: dict[str, dict[str, Any]] = {}
        if self.run_dir.is_dir():
            self.lock.acquire()
        try:
            self._build(cfg)
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a run.out_dir the user cannot write to
                raise UserError(f"run.out_dir: cannot create {self.run_dir}: {e.strerror or e}") from None
            self.lock.acquire()
            checkpoint_dir(self.run_dir).mkdir(exist_ok=True)
            self.logger = MetricsLogger(self.run_dir / "metrics.jsonl")
            # Per-row outcomes of finished rows (length, ending, failure step) where there is ground truth.
            self.rows_logger = MetricsLogger(self.run_dir / "rows.jsonl") if self.ground_truth else None
            self._resume()  # checks everything before it changes anything in the run directory
            self.tb = TensorBoardLogger(self.run_dir / "tensorboard") if cfg.run.tensorboard else None
            if self._changes:  # provenance: which settings changed on this resume, from which step on
                rundir.record_changes(self.run_dir, self.step, self._changes)
            rundir.write_config(self.run_dir, cfg)  # after a resume that fits
        except BaseException:
            self.lock.release()
            raise

    def _build(self, cfg: Config) -> None:
        """Task, backend, stop rule, pool, estimator, losses and optimisers, in memory only."""
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        B = cfg.rollout.batch_size
        check_batch_fits(B, cfg.rollout.max_len)  # before the task allocates B rows
        self.task, self.backend = build(cfg, num_slots=B)
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
        if cfg.model.critic_init:
            self.init_critic_from(cfg.model.critic_init)
        self.opt_actor = torch.optim.Adam(self.actor_params, lr=cfg.algo.lr_actor)
        self.opt_critic = torch.optim.Adam(self.critic_params, lr=cfg.algo.lr_critic) if self.uses_critic else None
        self.shuffle = torch.Generator().manual_seed(cfg.run.seed + 1)
        # Tasks with ground truth: simulated envs, and LLM tasks that verify their steps (ground_truth = True).
        self.ground_truth = cfg.task.kind == "sim" or bool(getattr(self.task, "ground_truth", False))
        self.step = 0
        self.cumulative_tokens = 0
        self._eval_task = None
        self._valued: tuple[StepBatch, float] | None = None  # (batch, seconds) of the last finished_rows pass
        self.started = time.perf_counter()

    def close(self) -> None:
        """Release the run directory (also done at the end of :meth:`train` and at process exit)."""
        if getattr(self, "tb", None) is not None:
            self.tb.close()
            self.tb = None
        self.lock.release()

    # --- the loop -------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to ``run.steps`` and write the summary; the run directory is released however it ends."""
        try:
            return self._loop()
        finally:
            self.close()

    def _loop(self) -> dict[str, Any]:
        if not self.lock.held:
            raise RuntimeError(f"{self.run_dir}: this trainer was closed; build a new one to resume")
        try:
            return self._steps()
        except KeyboardInterrupt:  # Ctrl-C: one line, and the checkpoint the command resumes from
            raise Interrupted(self._interrupted_message()) from None

    def _interrupted_message(self) -> str:
        saved = rundir.saved_step(self.run_dir)
        where = (f"from its checkpoint at step {saved}" if saved else "from step 0: no checkpoint was written yet")
        if saved == self.cfg.run.steps:
            where = "training had finished; only the final evaluation is redone"
        return f"interrupted at step {self.step}; run the command again to resume ({where}; {self.run_dir})"

    def _steps(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        c = self.cfg
        bar = tqdm(total=c.run.steps, initial=self.step, desc=c.run.name, disable=not c.run.progress, leave=False)
        while self.step < c.run.steps:
            held_out = self.maybe_evaluate()
            batch = self.pool.collect(self.backend, self.step)  # collect
            adv = self.estimator(batch.rollout, self.adv_params)  # advantages
            actor = self.update_policy(batch, adv.advantages)  # epochs of minibatch updates
            critic = self.update_critic(batch, adv.returns)
            record = self.record(batch, adv.advantages, actor, critic)
            record.update(self.rule.metrics(self.step))  # the threshold and warm-up this batch ran with
            # once per batch: the regret normaliser, the threshold controller, the critic-loss warm-up
            self.rule.update(batch.rollout.regret, self.sampled_mask(batch.rollout), train_step=self.step,
                             stop_rate=record["stop/rate"], critic_loss=critic.get("loss/value"))
            record.update(held_out)
            self.logger.log(record)
            if self.tb is not None:
                self.tb.log(record)
            if self.rows_logger is not None:
                self.rows_logger.log({"step": self.step, **row_records(batch.rollout)})
            self.step += 1
            if self.step % c.run.checkpoint_every == 0 or self.step == c.run.steps:
                self.save_checkpoint()
            bar.update(1)
            bar.set_postfix(success=f"{record['success/rate']:.2f}", stop=f"{record['stop/rate']:.2f}")
        bar.close()  # (an interrupted bar is left as it is: tqdm closes it at exit)
        final = self.maybe_evaluate(final=True)
        if final:
            rundir.write_json(self.run_dir / rundir.FINAL_EVAL, final)
        nostop = self.evaluate_without_stopping()
        if nostop:
            rundir.write_json(self.run_dir / rundir.FINAL_EVAL_NOSTOP, nostop)
        return self.write_summary()

    def evaluate_without_stopping(self) -> dict[str, Any]:
        """``run.final_eval_rows`` whole responses of the final policy to fresh prompts, sampled at the
        rollout temperature with no stop rule: the success every method is compared on (training
        success counts a stopped row as failed, and T-PPO's finished rows favour short problems)."""
        c = self.cfg
        n = c.run.final_eval_rows
        if not n:
            return {}
        done = rundir.done_nostop_eval(self.run_dir, self.step, n)
        if done is not None:
            return done
        slots = min(n, 256)
        task = build_task(c, num_slots=slots, seed=c.run.seed + 20_000)
        res = evaluate(self.backend, task, c, n=n, greedy=False, batch_size=slots, seed=c.run.seed + 20_000,
                       progress=False)
        return {"rows": n, "success": res["avg@1"], "length_mean": res.get("length/mean"),
                "reward_mean": res["reward/mean"], "step": self.step}

    def maybe_evaluate(self, final: bool = False) -> dict[str, Any]:
        """Held-out evaluation every ``run.eval_every`` steps (and after the last), greedy, no stopping."""
        c = self.cfg
        every = c.run.eval_every
        if not every or (not final and self.step % every):
            return {}
        if self._eval_task is None:
            self._eval_task = build_task(c, num_slots=min(c.run.eval_size, 32), seed=c.run.seed + 10_000)
        res = evaluate(self.backend, self._eval_task, c, n=c.run.eval_size, greedy=True,
                       batch_size=self._eval_task.num_slots, seed=c.run.seed, progress=False)
        out = {f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))}
        out["eval/step"] = self.step
        out["eval/tokens_cumulative"] = self.cumulative_tokens
        return out

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
                for k in ("time/actor", "tokens/actor", "tokens/actor_forward"):
                    out[k] += d[k]
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

    def init_critic_from(self, run: str) -> None:
        """``model.critic_init``: copy the critic's parameters from a finished run's checkpoint."""
        state = rundir.read_run_weights(run, "model.critic_init")
        ptrs = {p.data_ptr() for p in self.critic_params}
        own = {k: v for k, v in self.backend.state_dict().items() if v.data_ptr() in ptrs}
        bad = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
        if bad or not own:
            raise config_mod.ConfigError(f"model.critic_init: the checkpoint of {run!r} does not fit this critic "
                                         f"(missing or differently shaped: {', '.join(bad[:5]) or 'no critic tensors'})")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k].to(v.dtype))

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

    def write_summary(self) -> dict[str, Any]:
        """``summary.json`` (:func:`testbed.rundir.write_summary`)."""
        return rundir.write_summary(self.run_dir, self.cfg)

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Weights as safetensors, optimiser and loop state via torch.save; each written atomically
        (:func:`testbed.rundir.save_checkpoint`); after the last step also the policy as a model directory."""
        weights = self.backend.state_dict()
        state = {
            "step": self.step,
            "cumulative_tokens": self.cumulative_tokens,
            "opt_actor": self.opt_actor.state_dict(),
            "opt_critic": self.opt_critic.state_dict() if self.opt_critic is not None else {},
            "pool_rng": self.pool.generator.get_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "rule": json.dumps(self.rule.state_dict()),
            "task_rng": json.dumps(rundir.task_rng_state(self.task)),
        }
        save_policy = None
        if self.step == self.cfg.run.steps and hasattr(self.backend, "save_pretrained"):
            # The finished policy as a model directory any transformers code can load.
            tokenizer = getattr(self.task, "tokenizer", None)
            save_policy = lambda folder: self.backend.save_pretrained(folder, tokenizer=tokenizer)  # noqa: E731
        return rundir.save_checkpoint(self.run_dir, self.step, weights, state, save_policy)

    def _resume(self) -> None:
        """Continue from the run's checkpoint, if it has one. Every file is read and every check made
        (the checkpoint's files, the settings against ``config.yaml``, the metrics to keep) before the
        first change to the run directory; a damaged file is a :class:`RunFileError` naming it."""
        ck = checkpoint_dir(self.run_dir)
        loggers = [x for x in (self.logger, self.rows_logger) if x is not None]
        step = rundir.read_marker(self.run_dir)
        if step is None:  # nothing to resume: a fresh start drops whatever was logged
            for lg in loggers:
                lg.truncate_after(-1)
            return
        weights = rundir.read_weights(ck / WEIGHTS, step)
        try:
            self.backend.load_state_dict(weights)
        except (KeyError, RuntimeError) as e:  # the directory holds a run of another model
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            first = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
            raise UserError(f"{ck}: the checkpoint does not fit this config's model (resuming needs the same "
                            f"model settings; use another run.name for a new run): {first}") from None
        state = rundir.read_trainer_state(self.run_dir, step)
        self.rule.load_state_dict(json.loads(state["rule"]))  # in memory; the settings check reads its warm-up
        self._changes = rundir.check_settings(self.run_dir, self.cfg, step, self.rule)
        keep = [lg.kept_lines(step - 1) for lg in loggers]  # a damaged record raises here, before any write
        self.step = step
        self.cumulative_tokens = int(state["cumulative_tokens"])
        self.opt_actor.load_state_dict(state["opt_actor"])
        if self.opt_critic is not None:
            self.opt_critic.load_state_dict(state["opt_critic"])
        self.pool.generator.set_state(state["pool_rng"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        rundir.set_task_rng_state(self.task, json.loads(state["task_rng"]))
        # Carried T-PPO rows are not checkpointed: the resumed run starts with a fresh pool.
        for lg, lines in zip(loggers, keep):
            lg.write_lines(lines)


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


def run(cfg: Config) -> dict[str, Any]:
    """Train one run to completion (resuming if its directory holds a checkpoint)."""
    return Trainer(cfg).train()
