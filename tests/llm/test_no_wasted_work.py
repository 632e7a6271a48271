"""No wasted work and a clean first run: GRPO runs no critic, the reference runs once per batch, and a
tiny-model run emits no warning (neither ``warnings`` nor transformers' logger)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from testbed import config as C
from testbed.ops.trainer import Trainer

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.path=tiny", "model.dtype=float32", "rollout.batch_size=4", "rollout.max_len=8",
        "algo.minibatch_size=2", "run.progress=false", "run.threads=1", "run.eval_every=0"]


def _count_calls(obj, name, counter):
    orig = getattr(obj, name)

    def wrapped(*a, **k):
        counter[name] = counter.get(name, 0) + 1
        return orig(*a, **k)

    setattr(obj, name, wrapped)


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_grpo_runs_and_trains_no_critic(tmp_path, critic):
    cfg = C.load(ROOT / "configs" / "llm" / "grpo.yaml",
                 [f"run.out_dir={tmp_path}", "run.steps=2", "rollout.group_size=2", f"model.critic={critic}", *TINY])
    tr = Trainer(cfg)
    assert not tr.uses_critic and tr.opt_critic is None and tr.critic_params == []
    be = tr.backend
    assert be.critic_impl is None and list(be.critic_parameters()) == []
    assert not any(k.startswith(("critic.", "value_head.")) for k in be.state_dict())
    calls: dict[str, int] = {}
    _count_calls(be, "critic_forward", calls)
    step = be.step
    asked = []
    be.step = lambda *, with_values=True: (asked.append(with_values), step(with_values=with_values))[1]
    tr.train()
    assert asked and not any(asked)  # decoding never asked for values
    assert calls.get("critic_forward", 0) == 0  # no critic forward, no critic update
    rec = [json.loads(x) for x in (tmp_path / cfg.run.name / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time/critic"] == 0.0 for r in rec)
    # resuming works without critic optimiser state
    resumed = Trainer(C.load(ROOT / "configs" / "llm" / "grpo.yaml",
                             [f"run.out_dir={tmp_path}", "run.steps=3", "rollout.group_size=2", f"model.critic={critic}", *TINY]))
    assert resumed.step == 2
    resumed.train()


def test_ppo_and_espo_keep_their_critic(tmp_path):
    for preset in ("ppo", "espo"):
        cfg = C.load(ROOT / "configs" / "llm" / f"{preset}.yaml", [f"run.out_dir={tmp_path}", "run.steps=1", *TINY])
        tr = Trainer(cfg)
        assert tr.uses_critic and tr.opt_critic is not None and len(tr.critic_params) > 0
    # a value-gated stop rule needs values even with GRPO's value-free advantages
    cfg = C.load(ROOT / "configs" / "llm" / "grpo.yaml", [f"run.out_dir={tmp_path}", "run.name=g", "run.steps=1",
                                                           "rollout.group_size=2", "stop.rule=espo", *TINY])
    assert Trainer(cfg).uses_critic


def test_reference_logprobs_once_per_batch(tmp_path):
    cfg = C.load(ROOT / "configs" / "llm" / "ppo.yaml",
                 [f"run.out_dir={tmp_path}", "run.steps=2", "model.reference=true", "algo.kl_coef=0.1",
                  "algo.epochs=3", *TINY])
    tr = Trainer(cfg)
    calls: dict[str, int] = {}
    _count_calls(tr.backend, "reference_forward", calls)
    _count_calls(tr.backend, "policy_forward", calls)
    tr.train()
    # 2 steps x 3 epochs x 2 minibatches of policy forwards, but the reference once per minibatch-sized
    # chunk of each batch: 2 steps x 2 chunks
    assert calls["policy_forward"] == 2 * 3 * 2
    assert calls["reference_forward"] == 2 * 2


def test_tiny_run_emits_no_warning(tmp_path):
    """Every transformers call site passes the cache by the name the installed version takes (no
    ``past_key_values is deprecated`` FutureWarning nor logger warning) and nothing else warns."""
    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # earlier tests may have used up a warn-once message
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for preset, extra in (("ppo", ["model.critic=separate", "model.stop_check_every=2", "run.eval_every=1",
                                           "run.eval_size=2"]),
                                  ("grpo", ["rollout.group_size=2"]),
                                  ("espo", ["stop.warmup_steps=0"]),
                                  ("tppo", ["tppo.window=4"])):
                cfg = C.load(ROOT / "configs" / "llm" / f"{preset}.yaml",
                             [f"run.out_dir={tmp_path}", "run.steps=2", *TINY, *extra])
                Trainer(cfg).train()
    finally:
        hf_logger.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


def test_step_output_carries_chunk_values_for_both_backends():
    """The chunked critic values travel in ``StepOutput.chunk_values``: the toy GRU returns its one
    value per request, the transformers backend every state since the previous request."""
    import torch

    from llm_backend.backend import HFBackend
    from llm_backend.models import build_tiny
    from testbed.toy import ToyBackend

    toy = ToyBackend(vocab_size=11, eos_token_id=0)
    toy.begin([[1, 2], [3]])
    out = toy.step(with_values=True)
    assert out.chunk_values.shape == (2, 1) and torch.equal(out.chunk_values[:, 0], out.values)
    assert toy.step(with_values=False).chunk_values is None

    be = HFBackend(build_tiny(64), eos_token_id=2, critic="separate")
    be.begin([[5, 6, 7], [8, 9]])
    for t in range(3):
        out = be.step(with_values=t == 2)
        assert (out.chunk_values is None) == (t != 2)
        be.advance(out.logits.argmax(-1), torch.ones(2, dtype=torch.bool))
    assert out.chunk_values.shape == (2, 3) and torch.equal(out.chunk_values[:, -1], out.values)
