"""Build a run's task and backend from its config: the one place that maps ``task.kind`` and
``model.kind`` (:data:`testbed.config_schema.TASK_KINDS`, ``MODEL_KINDS``) to their factories.

The application layer composes the packages here, so the algorithm core never reaches ``envs`` or
``llm_backend``. Factories are imported when first used (a simulated run never loads transformers);
the tables name them so an unknown kind is one clear error.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from testbed.errors import UserError

TASK_ENTRY_POINTS = {"sim": "testbed.ops.build:make_sim_task", "math": "llm_backend.task:make_task"}
"""``task.kind`` -> ``make_task(task_cfg, model_cfg, *, num_slots, seed)``."""
BACKEND_ENTRY_POINTS = {"toy": "testbed.toy:make_backend", "hf": "llm_backend.backend:make_backend"}
"""``model.kind`` -> ``make_backend(model_cfg, task, *, seed)``."""
SFT_ENTRY_POINTS = {"hf": ("llm_backend.sft:sft_settings", "llm_backend.sft:run_sft")}
"""``model.kind`` -> ``(settings(model.sft) -> dict, run_sft(cfg, backend, *, evaluate_before, evaluate_after,
progress) -> report)``: the ``model.sft`` warm-start stage (:mod:`llm_backend.sft`)."""
SFT_REPORT = "sft.json"
"""The SFT stage's report in a run directory (or ``testbed sft``'s output folder)."""


def load_entry_point(spec: str) -> Callable:
    """``'package.module:function'`` -> the function."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if module.startswith("llm_backend") and e.name and not e.name.startswith(("llm_backend", "testbed")):
            # a missing optional dependency is the user's to install, not a bug
            raise UserError(f"cannot load {spec}: {e} (install the LLM extra: pip install -e '.[llm]')") from None
        raise


def make_sim_task(task_cfg: Any, model_cfg: Any, *, num_slots: int, seed: int) -> Any:
    """A simulated task: ``import envs`` registers the planted-failure ids with gymnasium first."""
    import envs  # noqa: F401 (registers the ids)
    from testbed.sim_task import make_task

    return make_task(task_cfg, model_cfg, num_slots=num_slots, seed=seed)


def _kind(table: dict[str, str], key: str, value: str) -> str:
    if value not in table:
        raise UserError(f"{key}: unknown {value!r}; valid: {', '.join(table)}")
    return table[value]


def build_task(cfg: Any, *, num_slots: int, seed: int | None = None) -> Any:
    """The task of ``cfg.task`` with ``num_slots`` slots (seed: ``cfg.run.seed`` unless given)."""
    make = load_entry_point(_kind(TASK_ENTRY_POINTS, "task.kind", cfg.task.kind))
    task = make(cfg.task, cfg.model, num_slots=num_slots, seed=cfg.run.seed if seed is None else seed)
    task_max = getattr(task, "max_len", None)
    if task_max is not None and cfg.rollout.max_len > task_max:
        raise UserError(f"rollout.max_len: {cfg.rollout.max_len} exceeds the task's own max_len {task_max} "
                        "(set task.env_kwargs.max_len or lower rollout.max_len)")
    return task


def build_backend(cfg: Any, task: Any, *, seed: int | None = None) -> Any:
    """The backend (policy, critic, optional reference) of ``cfg.model`` for ``task``."""
    make = load_entry_point(_kind(BACKEND_ENTRY_POINTS, "model.kind", cfg.model.kind))
    return make(cfg.model, task, seed=cfg.run.seed if seed is None else seed)


def build(cfg: Any, *, num_slots: int | None = None) -> tuple[Any, Any]:
    """``(task, backend)`` for a run config; ``num_slots`` defaults to ``rollout.batch_size``."""
    task = build_task(cfg, num_slots=cfg.rollout.batch_size if num_slots is None else num_slots)
    return task, build_backend(cfg, task)


def sft_settings(cfg: Any) -> dict[str, Any]:
    """``model.sft`` checked and with defaults filled in (a bad key raises naming it)."""
    return load_entry_point(_kind({k: v[0] for k, v in SFT_ENTRY_POINTS.items()}, "model.sft: model.kind",
                                  cfg.model.kind))(cfg.model.sft)


def run_sft(cfg: Any, backend: Any, **kw: Any) -> dict[str, Any]:
    """The ``model.sft`` stage on ``backend`` (policy only); returns its report."""
    return load_entry_point(_kind({k: v[1] for k, v in SFT_ENTRY_POINTS.items()}, "model.sft: model.kind",
                                  cfg.model.kind))(cfg, backend, **kw)
