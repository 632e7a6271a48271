"""A training run's directory: what :class:`testbed.ops.trainer.Trainer` writes there and reads back.

- ``config.yaml`` (fully resolved, rewritten after every resume that fits) and ``config_changes.jsonl``
  (one line per resume that changed settings, :data:`CHANGES_NAME`);
- the resume checks: a resumed run may change only :data:`RESUME_MAY_CHANGE`, every other difference from
  ``config.yaml`` is refused (:func:`check_settings`); a damaged checkpoint file is a
  :class:`testbed.errors.RunFileError` naming it;
- ``checkpoints/`` (layout: :mod:`testbed.runfiles`): weights as safetensors with their step in the
  metadata, optimiser and loop state via ``torch.save``, the finished policy as a model directory, and
  the marker written last (:func:`save_checkpoint`, :func:`read_marker`, :func:`read_weights`,
  :func:`read_trainer_state`);
- ``final_eval.json``, ``final_eval_nostop.json`` and ``summary.json``.

Every write goes through :mod:`testbed.runfiles`' atomic helpers. What goes *into* a checkpoint (which
optimiser, which generators) is the trainer's; this module only moves it to and from files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from testbed import config as config_mod
from testbed.config import Config
from testbed.errors import RunFileError, UserError
from testbed.runfiles import MARKER, TRAINER_STATE, WEIGHTS, atomic_path, atomic_write, checkpoint_dir

RESUME_MAY_CHANGE = ("run.steps", "run.progress", "run.threads", "run.checkpoint_every", "run.tensorboard",
                     "run.out_dir", "run.name")
"""Settings a resumed run may change: how long it trains, and keys that change where it lives or how it
is watched, never what it computes (``run.threads`` only up to float rounding: torch's thread count sets the
order of reductions, so a resume on another count is not bit-identical). Any other difference from the run's
``config.yaml`` is refused."""

CHANGES_NAME = "config_changes.jsonl"
"""In a run directory: one line per resume that changed settings, ``{"step": K, "changes": {key: {"old",
"new"}}}``; ``K`` is the first step trained with the new values (``config.yaml`` holds the latest)."""

NO_OLDER_CHECKPOINT = ("no older checkpoint is kept, so the run cannot resume: delete {ck} to train it again "
                       "from step 0 (its metrics are then dropped), or start a new run with another run.name")

FINAL_EVAL = "final_eval.json"
"""The held-out evaluation after the last step (``run.eval_every``)."""
FINAL_EVAL_NOSTOP = "final_eval_nostop.json"
"""The final policy's success without stopping (``run.final_eval_rows``)."""


# --- settings ---------------------------------------------------------------------------------------
def write_config(run_dir: Path, cfg: Config) -> None:
    """``config.yaml``: the fully resolved settings."""
    (run_dir / "config.yaml").write_text(config_mod.dump(cfg))


def record_changes(run_dir: Path, step: int, changes: dict[str, dict[str, Any]]) -> None:
    """Append one line to :data:`CHANGES_NAME`: the settings a resume changed, from ``step`` on."""
    with (run_dir / CHANGES_NAME).open("a") as f:
        f.write(json.dumps({"step": step, "changes": changes}) + "\n")


def flat_settings(data: Any) -> dict[str, Any]:
    """``{section.key: value}`` of a config mapping (dict fields such as env_kwargs compare whole)."""
    if not isinstance(data, dict):
        raise AttributeError(f"expected a mapping of sections, got {type(data).__name__}")
    return {f"{sec}.{k}": v for sec, body in data.items() if isinstance(body, dict) for k, v in body.items()}


