"""A run: a :class:`testbed.learner.Learner` with a run directory.

The learner is the algorithm; this class is what makes it a run: the task and backend built from the
config (:mod:`testbed.ops.build`), the run directory and its lock, metrics and per-row logs, held-out
and final evaluations, checkpoints and exact resume. What the run directory holds (``config.yaml``,
the resume checks, checkpoint files, the final evaluations and summary) is written and read by
:mod:`testbed.ops.rundir`; the trainer decides when, and what goes into a checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed.config import Config
from testbed.errors import Interrupted, UserError
from testbed.evaluate import evaluate
from testbed.learner import Learner
from testbed.memory import check_batch_fits
from testbed.diagnostics import row_records
from testbed.metrics import MetricsLogger, TensorBoardLogger
from testbed.ops import rundir
from testbed.ops import build as build_mod
from testbed.ops import sft_cache
from testbed.ops.build import build, build_task
from testbed.ops.lock import RunLock
from testbed.ops.rundir import CHANGES_NAME, NO_OLDER_CHECKPOINT, RESUME_MAY_CHANGE  # noqa: F401 (re-exported)
from testbed.runfiles import WEIGHTS, checkpoint_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer(Learner):
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
        """Task, backend and the learner's state, in memory only."""
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        check_batch_fits(cfg.rollout.batch_size, cfg.rollout.max_len)  # before the task allocates its rows
        task, backend = build(cfg, num_slots=cfg.rollout.batch_size)
        run = cfg.model.critic_init
        critic = rundir.read_run_weights(run, "model.critic_init") if run else None
        Learner.__init__(self, cfg, task, backend, critic_state=critic,
                         critic_source=f"model.critic_init: the checkpoint of {run!r}")
        self._eval_task = None
        self._sft = build_mod.sft_settings(cfg) if cfg.model.sft else None  # a bad key fails before any work

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
        sft = self.sft_stage() if self.step == 0 and self._sft and self._sft["steps"] else None
        bar = tqdm(total=c.run.steps, initial=self.step, desc=c.run.name, disable=not c.run.progress, leave=False)
        while self.step < c.run.steps:
            held_out = self.maybe_evaluate()
            if sft is not None:  # the step-0 evaluation is the post-SFT one
                self._write_sft(sft, held_out)
                sft = None
            batch, record = self.train_step()  # collect, advantages, updates, stop-rule update
            record.update(held_out)
            self.logger.log(record)
            if self.tb is not None:
                self.tb.log(record)
            if self.rows_logger is not None:
                self.rows_logger.log({"step": record["step"], **row_records(batch.rollout)})
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

    def sft_stage(self) -> dict[str, Any] | None:
        """The ``model.sft`` warm-start (:mod:`llm_backend.sft`), run when a run starts from scratch (a
        resumed run's checkpoint already holds its result). Held-out greedy pass@1 before and after go
        to ``RUN_DIR/sft.json``; "after" is the step-0 held-out evaluation when that one is the same
        (``run.eval_every`` on and the same number of problems), else it is measured here. Returns the
        report still to be completed by that evaluation, or None when it was written here."""
        c = self.cfg
        reuse = bool(c.run.eval_every) and self._sft["eval_size"] in (0, c.run.eval_size) and c.run.steps > 0
        digest = sft_cache.key(c, evaluate_after=not reuse) if c.run.sft_cache else None
        report = sft_cache.load(c.run.sft_cache, digest, self.backend) if digest else None
        if report is not None:
            report["cache"] = f"loaded {digest}"
        else:
            report = build_mod.run_sft(c, self.backend, evaluate_before=True, evaluate_after=not reuse,
                                       progress=c.run.progress)
            if digest:
                sft_cache.store(c.run.sft_cache, digest, self.backend, report)
                report["cache"] = f"stored {digest}"
        self.started = time.perf_counter()  # time/wall: the RL run's own, with or without the warm-start
        if not reuse:
            self._write_sft(report, {})
            return None
        return report

    def _write_sft(self, report: dict[str, Any], held_out: dict[str, Any]) -> None:
        if held_out:
            report["pass@1/after"] = held_out["eval/pass@1"]
            report["length/mean/after"] = held_out["eval/length/mean"]
        rundir.write_json(self.run_dir / build_mod.SFT_REPORT, report)
        print(f"sft: {report['steps']} steps, held-out greedy pass@1 {report['pass@1/before']:.3f} -> "
              f"{report['pass@1/after']:.3f} on {report['eval_size']} problems ({self.run_dir / build_mod.SFT_REPORT})",
              flush=True)

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
        if final:  # final_eval.json keeps each held-out problem's outcome (paired tests between methods)
            out["eval/correct"] = res["correct"]
        return out

    # --- updates --------------------------------------------------------------------------------
    def write_summary(self) -> dict[str, Any]:
        """``summary.json`` (:func:`testbed.ops.rundir.write_summary`)."""
        return rundir.write_summary(self.run_dir, self.cfg)

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Weights as safetensors, optimiser and loop state via torch.save; each written atomically
        (:func:`testbed.ops.rundir.save_checkpoint`); after the last step also the policy as a model directory."""
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
        # time/wall goes on from the last kept record (the time between the two processes is not the run's)
        kept = keep[0] or []
        last = json.loads(kept[-1]).get("time/wall") if kept else None
        if isinstance(last, (int, float)):
            self.started = time.perf_counter() - last


def run(cfg: Config) -> dict[str, Any]:
    """Train one run to completion (resuming if its directory holds a checkpoint)."""
    return Trainer(cfg).train()
