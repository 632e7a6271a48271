"""Detectors against baselines on a finished run's own rollouts, with the task's verifier as the label.

:func:`measure_run` loads a finished run whose task knows each row's fate (``task.ground_truth``: the
chain verifier, or a simulated env), samples ``rows`` whole responses from its final policy at the
rollout temperature on training prompts (no stop rule), and labels a row positive when it fails. Each row
is then teacher-forced once (:func:`testbed.ops.detect.teacher_force`: per-token regret, NLL, entropy
and, the run having a trained critic, values) and scored by

- the two ESPO statistics, each as its preset configures it and with its normaliser fitted on these
  rows' regrets (label-free): ``cusum`` (the current rule, ``configs/llm/long_chain_espo.yaml``'s stop
  section) and ``paper`` (the smoothed statistic under the ``max`` gate, ``long_chain_espo_paper.yaml``),
  a row's score being the rule's largest margin; ``cusum_shuffled``: the CUSUM over the row's own
  regrets in a shuffled order (what accumulating them in order adds);
- :data:`testbed.scoring.BASELINE_SCORES`: length, mean and largest NLL (the largest NLL is minus the
  smallest token log-prob), mean entropy, the largest single-token regret, ``-min V`` and the value's drop.

For each score :func:`testbed.scoring.compare_scores` gives the AUROC for "fails" with its bootstrap
interval over rows, the paired AUROC difference against length with its interval, and a logistic fit of
the label on the score and log(length) (is it informative once length is known?). Writes :data:`FILE`
into the run directory; kept when already there with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from testbed import config as config_mod
from testbed import scoring
from testbed.collector import decode_segment
from testbed.config import StopSection
from testbed.errors import UserError
from testbed.ops.measure import already_measured, finished_trainer, run_config
from testbed.runfiles import atomic_write
from testbed.stopping import StopRule, make_stop_rule

FILE = "policy_detect.json"
ROWS = 128
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "llm"
STATISTICS = {"cusum": "long_chain_espo.yaml", "paper": "long_chain_espo_paper.yaml"}
"""Statistic name -> the preset whose stop section configures it."""


def statistic_section(name: str) -> StopSection:
    """The stop section of :data:`STATISTICS`' preset, warm-up off (offline: long over)."""
    raw = yaml.safe_load((PRESETS / STATISTICS[name]).read_text())["stop"]
    return dataclasses.replace(config_mod.from_dict({"stop": raw}).stop, warmup="steps", warmup_steps=0)


def rule_scores(section: StopSection, cfg, regrets, values, *, shuffle_seed: int | None = None) -> list[float]:
    """Each row's largest margin under the rule of ``section``, its normaliser fitted on ``regrets``
    (shuffled within each row first when ``shuffle_seed`` is given)."""
    from testbed.ops.detect import run_rule

    if shuffle_seed is not None:
        g = torch.Generator().manual_seed(shuffle_seed)
        regrets = [r[torch.randperm(len(r), generator=g)] for r in regrets]
    rule = make_stop_rule(section, num_slots=len(regrets))
    flat = torch.cat(regrets)
    rule.normalizer.update(flat.unsqueeze(0), torch.ones(1, len(flat), dtype=torch.bool))
    _, best = run_rule(rule, dataclasses.replace(cfg, stop=section), regrets, values)
    return best


@torch.no_grad()
def measure_trainer(trainer, n_rows: int = ROWS, seed: int = 0) -> dict:
    """The measurement of a trained :class:`testbed.ops.trainer.Trainer` (see the module doc)."""
    from testbed.ops.build import build_task, load_entry_point
    from testbed.ops.detect import TEACHER_ENTRY_POINTS, teacher_force

    cfg, backend = trainer.cfg, trainer.backend
    task = build_task(cfg, num_slots=n_rows, seed=seed + 40_000)
    if not getattr(task, "ground_truth", False):
        raise UserError(f"policy detection: task {cfg.task.kind!r} has no verifier labels (task.ground_truth)")
    slots = np.arange(n_rows)
    prompts = [list(p) for p in task.reset(slots)]
    T = cfg.rollout.max_len
    seg = decode_segment(backend, task, StopRule(StopSection(), num_slots=n_rows), slots=slots, contexts=prompts,
                         start=torch.zeros(n_rows, dtype=torch.long), budget=torch.full((n_rows,), T), max_len=T,
                         cfg=cfg, train_step=0, generator=torch.Generator().manual_seed(seed), with_values=False)
    lengths = seg.mask.sum(-1)
    responses = [seg.tokens[i, : int(lengths[i])].tolist() for i in range(n_rows)]
    res = task.finish(slots, responses)
    fails = ~np.asarray(res.success, dtype=bool)
    keep = [i for i in range(n_rows) if responses[i]]
    spec = TEACHER_ENTRY_POINTS.get(cfg.model.kind)
    regret_fn = load_entry_point(spec) if spec else None
    regrets, values, stats = [], [], {"nll": [], "entropy": []}
    for s in range(0, len(keep), 8):
        idx = keep[s:s + 8]
        r, v, extra = teacher_force(backend, [prompts[i] for i in idx], [responses[i] for i in idx],
                                    temperature=cfg.rollout.temperature, with_values=True, regret_fn=regret_fn)
        regrets += r
        values += v
        for k in stats:
            stats[k] += extra[k]
    scores: dict[str, list[float]] = {name: [] for name in scoring.BASELINE_SCORES}
    for i in range(len(keep)):
        row = scoring.baseline_scores(regrets[i].numpy(), stats["nll"][i].numpy(), stats["entropy"][i].numpy(),
                                      values[i].numpy())
        for name in scores:
            scores[name].append(row[name])
    for name in STATISTICS:
        scores[name] = rule_scores(statistic_section(name), cfg, regrets, values)
    scores["cusum_shuffled"] = rule_scores(statistic_section("cusum"), cfg, regrets, values, shuffle_seed=seed)
    positive = fails[keep].tolist()
    both = 0 < sum(positive) < len(positive)
    return {
        "rows": n_rows, "seed": seed, "scored": len(keep), "fails": int(sum(positive)),
        "failure_step_found": int((np.asarray(res.failure_step)[keep] >= 0).sum()),
        "scores": scoring.compare_scores(scores, positive, seed=seed) if both else {},
        "per_row": {"fails": positive, **{k: [float(x) for x in v] for k, v in scores.items()}},
    }


def measure_run(run_dir: str | Path, *, rows: int = ROWS, seed: int | None = None, log=print) -> Path:
    """Measure the finished run in ``run_dir``; returns the path of :data:`FILE`."""
    run_dir = Path(run_dir)
    out = run_dir / FILE
    cfg = run_config(run_dir)
    seed = cfg.run.seed if seed is None else seed
    if already_measured(out, rows=rows, seed=seed):
        return out
    with finished_trainer(run_dir, cfg, threads=None) as trainer:  # the run's own thread count
        result = measure_trainer(trainer, rows, seed)
    atomic_write(out, json.dumps(result))
    au = {k: round(v["auroc"], 3) for k, v in result["scores"].items()}
    log(f"  policy detection {run_dir.name}: {result['fails']} of {result['scored']} rows fail; AUROC {au}")
    return out
