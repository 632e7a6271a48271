"""The cost model: counts from a run's metrics, pricing by hand, the GPU projection's arithmetic, the
measured units' file, sensitivity and a trainer run that logs every count."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from analysis import cost_model as cm


def run_table(tppo=False, epochs=2):
    return pd.DataFrame({
        "step": [1, 0], "gen/decode_steps": [5, 10], "gen/value_steps": [1, 0], "tokens/generated": [20, 40],
        "gen/kv_row_tokens": [200, 300], "gen/prefill_tokens": [30, 16], "tokens/actor_forward": [20, 40],
        "tokens/critic": [6, 12], "updates/actor": [4, 4], "updates/critic": [2, 0], "tokens/critic_decode": [20, 0],
        "config/algo.epochs": [epochs, epochs], "config/tppo.enabled": [tppo, tppo]})


def test_counts_are_the_logged_ones_in_step_order():
    c = cm.counts(run_table())
    assert c["step"].tolist() == [0, 1]
    assert c["S"].tolist() == [10, 6] and c["R"].tolist() == [40, 20] and c["K"].tolist() == [300, 200]
    assert c["P"].tolist() == [16, 30] and c["U"].tolist() == [4, 6] and c["V"].tolist() == [0, 20]
    assert c["N"].tolist() == [2 * (40 + 12), 2 * (20 + 6)]
    t = cm.counts(run_table(tppo=True, epochs=1))  # T-PPO re-values finished rows: a third of a pass a token
    assert t["N"].tolist() == [40 + 12 + 4, 20 + 6 + 2]


def test_counts_refuse_a_run_without_the_counters():
    with pytest.raises(ValueError, match="kv_row_tokens"):
        cm.counts(run_table().drop(columns=["gen/kv_row_tokens"]))


def test_price_by_hand():
    u = cm.UnitCosts(decode_step=1.0, decode_row=0.1, decode_kv=0.01, prefill_token=0.5, train_token=0.2, update=3.0)
    p = cm.price(cm.counts(run_table()), u)
    gen0 = 1.0 * 10 + 0.1 * 40 + 0.01 * 300 + 0.5 * 16
    train0 = 0.2 * 104 + 3.0 * 4
    assert p["gen"].iloc[0] == pytest.approx(gen0) and p["train"].iloc[0] == pytest.approx(train0)
    assert p["total"].iloc[0] == pytest.approx(gen0 + train0)
    share = cm.generation_share(cm.counts(run_table()), u)
    gen1, train1 = 6 + 2 + 2 + 0.5 * (30 + 20), 0.2 * 52 + 18
    assert share == pytest.approx((gen0 + gen1) / (gen0 + gen1 + train0 + train1))
    assert cm.amdahl_bound(0.75) == pytest.approx(4.0) and cm.amdahl_bound(1.0) == math.inf


def test_gpu_projection_arithmetic_and_named_source():
    gpu = cm.GPU("G", bf16_tflops=100.0, hbm_tbs=2.0)
    m = cm.ModelShape("M", params=1e9, layers=10, kv_width=100)
    u = cm.gpu_projection(gpu, m, mfu=0.5, bandwidth_eff=0.5, adam_bytes_per_param=10.0)
    assert u.decode_step == pytest.approx(2e9 / 1e12)  # 2 bytes a weight at 1 TB/s effective
    assert u.decode_row == pytest.approx(2e9 / 50e12) and u.prefill_token == pytest.approx(2e9 / 50e12)
    assert u.train_token == pytest.approx(6e9 / 50e12) and u.update == pytest.approx(1e10 / 1e12)
    assert u.decode_kv == pytest.approx(2 * 10 * 100 * 2 / 1e12)
    assert "projection" in u.source and "G" in u.source and "M" in u.source
    with pytest.raises(ValueError, match="unknown assumption"):
        cm.gpu_projection(mfu_typo=0.3)


def test_unit_costs_validate_and_scale():
    with pytest.raises(ValueError, match="decode_kv"):
        cm.UnitCosts(1, 1, -1, 1, 1, 1)
    u = cm.UnitCosts(1, 1, 1, 1, 1, 1, source="s")
    assert u.scaled("update", 2).update == 2 and u.scaled("update", 2).decode_step == 1
    with pytest.raises(ValueError, match="no constant"):
        u.scaled("nope", 2)
    s = cm.sensitivity(lambda x: x.update + x.decode_step, u)
    assert s.set_index("constant").loc["update", "x2"] == 3 and s.set_index("constant").loc["decode_row", "x2"] == 2


def test_measured_units_file(tmp_path):
    assert cm.measured(tmp_path / "missing.json") is None
    p = tmp_path / "u.json"
    p.write_text(json.dumps({"model": "tiny", "threads": 2, "units": {k: 0.001 for k in cm.CONSTANTS}}))
    u = cm.measured(p)
    assert u.update == 0.001 and "measured" in u.source
    p.write_text(json.dumps({"units": {"decode_step": 1.0}}))
    with pytest.raises(ValueError, match="lack"):
        cm.measured(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        cm.measured(p)


def test_a_trainer_run_logs_every_count(tmp_path):
    from analysis.runs import load_runs
    from testbed import config as config_mod
    from testbed.ops.trainer import run

    cfg = config_mod.from_dict({"run": {"steps": 3, "out_dir": str(tmp_path), "name": "t", "progress": False},
                                "rollout": {"batch_size": 8, "max_len": 16},
                                "algo": {"minibatch_size": 4, "estimator": "egae", "epochs": 2},
                                "tppo": {"enabled": True, "window": 4}})
    run(cfg)
    df = load_runs([tmp_path / "t"])
    c = cm.counts(df)
    assert (c["S"] > 0).all() and (c["K"] >= c["R"]).all() and (c["P"] >= 8).all()
    assert (c["U"] >= 2 * 2).all()  # 8 rows in minibatches of 4, 2 epochs: 4 actor steps at least
    assert df["gen/reprefill_tokens"].iloc[1:].sum() > 0  # carried rows are encoded again
