"""What a finished run's stops throw away: the success probability of each stopped row, by Monte Carlo
continuation of that very row.

:func:`measure_run` loads a finished run on a simulated env and samples ``rows`` rows from its frozen
policy with its own trained stop rule, stopping as training did (the collector's decoding loop, the
rule's trained state, at the run's last training step). Every stopped row that is not already doomed is
then continued ``continuations`` times from the state after its stopped token (the env's episode cloned
with its hidden draws, :meth:`testbed.sim_task.SimTask.snapshot`), sampling from the same policy with no
stop rule, to its end. The share of a row's continuations that succeed estimates
``P(success | that row at its stop)``: the success the stop threw away. A doomed row's is 0 exactly
(nothing can succeed after a sealed failure), so its continuations are not sampled. Where recovery is
possible (``repair_prob > 0``) a row that emitted a fatal token may still be repaired, so "doomed"
alone overstates a stop's precision; this measurement does not.

Writes :data:`FILE` (JSON) into the run directory, atomically; kept when already there with the same
settings. A run without a stop rule is recorded with no stops and not loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from testbed.collector import decode_segment
from testbed.config import StopSection
from testbed.errors import UserError
from testbed.rollout import Ending
from testbed.ops.measure import already_measured, finished_trainer, run_config
from testbed.runfiles import atomic_write
from testbed.sim_task import SimTask
from testbed.stopping import StopRule, make_stop_rule

FILE = "stop_value.json"
ROWS, CONTINUATIONS = 512, 16


@torch.no_grad()
def measure_trainer(trainer, n_rows: int = ROWS, continuations: int = CONTINUATIONS, seed: int = 0,
                    rule: str | None = None) -> dict:
    """The measurement of a trained :class:`testbed.ops.trainer.Trainer` (see the module doc); ``rule``:
    another rule than the run's (an ablation of it), with the trained rule's state.

    Returns ``rows``, ``stops`` (rows stopped), ``doomed_stops`` (stopped rows already doomed), per stop
    ``position`` (response length at the stop, the stopped token included), ``doomed``, ``problem``,
    ``prefix`` (the response so far), ``p_success`` (share of its continuations that succeeded) and
    ``remaining`` (their mean length after the stop: the tokens the stop saved), and the summaries
    ``stop_rate``, ``precision`` (doomed share of stops), ``p_thrown`` (mean ``p_success`` over stops),
    ``precision_p`` (``1 - p_thrown``: the expected share of stops that would have failed) and
    ``lost_per_100_tokens``
    (expected successes thrown away per 100 tokens saved).
    """
    cfg, backend = trainer.cfg, trainer.backend
    if cfg.task.kind != "sim":
        raise UserError(f"stop value: task.kind must be 'sim' (the env's episodes are cloned), got {cfg.task.kind!r}")
    backend.eval()
    train_step = max(cfg.run.steps - 1, 0)  # the rule as it stood at the last training step
    stop = dataclasses.replace(cfg.stop, rule=rule or cfg.stop.rule)
    rule = make_stop_rule(stop, num_slots=n_rows, seed=seed, total_steps=cfg.run.steps)
    rule.load_state_dict(trainer.rule.state_dict())  # the trained normaliser, threshold and warm-up
    T = cfg.rollout.max_len
    task = SimTask(cfg.task.env_id, n_rows, seed=seed, env_kwargs=cfg.task.env_kwargs)
    slots = np.arange(n_rows)
    prompts = task.reset(slots)
    rule.reset(torch.as_tensor(slots), train_step)
    seg = decode_segment(backend, task, rule, slots=slots, contexts=prompts, start=torch.zeros(n_rows, dtype=torch.long),
                         budget=torch.full((n_rows,), T), max_len=T, cfg=cfg, train_step=train_step,
                         generator=torch.Generator().manual_seed(seed))
    stopped = np.flatnonzero((seg.ending == Ending.EARLY_STOP).numpy())
    lengths = seg.mask.sum(-1).numpy()
    doomed = task.finish(stopped, [[]] * len(stopped)).doomed.astype(bool)
    problems = task.env.problem[stopped]
    p = np.zeros(len(stopped))
    remaining = np.zeros(len(stopped))
    alive = stopped[~doomed]
    if len(alive) and continuations > 0:
        K, m = continuations, len(alive) * continuations
        snap = task.snapshot(alive)
        cont = SimTask(cfg.task.env_id, m, seed=seed + 1, env_kwargs=cfg.task.env_kwargs)
        cslots = np.arange(m)
        cont.reset(cslots)
        src = np.repeat(np.arange(len(alive)), K)
        cont.restore(cslots, snap, src)
        contexts = [prompts[alive[i]] + seg.tokens[alive[i], : lengths[alive[i]]].tolist() for i in src]
        start = torch.as_tensor(lengths[alive][src], dtype=torch.long)
        none = StopRule(StopSection(), num_slots=m)
        cseg = decode_segment(backend, cont, none, slots=cslots, contexts=contexts, start=start, budget=T - start,
                              max_len=T, cfg=cfg, train_step=train_step, generator=torch.Generator().manual_seed(seed + 1),
                              with_values=False)
        ok = cont.finish(cslots, [[]] * m).success.astype(float)
        p[~doomed] = ok.reshape(-1, K).mean(-1)
        remaining[~doomed] = cseg.mask.sum(-1).numpy().reshape(-1, K).mean(-1)
    saved = float(remaining.sum())
    n = len(stopped)
    return dict(
        rows=n_rows, continuations=continuations, seed=seed, train_step=train_step, stops=n,
        doomed_stops=int(doomed.sum()), stop_rate=n / n_rows,
        precision=float(doomed.mean()) if n else float("nan"),
        p_thrown=float(p.mean()) if n else float("nan"),
        precision_p=float(1 - p.mean()) if n else float("nan"),
        lost_per_100_tokens=float(100 * p.sum() / saved) if saved > 0 else float("nan"),
        position=lengths[stopped].astype(int).tolist(), doomed=doomed.tolist(), problem=problems.tolist(),
        prefix=[seg.tokens[b, : lengths[b]].tolist() for b in stopped],
        p_success=p.round(6).tolist(), remaining=remaining.round(3).tolist(),
    )


def measure_run(run_dir: str | Path, *, rows: int = ROWS, continuations: int = CONTINUATIONS, seed: int | None = None,
                log=print) -> Path:
    """Measure the finished run in ``run_dir`` (see the module doc); returns the path of :data:`FILE`.

    ``seed``: of the sampled rows (default the run's ``run.seed``)."""
    run_dir = Path(run_dir)
    out = run_dir / FILE
    cfg = run_config(run_dir)
    seed = cfg.run.seed if seed is None else seed
    if already_measured(out, rows=rows, continuations=continuations, seed=seed):
        return out
    if cfg.stop.rule == "none":
        result = dict(rows=rows, continuations=continuations, seed=seed, stops=0, stop_rate=0.0)
    else:
        with finished_trainer(run_dir, cfg) as trainer:
            result = measure_trainer(trainer, rows, continuations, seed)
    atomic_write(out, json.dumps(result))
    log(f"  stop value {run_dir.name}: {result['stops']} stops of {rows} rows"
        + (f", P(success) thrown away {result['p_thrown']:.3f} a stop" if result["stops"] else ""))
    return out
