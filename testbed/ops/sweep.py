"""A grid of runs in local processes or on Ray.

A sweep file::

    base: configs/espo.yaml          # a config file (relative to the sweep file) or inline sections
    out_dir: runs/my_sweep
    cpus_per_run: 1                  # Ray: CPUs reserved per run (default 1; also its torch threads)
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

Settings apply in order: ``base``, then ``overrides``, then each axis's value in axis order, so an axis
value wins over a common override of the same key (a method that needs more steps than the others sets
``run.steps`` there). Each run is named by its axis values joined with ``-`` (``espo-trap-s1``). String values may use
``{axis}`` and ``{out_dir}`` placeholders; a run whose ``stop.reference_run`` names another run of
the sweep waits for that run. Completed runs (``summary.json`` with ``complete: true``) are skipped.

A run whose directory another process holds (its ``run.lock``, see :mod:`testbed.ops.lock`) is skipped,
not waited for: that process is already training it, and a sweep blocked on a run that may take hours
(or on a process that is itself waiting) helps no one. The sweep's table says ``skipped: ... in use by
process N``; runs that reference a skipped run are skipped too. Run the sweep again later to finish.
Before ``sweep_summary.jsonl`` is written, every skipped run is read again: one that another sweep on
the same ``out_dir`` finished meanwhile is recorded as ``complete``, never as skipped.

Executors: ``process`` (default) runs ``workers`` runs at a time in a local process pool; ``ray``
submits each run as a Ray task reserving ``cpus_per_run`` CPUs, on the cluster at ``address`` (or
``$RAY_ADDRESS``) or on a local Ray started for the sweep with ``workers * cpus_per_run`` CPUs. Both
follow the same order: seed by seed, each run as soon as a worker is free and the run it references (if
any) has finished, so a study stopped part-way has whole seeds. On a cluster,
``out_dir`` must be on a filesystem every node sees (paths are made absolute before submitting).
"""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from testbed import config as config_mod
from testbed.runfiles import atomic_write


@dataclass
class RunSpec:
    name: str
    labels: dict[str, Any]
    config: dict[str, Any]
    overrides: list[str]
    depends_on: str | None = None
    """Name of the run of this sweep whose directory ``stop.reference_run`` names (it runs first)."""

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
    spec = config_mod.read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise config_mod.ConfigError(f"{path}: a sweep file is a mapping (base, out_dir, overrides, axes)")
    return expand(spec, base_dir=path.parent, source=str(path))


