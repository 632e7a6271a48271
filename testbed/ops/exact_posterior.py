"""The exact-posterior measurement of a finished run: its frozen policy's rows, where each stop rule would
fire on them, and the exact ``P(success | prefix)`` of every prefix (the ``detector_bayes`` study).

:func:`measure_run` loads a finished run on a simulated env small enough for the exact solver
(``envs.solver.solve``: a DP over every not-yet-doomed prefix; the policy callable is the GRU's
``softmax(logits / temperature)``), samples ``rows`` rows from it with the collector's own decoding
loop (:func:`testbed.collector.decode_segment`) and never ends a row early: for each row it records the
first response index at which each stop rule (its trained regret normaliser, fresh per-row state,
past warm-up) *would* have fired, counting only firings the collector would execute (not on an EOS
token). It writes :data:`ARRAYS` (numpy arrays) and :data:`META` (JSON) into the run directory, both
atomically; a measurement already there with the same settings is kept. Scoring the arrays is
``analysis.experiments.detector_bayes.scoring``'s, which needs neither torch nor the env.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import numpy as np
import torch

from envs.planted_failure import EOS_ID
from envs.solver import PrefixValues, solve, success_curves
from testbed.collector import decode_segment
from testbed.config import StopSection
from testbed.errors import UserError
from testbed.rollout import Ending
from testbed.metrics import iter_jsonl
from testbed.ops.measure import finished_trainer, run_config
from testbed.runfiles import atomic_path, atomic_write
from testbed.sim_task import SimTask
from testbed.stopping import StopContext, StopRule, make_stop_rule, success_probability

ARRAYS = "exact_posterior.npz"
META = "exact_posterior.json"
RULES = ("espo", "regret_only", "value_only")
"""The stop rules measured: ESPO and its two single-signal ablations, with the run's constants."""


