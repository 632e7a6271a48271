"""A grid of runs in local processes.

A sweep file::

    base: configs/espo.yaml          # a config file (relative to the sweep file) or inline sections
    out_dir: runs/my_sweep
    overrides: {run.steps: 100}      # applied to every run
    axes:                            # the grid is the product of the axes, in this order
      method:
        ppo:  {stop.rule: none}
        espo: {stop.rule: espo}
        random: {stop.rule: random, stop.reference_run: "{out_dir}/espo-{env}-s{seed}"}
      env:
        default: {}
        trap: {task.env_id: testbed/PlantedFailureTrap-v0}
      seed: [0, 1, 2]                # a list axis sets run.seed

Each run is named by its axis values joined with ``-`` (``espo-trap-s1``). String values may use
``{axis}`` and ``{out_dir}`` placeholders; a run whose ``stop.reference_run`` names another run of
the sweep waits for that run. Completed runs (``summary.json`` with ``complete: true``) are skipped.
"""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from testbed import config as config_mod


@dataclass
class RunSpec:
    name: str
    labels: dict[str, Any]
    config: dict[str, Any]
    overrides: list[str]

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run"]["out_dir"]) / self.name


def _format(value: Any, labels: dict[str, Any]) -> Any:
    return value.format(**labels) if isinstance(value, str) and "{" in value else value


def _override_text(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def load_sweep(path: str | Path) -> tuple[dict, list[RunSpec]]:
    """Expand a sweep file into run specs (validated configs; errors name the file and run)."""
    path = Path(path)
    if not path.is_file():
        raise config_mod.ConfigError(f"{path}: no such sweep file")
    spec = yaml.safe_load(path.read_text()) or {}
    return expand(spec, base_dir=path.parent, source=str(path))


def expand(spec: dict, *, base_dir: Path = Path("."), source: str = "sweep") -> tuple[dict, list[RunSpec]]:
    unknown = set(spec) - {"base", "out_dir", "overrides", "axes", "name"}
    if unknown:
        raise config_mod.ConfigError(f"{source}: unknown sweep keys {sorted(unknown)}")
    base = spec.get("base", {})
    if isinstance(base, str):
        base_path = base_dir / base  # an absolute base stays as it is
        if not base_path.is_file():
            raise config_mod.ConfigError(f"{source}: base config {base_path} does not exist")
        base = yaml.safe_load(base_path.read_text())
    out_dir = str(spec.get("out_dir", "runs/sweep"))
    axes: dict[str, Any] = spec.get("axes") or {}
    if not axes:
        raise config_mod.ConfigError(f"{source}: 'axes' must list at least one axis")
    choices: list[list[tuple[str, Any, dict]]] = []
    for axis, values in axes.items():
        if isinstance(values, list):  # e.g. seeds
            key = "run.seed" if axis == "seed" else axis
            prefix = "s" if axis == "seed" else ""
            choices.append([(axis, v, {key: v, "_label": f"{prefix}{v}"}) for v in values])
        elif isinstance(values, dict):
            choices.append([(axis, k, dict(v or {})) for k, v in values.items()])
        else:
            raise config_mod.ConfigError(f"{source}: axis {axis!r} must be a list or a mapping")
    runs = []
    common = dict(spec.get("overrides") or {})
    for combo in itertools.product(*choices):
        labels = {"out_dir": out_dir}
        parts = []
        for axis, value, _ in combo:
            labels[axis] = value
        for axis, value, ov in combo:
            parts.append(str(ov.get("_label", value)))
        name = "-".join(parts)
        overrides = [_override_text(k, _format(v, labels)) for k, v in common.items()]
        for _, _, ov in combo:
            overrides += [_override_text(k, _format(v, labels)) for k, v in ov.items() if k != "_label"]
        overrides += [f"run.name={name}", f"run.out_dir={out_dir}"]
        try:
            cfg = config_mod.from_dict(base, overrides)
        except config_mod.ConfigError as e:
            raise config_mod.ConfigError(f"{source}: run {name}: {e}") from None
        runs.append(RunSpec(name=name, labels={k: v for k, v in labels.items() if k != "out_dir"},
                            config=cfg.to_dict(), overrides=overrides))
    return {"out_dir": out_dir, "source": source}, runs


def is_complete(run_dir: Path) -> bool:
    p = run_dir / "summary.json"
    if not p.exists():
        return False
    try:
        return bool(json.loads(p.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def _waves(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """Order runs so a run referencing another run of the sweep comes after it."""
    by_dir = {str(r.run_dir.resolve()): r.name for r in runs}
    deps = {}
    for r in runs:
        ref = r.config["stop"].get("reference_run") or ""
        d = by_dir.get(str(Path(ref).resolve())) if ref else None
        deps[r.name] = {d} if d and d != r.name else set()
    done: set[str] = set()
    waves = []
    left = list(runs)
    while left:
        wave = [r for r in left if deps[r.name] <= done]
        if not wave:
            raise config_mod.ConfigError("sweep: circular stop.reference_run dependencies")
        waves.append(wave)
        done |= {r.name for r in wave}
        left = [r for r in left if r.name not in done]
    return waves


def _run_one(config: dict, threads: int) -> dict:
    import torch

    from testbed.trainer import run

    torch.set_num_threads(threads)
    cfg = config_mod.from_dict(config)
    cfg.run.progress = False
    return run(cfg)


def run_sweep(path_or_spec, *, workers: int = 1, threads_per_run: int = 1,
              on_done: Callable[[RunSpec, dict], None] | None = None, progress: bool = True) -> list[dict]:
    """Run every spec (skipping complete ones), ``workers`` processes at a time; returns one row per run."""
    from tqdm.auto import tqdm

    meta, runs = load_sweep(path_or_spec) if not isinstance(path_or_spec, dict) else expand(path_or_spec)
    rows = []
    bar = tqdm(total=len(runs), desc="sweep", disable=not progress)
    for wave in _waves(runs):
        todo = []
        for r in wave:
            if is_complete(r.run_dir):
                rows.append(_row(r, json.loads((r.run_dir / "summary.json").read_text())))
                bar.update(1)
            else:
                todo.append(r)
        if workers <= 1:
            for r in todo:
                s = _run_one(r.config, threads_per_run)
                rows.append(_row(r, s))
                on_done and on_done(r, s)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                futs = {ex.submit(_run_one, r.config, threads_per_run): r for r in todo}
                for f in as_completed(futs):
                    r = futs[f]
                    s = f.result()
                    rows.append(_row(r, s))
                    on_done and on_done(r, s)
                    bar.update(1)
    bar.close()
    out = Path(meta["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "sweep_summary.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["name"])))
    os.replace(tmp, out / "sweep_summary.jsonl")
    return rows


def _row(r: RunSpec, summary: dict) -> dict:
    return {"name": r.name, **{f"label/{k}": v for k, v in r.labels.items()}, **summary, "run_dir": str(r.run_dir)}
