"""Reliability: bad input gives one ``error:`` line naming the field, file or line, exits non-zero and
loses nothing; Ctrl-C is one line and resumes exactly; damaged run files, read-only directories,
oversized batches, malformed YAML, changed settings on resume and concurrent sweeps (issue 20, item 5)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from testbed.ops import cli
from testbed import config as C
from testbed.errors import UserError
from testbed.ops.lock import holder
from testbed.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY = ["rollout.batch_size=8", "rollout.max_len=8", "algo.minibatch_size=8", "algo.epochs=1",
        "model.hidden_size=8", "model.embed_size=8", "task.env_kwargs={max_len: 8, target_len: 4}",
        "run.progress=false", "run.threads=1"]
PPO = str(ROOT / "configs" / "ppo.yaml")


def main(capsys, *argv) -> tuple[int, str]:
    """``testbed ARGV`` in this process: (exit status, stderr)."""
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_error(rc: int, err: str, *fragments: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def run_args(out: Path, *extra: str, name: str = "r") -> list[str]:
    return ["run", PPO, f"run.out_dir={out}", f"run.name={name}", "run.checkpoint_every=1", *TINY, *extra]


def stable(recs: list[dict]) -> list[dict]:
    """Metrics without wall-clock fields (the only ones two identical runs may differ in)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in recs]


# --- 1. detect and plot: bad paths and limits, refused before any scoring ----------------------------