@torch.no_grad()
def gru_probs(backend, contexts: list[list[int]], temperature: float) -> np.ndarray:
    """``(n, V)`` next-token probabilities ``softmax(logits / temperature)`` after each context."""
    lengths = torch.tensor([len(c) for c in contexts], dtype=torch.long)
    seqs = torch.zeros(len(contexts), int(lengths.max()), dtype=torch.long)
    for i, c in enumerate(contexts):
        seqs[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
    _, last = backend.policy.encode(seqs, lengths)
    logits = backend.policy.head(last).double() / temperature
    return torch.softmax(logits, dim=-1).numpy()


def exact_values(backend, structure, temperature: float) -> list[PrefixValues]:
    """Exact ``P(success | prefix)`` for every problem under the frozen policy.

    ``solve`` queries the policy on every not-doomed prefix whatever the probabilities, so one pass
    with a recording stand-in lists the prefixes; one batched GRU call then gives all their
    distributions, and a second pass solves with them.
    """
    out = []
    for p in range(structure.num_problems):
        needed: list[tuple[int, ...]] = []

        def record(problem, prefix):
            needed.append(tuple(prefix))
            return np.full(structure.vocab_size, 1.0 / structure.vocab_size)

        solve(structure, p, record)
        prompt = [int(x) for x in structure.prompts[p]]
        probs = gru_probs(backend, [prompt + list(u) for u in needed], temperature)
        table = {u: probs[i] for i, u in enumerate(needed)}
        out.append(solve(structure, p, lambda problem, prefix: table[tuple(prefix)]))
    return out


class FirstFires(StopRule):
    """A stop rule for the collector's decode loop that never stops a row: it asks each of ``rules``
    and records the first response index at which each fired. The collector's ``StopContext`` marks
    EOS tokens as ``ends_anyway``, so a recorded firing is one the collector would have executed."""

    def __init__(self, rules: dict[str, StopRule], num_slots: int):
        super().__init__(StopSection(), num_slots=num_slots)
        self.rules = rules
        self.first = {name: torch.full((num_slots,), -1, dtype=torch.long) for name in rules}

    def reset(self, slots: torch.Tensor, train_step: int) -> None:
        for rule in self.rules.values():
            rule.reset(slots, train_step)

    def __call__(self, ctx: StopContext) -> torch.Tensor:
        for name, rule in self.rules.items():
            fire = rule(ctx).cpu() & (self.first[name][ctx.slots] < 0)
            self.first[name][ctx.slots[fire]] = ctx.positions[fire]
        return torch.zeros_like(ctx.tokens, dtype=torch.bool)


@torch.no_grad()
def sample_rows(backend, cfg, rules: dict[str, StopRule], n_rows: int, seed: int, train_step: int) -> dict[str, np.ndarray]:
    """Decode ``n_rows`` rows to EOS or max_len with the collector's own loop; every rule sees every
    step but ends no row. Returns the rows' arrays (``fire_<rule>``: first firing index, -1 never)."""
    task = SimTask(cfg.task.env_id, n_rows, seed=seed, env_kwargs=cfg.task.env_kwargs)
    slots = np.arange(n_rows)
    prompts = task.reset(slots)
    problems = task.env.problem.copy()
    recorder = FirstFires(rules, n_rows)
    recorder.reset(torch.as_tensor(slots), train_step)
    T = cfg.rollout.max_len
    seg = decode_segment(backend, task, recorder, slots=slots, contexts=prompts,
                         start=torch.zeros(n_rows, dtype=torch.long), budget=torch.full((n_rows,), T), max_len=T,
                         cfg=cfg, train_step=train_step, generator=torch.Generator().manual_seed(seed))
    if (seg.ending == Ending.WINDOW_CUT).any() or (seg.ending == Ending.EARLY_STOP).any():
        raise RuntimeError("every row must end at EOS or max_len here")
    res = task.finish(slots, [[]] * n_rows)
    rows = dict(tokens=seg.tokens.numpy(), lengths=seg.mask.sum(-1).numpy(), problems=problems,
                success=res.success.astype(bool), failure_step=res.failure_step.astype(np.int64),
                values=seg.values.numpy())
    rows.update({f"fire_{k}": v.numpy() for k, v in recorder.first.items()})
    return rows


def _check(cfg) -> None:
    if cfg.task.kind != "sim":
        raise UserError(f"exact posterior: task.kind must be 'sim' (the exact solver), got {cfg.task.kind!r}")
    if cfg.rollout.top_k or cfg.rollout.top_p < 1.0:
        raise UserError("rollout.top_k/top_p: the exact solver assumes plain softmax(logits / temperature) sampling")


def measure_trainer(trainer, n_rows: int, seed: int, *, rules: tuple[str, ...] = RULES) -> tuple[dict, dict]:
    """The measurement of a trained :class:`testbed.ops.trainer.Trainer`: ``(arrays, meta)``.

    ``arrays``: the rows (:func:`sample_rows`), ``curves`` ``(R, T + 1)`` (``[b, k]`` the exact
    P(success) after the first k response tokens of row b, NaN past its end), ``stoppable`` ``(R, T)``
    (a stop at index s would be executed: token s exists, is not EOS, s >= min_tokens - 1) and
    ``p_critic`` (the value gate's p_t of each visited state, NaN past the end).
    """
    _check(trainer.cfg)
    cfg, backend = trainer.cfg, trainer.backend
    backend.eval()  # the toy GRU has no dropout: a marker
    train_step = max(cfg.run.steps, cfg.stop.warmup_steps)  # past warm-up
    built = {}
    for name in rules:
        rule = make_stop_rule(dataclasses.replace(cfg.stop, rule=name), num_slots=n_rows, seed=seed)
        rule.load_state_dict(trainer.rule.state_dict())  # the trained regret normaliser
        built[name] = rule
    rows = sample_rows(backend, cfg, built, n_rows, seed + 1, train_step)
    values = exact_values(backend, trainer.task.env.structure, cfg.rollout.temperature)
    curves = success_curves(values, rows["problems"], rows["tokens"], rows["lengths"])
    T = rows["tokens"].shape[1]
    idx = np.arange(T)
    stoppable = ((idx[None, :] < rows["lengths"][:, None]) & (rows["tokens"] != EOS_ID)
                 & (idx[None, :] >= max(cfg.stop.min_tokens - 1, 0)))
    v = rows["values"]
    p_critic = np.full(v.shape, np.nan)
    valid = ~np.isnan(v)
    p_critic[valid] = success_probability(torch.as_tensor(v[valid]).double(), cfg.stop).numpy()
    arrays = {**rows, "curves": curves, "stoppable": stoppable, "p_critic": p_critic}
    meta = dict(
        rows=n_rows, seed=seed, rules=list(rules), env_id=cfg.task.env_id, steps=cfg.run.steps,
        batch_size=cfg.rollout.batch_size, run_seed=cfg.run.seed,
        p_start=[float(x(())) for x in values],
        normalizer=_normalizer(trainer.rule),
        train={k: getattr(cfg.algo, k) for k in ("entropy_coef", "lr_actor", "lr_critic", "epochs")}
        | {"temperature": cfg.rollout.temperature},
        stop={k: getattr(cfg.stop, k) for k in ("accumulate", "gate", "kappa", "tau", "tau_min", "rho", "min_tokens")},
    )
    return arrays, meta


def _normalizer(rule) -> dict[str, float]:
    """The trained regret normaliser's mean and variance (empty for a rule without one)."""
    state = rule.state_dict().get("normalizer") or {}
    if state.get("mean") is None:
        return {}
    mean, sq = float(state["mean"]), float(state["sq"])  # as RegretNormalizer.var reads them
    return {"mean": mean, "var": max(0.0, sq - mean * mean) if state.get("var_mode", "moment") == "moment" else sq}


def _train_success(run_dir: Path) -> float:
    """Mean training success over the run's last 10 steps (NaN if it logged none)."""
    rows = [m for _, m in iter_jsonl(run_dir / "metrics.jsonl") if "success/rate" in m][-10:]
    return float(np.mean([m["success/rate"] for m in rows])) if rows else float("nan")


def measure_run(run_dir: str | Path, *, rows: int = 4000, seed: int | None = None, log=print) -> Path:
    """Measure the finished run in ``run_dir`` (see the module doc); returns the path of its arrays.

    ``seed``: of the sampled rows (default the run's ``run.seed``). Kept when already measured with the
    same ``rows`` and ``seed``.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    seed = cfg.run.seed if seed is None else seed
    meta_path = run_dir / META
    if meta_path.is_file() and (run_dir / ARRAYS).is_file():
        old = json.loads(meta_path.read_text())
        if old.get("rows") == rows and old.get("seed") == seed:
            return run_dir / ARRAYS
    _check(cfg)
    with finished_trainer(run_dir, cfg) as trainer:
        arrays, meta = measure_trainer(trainer, rows, seed)
    meta["train_success"] = _train_success(run_dir)
    with atomic_path(run_dir / ARRAYS) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    atomic_write(meta_path, json.dumps(meta, indent=1))  # written last: its presence means complete
    log(f"  measured {run_dir.name}: {rows} rows, exact P(success | prefix) of every prefix")
    return run_dir / ARRAYS

