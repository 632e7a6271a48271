"""A finished ``model.sft`` warm-start kept for the runs that would repeat it (``run.sft_cache``).

The warm-start depends on the model, the task, the seed, the thread count and the held-out evaluation's
settings, not on the RL method that follows, so every method of a study at one seed starts from the same
weights. The first run to need them stores the policy's trained parameters and the stage's report under
a key of those settings (:func:`key`); the others load them instead of training the stage again (on the
long-chain study, about 9 of a run's 30 minutes). A test checks that a run from the cache equals one that
trained the stage itself, metric for metric and weight for weight.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from testbed.errors import UserError

WEIGHTS, REPORT = "policy.safetensors", "sft.json"


def key(cfg: Any, *, evaluate_after: bool) -> str:
    """A digest of everything the stage's outcome depends on: the whole ``model`` and ``task`` sections,
    the seed, the torch threads in use (float sums round by thread count), the held-out evaluation's size
    and length, the gradient clip, and whether the stage measures pass@1 after itself."""
    c = cfg.to_dict()
    what = {"model": c["model"], "task": c["task"], "seed": c["run"]["seed"], "threads": torch.get_num_threads(),
            "eval_size": c["run"]["eval_size"], "max_len": c["rollout"]["max_len"],
            "temperature": c["rollout"]["temperature"], "max_grad_norm": c["algo"]["max_grad_norm"],
            "evaluate_after": evaluate_after}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load(folder: str | Path, digest: str, backend: Any) -> dict[str, Any] | None:
    """Copy a stored stage's parameters into ``backend``'s policy and return its report, or None when
    nothing is stored under ``digest``."""
    from safetensors.torch import load_file

    entry = Path(folder) / digest
    if not (entry / WEIGHTS).is_file() or not (entry / REPORT).is_file():
        return None
    try:
        stored = load_file(str(entry / WEIGHTS))
        report = json.loads((entry / REPORT).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"run.sft_cache: {entry} is damaged ({e}); delete it and run again") from None
    params = list(backend.policy_parameters())
    if len(stored) != len(params) or any(stored[_name(i)].shape != p.shape or stored[_name(i)].dtype != p.dtype
                                         for i, p in enumerate(params)):
        raise UserError(f"run.sft_cache: {entry} holds another policy's parameters; delete it and run again")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(stored[_name(i)])
    return report


def store(folder: str | Path, digest: str, backend: Any, report: dict[str, Any]) -> None:
    """Keep the policy's parameters and the stage's report under ``digest``: written beside the entry and
    renamed in, so a reader never sees half of one; a second writer of the same entry keeps the first."""
    from safetensors.torch import save_file

    folder = Path(folder)
    entry = folder / digest
    if entry.exists():
        return
    tmp = folder / f".{digest}.{id(report)}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        save_file({_name(i): p.detach().contiguous() for i, p in enumerate(backend.policy_parameters())},
                  str(tmp / WEIGHTS))
        (tmp / REPORT).write_text(json.dumps(report))
        try:
            tmp.rename(entry)
        except OSError:  # another run stored the same entry meanwhile
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _name(i: int) -> str:
    return f"p{i:05d}"