def check_settings(run_dir: Path, cfg: Config, step: int, rule: Any) -> dict[str, dict[str, Any]]:
    """The accepted differences between ``cfg`` and the run's ``config.yaml`` (key -> old, new);
    refuses any other difference, listing the keys, and a ``run.steps`` the run cannot honour (``rule``:
    the stop rule with its checkpointed state loaded, whose warm-up a new ``run.steps`` may move)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():  # a run directory from before config.yaml: nothing to compare
        return {}
    try:
        old = flat_settings(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, AttributeError) as e:
        raise RunFileError(f"{path}: unreadable ({e}); it records the settings the checkpoint was trained "
                           "with: restore it, or start a new run with another run.name") from None
    new = flat_settings(yaml.safe_load(config_mod.dump(cfg)))
    diff = {k: {"old": old[k], "new": new[k]} for k in new if k in old and old[k] != new[k]}
    finished = old.get("run.steps") == step
    state = f"finished at step {step}" if finished else f"has a checkpoint at step {step}"
    refused = [k for k in diff if k not in RESUME_MAY_CHANGE]
    if refused:
        listed = "; ".join(f"{k}: {diff[k]['old']!r} -> {diff[k]['new']!r}" for k in refused)
        raise UserError(f"{run_dir}: the run {state} and was trained with other settings ({listed}); "
                        f"resuming may change only {', '.join(RESUME_MAY_CHANGE)}: use the run's settings "
                        "(its config.yaml), or another run.name for a new run")
    steps = cfg.run.steps
    if steps < step:
        raise UserError(f"run.steps: {steps} is below the {step} steps {run_dir} has trained; "
                        "give at least that many, or another run.name for a new run")
    warm = getattr(rule, "warmup", None)
    if "run.steps" in diff and warm is not None and cfg.stop.warmup == "critic_loss" and warm.on_at is None:
        cap = lambda n: math.ceil(cfg.stop.warmup_cap * n) if n > 0 else None  # noqa: E731 (Warmup's)
        a, b = cap(diff["run.steps"]["old"]), cap(steps)
        if a != b and max(x if x is not None else math.inf for x in (a, b)) > step:
            raise UserError(f"run.steps: changing it from {diff['run.steps']['old']} to {steps} moves the "
                            f"stop rule's forced start (stop.warmup_cap) from step {a} to {b}, which this run "
                            "has not reached; keep run.steps, or use another run.name for a new run")
    return diff


# --- checkpoints ------------------------------------------------------------------------------------
def save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as one safetensors file, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_torch(obj: Any, path: Path) -> None:
    """``obj`` via ``torch.save``, written atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, Tensor], state: dict[str, Any],
                    save_policy: Callable[[str], None] | None = None) -> Path:
    """Write the checkpoint of ``step``: ``weights`` (safetensors), the trainer's ``state`` (torch.save)
    and, if ``save_policy`` is given, the model directory it writes into the folder it is handed
    (``checkpoints/policy``, replaced whole); the marker last. Returns the checkpoint folder."""
    ck = checkpoint_dir(run_dir)
    # The step in the weights' metadata lets a resume see weights and trainer state from different saves.
    save_tensors(weights, ck / WEIGHTS, {"step": str(step)})
    save_torch(state, ck / TRAINER_STATE)
    if save_policy is not None:
        tmp, final = ck / "policy.tmp", ck / "policy"
        shutil.rmtree(tmp, ignore_errors=True)
        save_policy(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    # The marker is written last: a checkpoint counts only once both files are complete.
    atomic_write(ck / MARKER, json.dumps({"step": step}))
    return ck


def saved_step(run_dir: Path) -> int:
    """The step of the run's checkpoint, 0 when there is none or its marker cannot be read (for messages)."""
    try:
        return int(json.loads((checkpoint_dir(run_dir) / MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_marker(run_dir: Path) -> int | None:
    """The step of the run's checkpoint (None: no checkpoint); a damaged marker is a :class:`RunFileError`."""
    ck = checkpoint_dir(run_dir)
    marker = ck / MARKER
    if not marker.exists():
        return None
    try:
        step = json.loads(marker.read_text())["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(step)
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise RunFileError(f"{marker}: not a checkpoint marker ({type(e).__name__}: {e}); "
                           + NO_OLDER_CHECKPOINT.format(ck=ck)) from None
    return step


def read_weights(path: Path, step: int) -> dict[str, Tensor]:
    """The checkpoint's tensors; a missing, truncated or empty file, or one from another save, is a
    :class:`RunFileError` naming it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    ck = path.parent
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise RunFileError(f"{path}: cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                           + NO_OLDER_CHECKPOINT.format(ck=ck)) from None
    if "step" in meta and meta["step"] != str(step):  # (checkpoints written before the step was kept pass)
        raise RunFileError(f"{path}: holds step {meta['step']} but {ck / MARKER} says {step} (a "
                           "checkpoint write was interrupted); " + NO_OLDER_CHECKPOINT.format(ck=ck))
    return weights


def read_trainer_state(run_dir: Path, step: int) -> dict[str, Any]:
    """The trainer state saved with the checkpoint of ``step``; a missing, damaged or mismatched file is a
    :class:`RunFileError` naming it."""
    ck = checkpoint_dir(run_dir)
    path = ck / TRAINER_STATE
    try:
        state = torch.load(path, weights_only=True)
        saved = int(state["step"])
    except Exception as e:  # noqa: BLE001 - missing, truncated, empty or not ours: all say the same
        raise RunFileError(f"{path}: cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                           + NO_OLDER_CHECKPOINT.format(ck=ck)) from None
    if saved != step:
        raise RunFileError(f"{path}: holds step {saved} but {ck / MARKER} says {step} (a checkpoint write was "
                           "interrupted); " + NO_OLDER_CHECKPOINT.format(ck=ck))
    return state


def read_run_weights(run: str, option: str = "model.critic_init") -> dict[str, Tensor]:
    """The weights of another run's checkpoint, named by ``option``; a missing run or checkpoint is a
    :class:`testbed.config.ConfigError`."""
    from safetensors.torch import load_file

    ck = checkpoint_dir(run) / WEIGHTS
    if not Path(run).is_dir():
        raise config_mod.ConfigError(f"{option}: no run directory {run!r}")
    if not ck.is_file():
        raise config_mod.ConfigError(f"{option}: run {run!r} has no checkpoint ({ck} is missing)")
    return load_file(str(ck))


def task_rng_state(task) -> Any:
    """The task's generator state (the task's ``rng_state()``, or else a simulated env's ``np_random``)."""
    if hasattr(task, "rng_state"):
        return task.rng_state()
    env = getattr(task, "env", None)
    if env is not None and hasattr(env, "np_random"):
        return env.np_random.bit_generator.state
    return None


def set_task_rng_state(task, state) -> None:
    """Inverse of :func:`task_rng_state`."""
    if state is None:
        return
    if hasattr(task, "set_rng_state"):
        task.set_rng_state(state)
        return
    env = getattr(task, "env", None)
    if env is not None and hasattr(env, "np_random"):
        env.np_random.bit_generator.state = state


# --- final files ------------------------------------------------------------------------------------
def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, written atomically (the final evaluations)."""
    atomic_write(path, json.dumps(data, indent=2))


def done_nostop_eval(run_dir: Path, step: int, rows: int) -> dict[str, Any] | None:
    """The run's :data:`FINAL_EVAL_NOSTOP` if it already holds this evaluation (same step and rows), else None."""
    path = run_dir / FINAL_EVAL_NOSTOP
    if path.is_file():  # a finished run re-entered: the evaluation is already there (unless it trained on)
        done = json.loads(path.read_text())
        if done.get("step") == step and done.get("rows") == rows:
            return done
    return None


def write_summary(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """``summary.json`` from ``metrics.jsonl``: steps logged, completeness, and the last tenth's means."""
    from testbed.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    recs = read_metrics(path) if path.exists() else []  # run.steps=0 logs nothing
    tail = recs[-max(1, len(recs) // 10):] if recs else []

    def avg(key):
        xs = [x[key] for x in tail if x.get(key) is not None]
        return float(np.mean(xs)) if xs else None

    summary = {
        "name": cfg.run.name,
        "steps": len(recs),
        "complete": len(recs) >= cfg.run.steps,
        "tokens/cumulative": recs[-1]["tokens/cumulative"] if recs else 0,
        "final/success_rate": avg("success/rate"),
        "final/reward_mean": avg("reward/mean"),
        "final/stop_rate": avg("stop/rate"),
        "final/entropy": avg("actor/entropy"),
        "time/total": sum((x.get("time/gen") or 0) + (x.get("time/actor") or 0) + (x.get("time/critic") or 0) for x in recs),
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
