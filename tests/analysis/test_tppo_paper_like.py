"""The T-PPO paper-like preset is the phase diagram's tppo_w32 x tail16log cell."""

from dataclasses import asdict

from analysis.experiments.espo_headline.sweep import REPO
from analysis.experiments.tppo_regimes import sweep
from testbed import config as config_mod
from testbed.ops import sweep as ops_sweep


def test_paper_like_preset_is_the_diagram_cell(tmp_path):
    _, specs = ops_sweep.expand(sweep.spec(tmp_path / "runs"))
    cell = {s.name: s for s in specs}["tppo_w32-tail16log-s0"].config
    preset = asdict(config_mod.load(REPO / "configs" / "regimes" / "tppo_paper_like.yaml"))
    for section in ("task", "model", "rollout", "algo", "stop", "tppo"):
        assert preset[section] == cell[section], section
    assert (preset["run"]["steps"], preset["run"]["eval_every"], preset["run"]["eval_size"]) == \
        (cell["run"]["steps"], cell["run"]["eval_every"], cell["run"]["eval_size"])