def expand(spec: dict, *, base_dir: Path = Path("."), source: str = "sweep") -> tuple[dict, list[RunSpec]]:
    unknown = set(spec) - {"base", "out_dir", "overrides", "axes", "name", "cpus_per_run"}
    if unknown:
        raise config_mod.ConfigError(f"{source}: unknown sweep keys {sorted(unknown)}")
    base = spec.get("base", {})
    if isinstance(base, str):
        base_path = base_dir / base  # an absolute base stays as it is
        if not base_path.is_file():
            raise config_mod.ConfigError(f"{source}: base config {base_path} does not exist")
        base = config_mod.read_yaml(base_path)
    out_dir = str(spec.get("out_dir", "runs/sweep"))
    cpus = spec.get("cpus_per_run", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
        raise config_mod.ConfigError(f"{source}: cpus_per_run must be a number > 0, got {cpus!r}")
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
    _link(runs)
    return {"out_dir": out_dir, "source": source, "cpus_per_run": cpus}, runs


def _link(runs: list[RunSpec]) -> None:
    """Set ``depends_on`` from each run's ``stop.reference_run``."""
    by_dir = {str(r.run_dir.resolve()): r.name for r in runs}
    for r in runs:
        ref = r.config["stop"].get("reference_run") or ""
        d = by_dir.get(str(Path(ref).resolve())) if ref else None
        r.depends_on = d if d and d != r.name else None


def is_complete(run_dir: Path) -> bool:
    p = run_dir / "summary.json"
    if not p.exists():
        return False
    try:
        return bool(json.loads(p.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def _ordered(runs: list[RunSpec]) -> list[RunSpec]:
    """Seed by seed (stable otherwise), each run after the run it references: a sweep stopped part-way
    has whole seeds to pair."""
    key = {r.name: (not isinstance(r.labels.get("seed"), int), r.labels.get("seed", 0), i) for i, r in enumerate(runs)}
    left = sorted(runs, key=lambda r: key[r.name])
    out: list[RunSpec] = []
    placed: set[str] = set()
    while left:
        nxt = next((r for r in left if r.depends_on is None or r.depends_on in placed), None)
        if nxt is None:
            raise config_mod.ConfigError("sweep: circular stop.reference_run dependencies")
        out.append(nxt)
        placed.add(nxt.name)
        left.remove(nxt)
    return out


def _run_one(config: dict, threads: int) -> dict:
    """Train one run to completion in this process; a run directory in use is reported, not waited for."""
    import torch

    from testbed.errors import RunDirInUse
    from testbed.ops.trainer import run

    torch.set_num_threads(threads)
    cfg = config_mod.from_dict(config)
    cfg.run.progress = False
    # Recorded in the run's config.yaml: torch's thread count changes the order of float reductions, so a
    # rerun of that file reproduces the run bit for bit only with the same count.
    cfg.run.threads = threads
    try:
        return run(cfg)
    except RunDirInUse as e:
        return {"status": f"skipped: {e}"}


class _Local:
    """Runs in this process (``workers`` 1) or in a pool of ``workers`` processes: :meth:`submit` a run,
    :meth:`next` waits for one to finish and returns it with its summary."""

    def __init__(self, threads: int, workers: int):
        self.threads, self.slots = threads, max(1, workers)
        self.pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
        self.running: dict[Any, RunSpec] = {}
        self.finished: list[tuple[RunSpec, dict]] = []

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.finished)

    @property
    def parallel(self) -> bool:
        return self.pool is not None

    def submit(self, r: RunSpec) -> None:
        if self.pool is None:
            self.finished.append((r, _run_one(r.config, self.threads)))
        else:
            self.running[self.pool.submit(_run_one, r.config, self.threads)] = r

    def next(self) -> tuple[RunSpec, dict]:
        if self.finished:
            return self.finished.pop(0)
        done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        f = next(iter(done))
        return self.running.pop(f), f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Ray:
    """Runs as Ray tasks: connects to ``address`` / ``$RAY_ADDRESS`` or starts a local Ray.

    Ray is imported at once (a missing install is an error before any run), but started only when a run
    is submitted, so a sweep whose runs are all complete starts nothing. On a local Ray ``slots`` runs go
    at a time (the process pool's ``workers``); on a cluster every run that can start is submitted and
    Ray's scheduler places it where CPUs are free.
    """

    def __init__(self, address: str | None, *, num_cpus: float, cpus_per_run: float, threads: int, slots: int):
        try:
            import ray
        except ModuleNotFoundError:
            raise config_mod.ConfigError("--executor ray: Ray is not installed (pip install -e '.[ray]')") from None
        self.ray = ray
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus, self.cpus_per_run = num_cpus, cpus_per_run
        self.started = False
        self.task = None
        self.threads = threads
        self.slots = max(1, slots) if self.address is None else 1 << 30
        self.refs: dict[Any, RunSpec] = {}

    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": self.address, "log_to_driver": False, "include_dashboard": False}
            if self.address is None:  # a local Ray for this sweep, sized like the process pool
                kw["num_cpus"] = self.num_cpus
            # Workers import the testbed as this process does (an uninstalled checkout: via PYTHONPATH).
            path = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
            kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in path if p)}}
            try:
                ray.init(**kw)
            except ConnectionError as e:  # a wrong --address / RAY_ADDRESS is the user's to fix
                raise config_mod.ConfigError(f"--address {self.address}: {e}") from None
            self.started = True
        self.task = ray.remote(num_cpus=self.cpus_per_run, max_retries=0)(_run_one)

    parallel = True

    @property
    def busy(self) -> int:
        return len(self.refs)

    def submit(self, r: RunSpec) -> None:
        if self.task is None:
            self._start()
        self.refs[self.task.remote(_absolute(r.config), self.threads)] = r

    def next(self) -> tuple[RunSpec, dict]:
        done, _ = self.ray.wait(list(self.refs), num_returns=1)
        return self.refs.pop(done[0]), self.ray.get(done[0])

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _absolute(config: dict) -> dict:
    """The config with its run and reference directories absolute (Ray workers may start elsewhere)."""
    c = json.loads(json.dumps(config))
    c["run"]["out_dir"] = str(Path(c["run"]["out_dir"]).resolve())
    if c["stop"].get("reference_run"):
        c["stop"]["reference_run"] = str(Path(c["stop"]["reference_run"]).resolve())
    return c


