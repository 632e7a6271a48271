"""The simulated task: tokens the env writes itself reach the collector only when a regime knob is on."""

from __future__ import annotations

import numpy as np
import torch

import envs  # noqa: F401 (registers the gymnasium ids)
from testbed.sim_task import SimTask


def test_forced_tokens_only_with_a_regime_knob():
    assert not hasattr(SimTask("testbed/PlantedFailure-v0", 4, seed=0), "forced_tokens")  # default path unchanged
    task = SimTask("testbed/PlantedFailureDerail-v0", 4, seed=0)
    slots = np.arange(4)
    task.reset(slots)
    assert (task.forced_tokens(slots) == -1).all()  # nothing forced before a row is doomed


def test_the_collector_appends_the_env_s_tokens_and_leaves_them_out_of_the_loss(tmp_path):
    """On the derail env a doomed row continues with the env's run-on: those tokens are in the rollout
    but marked not sampled (the trainer's policy mask drops them); on the default env nothing is."""
    from testbed.ops.trainer import Trainer
    from toyruns import small

    t = Trainer(small(tmp_path, "task.env_id=testbed/PlantedFailureDerail-v0",
                      "task.env_kwargs={max_len: 16, target_len: 4, derail: 3}", name="derail"))
    r = t.pool.collect(t.backend, 0).rollout
    forced = r.mask & ~r.sampled
    assert forced.any()
    assert (t.sampled_mask(r) == (r.mask & r.sampled)).all()
    doomed = torch.as_tensor(r.failure_step >= 0) if not torch.is_tensor(r.failure_step) else r.failure_step >= 0
    assert not forced[~doomed].any()  # only doomed rows run on
    plain = Trainer(small(tmp_path, name="plain"))
    assert plain.pool.collect(plain.backend, 0).rollout.sampled is None
