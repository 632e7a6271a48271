"""The long-chain LLM study: its grid reproduces the presets, and it runs end to end on a tiny setting."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

pytest.importorskip("transformers")

from analysis import experiments  # noqa: E402
from analysis.experiments.llm_long import analysis, sweep  # noqa: E402
from testbed import config as config_mod  # noqa: E402
from testbed.ops import sweep as ops_sweep  # noqa: E402
from testbed.ops.studies import run_study  # noqa: E402

TINY = {"model.path": "tiny", "model.dtype": "float32", "rollout.max_len": 24, "run.threads": 1,
        "run.progress": False, "stop.min_tokens": 4, "model.sft.steps": 1}


def test_registered_and_the_grid():
    assert "llm_long" in experiments.names()
    specs = [s for g in sweep.grids("R") for s in ops_sweep.expand(g)[1]]
    names = {s.name for s in specs}
    assert len(names) == len(specs) == len(sweep.MAIN) * len(sweep.MAIN_SEEDS) + len(sweep.SIDE) * len(sweep.SIDE_SEEDS)
    assert len(sweep.MAIN_SEEDS) >= 5 and len(sweep.SIDE_SEEDS) >= 3  # the seed counts
    by = {s.name: s for s in specs}
    assert by["random_paper-s2"].config["stop"]["reference_run"] == "R/runs/espo_paper-s2"


def test_full_adds_main_seeds_in_the_same_folder():
    """``--full`` reaches the 8 seeds a sign-flip decision needs, reusing the 5-seed runs (same folder, same names)."""
    small = {s.name: s for g in sweep.grids("R") for s in ops_sweep.expand(g)[1]}
    full = {s.name: s for g in sweep.grids("R", full=True) for s in ops_sweep.expand(g)[1]}
    assert sweep.FULL_FOLDER == "" and len(sweep.FULL_MAIN_SEEDS) >= 8
    assert set(small) < set(full)
    assert all(full[n].config == small[n].config for n in small)
    assert len(full) - len(small) == len(sweep.MAIN) * (len(sweep.FULL_MAIN_SEEDS) - len(sweep.MAIN_SEEDS))


@pytest.mark.parametrize("method, preset", [("ppo", "long_chain_ppo"), ("espo_paper", "long_chain_espo_paper"),
                                            ("espo", "long_chain_espo"), ("tppo", "long_chain_tppo")])
def test_cells_are_the_presets(method, preset):
    """A cell is ``testbed run configs/llm/<preset>.yaml run.seed=S`` exactly (but its name and folder)."""
    specs = {s.name: s for g in sweep.grids("R") for s in ops_sweep.expand(g)[1]}
    cell = specs[f"{method}-s1"].config
    want = config_mod.load(str(sweep.PRESETS / f"{preset}.yaml"), ["run.seed=1"]).to_dict()
    for cfg in (want, cell):
        cfg["run"] = {k: v for k, v in cfg["run"].items() if k not in ("name", "out_dir", "sft_cache")}
    assert cell == want


def test_study_runs_on_a_tiny_setting(tmp_path):
    assert run_study("llm_long", tmp_path, workers=1, quick=True, extra=TINY) == 0
    root = tmp_path / "quick"
    report = (root / "report.md").read_text()
    assert "Long-chain LLM study" in report and "Planted wrong steps" in report
    with open(root / "scores.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == list(sweep.METHODS)
    by = {r["method"]: r for r in table}
    assert float(by["ppo"]["stop_rate"]) == 0.0 and float(by["ppo"]["tokens_saved_pct"]) == 0.0
    final = json.loads((root / "runs" / "oracle-s0" / "final_eval.json").read_text())
    n = len(final["eval/correct"])
    assert n == sweep.QUICK["overrides"]["run.eval_size"]
    assert "oracle - PPO held-out pass@1: " in report and f"over {n} items" in report
    from analysis.runs import load_runs

    df = load_runs(sorted(str(p) for p in (root / "runs").iterdir() if p.is_dir()), axes=sweep.AXES)
    m = analysis.pooled_mcnemar(df, "oracle")
    ppo = json.loads((root / "runs" / "ppo-s0" / "final_eval.json").read_text())["eval/correct"]
    assert m.n == n and m.diff == pytest.approx((sum(final["eval/correct"]) - sum(ppo)) / n)
    assert ": yes (" not in report and ": no (" not in report  # one seed decides nothing
    det = json.loads((root / "runs" / "ppo-s0" / "policy_detect.json").read_text())
    assert det["rows"] == sweep.QUICK_POLICY_ROWS
    assert "Detectors on the policy's own rollouts" in report


def test_finished_runs_are_archived_and_restored(tmp_path):
    """A sitting archives each finished, measured run without its checkpoints; a later sitting in another
    folder restores them (the matched random run's reference moved along) and runs nothing again."""
    archive = tmp_path / "archive"
    first = tmp_path / "first"
    assert run_study("llm_long", first, workers=1, quick=True, extra=TINY, archive=archive) == 0
    names = sorted(p.name for p in (first / "quick" / "runs").iterdir() if p.is_dir())
    assert sorted(p.name for p in archive.iterdir()) == names
    for n in names:
        assert not (archive / n / "checkpoints").exists() and (archive / n / "policy_detect.json").is_file()
    lines: list[str] = []
    second = tmp_path / "second"
    assert run_study("llm_long", second, workers=1, quick=True, extra=TINY, archive=archive, log=lines.append) == 0
    runs = second / "quick" / "runs"
    assert not any((runs / n / "checkpoints").exists() for n in names)  # nothing trained again
    counts = [re.match(r"(\d+) runs in .* \((\d+) already complete\)", line) for line in lines]
    counts = [m.groups() for m in counts if m]
    assert len(counts) == len(sweep.grids("R")) and all(total == done for total, done in counts)
    cfg = yaml.safe_load((runs / "random_paper-s0" / "config.yaml").read_text())
    assert cfg["stop"]["reference_run"] == str(runs / "espo_paper-s0")  # moved with the runs
    assert (second / "quick" / "scores.csv").read_text() == (first / "quick" / "scores.csv").read_text()
    archived = yaml.safe_load((archive / "random_paper-s0" / "config.yaml").read_text())
    assert archived["stop"]["reference_run"] == str(first / "quick" / "runs" / "espo_paper-s0")  # untouched
    # a run finished in the study's folder by a sitting that ended before archiving it is archived first
    (archive / "ppo-s0").rename(tmp_path / "ppo-s0-archived")
    assert run_study("llm_long", first, workers=1, quick=True, extra=TINY, archive=archive) == 0
    assert (archive / "ppo-s0" / "policy_detect.json").is_file()
    # --report-only in a third folder: the archived runs restored, nothing run, the same scores
    third = tmp_path / "third"
    (archive / "oracle-s0").rename(tmp_path / "away")  # a run not finished yet
    assert run_study("llm_long", third, quick=True, extra=TINY, archive=archive, report_only=True) == 0
    assert not (third / "quick" / "runs" / "oracle-s0").exists()
    table = list(csv.DictReader(open(third / "quick" / "scores.csv")))
    assert "oracle" not in [r["method"] for r in table] and "ppo" in [r["method"] for r in table]
    assert "--report-only" in (third / "quick" / "report.md").read_text()
    assert f"- runs read: {len(names) - 1} of {len(names)} (" in (third / "quick" / "report.md").read_text()


def test_report_only_refuses_fresh_and_an_empty_study(tmp_path):
    from testbed.errors import UserError

    with pytest.raises(UserError, match="--fresh with --report-only"):
        run_study("llm_long", tmp_path, quick=True, extra=TINY, fresh=True, report_only=True)
    with pytest.raises(UserError, match="--report-only: no finished run of study llm_long"):
        run_study("llm_long", tmp_path, quick=True, extra=TINY, report_only=True)


def test_the_archive_is_committed_not_ignored():
    """The archive only carries runs across sittings if git keeps it (``runs/`` is ignored elsewhere)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (sweep.REPO / ".git").exists():
        pytest.skip("not a git checkout")
    probe = sweep.ARCHIVE.relative_to(sweep.REPO) / "ppo-s0" / "metrics.jsonl"
    r = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=sweep.REPO)
    assert r.returncode == 1, f"git ignores {probe}"


def test_archiving_a_run_into_its_own_folder_keeps_it_whole(tmp_path):
    from testbed.ops.studies import archive_run

    run = tmp_path / "runs" / "ppo-s0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "w").write_text("weights")
    (run / "summary.json").write_text(json.dumps({"complete": True}))
    assert archive_run(run, tmp_path / "runs") == run
    assert (run / "checkpoints" / "w").read_text() == "weights"
    assert archive_run(run, tmp_path / "elsewhere") == tmp_path / "elsewhere" / "ppo-s0"
    assert not (tmp_path / "elsewhere" / "ppo-s0" / "checkpoints").exists()
