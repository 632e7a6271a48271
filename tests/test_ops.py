"""Operations: user errors as one line (exit 2), the run-directory lock, sweep skipping and executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.ops import cli
from testbed.errors import UserError
from testbed.ops.lock import RunLock, holder
from testbed.ops.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY = ["rollout.batch_size=8", "rollout.max_len=8", "algo.minibatch_size=8", "algo.epochs=1",
        "model.hidden_size=8", "model.embed_size=8", "task.env_kwargs={max_len: 8, target_len: 4}",
        "run.progress=false", "run.threads=1"]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "testbed.ops.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)


def assert_one_error_line(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# --- clean errors, through the real console script ------------------------------------------------


@pytest.mark.parametrize("config, override, fragments", [
    ("configs/ppo.yaml", "stop.rule=espoo", ["stop.rule: unknown 'espoo'", "valid: espo, none, oracle, random"]),
    ("configs/ppo.yaml", "algo.lr_actor=nan", ["algo.lr_actor", "NaN"]),
    ("configs/llm/ppo.yaml", "task.dataset={data}", ["bad.jsonl:2: invalid JSON"]),
    ("configs/llm/ppo.yaml", "model.path={missing}", ["model.path", "nothing is downloaded"]),
])
def test_cli_user_error_is_one_line_exit_2_and_creates_no_run_dir(tmp_path, config, override, fragments):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?"\n')
    override = override.format(data=data, missing=tmp_path / "no-such-model")
    p = run_cli("run", config, f"run.out_dir={tmp_path / 'runs'}", "run.name=r", override)
    assert_one_error_line(p, *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, fragment", [
    ("algo.estimator=gaee", "algo.estimator: unknown 'gaee'; valid: egae, gae, grpo, mc"),
    ("algo.policy_loss=ppoo", "algo.policy_loss: unknown 'ppoo'; valid:"),
    ("task.kind=mth", "task.kind: 'mth' is not one of sim, math"),
    ("model.kind=gpt", "model.kind: 'gpt' is not one of toy, hf"),
    ("algo.lr_critic=-1e-3", "algo.lr_critic: -0.001 is out of range [0, inf)"),
    ("algo.lr_actor=.inf", "algo.lr_actor: inf is out of range (0, inf)"),
    ("algo.clip_low=-0.1", "algo.clip_low: -0.1 is out of range [0, 1)"),
    ("rollout.top_p=1.5", "rollout.top_p: 1.5 is out of range (0, 1]"),
    ("stop.rho=2", "stop.rho: 2.0 is out of range [0, 1]"),
    ("stop.ema_beta=1", "stop.ema_beta: 1.0 is out of range [0, 1)"),
    ("algo.gamma=1.01", "algo.gamma: 1.01 is out of range [0, 1]"),
    ("rollout.batch_size=0", "rollout.batch_size: 0 is out of range [1, inf)"),
    ("algo.entropy_coef=.nan", "algo.entropy_coef: expected a number, got NaN"),
    ("stop.failure_reward=-.inf", "stop.failure_reward: must be finite"),
    ("stop.rule=random", "stop.reference_run: the random rule needs"),
    ("rollout.max_len=30", "rollout.max_len: 30 exceeds the task's own max_len 8"),  # found when building
    ("task.env_id=testbed/NoSuchEnv-v0", "task.env_id:"),
    ("task.env_kwargs.bogus=1", "task.env_kwargs: testbed/PlantedFailure-v0:"),
    ("stop.rule=random stop.reference_run={ref}", "stop.reference_run: no metrics.jsonl in"),
])
def test_user_errors_in_process(tmp_path, capsys, monkeypatch, override, fragment):
    argv = ["run", "configs/ppo.yaml", f"run.out_dir={tmp_path / 'runs'}", *TINY,
            *override.format(ref=tmp_path / "nowhere").split()]
    monkeypatch.chdir(ROOT)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and fragment in err, err
    assert not (tmp_path / "runs").exists()


def test_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    import testbed.ops.trainer

    def broken(self, *a, **k):
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr(testbed.ops.trainer.Trainer, "update_actor", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["run", str(ROOT / "configs/ppo.yaml"), f"run.out_dir={tmp_path}", "run.steps=1", *TINY])
    assert holder(tmp_path / "ppo") is None  # the lock went with the failed run


def test_user_error_class_is_what_the_cli_catches():
    from testbed.config import ConfigError

    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    pytest.importorskip("transformers")
    from llm_backend.datasets import DatasetError
    from llm_backend.models import ModelNotFoundError

    assert issubclass(DatasetError, UserError) and issubclass(ModelNotFoundError, UserError)


# --- the run lock, with real processes -------------------------------------------------------------


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _hold(run_dir: Path) -> subprocess.Popen:
    """A separate process that takes the run directory's lock and sleeps."""
    code = ("import sys, time; from testbed.ops.lock import RunLock; lock = RunLock(sys.argv[1]); lock.acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_on_a_locked_dir_refuses_and_changes_nothing_then_kill_9_frees_it(tmp_path):
    from testbed import config as C
    from testbed.ops.trainer import Trainer

    args = [f"run.out_dir={tmp_path}", "run.name=r", "run.checkpoint_every=1", *TINY]
    Trainer(C.load(ROOT / "configs/ppo.yaml", [*args, "run.steps=1"])).train()
    d = tmp_path / "r"
    other = _hold(d)
    try:
        before = _snapshot(d)
        assert holder(d) == str(other.pid)
        p = run_cli("run", "configs/ppo.yaml", *args, "run.steps=3")  # would resume and train two more steps
        assert_one_error_line(p, f"{d} is in use by process {other.pid}")
        assert _snapshot(d) == before
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert holder(d) is None  # the kernel dropped the lock with the killed process
    Trainer(C.load(ROOT / "configs/ppo.yaml", [*args, "run.steps=3"])).train()
    assert [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_a_live_trainer_holds_its_directory(tmp_path):
    from testbed import config as C
    from testbed.ops.trainer import Trainer

    cfg = C.from_dict({}, [f"run.out_dir={tmp_path}", "run.name=r", "run.steps=1", *TINY])
    t = Trainer(cfg)
    try:
        assert holder(tmp_path / "r") == str(os.getpid())
        p = run_cli("run", "configs/ppo.yaml", f"run.out_dir={tmp_path}", "run.name=r", *TINY)
        assert_one_error_line(p, f"is in use by process {os.getpid()}")
        with pytest.raises(UserError, match="in use"):  # a second trainer in this process too
            Trainer(cfg)
    finally:
        t.train()  # releases at the end
    assert holder(tmp_path / "r") is None
    Trainer(cfg).close()


# --- sweeps ------------------------------------------------------------------------------------------


def sweep_spec(out_dir: Path, cpus: int = 1) -> dict:
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    overrides.update({"run.steps": 2, "run.checkpoint_every": 2})
    return {
        "out_dir": str(out_dir), "cpus_per_run": cpus, "overrides": overrides,
        "axes": {"method": {"espo": {"stop.rule": "espo", "stop.warmup_steps": 0},
                            "random": {"stop.rule": "random", "stop.reference_run": "{out_dir}/espo-s{seed}"}},
                 "seed": [0, 1]},
    }


def test_sweep_skips_a_locked_run_and_what_depends_on_it(tmp_path):
    spec = sweep_spec(tmp_path)
    (tmp_path / "espo-s0").mkdir(parents=True)
    with RunLock(tmp_path / "espo-s0"):
        rows = {r["name"]: r for r in run_sweep(spec, workers=1, progress=False)}
    assert rows["espo-s0"]["status"] == f"skipped: {tmp_path / 'espo-s0'} is in use by process {os.getpid()}"
    assert rows["random-s0"]["status"] == "skipped: its reference run espo-s0 did not finish"
    assert rows["espo-s1"]["status"] == rows["random-s1"]["status"] == "ran"
    # the run's config.yaml records the thread count it ran with (rerunning the file then reproduces it)
    assert yaml.safe_load((tmp_path / "espo-s1" / "config.yaml").read_text())["run"]["threads"] == 1
    assert not (tmp_path / "random-s0").exists()
    assert sorted(os.listdir(tmp_path / "espo-s0")) == ["run.lock"]
    # Run again once the lock is free: the complete runs are skipped, the rest run.
    rows = {r["name"]: r for r in run_sweep(spec, workers=1, progress=False)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "espo-s0": "ran", "random-s0": "ran", "espo-s1": "complete", "random-s1": "complete"}


def test_sweep_on_local_ray_with_two_cpus(tmp_path):
    pytest.importorskip("ray")
    import ray

    spec = sweep_spec(tmp_path / "sw")
    cpus = []  # the local Ray's size, seen while it runs: workers x cpus_per_run = 2
    rows = {r["name"]: r for r in run_sweep(spec, workers=2, executor="ray", progress=False,
                                             on_done=lambda r, s: cpus.append(ray.cluster_resources().get("CPU")))}
    assert cpus == [2.0] * 4
    assert {k: r["status"] for k, r in rows.items()} == dict.fromkeys(
        ["espo-s0", "espo-s1", "random-s0", "random-s1"], "ran")
    assert all(r["complete"] and r["steps"] == 2 for r in rows.values())
    for seed in (0, 1):  # each random run started after its reference ESPO run had finished
        ref = tmp_path / "sw" / f"espo-s{seed}" / "summary.json"
        started = tmp_path / "sw" / f"random-s{seed}" / "config.yaml"
        assert started.stat().st_mtime >= ref.stat().st_mtime
    again = run_sweep(spec, workers=2, executor="ray", progress=False)
    assert {r["status"] for r in again} == {"complete"}
    assert not ray.is_initialized()  # the local Ray started for the sweep was shut down


# --- TensorBoard -------------------------------------------------------------------------------------


def test_tensorboard_events_hold_the_metrics_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from testbed import config as C
    from testbed.metrics import read_metrics
    from testbed.ops.trainer import Trainer

    cfg = C.from_dict({}, [f"run.out_dir={tmp_path}", "run.name=r", "run.steps=3", "run.tensorboard=true",
                           "stop.rule=espo", "stop.warmup_steps=0", *TINY])
    Trainer(cfg).train()
    recs = read_metrics(tmp_path / "r" / "metrics.jsonl")
    ea = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for key in ("loss/policy", "reward/mean", "tokens/cumulative", "stop/rate", "time/gen"):
        assert key in tags, key
        events = ea.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in recs]
        assert [e.value for e in events] == pytest.approx([r[key] for r in recs], rel=1e-6)
    assert "stop/step_hist" not in tags and "step" not in tags
    # off by default: no event files
    Trainer(C.from_dict({}, [f"run.out_dir={tmp_path}", "run.name=q", "run.steps=1", *TINY])).train()
    assert not (tmp_path / "q" / "tensorboard").exists()


# --- one place builds task and backend -------------------------------------------------------------


def test_build_is_a_leaf_and_the_only_place_that_maps_kinds_to_factories():
    import ast

    def imports(path):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield node.module

    # the factories themselves are imported lazily (through the tables or inside make_sim_task)
    assert set(imports(ROOT / "testbed" / "ops" / "build.py")) <= {
        "__future__", "importlib", "typing", "testbed.errors", "envs", "testbed.sim_task"}
    assert "testbed.ops.trainer" not in set(imports(ROOT / "testbed" / "evaluate.py"))  # no trainer <-> evaluate cycle
    copies = [str(p.relative_to(ROOT)) for d in ("testbed", "tests", "bench", "analysis") for p in (ROOT / d).rglob("*.py")
              if p.name not in ("build.py", "test_ops.py")
              and any(t in p.read_text() for t in ("TASK_ENTRY_POINTS[", "BACKEND_ENTRY_POINTS["))]
    assert not copies, copies


def test_the_schemas_kinds_are_exactly_the_factory_tables_keys():
    # the schema validates kinds without importing the application layer; the two lists cannot drift
    from testbed.config_schema import MODEL_KINDS, TASK_KINDS
    from testbed.ops.build import BACKEND_ENTRY_POINTS, TASK_ENTRY_POINTS

    assert tuple(TASK_ENTRY_POINTS) == TASK_KINDS
    assert tuple(BACKEND_ENTRY_POINTS) == MODEL_KINDS


def test_resuming_with_another_model_is_a_user_error_that_keeps_the_run(tmp_path, capsys):
    args = ["run", str(ROOT / "configs/ppo.yaml"), f"run.out_dir={tmp_path}", "run.name=r", "run.steps=1", *TINY]
    assert cli.main(args) == 0
    capsys.readouterr()
    before = _snapshot(tmp_path / "r")
    assert cli.main([*args, "run.steps=2", "model.hidden_size=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "checkpoint does not fit this config's model" in err and "\n" not in err
    assert _snapshot(tmp_path / "r") == before  # config.yaml, metrics and checkpoint untouched


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "configs/ppo.yaml", "--n", "2", "--checkpoint", "{tmp}/nowhere"], "--checkpoint: no checkpoint at"),
    (["eval", "configs/ppo.yaml", "--n", "2", "--k", "2", "--greedy"], "--greedy: samples one response"),
    (["sweep", "{tmp}/missing.yaml"], "missing.yaml: no such sweep file"),
    (["sweep", "{tmp}/bad.yaml"], "bad.yaml: invalid YAML"),
    (["sweep", "{tmp}/cpus.yaml"], "cpus.yaml: cpus_per_run must be a number > 0, got 0"),
    (["run", "configs/nope.yaml"], "configs/nope.yaml: no such config file"),
    (["run", "configs/ppo.yaml", "run.name="], "run.name: must not be empty"),
    (["demo", "--study", "nope"], "--study:"),
])
def test_other_commands_user_errors(tmp_path, capsys, monkeypatch, argv, fragment):
    (tmp_path / "bad.yaml").write_text("axes: [unclosed\n")
    (tmp_path / "cpus.yaml").write_text("cpus_per_run: 0\naxes: {seed: [0]}\n")
    monkeypatch.chdir(ROOT)
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and fragment in err, err


