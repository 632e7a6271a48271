"""``testbed eval``: build a config's task and backend, load a checkpoint, evaluate (pass@1, avg@k)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testbed import config as config_mod
from testbed.errors import UserError
from testbed.evaluate import evaluate
from testbed.ops.build import build
from testbed.runfiles import atomic_write, find_weights


def evaluate_from_cli(config_path: str, overrides: list[str], *, checkpoint: str = "", n: int = 64, k: int = 1,
                      greedy: bool = False, out: str = "") -> dict[str, Any]:
    cfg = config_mod.load(config_path, overrides)
    if n < 1 or k < 1:
        raise UserError(f"--n and --k: must be >= 1, got n={n}, k={k}")
    if greedy and k != 1:
        raise UserError("--greedy: samples one response per problem, use --k 1")
    slots = min(32, n * k) if k == 1 else k * max(1, 32 // k)
    task, backend = build(cfg, num_slots=slots)
    if checkpoint:
        from safetensors.torch import load_file

        path = Path(checkpoint)
        path = find_weights(path)
        if not path.is_file():
            raise UserError(f"--checkpoint: no checkpoint at {path}")
        try:
            backend.load_state_dict(load_file(str(path)))
        except (KeyError, RuntimeError) as e:  # a checkpoint of another model or layout
            raise UserError(f"--checkpoint: {path} does not fit the model of this config: {e}") from None
    result = evaluate(backend, task, cfg, n=n, k=k, greedy=greedy, batch_size=slots, seed=cfg.run.seed)
    result["checkpoint"] = checkpoint or None
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(result, indent=2))
    return result
