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


SAMPLED = "final_eval_sampled.json"
"""In a run directory: :func:`measure_sampled`'s evaluation of the final policy (``success``: the mean over its rows)."""


def measure_sampled(run_dir: str | Path, *, k: int = 128, log=print) -> Path:
    """The finished run's final policy as it was trained: sampled at the rollout temperature, no stop rule, each of
    the task's problems ``k`` times (simulated tasks: ``task.env_kwargs.num_problems``, 64 when unset). Kept in
    :data:`SAMPLED`; a file of the same ``k`` is not measured again.

    A greedy evaluation reads the argmax policy instead, which no method trained: a policy that ends a long
    problem correctly in most samples may, decoded greedily, never end it, and one argmax decision then scores a
    whole problem 0 or 1 (docs/tppo_regimes.md, "Greedy against sampled success")."""
    run_dir = Path(run_dir)
    out = run_dir / SAMPLED
    if out.is_file():
        try:
            kept = json.loads(out.read_text())
            if kept.get("samples_per_problem") == k and "success" in kept:
                return out
        except json.JSONDecodeError:
            pass  # a damaged file is measured again
    cfg = config_mod.load(str(run_dir / "config.yaml"), [])
    if cfg.task.kind != "sim":
        raise UserError(f"{run_dir}: the sampled final evaluation reads a simulated task's problems (task.kind sim)")
    problems = int(cfg.task.env_kwargs.get("num_problems", 64))
    res = evaluate_from_cli(str(run_dir / "config.yaml"), [], checkpoint=str(run_dir), n=problems, k=k)
    res["success"] = res[f"avg@{k}"]
    res["step"] = cfg.run.steps
    atomic_write(out, json.dumps(res, indent=2))
    log(f"  sampled final policy {run_dir.name}: success {res['success']:.3f} ({problems} problems x {k})")
    return out
