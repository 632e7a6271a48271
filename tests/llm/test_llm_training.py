"""The unchanged trainer trains the transformers backend (tiny random Llama) on math problems."""

from pathlib import Path

import pytest

from testbed import config as C
from testbed.metrics import REQUIRED_KEYS, read_metrics
from testbed.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.path=tiny", "model.dtype=float32", "rollout.batch_size=4", "rollout.max_len=12",
        "algo.minibatch_size=2", "run.progress=false", "run.threads=1"]


@pytest.mark.parametrize("preset, extra", [
    ("ppo", ["run.eval_every=2", "run.eval_size=4"]),
    ("espo", ["stop.warmup_steps=0", "stop.min_tokens=1", "stop.tau=0", "stop.tau_min=-1"]),
    ("grpo", ["rollout.group_size=2"]),
    ("tppo", ["tppo.window=4"]),
])
def test_llm_preset_trains_with_tiny_model(tmp_path, preset, extra):
    cfg = C.load(ROOT / "configs" / "llm" / f"{preset}.yaml", [f"run.out_dir={tmp_path}", "run.steps=3", *TINY, *extra])
    summary = Trainer(cfg).train()
    assert summary["complete"]
    recs = read_metrics(tmp_path / cfg.run.name / "metrics.jsonl")
    assert all(k in recs[0] for k in REQUIRED_KEYS)
    if preset == "ppo":
        assert "eval/pass@1" in recs[0] and "eval/pass@1" in recs[2]
    if preset == "espo":
        # a negative threshold stops every row at its first allowed check after the first update
        assert recs[0]["stop/rate"] == 0.0 and recs[1]["stop/rate"] == 1.0
    if preset == "tppo":
        assert recs[1]["pool/carried"] == 4 and recs[2]["pool/finished"] == 4
