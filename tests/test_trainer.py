"""End-to-end training on the simulated env: required metrics, the rows log, CLI."""

import subprocess
import sys

import pytest

from testbed import config as C
from testbed.metrics import REQUIRED_KEYS, SIM_KEYS, read_metrics
from testbed.ops.trainer import Trainer
from tests.toyruns import small


def test_run_writes_everything_design_lists(tmp_path):
    cfg = small(tmp_path, "stop.rule=espo", "stop.warmup_steps=1")
    t = Trainer(cfg)
    summary = t.train()
    d = tmp_path / "r"
    assert (d / "config.yaml").exists() and (d / "summary.json").exists()
    assert (d / "checkpoints" / "model.safetensors").exists()
    recs = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    for key in REQUIRED_KEYS + SIM_KEYS:
        assert key in recs[0], key
    assert recs[-1]["tokens/cumulative"] == sum(r["tokens/generated"] for r in recs)
    assert summary["complete"] and summary["steps"] == 4
    assert C.load(d / "config.yaml") == cfg


# Determinism, resume and the presets' behaviour: tests/test_health.py (runs whose weights change).


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "testbed.ops.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("run", "sweep", "eval", "plot", "demo"):
        assert cmd in out
    run_help = subprocess.run([sys.executable, "-m", "testbed.ops.cli", "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert "stop.tau" in run_help and "Threshold scale" in run_help


def test_cli_reports_bad_override(tmp_path):
    p = subprocess.run([sys.executable, "-m", "testbed.ops.cli", "run", "configs/ppo.yaml", "stop.tauu=1"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "stop.tauu: unknown key" in p.stderr


def test_rows_log_matches_metrics(tmp_path):
    Trainer(small(tmp_path, "stop.rule=oracle", "stop.warmup_steps=0", "stop.min_tokens=1")).train()
    rows = read_metrics(tmp_path / "r" / "rows.jsonl")
    recs = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in recs]
    n_stops = 0
    for row, rec in zip(rows, recs):
        stops = [e == 3 for e in row["ending"]]  # Ending.EARLY_STOP
        assert sum(stops) / len(stops) == pytest.approx(rec["stop/rate"])
        n_stops += sum(stops)
        # the oracle (delay 0) stops exactly at the planted failure, and only there: a stopped row was
        # doomed at its last token, and a doomed row ends at its fatal token (stopped, or the fatal
        # token was one that ends a row anyway: EOS or the length cap)
        for stopped, length, f in zip(stops, row["length"], row["failure_step"]):
            if stopped or f >= 0:
                assert length - 1 == f
    assert n_stops > 0  # otherwise nothing above was checked


def test_resume_drops_a_last_line_cut_by_the_interruption(tmp_path):
    from testbed.metrics import MetricsLogger

    log = MetricsLogger(tmp_path / "m.jsonl")
    for k in range(3):
        log.log({"step": k})
    with log.path.open("a") as f:
        f.write('{"step": 3, "loss/po')  # the process died mid-write
    log.truncate_after(1)
    assert read_metrics(log.path) == [{"step": 0}, {"step": 1}]
    log.path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON object"):
        log.truncate_after(5)


def test_final_evaluation_keeps_each_problem_outcome(tmp_path):
    """final_eval.json lists every held-out problem's outcome (for McNemar between methods); the same
    problems are drawn at every evaluation, so its mean is the final pass@1; metrics.jsonl stays scalar."""
    import json

    cfg = small(tmp_path, "run.eval_every=2", "run.eval_size=12")
    Trainer(cfg).train()
    final = json.loads((tmp_path / "r" / "final_eval.json").read_text())
    correct = final["eval/correct"]
    assert len(correct) == 12 and set(correct) <= {0, 1}
    assert sum(correct) / 12 == pytest.approx(final["eval/pass@1"])
    assert not any(k.startswith("eval/correct") for r in read_metrics(tmp_path / "r" / "metrics.jsonl") for k in r)


def test_adam_eps_reaches_both_optimisers_and_damps_small_steps(tmp_path):
    """``algo.adam_eps`` is each optimiser's epsilon; with it large, one step of the actor moves its weights
    less than with torch's default (the gradients of this run are far below 1e-1)."""
    import torch

    moved = {}
    for eps in (1e-8, 1e-1):
        # the overlong ramp gives every row a reward from the first step, so the weights move (tests/test_health.py)
        t = Trainer(small(tmp_path, f"algo.adam_eps={eps}", "run.steps=1", "algo.overlong_buffer=4",
                          "algo.overlong_penalty=1.0", name=f"e{eps}"))
        assert [o.param_groups[0]["eps"] for o in (t.opt_actor, t.opt_critic)] == [eps, eps]
        before = [p.detach().clone() for p in t.actor_params]
        t.train()
        moved[eps] = sum(float((p.detach() - b).abs().sum()) for p, b in zip(t.actor_params, before))
    assert 0 < moved[1e-1] < moved[1e-8] / 2, moved