def run_sweep(path_or_spec, *, workers: int = 1, threads_per_run: int | None = None, executor: str = "process",
              address: str | None = None, on_done: Callable[[RunSpec, dict], None] | None = None,
              progress: bool = True) -> list[dict]:
    """Run every spec (skipping complete ones and ones in use), dependencies first; one row per run.

    ``executor``: ``process`` (``workers`` local processes; 1: in this process) or ``ray``.
    ``threads_per_run``: torch threads of each run (default: the sweep file's ``cpus_per_run``).
    Each row has ``status``: ``ran``, ``complete`` (finished before), or ``skipped: <why>``.
    """
    from tqdm.auto import tqdm

    if executor not in ("process", "ray"):
        raise config_mod.ConfigError(f"--executor: unknown {executor!r}; valid: process, ray")
    meta, runs = load_sweep(path_or_spec) if not isinstance(path_or_spec, dict) else expand(path_or_spec)
    cpus = meta["cpus_per_run"]
    threads = threads_per_run or max(1, int(cpus))
    ex = (_Ray(address, num_cpus=workers * cpus, cpus_per_run=cpus, threads=threads, slots=workers)
          if executor == "ray" else _Local(threads, workers))
    rows: list[dict] = []
    done: set[str] = set()  # finished complete, now or before
    not_done: set[str] = set()  # ran without finishing, or skipped
    pending = _ordered(runs)
    finished: list[tuple[RunSpec, dict]] = []  # for on_done, after the freed worker has its next run
    bar = tqdm(total=len(runs), desc="sweep", disable=not progress)
    try:
        while pending or ex.busy or finished:
            # start what can start, in order: a run waits only for the run it references
            for r in list(pending):
                if is_complete(r.run_dir):
                    rows.append(_row(r, json.loads((r.run_dir / "summary.json").read_text()), "complete"))
                    done.add(r.name)
                elif r.depends_on in not_done:
                    rows.append(_row(r, {}, f"skipped: its reference run {r.depends_on} did not finish"))
                    not_done.add(r.name)
                elif (r.depends_on is None or r.depends_on in done) and ex.busy < ex.slots:
                    ex.submit(r)
                else:
                    continue
                pending.remove(r)
                if r.name in done or r.name in not_done:
                    bar.update(1)
            for r, s in finished:  # (a study measures its runs here, while the workers train)
                on_done(r, s)
            finished.clear()
            if not ex.busy:
                continue  # nothing running: the loop above settles every pending run in a pass or two
            r, s = ex.next()
            status = s.pop("status", "ran")
            (done if status == "ran" and s.get("complete") else not_done).add(r.name)
            rows.append(_row(r, s, status))
            if status == "ran" and on_done:
                # in parallel, after the freed worker has its next run; in this process, at once
                finished.append((r, s)) if ex.parallel else on_done(r, s)
            bar.update(1)
    finally:
        bar.close()
        ex.close()
    rows = [_recheck(r, row) for r, row in zip(_specs_of(runs, rows), rows)]
    out = Path(meta["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    # atomic, through a temporary file of this write's own: another sweep on this out_dir writes its own
    atomic_write(out / "sweep_summary.jsonl", "".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["name"])))
    return rows


def _specs_of(runs: list[RunSpec], rows: list[dict]) -> list[RunSpec]:
    by_name = {r.name: r for r in runs}
    return [by_name[row["name"]] for row in rows]


def _recheck(r: RunSpec, row: dict) -> dict:
    """A row this sweep skipped, read again before it is written: another sweep on the same ``out_dir``
    may have finished the run meanwhile (it held the run's lock), and a complete run must not be
    recorded as skipped."""
    if not row["status"].startswith("skipped") or not is_complete(r.run_dir):
        return row
    try:
        summary = json.loads((r.run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return row
    return _row(r, summary, "complete")


def _row(r: RunSpec, summary: dict, status: str) -> dict:
    return {"name": r.name, "status": status, **{f"label/{k}": v for k, v in r.labels.items()}, **summary,
            "run_dir": str(r.run_dir)}
