"""The unchanged trainer trains the transformers backend (tiny random Llama) on math problems."""

from pathlib import Path

import pytest

from testbed import config as C
from testbed.metrics import REQUIRED_KEYS, read_metrics
from testbed.ops.trainer import Trainer

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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        policy_dir = tmp_path / cfg.run.name / "checkpoints" / "policy"
        AutoModelForCausalLM.from_pretrained(policy_dir)  # a plain transformers checkpoint
        assert AutoTokenizer.from_pretrained(policy_dir).eos_token == "<|im_end|>"
    if preset == "espo":
        # a negative threshold stops every row at its first allowed check after the first update
        assert recs[0]["stop/rate"] == 0.0 and recs[1]["stop/rate"] == 1.0
    if preset == "tppo":
        assert recs[1]["pool/carried"] == 4 and recs[2]["pool/finished"] == 4


def test_chunked_critic_values_match_per_token_values(tmp_path):
    """stop_check_every=3 fills skipped values from the backend's chunk (or one pass for rows that
    left between checks); the rollout's values equal those of a per-token run."""
    import torch

    from testbed.collector import SamplePool
    from testbed.stopping import make_stop_rule
    from testbed.ops.build import build

    def collect(every):
        cfg = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [f"run.out_dir={tmp_path}", *TINY, "model.critic=separate",
                                                              f"model.stop_check_every={every}", "rollout.max_len=10"])
        task, backend = build(cfg, num_slots=4)
        pool = SamplePool(task, make_stop_rule(cfg.stop, num_slots=4), cfg, seed=0)
        return pool.collect(backend, 0).rollout

    a, b = collect(1), collect(3)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.values[a.mask], b.values[b.mask], rtol=1e-4, atol=1e-5)


def test_sampled_decoding_is_reproducible_with_a_seed(tmp_path):
    from testbed.collector import SamplePool
    from testbed.stopping import make_stop_rule
    from testbed.ops.build import build

    def collect(seed):
        cfg = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [f"run.out_dir={tmp_path}", *TINY, "rollout.max_len=10"])
        task, backend = build(cfg, num_slots=4)
        return SamplePool(task, make_stop_rule(cfg.stop, num_slots=4), cfg, seed=seed).collect(backend, 0).rollout

    a, b, c = collect(1), collect(1), collect(2)
    assert torch_equal(a.tokens, b.tokens) and torch_equal(a.logprobs, b.logprobs)
    assert not torch_equal(a.tokens, c.tokens)


def torch_equal(x, y):
    import torch

    return x.shape == y.shape and bool(torch.equal(x, y))


def test_llm_resume_reproduces_an_uninterrupted_run(tmp_path):
    common = [f"run.out_dir={tmp_path}", *TINY, "run.checkpoint_every=2", "run.eval_every=0"]
    full = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [*common, "run.steps=4", "run.name=full"])
    Trainer(full).train()
    part = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [*common, "run.steps=2", "run.name=part"])
    Trainer(part).train()
    resumed = Trainer(C.load(ROOT / "configs" / "llm" / "ppo.yaml", [*common, "run.steps=4", "run.name=part"]))
    assert resumed.step == 2
    resumed.train()

    def stable(name):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "eval/time", "eval/tokens/per_second"))}
                for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    assert stable("part") == stable("full")
