"""T-PPO's options on the transformers backend (tiny random Llama): the extra critic step of
``tppo.bootstrap=next``, deferred credit, and ``model.critic_init`` from a finished run."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from testbed import config as C  # noqa: E402
from testbed.rollout import Ending  # noqa: E402
from testbed.ops.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.path=tiny", "model.dtype=float32", "rollout.batch_size=4", "rollout.max_len=12",
        "algo.minibatch_size=2", "run.progress=false", "run.threads=1", "tppo.window=4"]


@pytest.mark.parametrize("critic", ["head", "separate"])
def test_next_value_and_deferred_credit_on_the_llm(tmp_path, critic):
    cfg = C.load(ROOT / "configs" / "llm" / "tppo.yaml", [f"run.out_dir={tmp_path}", "run.steps=3", *TINY,
                                                         f"model.critic={critic}", "tppo.bootstrap=next",
                                                         "tppo.credit=both"])
    t = Trainer(cfg)
    b = t.pool.collect(t.backend, 0)
    r = b.rollout
    cut = (r.ending == Ending.WINDOW_CUT).nonzero().squeeze(-1).tolist()
    assert cut, "the tiny model should not finish every row in 4 tokens"
    dev = t.backend.device
    for i in cut:
        n = int(r.lengths[i])
        ctx = r.prompts[i] + r.tokens[i, :n].tolist()
        with torch.no_grad():
            v = t.backend.critic_forward([ctx], torch.zeros(1, 1, dtype=torch.long, device=dev),
                                         torch.ones(1, 1, dtype=torch.bool, device=dev)).float().cpu()
        torch.testing.assert_close(r.extras["next_value"][i], v[0, 0], rtol=1e-4, atol=1e-4)
    assert t.train()["complete"]


def test_critic_init_on_the_llm(tmp_path):
    base = [f"run.out_dir={tmp_path}", "run.steps=3", *TINY, "algo.lr_critic=0.01"]  # rows finish by step 2
    src = Trainer(C.load(ROOT / "configs" / "llm" / "tppo.yaml", [*base, "run.name=src"]))
    src.train()
    fresh = Trainer(C.load(ROOT / "configs" / "llm" / "tppo.yaml", [*base, "run.name=fresh"]))
    dst = Trainer(C.load(ROOT / "configs" / "llm" / "tppo.yaml", [*base, "run.name=dst",
                                                                  f"model.critic_init={tmp_path / 'src'}"]))
    trained = list(src.backend.critic_parameters())
    assert any(not torch.equal(a, f) for a, f in zip(trained, fresh.backend.critic_parameters()))
    for a, b in zip(trained, dst.backend.critic_parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(fresh.backend.policy_parameters(), dst.backend.policy_parameters()):
        torch.testing.assert_close(a, b)  # only the critic is taken from the run
