"""Reliability: bad input gives one ``error:`` line naming the field, file or line, exits non-zero and
loses nothing; Ctrl-C is one line and resumes exactly; damaged run files, read-only directories,
oversized batches, malformed YAML, changed settings on resume and concurrent sweeps (issue 20, item 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import cli
from testbed import config as C
from testbed.errors import UserError
from testbed.lock import holder
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
    import testbed.build

    def boom(*a, **k):
        raise AssertionError("detect started scoring before refusing its arguments")

    monkeypatch.setattr(testbed.build, "build_task", boom)


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
    from testbed.detect import load_items

    with pytest.raises(UserError, match="--limit: must be >= 1"):
        load_items(items_file(tmp_path), limit=0)


def test_plot_refuses_an_out_that_is_a_file_before_reading_runs(tmp_path, capsys, monkeypatch):
    import testbed.build

    monkeypatch.setattr(testbed.build, "load_entry_point",
                        lambda spec: pytest.fail("plot started before refusing --out"))
    out = tmp_path / "report.md"
    out.write_text("keep me")
    rc, err = main(capsys, "plot", tmp_path, "--out", out)
    assert_one_error(rc, err, f"--out: {out} is a file")
    assert out.read_text() == "keep me"


# --- 4. a read-only run directory ------------------------------------------------------------------


def test_a_run_lock_that_cannot_be_opened_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import builtins

    import testbed.lock

    d = tmp_path / "r"
    d.mkdir()
    real_open = builtins.open

    def read_only(path, mode="r", *a, **k):  # what open() does in a directory without write permission
        if str(path).endswith("run.lock") and any(c in mode for c in "aw+"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(testbed.lock, "open", read_only, raising=False)
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
