"""Detectors on a run's own rollouts (``testbed.ops.policy_detect``): the rule statistics by hand, and the
measurement end to end on a small simulated run (the env's ground truth as the verifier)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from testbed import scoring
from testbed.ops import policy_detect as pd_
from testbed.ops.trainer import Trainer
from tests.toyruns import small


def test_the_statistics_are_the_presets():
    cusum, paper = pd_.statistic_section("cusum"), pd_.statistic_section("paper")
    assert (cusum.accumulate, cusum.gate) == ("cusum", "scaled") and (paper.accumulate, paper.gate) == ("smooth", "max")
    assert cusum.warmup == paper.warmup == "steps" and cusum.warmup_steps == 0


def test_rule_score_is_the_largest_cusum_margin_by_hand():
    sec = dataclasses.replace(pd_.statistic_section("cusum"), min_tokens=0)
    regrets = [torch.tensor([0.0] * 8 + [9.0, 9.0]), torch.tensor([1.0] * 10)]
    values = [torch.zeros(10), torch.zeros(10)]  # p = 0: the threshold is tau_min
    cfg = small("/tmp/unused")
    got = pd_.rule_scores(sec, cfg, regrets, values)
    # the normaliser fitted on the rows' own regrets (moment mode, one batch: their mean and variance)
    flat = torch.cat(regrets).double()
    mu, var = float(flat.mean()), float((flat ** 2).mean() - flat.mean() ** 2)
    want = []
    for r in regrets:
        s, best = 0.0, -np.inf
        for g in r.double().tolist():
            s = max(0.0, s + (g - mu) / np.sqrt(var + sec.z_delta) - sec.kappa)
            best = max(best, s - sec.tau_min)
        want.append(best)
    assert got == pytest.approx(want, rel=1e-5)  # the normaliser keeps float32 statistics
    assert got[0] > got[1]  # the burst accumulates; the steady row never does


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pdet")
    cfg = small(tmp, "run.threads=1", "run.steps=6")
    Trainer(cfg).train()
    path = pd_.measure_run(tmp / "r", rows=96, log=lambda *a: None)
    return json.loads(path.read_text())


def test_measurement_scores_every_detector_against_length(measured):
    m = measured
    assert m["scored"] == 96 and 0 < m["fails"] < 96, (m["fails"], m["scored"])
    want = set(scoring.BASELINE_SCORES) | {"cusum", "paper", "cusum_shuffled"}
    assert set(m["scores"]) == want
    rows = m["per_row"]
    fails = rows["fails"]
    assert m["scores"]["length"]["auroc"] == pytest.approx(scoring.auroc(rows["length"], fails))
    assert m["scores"]["length"]["minus_length"] == 0.0
    for name in want - {"length"}:
        s = m["scores"][name]
        lo, hi = s["auroc_ci"]
        assert lo <= s["auroc"] <= hi and s["given_length"] is not None, name
        d = s["minus_length"]
        assert d == pytest.approx(s["auroc"] - m["scores"]["length"]["auroc"], abs=1e-9), name


def test_measurement_is_kept(measured, tmp_path):
    assert measured["rows"] == 96 and len(measured["per_row"]["length"]) == 96