def items_file(tmp_path: Path) -> Path:
    p = tmp_path / "items.json"
    p.write_text(json.dumps([{"id": "a", "problem": "1+1?", "steps": ["1+1=2"], "label": -1}]))
    return p


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if detect gets as far as building a task (the first costly step)."""
    import testbed.ops.build

    def boom(*a, **k):
        raise AssertionError("detect started scoring before refusing its arguments")

    monkeypatch.setattr(testbed.ops.build, "build_task", boom)


@pytest.mark.parametrize("case, fragments", [
    ("missing data", ["--data: no such file", "nope.json"]),
    ("out is a file", ["--out:", "is a file, not a folder"]),
    ("out under a file", ["--out:", "which is a file"]),
    ("missing checkpoint", ["--checkpoint:", "does not exist"]),
    ("limit 0", ["--limit: must be >= 1", "got 0"]),
    ("limit negative", ["--limit: must be >= 1", "got -3"]),
])
def test_detect_refuses_bad_arguments_before_scoring(tmp_path, capsys, no_scoring, case, fragments):
    data, out = items_file(tmp_path), tmp_path / "out"
    argv = ["detect", "--data", data, "--out", out, "--no-progress"]
    if case == "missing data":
        argv[2] = tmp_path / "nope.json"
    elif case == "out is a file":
        out.write_text("keep me")
    elif case == "out under a file":
        out.write_text("keep me")
        argv[4] = out / "sub"
    elif case == "missing checkpoint":
        argv += ["--checkpoint", tmp_path / "no-run"]
    else:
        argv += ["--limit", "0" if case == "limit 0" else "-3"]
    rc, err = main(capsys, *argv)
    assert_one_error(rc, err, *fragments)
    if out.is_file():
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()


def test_detect_limit_zero_is_refused_by_the_function_too(tmp_path):
    from testbed.ops.detect import load_items

    with pytest.raises(UserError, match="--limit: must be >= 1"):
        load_items(items_file(tmp_path), limit=0)


def test_plot_refuses_an_out_that_is_a_file_before_reading_runs(tmp_path, capsys, monkeypatch):
    import testbed.ops.build

    monkeypatch.setattr(testbed.ops.build, "load_entry_point",
                        lambda spec: pytest.fail("plot started before refusing --out"))
    out = tmp_path / "report.md"
    out.write_text("keep me")
    rc, err = main(capsys, "plot", tmp_path, "--out", out)
    assert_one_error(rc, err, f"--out: {out} is a file")
    assert out.read_text() == "keep me"


# --- 4. a read-only run directory ------------------------------------------------------------------


def test_a_run_lock_that_cannot_be_opened_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import builtins

    import testbed.ops.lock

    d = tmp_path / "r"
    d.mkdir()
    real_open = builtins.open

    def read_only(path, mode="r", *a, **k):  # what open() does in a directory without write permission
        if str(path).endswith("run.lock") and any(c in mode for c in "aw+"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(testbed.ops.lock, "open", read_only, raising=False)
    rc, err = main(capsys, *run_args(tmp_path, "run.steps=1"))
    assert_one_error(rc, err, f"{d / 'run.lock'}: cannot open the run lock", "Permission denied", "writable")
    assert os.listdir(d) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory_is_one_clear_error(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    d.chmod(0o555)
    try:
        rc, err = main(capsys, *run_args(tmp_path, "run.steps=1"))
    finally:
        d.chmod(0o755)
    assert_one_error(rc, err, "cannot open the run lock")


# --- 6. YAML configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, fragments", [
    ("run: {name: a}\nstop:\n  tau: 1\n  kappa: 2\n  tau: 3\n", ["dup.yaml:5: duplicate key 'tau' (first at line 3)"]),
    ("stop: {tau: 1}\nrun: {name: a}\nstop: {kappa: 1}\n", ["dup.yaml:3: duplicate key 'stop' (first at line 1)"]),
    ("stop: {tau: 1}\nstop.tau: 2\n", ["stop.tau: set twice"]),
    ("", ["dup.yaml: the config file is empty"]),
    ("# only a comment\n", ["dup.yaml: the config file is empty"]),
])
def test_malformed_config_files_are_refused_naming_file_and_line(tmp_path, capsys, text, fragments):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    rc, err = main(capsys, "run", p, f"run.out_dir={tmp_path / 'runs'}")
    assert_one_error(rc, err, *fragments)
    assert not (tmp_path / "runs").exists()


def test_a_sweep_file_with_a_duplicate_key_is_refused(tmp_path, capsys):
    p = tmp_path / "sweep.yaml"
    p.write_text("axes: {seed: [0]}\nout_dir: a\nout_dir: b\n")
    rc, err = main(capsys, "sweep", p)
    assert_one_error(rc, err, "sweep.yaml:3: duplicate key 'out_dir'")


@pytest.mark.parametrize("override, fragment", [
    ("task.source_kwargs.bogus=1", "task.source_kwargs: only math tasks read it (task.kind is 'sim'); remove bogus"),
    ("run.name=../x", "run.name: '../x' must be a plain folder name"),
    ("run.name=/tmp/abs", "run.name: '/tmp/abs' must be a plain folder name"),
    ("run.name=.", "run.name: '.' must be a plain folder name"),
    ("run.name=..", "run.name: '..' must be a plain folder name"),
    ("stop={tau: 1, tau: 2}", "stop: line 1: duplicate key 'tau'"),
])
def test_bad_overrides_on_a_simulated_config_are_refused(tmp_path, capsys, override, fragment):
    rc, err = main(capsys, "run", PPO, f"run.out_dir={tmp_path / 'runs'}", *TINY, override)
    assert_one_error(rc, err, fragment)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_env_kwargs_on_a_math_config_are_refused():
    with pytest.raises(C.ConfigError, match="task.env_kwargs: only simulated tasks read it"):
        C.from_dict({"task": {"kind": "math"}}, ["task.env_kwargs.max_len=8"])


# --- 2. Ctrl-C: one line, exit 130, and an exact resume ---------------------------------------------


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler for every test here: a suite started in the background by a shell
    (``make test &``) inherits SIGINT ignored, and Python then leaves it ignored, so no Ctrl-C arrives."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c_at(monkeypatch, at_step: int) -> None:
    """Press Ctrl-C (a real SIGINT through Python's default handler, see :func:`python_sigint`) during
    training step ``at_step``."""
    from testbed.ops.trainer import Trainer

    real = Trainer.update_critic

    def update_critic(self, *a, **k):
        out = real(self, *a, **k)
        if self.step == at_step:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "update_critic", update_critic)


def weights_of(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "model.safetensors"))


def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes_exactly(tmp_path, capsys, monkeypatch):
    import torch

    assert main(capsys, *run_args(tmp_path, "run.steps=4", name="full"))[0] == 0
    with monkeypatch.context() as m:
        ctrl_c_at(m, 2)
        rc, err = main(capsys, *run_args(tmp_path, "run.steps=4"))
    lines = err.strip().splitlines()
    assert rc == 130 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    assert lines[0].startswith("interrupted at step 2; run the command again to resume (from its checkpoint "
                               "at step 2"), lines[0]
    assert holder(tmp_path / "r") is None  # the lock went with the interrupted run
    assert [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [0, 1]  # step 2 was cut short
    assert main(capsys, *run_args(tmp_path, "run.steps=4"))[0] == 0
    assert stable(read_metrics(tmp_path / "r" / "metrics.jsonl")) == stable(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    full, resumed = weights_of(tmp_path / "full"), weights_of(tmp_path / "r")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not (tmp_path / "r" / "config_changes.jsonl").exists()  # same settings: nothing to record


def test_a_linear_lr_schedule_falls_to_zero_and_a_resumed_run_keeps_it(tmp_path, capsys, monkeypatch):
    """``algo.lr_schedule=linear``: both rates at ``lr * (1 - step / steps)`` at each step (read from the
    optimisers as the update runs); interrupted at step 2 and resumed, the run ends with the uninterrupted
    run's weights, which differ from a constant rate's."""
    import torch

    from testbed import config as C
    from testbed.learner import Learner

    seen = []
    real = Learner.update_policy

    def update_policy(self, *a, **k):
        seen.append((self.step, self.opt_actor.param_groups[0]["lr"], self.opt_critic.param_groups[0]["lr"]))
        return real(self, *a, **k)

    # the overlong ramp gives every row a reward from the first step, so the weights move (tests/test_health.py)
    signal = ("run.steps=4", "algo.overlong_buffer=4", "algo.overlong_penalty=1.0")
    linear = (*signal, "algo.lr_schedule=linear")
    with monkeypatch.context() as m:
        m.setattr(Learner, "update_policy", update_policy)
        assert main(capsys, *run_args(tmp_path, *linear, name="full"))[0] == 0
    algo = C.load(PPO, []).algo
    assert [s for s, _, _ in seen] == [0, 1, 2, 3]
    for step, lr_a, lr_c in seen:
        assert lr_a == pytest.approx(algo.lr_actor * (1 - step / 4)) and lr_c == pytest.approx(algo.lr_critic * (1 - step / 4))
    with monkeypatch.context() as m:
        ctrl_c_at(m, 2)
        assert main(capsys, *run_args(tmp_path, *linear))[0] == 130
    assert main(capsys, *run_args(tmp_path, *linear))[0] == 0
    assert main(capsys, *run_args(tmp_path, *signal, name="constant"))[0] == 0
    full, resumed, constant = (weights_of(tmp_path / n) for n in ("full", "r", "constant"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not all(torch.equal(full[k], constant[k]) for k in full)


def test_a_resumed_run_s_wall_clock_goes_on_from_where_it_stopped(tmp_path, capsys, monkeypatch):
    """``time/wall`` of a resumed run continues from its last kept record instead of starting at 0 again
    (a clock that advances 1 s a call makes the check exact)."""
    import itertools

    from testbed import learner

    clock = itertools.count()
    monkeypatch.setattr(learner.time, "perf_counter", lambda: float(next(clock)))
    with monkeypatch.context() as m:
        ctrl_c_at(m, 2)
        assert main(capsys, *run_args(tmp_path, "run.steps=4"))[0] == 130
    assert main(capsys, *run_args(tmp_path, "run.steps=4"))[0] == 0
    walls = [r["time/wall"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")]
    assert len(walls) == 4 and all(b > a for a, b in zip(walls, walls[1:])), walls


def test_ctrl_c_before_any_checkpoint_says_it_starts_again(tmp_path, capsys, monkeypatch):
    ctrl_c_at(monkeypatch, 0)
    rc, err = main(capsys, *run_args(tmp_path, "run.steps=3", "run.checkpoint_every=5"))
    assert rc == 130 and err.strip() == (f"interrupted at step 0; run the command again to resume (from step 0: "
                                         f"no checkpoint was written yet; {tmp_path / 'r'})")


def test_ctrl_c_outside_a_run_is_one_line_exit_130(tmp_path, capsys, monkeypatch):
    import testbed.ops.trainer

    def build(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(testbed.ops.trainer, "build", build)
    rc, err = main(capsys, *run_args(tmp_path, "run.steps=1"))
    assert rc == 130 and err.strip().startswith("interrupted; run the command again") and "\n" not in err.strip()


# --- 3. damaged run files on resume ------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path, capsys):
    """A finished 3-step run checkpointed every step: (its directory, the arguments that resume it to 4)."""
    assert main(capsys, *run_args(tmp_path, "run.steps=3"))[0] == 0
    return tmp_path / "r", run_args(tmp_path, "run.steps=4")


def test_a_damaged_metrics_line_before_the_checkpoint_is_one_error_naming_file_and_line(trained, capsys):
    d, args = trained
    lines = (d / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # step 1's record, cut in the middle of the file
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(d)
    rc, err = main(capsys, *args)
    assert_one_error(rc, err, f"{d / 'metrics.jsonl'}:2: not a JSON object", "repair or delete that line")
    assert snapshot(d) == before


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", "truncate"), ("model.safetensors", "empty"),
    ("trainer_state.pt", "truncate"), ("trainer_state.pt", "empty"),
    ("latest.json", "empty"), ("model.safetensors", "missing"),
])
def test_a_damaged_checkpoint_is_one_error_naming_the_file_and_that_no_older_one_exists(trained, capsys, name, damage):
    d, args = trained
    p = d / "checkpoints" / name
    if damage == "missing":
        p.unlink()
    else:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2] if damage == "truncate" else b"")
    before = snapshot(d)
    rc, err = main(capsys, *args)
    assert_one_error(rc, err, str(p), "no older checkpoint is kept", f"delete {d / 'checkpoints'}")
    assert snapshot(d) == before


def test_weights_and_state_from_different_saves_are_refused(trained, capsys):
    """A kill between the two files' replacement leaves the weights one save ahead of the trainer state."""
    from safetensors.torch import load_file, save_file

    d, args = trained
    p = d / "checkpoints" / "model.safetensors"
    save_file(load_file(str(p)), str(p), metadata={"step": "4"})
    rc, err = main(capsys, *args)
    assert_one_error(rc, err, f"{p}: holds step 4 but", "says 3", "no older checkpoint is kept")


# --- 5. a batch too large for memory -----------------------------------------------------------------


def test_a_batch_too_large_for_memory_is_refused_with_its_size(tmp_path, capsys):
    rc, err = main(capsys, *run_args(tmp_path, "rollout.batch_size=10000000000", "algo.minibatch_size=8"))
    assert_one_error(rc, err, "rollout.batch_size: 10000000000 rows x 8 tokens (rollout.max_len) need at least "
                     "4768.4 GiB", "lower rollout.batch_size or rollout.max_len")
    assert not (tmp_path / "r").exists()


def test_the_batch_check_uses_the_memory_available(tmp_path, capsys, monkeypatch):
    import testbed.memory

    monkeypatch.setattr(testbed.memory, "available_bytes", lambda: 2**20)  # 1 MiB left
    rc, err = main(capsys, *run_args(tmp_path, "rollout.batch_size=4096"))  # 4096 x 8 x 64 B = 2 MiB
    assert_one_error(rc, err, "rollout.batch_size: 4096 rows x 8 tokens", "2.0 MiB", "than the 1.0 MiB")
    assert main(capsys, *run_args(tmp_path, "rollout.batch_size=8", "run.steps=1"))[0] == 0  # 4 KiB fits


def test_the_env_refuses_a_structure_too_large_for_memory():
    import gymnasium as gym

    import envs  # noqa: F401 (registers the ids)

    with pytest.raises(ValueError, match=r"num_problems x max_len x num_content_tokens: \d+ x 1000000000000 x 16 "
                                         r"would allocate \d+ bytes"):
        gym.make("testbed/PlantedFailure-v0", max_len=10**12)
    with pytest.raises(ValueError, match=r"num_envs: 10000000000000 rows x 26 tokens would allocate"):
        gym.make_vec("testbed/PlantedFailure-v0", num_envs=10**13, vectorization_mode="vector_entry_point")


# --- 7. settings on resume: which may change, what is recorded, finished runs --------------------------


def test_accepted_changes_on_resume_are_recorded_with_their_step(trained, capsys):
    d, args = trained
    assert main(capsys, *args, "run.checkpoint_every=2")[0] == 0
    changes = [json.loads(x) for x in (d / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"step": 3, "changes": {"run.steps": {"old": 3, "new": 4},
                                                "run.checkpoint_every": {"old": 1, "new": 2}}}]
    cfg = C.load(d / "config.yaml")
    assert cfg.run.steps == 4 and cfg.run.checkpoint_every == 2
    assert [r["step"] for r in read_metrics(d / "metrics.jsonl")] == [0, 1, 2, 3]


def test_other_changes_on_resume_are_refused_listing_the_keys(tmp_path, capsys, monkeypatch):
    with monkeypatch.context() as m:
        ctrl_c_at(m, 1)
        assert main(capsys, *run_args(tmp_path, "run.steps=4"))[0] == 130
    d = tmp_path / "r"
    before = snapshot(d)
    rc, err = main(capsys, *run_args(tmp_path, "run.steps=4", "algo.lr_actor=1e-4", "stop.kappa=1"))
    assert_one_error(rc, err, f"{d}: the run has a checkpoint at step 1 and was trained with other settings",
                     "algo.lr_actor: 0.003 -> 0.0001", "stop.kappa: 0.5 -> 1.0", "resuming may change only run.steps")
    assert snapshot(d) == before
    rc, err = main(capsys, *run_args(tmp_path, "run.steps=0"))
    assert_one_error(rc, err, "run.steps: 0 is below the 1 steps")
    assert snapshot(d) == before


def test_a_finished_run_rerun_with_another_setting_keeps_its_config_and_metrics(trained, capsys):
    d, _ = trained
    before = snapshot(d)
    rc, err = main(capsys, *run_args(d.parent, "run.steps=3", "stop.tau=3"))
    assert_one_error(rc, err, "the run finished at step 3", "stop.tau: 8.0 -> 3.0")
    assert snapshot(d) == before
    assert C.load(d / "config.yaml").stop.tau == 8.0


def test_a_steps_change_that_moves_the_critic_loss_warmup_is_refused(tmp_path, capsys):
    paper = ["stop.rule=espo", "stop.warmup=critic_loss", "stop.warmup_cap=0.5", "stop.warmup_loss_below=0",
             "stop.warmup_loss_change=0"]  # the criterion never holds: only the cap (ceil(0.5 * run.steps)) starts it
    assert main(capsys, *run_args(tmp_path, "run.steps=2", *paper))[0] == 0  # forced on from step 1
    assert main(capsys, *run_args(tmp_path, "run.steps=3", *paper))[0] == 0  # now from step 2: both passed
    d = tmp_path / "r"
    before = snapshot(d)
    rc, err = main(capsys, *run_args(tmp_path, "run.steps=10", *paper))  # from step 5: off again for steps 3, 4
    assert_one_error(rc, err, "run.steps: changing it from 3 to 10 moves the stop rule's forced start "
                     "(stop.warmup_cap) from step 2 to 5")
    assert snapshot(d) == before


# --- 8. two sweeps on one out_dir ----------------------------------------------------------------------


def test_a_run_another_sweep_finished_is_not_recorded_as_skipped(tmp_path, monkeypatch):
    import yaml

    import testbed.ops.sweep as S
    from testbed.ops.lock import RunLock
    from testbed.ops.trainer import run

    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    spec = {"out_dir": str(tmp_path), "overrides": {**overrides, "run.steps": 1}, "axes": {"seed": [0, 1]}}
    (tmp_path / "s0").mkdir()
    other = RunLock(tmp_path / "s0")  # the other sweep is training s0 ...
    other.acquire()
    real = S._run_one

    def run_one(config, threads):
        out = real(config, threads)
        if config["run"]["name"] == "s0":  # ... and finishes it after this sweep found it in use
            assert out["status"].startswith("skipped") and "in use" in out["status"]
            other.release()
            run(C.from_dict(config))
        return out

    monkeypatch.setattr(S, "_run_one", run_one)
    rows = {r["name"]: r for r in S.run_sweep(spec, workers=1, progress=False)}
    assert rows["s0"]["status"] == "complete" and rows["s0"]["complete"] is True
    written = {r["name"]: r for r in map(json.loads, (tmp_path / "sweep_summary.jsonl").read_text().splitlines())}
    assert written["s0"]["status"] == "complete" and written["s1"]["status"] == "ran"
    assert not list(tmp_path.glob("*.tmp"))