def test_sweep_runs_seed_by_seed_each_run_after_its_reference(tmp_path, monkeypatch):
    """Seed by seed, a run as soon as the run it references has finished (not after every run of a first
    wave): a sweep stopped part-way has whole seeds to pair."""
    from testbed.ops import sweep as sw

    spec = sweep_spec(tmp_path)
    spec["axes"]["method"]["ppo"] = {"stop.rule": "none"}
    spec["axes"]["seed"] = [0, 1, 2]
    assert [r.name for r in sw._ordered(sw.expand(spec)[1])] == [
        "espo-s0", "random-s0", "ppo-s0", "espo-s1", "random-s1", "ppo-s1", "espo-s2", "random-s2", "ppo-s2"]
    started = []
    monkeypatch.setattr(sw, "_run_one", lambda config, threads: started.append(config["run"]["name"]) or
                        {"complete": config["run"]["name"] != "espo-s1"})
    rows = {r["name"]: r["status"] for r in run_sweep(spec, workers=1, progress=False,
                                                      on_done=lambda r, s: started.append("done " + r.name))}
    # in this process a run's on_done comes at once, before the next run starts
    ran = ["espo-s0", "random-s0", "ppo-s0", "espo-s1", "ppo-s1", "espo-s2", "random-s2", "ppo-s2"]
    assert started == [x for n in ran for x in (n, "done " + n)]
    assert rows["random-s1"] == "skipped: its reference run espo-s1 did not finish"


