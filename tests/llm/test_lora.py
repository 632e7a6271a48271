"""LoRA training (``model.lora``, via peft) on the tiny random Llama: only adapters train, the KL
reference is the base model with adapters off, checkpoints hold the adapters and resume exactly, and
``save_pretrained`` writes a merged model that plain transformers loads with the same logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("peft")

from llm_backend.backend import make_backend  # noqa: E402
from testbed import config as C  # noqa: E402
from testbed.config import ModelSection  # noqa: E402
from testbed.ops.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASK = SimpleNamespace(vocab_size=500, eos_token_id=2)
LORA = {"r": 4, "alpha": 8.0}
PROMPTS = [[7, 8, 9], [10, 11]]
TOKENS = torch.tensor([[3, 4, 5], [6, 7, 8]])
MASK = torch.ones(2, 3, dtype=torch.bool)


def backend(lora=LORA, **kw):
    return make_backend(ModelSection(kind="hf", path="tiny", dtype="float32", lora=lora, **kw), TASK, seed=0)


def test_only_adapters_train_and_start_at_the_base_model():
    be, base = backend(critic="head"), backend(lora={}, critic="head")
    names = [n for n, p in be.policy.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert sum(p.numel() for p in be.policy_parameters()) < 0.2 * sum(p.numel() for p in base.policy_parameters())
    with torch.no_grad():
        a = be.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0]
        b = base.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0]
    assert_close(a, b)  # lora_B starts at zero


def test_reference_is_the_base_model_with_adapters_off():
    be, base = backend(reference=True), backend(lora={})
    assert be.reference is None  # no second copy in memory
    with torch.no_grad():
        for p in be.policy_parameters():
            p.add_(0.1)
        moved = be.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0]
        want = base.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0]
    ref = be.reference_forward(PROMPTS, TOKENS, MASK, temperature=1.0)
    assert not torch.allclose(moved, want)
    assert_close(ref, want)
    assert_close(be.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0].detach(), moved)  # adapters back on


def test_checkpoint_holds_adapters_and_restores_exactly():
    be = backend()
    with torch.no_grad():
        for p in be.policy_parameters():
            p.add_(0.05)
    state = be.state_dict()
    policy_keys = [k for k in state if k.startswith("policy.")]
    assert policy_keys and all("lora_" in k for k in policy_keys)
    fresh = backend()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0],
                           be.policy_forward(PROMPTS, TOKENS, MASK, temperature=1.0)[0])
    with pytest.raises(KeyError, match="missing policy"):
        fresh.load_state_dict({k: v for k, v in state.items() if k not in policy_keys[:1]})


def test_save_pretrained_writes_the_merged_model_and_the_adapters(tmp_path):
    from transformers import AutoModelForCausalLM

    be = backend()
    with torch.no_grad():
        for p in be.policy_parameters():
            p.add_(0.05)
    be.save_pretrained(str(tmp_path / "out"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    ids = torch.tensor([[7, 8, 9, 3, 4]])
    with torch.no_grad():
        assert_close(merged(ids).logits, be.policy(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lora, match", [({"rank": 4}, "unknown key"), ({"r": 0}, "model.lora.r"),
                                         ({"alpha": -1.0}, "model.lora.alpha"),
                                         ({"target_modules": ["nope"]}, "model.lora.target_modules")])
def test_bad_lora_settings_name_the_field(lora, match):
    with pytest.raises(ValueError, match=match):
        backend(lora=lora)


def test_ppo_preset_trains_with_lora_and_resumes_exactly(tmp_path):
    from testbed.metrics import read_metrics

    over = ["model.path=tiny", "model.dtype=float32", "rollout.batch_size=4", "rollout.max_len=8",
            "algo.minibatch_size=2", "run.progress=false", "run.threads=1", "model.lora={r: 4, alpha: 8.0}",
            "run.checkpoint_every=1", "algo.kl_coef=0.1", "model.reference=true"]
    whole = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [f"run.out_dir={tmp_path / 'a'}", "run.steps=3", *over])
    assert Trainer(whole).train()["complete"]
    part = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [f"run.out_dir={tmp_path / 'b'}", "run.steps=2", *over])
    Trainer(part).train()
    more = C.load(ROOT / "configs" / "llm" / "ppo.yaml", [f"run.out_dir={tmp_path / 'b'}", "run.steps=3", *over])
    resumed = Trainer(more)
    assert resumed.step == 2  # from the adapters' checkpoint, not from scratch
    resumed.train()
    a = read_metrics(tmp_path / "a" / whole.run.name / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / more.run.name / "metrics.jsonl")
    assert [r["loss/policy"] for r in a] == [r["loss/policy"] for r in b]