def test_sweep_refuses_circular_references():
    from testbed.ops import sweep as sw

    spec = sweep_spec(Path("R"))
    spec["axes"]["method"]["espo"] = {"stop.rule": "random", "stop.reference_run": "{out_dir}/random-s{seed}"}
    from testbed.config import ConfigError

    with pytest.raises(ConfigError, match="circular"):
        sw._ordered(sw.expand(spec)[1])


def test_a_study_report_gets_its_runs_by_name_not_in_finishing_order(tmp_path, monkeypatch):
    """The report sums over runs in the order it is given them; by name, the sums are the same in every
    sitting whatever order two workers finished in."""
    from types import SimpleNamespace

    from analysis import experiments
    from testbed.ops import studies

    got = []
    grid = SimpleNamespace(grids=lambda root, quick, full: [{"out_dir": str(root / "runs")}])
    report = SimpleNamespace(write=lambda run: got.append(list(run.run_dirs)))
    monkeypatch.setattr(experiments, "load", lambda name, part="analysis": grid if part == "sweep" else report)
    finished = [str(tmp_path / "runs" / n) for n in ("ppo-s1", "espo-s0", "ppo-s0")]
    monkeypatch.setattr(studies, "execute", lambda spec, **kw: [{"run_dir": d} for d in finished])
    assert studies.run_study("any", tmp_path) == 0
    assert got == [sorted(finished)]
