"""ESPO's stop rule scored against the exact Bayes-optimal failure detector, on the tiny instance.

What it measures
    How good ESPO's early-stop decisions are *as a failure detector*, compared with what an ideal
    detector could do with the same number of stops. It trains a toy GRU policy and critic with ESPO
    on ``testbed/PlantedFailureTiny-v0`` for ``--steps`` steps, freezes them, and samples ``--rows``
    rows from the frozen policy. Rows are never ended early here: for each row it records the first
    response index at which each stop rule (ESPO, and its ``regret_only`` and ``value_only``
    ablations; the trained regret normaliser, fresh per-row CUSUM state, past warm-up) *would* have
    fired. Then, for every prefix the rows visit, it computes the exact ``P(success | prefix)`` under
    the frozen policy with ``envs.solver.solve`` (a DP over every not-yet-doomed prefix; the policy
    callable is the GRU's ``softmax(logits / temperature)``, batched over all the prefixes the DP
    needs). Each rule's stops are scored against, at the same number of stops n:

    - ``random``: n rows stopped at random, with exactly the rule's stop-position distribution
      (each stop position is given to a random row still running there); averaged over 200 draws.
    - ``bayes``: the exact-posterior detector of DESIGN.md (``envs.solver.bayes_optimal_stop``): stop a
      row at the first prefix whose exact ``P(success | prefix)`` falls below a threshold, the
      threshold set so that it stops n rows (ties at the threshold broken at random).
    - ``oracle``: stop at the planted fatal token (env ground truth); n doomed rows drawn at random
      (expected values), or every doomed row when fewer than n are stoppable.

Why this instance
    It is the only registered variant small enough for the exact DP over every prefix of a policy
    that depends on the whole prefix (3 problems, 3 content tokens, responses of at most 6 tokens:
    a few hundred prefixes), so P(success | prefix) is exact rather than estimated, while it still
    has critical positions, recoverable errors and the length rule.

Command
    ``PYTHONPATH=. .venv/bin/python bench/detector_vs_bayes.py [--steps 60] [--seed 0] [--rows 4000]``
    (``--set stop.tau=4`` etc. passes extra config overrides; about a minute on one CPU thread).

How to read the table (one block per stop rule; every quantity is computed from one run)
    stops          rows stopped (matched across a block; the oracle may have fewer).
    mean P@stop    mean exact P(success | prefix at the stop), the stopped token included. Lower
                   means the stops hit rows that were more surely failing. Against ``random`` (same
                   count, same positions) lower is plainly better. Against ``bayes`` it must be read
                   together with tokens saved: P is a martingale, so waiting never raises the
                   expected P at a stop, and a late detector can reach a low mean P by saving few
                   tokens; the first-crossing rule stops as early as its threshold allows.
    x bayes        the column to its left divided by the Bayes detector's (at a matched count, the
                   same ratio holds for expected successes lost).
    precision      share of stops at an already doomed prefix (fatal token emitted, P == 0).
    E[lost]        sum of P(success | prefix) over stopped rows: the expected number of successes the
                   detector throws away (equal in expectation to stopped rows that would have succeeded).
    tok saved      response tokens after the stop, summed over stopped rows (what stopping saves).
    lost/100tok    E[lost] per 100 tokens saved: the price of the savings (lower is better).
    The line under each block says whether the rule beats random: the share of the 200 random draws
    whose mean P@stop is at most the rule's (a one-sided permutation p-value).
    A MC line checks the exact P against the empirical success rate of the sampled rows through
    each often-visited prefix; a critic line compares the value gate's p_t with the exact P.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable without PYTHONPATH too
    sys.path.insert(0, str(ROOT))

import envs  # noqa: E402,F401  (registers the gymnasium ids)
from envs.planted_failure import EOS_ID  # noqa: E402
from envs.solver import PrefixValues, bayes_optimal_stop, solve, success_curves  # noqa: E402
from testbed import config as config_mod  # noqa: E402
from testbed.sampling import sample_tokens  # noqa: E402
from testbed.sim_task import SimTask  # noqa: E402
from testbed.stopping import StopContext, StopRule, make_stop_rule, success_probability  # noqa: E402
from testbed.trainer import Trainer  # noqa: E402

ENV_ID = "testbed/PlantedFailureTiny-v0"
CONFIG = ROOT / "configs" / "espo.yaml"
RULES = ("espo", "regret_only", "value_only")
RANDOM_DRAWS = 200
MC_MIN_VISITS = 100


# --- 1. training ---------------------------------------------------------------------------------


def train(steps: int, seed: int, *, batch_size: int = 32, warmup_steps: int = 3, out_dir: str,
          overrides: tuple[str, ...] = ()) -> Trainer:
    """ESPO on the tiny instance for ``steps`` steps; returns the trainer (backend and rule trained)."""
    cfg = config_mod.load(CONFIG, [
        f"task.env_id={ENV_ID}", "rollout.max_len=6", f"rollout.batch_size={batch_size}",
        f"algo.minibatch_size={min(16, batch_size)}", f"stop.warmup_steps={warmup_steps}",
        f"run.out_dir={out_dir}", "run.name=espo", "run.progress=false", f"run.steps={steps}",
        f"run.seed={seed}", "run.threads=1", f"run.checkpoint_every={max(steps, 1)}", *overrides,
    ])
    if cfg.rollout.top_k or cfg.rollout.top_p < 1.0:
        raise ValueError("rollout.top_k/top_p: the exact solver assumes plain softmax(logits / temperature) sampling")
    trainer = Trainer(cfg)
    trainer.train()
    return trainer


# --- 2. exact P(success | prefix) under the frozen GRU ---------------------------------------------


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


# --- 3. rows from the frozen policy, with the first position each rule would fire ------------------


@dataclass
class Rows:
    tokens: np.ndarray  # (R, T) response tokens, PAD after the end
    lengths: np.ndarray  # (R,)
    problems: np.ndarray  # (R,)
    success: np.ndarray  # (R,) bool
    failure_step: np.ndarray  # (R,) index of the fatal token, -1 none
    values: np.ndarray  # (R, T) critic V(s_t), NaN after the end
    fires: dict[str, np.ndarray] = field(default_factory=dict)  # rule -> (R,) first firing index, -1 never


@torch.no_grad()
def sample_rows(backend, cfg, rules: dict[str, StopRule], n_rows: int, seed: int, train_step: int) -> Rows:
    """Decode ``n_rows`` rows to EOS or max_len; every rule sees every step but ends no row.

    A firing counts as a stop only where the collector would execute it: not on an EOS token (the
    row ends there anyway). The rules get the same ``StopContext`` the collector builds.
    """
    task = SimTask(cfg.task.env_id, n_rows, seed=seed, env_kwargs=cfg.task.env_kwargs)
    slots = np.arange(n_rows)
    prompts = task.reset(slots)
    problems = task.env.problem.copy()
    for rule in rules.values():
        rule.reset(torch.as_tensor(slots), train_step)
    T, r = cfg.rollout.max_len, cfg.rollout
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n_rows, T, dtype=torch.long)
    values = torch.full((n_rows, T), float("nan"))
    lengths = torch.zeros(n_rows, dtype=torch.long)
    fires = {name: torch.full((n_rows,), -1, dtype=torch.long) for name in rules}
    backend.begin(prompts)
    active = torch.arange(n_rows)
    for k in range(T):
        if len(active) == 0:
            break
        out = backend.step(with_values=True)
        s = sample_tokens(out.logits, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p, generator=gen)
        tok = s.tokens
        tokens[active, k] = tok
        values[active, k] = out.values.float()
        lengths[active] = k + 1
        fs = torch.as_tensor(task.observe(active.numpy(), tok.numpy()), dtype=torch.long)
        ctx = StopContext(slots=active, positions=torch.full_like(active, k), logits=out.logits, tokens=tok,
                          regret=s.regret, values=out.values, failure_step=fs, train_step=train_step)
        eos = tok == EOS_ID
        for name, rule in rules.items():
            fire = rule(ctx).cpu() & ~eos & (fires[name][active] < 0)
            fires[name][active[fire]] = k
        ended = eos | (k + 1 >= T)
        backend.advance(tok, keep=~ended)
        active = active[~ended]
    res = task.finish(slots, [[]] * n_rows)
    return Rows(tokens=tokens.numpy(), lengths=lengths.numpy(), problems=problems, success=res.success.astype(bool),
                failure_step=res.failure_step.astype(np.int64), values=values.numpy(),
                fires={k: v.numpy() for k, v in fires.items()})


# --- 4. scoring -----------------------------------------------------------------------------------


@dataclass
class Score:
    name: str
    stops: int
    mean_p: float  # mean exact P(success | prefix at stop)
    precision: float  # share of stops at a doomed prefix
    lost: float  # sum of P over stops: expected successes thrown away
    saved: float  # response tokens after the stops
    note: str = ""

    @property
    def lost_per_100(self) -> float:
        return 100.0 * self.lost / self.saved if self.saved > 0 else float("nan")


def stoppable(rows: Rows, min_index: int) -> np.ndarray:
    """``(R, T)``: a stop at index s would be executed (token s exists, is not EOS, s >= min_index)."""
    T = rows.tokens.shape[1]
    idx = np.arange(T)
    ok = (idx[None, :] < rows.lengths[:, None]) & (rows.tokens != EOS_ID) & (idx[None, :] >= min_index)
    return ok


def _at(curves: np.ndarray, stops: np.ndarray, rows: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For stop indices ``stops`` (R,) with -1 = none: (stopped rows, P at the stops, doomed at the stops)."""
    b = np.flatnonzero(stops >= 0)
    s = stops[b]
    p = curves[b, s + 1]
    fs = rows.failure_step[b]
    doomed = (p == 0) | ((fs >= 0) & (fs <= s))
    return b, p, doomed


def score_stops(name: str, curves: np.ndarray, stops: np.ndarray, rows: Rows, note: str = "") -> Score:
    b, p, doomed = _at(curves, stops, rows)
    n = len(b)
    saved = float((rows.lengths[b] - (stops[b] + 1)).sum())
    if n == 0:
        return Score(name, 0, float("nan"), float("nan"), 0.0, 0.0, note)
    return Score(name, n, float(p.mean()), float(doomed.mean()), float(p.sum()), saved, note)


def random_matched(curves: np.ndarray, rule_stops: np.ndarray, rows: Rows, ok: np.ndarray,
                   rng: np.random.Generator, draws: int) -> tuple[Score, np.ndarray]:
    """Random stops, same count and same stop positions as ``rule_stops``; mean over ``draws``.

    Rows still running at a later index are also running at every earlier one (the sets of eligible
    rows are nested), so giving the latest positions out first always finds a free row. Returns the
    mean score and each draw's mean P@stop (for the permutation p-value).
    """
    positions = rule_stops[rule_stops >= 0]
    n = len(positions)
    if n == 0:
        return Score("random (matched)", 0, float("nan"), float("nan"), 0.0, 0.0), np.zeros(0)
    wanted = np.bincount(positions, minlength=ok.shape[1])
    per_draw = []
    for _ in range(draws):
        stops = np.full(len(rule_stops), -1, dtype=np.int64)
        for s in range(ok.shape[1] - 1, -1, -1):
            if wanted[s] == 0:
                continue
            free = np.flatnonzero(ok[:, s] & (stops < 0))
            stops[rng.choice(free, size=wanted[s], replace=False)] = s
        per_draw.append(score_stops("random", curves, stops, rows))
    mean = lambda attr: float(np.mean([getattr(d, attr) for d in per_draw]))  # noqa: E731
    score = Score("random (matched)", n, mean("mean_p"), mean("precision"), mean("lost"), mean("saved"),
                  f"mean of {draws} draws")
    return score, np.array([d.mean_p for d in per_draw])


def bayes_matched(masked: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """First-crossing stops of the exact ``P(success | prefix)`` for exactly ``n`` rows.

    ``masked`` is ``(R, T + 1)`` curves with NaN where no stop can be executed. Rows whose smallest
    stoppable P is below the n-th smallest are stopped at their first P below it; rows tied at it
    fill the rest at random, each at its first P at or below it. Returns stops and the threshold.
    """
    R = masked.shape[0]
    stops = np.full(R, -1, dtype=np.int64)
    if n == 0:
        return stops, float("nan")
    lowest = np.nanmin(np.where(np.isnan(masked[:, 1:]), np.inf, masked[:, 1:]), axis=1)
    thr = float(np.sort(lowest)[n - 1])
    below = lowest < thr
    stops[below] = bayes_optimal_stop(masked[below], thr)
    tied = np.flatnonzero(lowest == thr)
    pick = rng.choice(tied, size=n - int(below.sum()), replace=False)
    stops[pick] = bayes_optimal_stop(masked[pick], np.nextafter(thr, np.inf))
    return stops, thr


def oracle_scores(curves: np.ndarray, rows: Rows, ok: np.ndarray, n: int) -> Score:
    """Stop at the planted fatal token (first executable index at or after it); n of those rows at
    random, in expectation, or all of them when fewer than n can be stopped."""
    T = ok.shape[1]
    after = np.arange(T)[None, :] >= np.where(rows.failure_step >= 0, rows.failure_step, T)[:, None]
    cand = ok & after
    stops = np.where(cand.any(1), cand.argmax(1), -1)
    full = score_stops("oracle", curves, stops, rows)
    if full.stops <= n:
        note = f"only {full.stops} doomed rows stoppable" if full.stops < n else ""
        return dataclasses.replace(full, name="oracle (matched)", note=note)
    f = n / full.stops  # expectation over a uniformly random n-subset of the doomed rows
    return Score("oracle (matched)", n, full.mean_p, full.precision, full.lost * f, full.saved * f,
                 f"{n} of {full.stops} doomed rows")


@dataclass
class Block:
    rule: str
    scores: list[Score]
    threshold: float
    p_value: float  # share of random draws with mean P@stop <= the rule's


@dataclass
class Report:
    blocks: list[Block]
    rows: int
    success_rate: float
    doomed_rate: float
    train_success: float
    mc_checked: int
    mc_max_z: float
    critic_mae: float
    critic_corr: float
    normalizer: dict
    seconds: float
    settings: dict


def mc_check(curves: np.ndarray, rows: Rows, min_visits: int) -> tuple[int, float]:
    """Exact P against the empirical success rate of the sampled rows through each prefix visited at
    least ``min_visits`` times (prefixes that are not yet ended). Returns (prefixes checked, max |z|)."""
    counts: dict[tuple, list[int]] = {}
    for b in range(len(rows.lengths)):
        toks = tuple(int(t) for t in rows.tokens[b, : rows.lengths[b]])
        for k in range(len(toks)):  # prefixes toks[:k], k < length: the row continued from each
            c = counts.setdefault((int(rows.problems[b]), toks[:k]), [0, 0, b, k])
            c[0] += 1
            c[1] += int(rows.success[b])
    checked, worst = 0, 0.0
    for (_, _), (n, wins, b, k) in counts.items():
        if n < min_visits:
            continue
        p = curves[b, k]
        emp = wins / n
        se = np.sqrt(p * (1 - p) / n)
        z = 0.0 if emp == p else (abs(emp - p) / se if se > 0 else np.inf)
        checked += 1
        worst = max(worst, z)
    return checked, float(worst)


def measure(steps: int = 60, seed: int = 0, n_rows: int = 4000, *, batch_size: int = 32, warmup_steps: int = 3,
            overrides: tuple[str, ...] = (), rules: tuple[str, ...] = RULES, draws: int = RANDOM_DRAWS,
            mc_min_visits: int = MC_MIN_VISITS) -> tuple[Report, Rows, np.ndarray]:
    """Train, freeze, sample and score; returns the report, the rows and their exact curves ``(R, T+1)``."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="detector_vs_bayes_") as tmp:
        trainer = train(steps, seed, batch_size=batch_size, warmup_steps=warmup_steps, out_dir=tmp,
                        overrides=overrides)
        metrics = [l for l in (Path(trainer.run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    import json

    last = [json.loads(l) for l in metrics[-10:]]
    train_success = float(np.mean([m["success/rate"] for m in last])) if last else float("nan")
    cfg, backend = trainer.cfg, trainer.backend
    backend.eval()
    train_step = max(cfg.run.steps, cfg.stop.warmup_steps)
    built = {}
    for name in rules:
        rule = make_stop_rule(dataclasses.replace(cfg.stop, rule=name), num_slots=n_rows, seed=seed)
        rule.load_state_dict(trainer.rule.state_dict())  # the trained regret normaliser
        built[name] = rule
    rows = sample_rows(backend, cfg, built, n_rows, seed + 1, train_step)
    structure = trainer.task.env.structure
    values = exact_values(backend, structure, cfg.rollout.temperature)
    curves = success_curves(values, rows.problems, rows.tokens, rows.lengths)

    ok = stoppable(rows, max(cfg.stop.min_tokens - 1, 0))
    masked = curves.copy()
    masked[:, 1:][~ok] = np.nan
    blocks = []
    for i, name in enumerate(rules):
        rng = np.random.default_rng([seed, 17, i])
        stops = rows.fires[name]
        own = score_stops(name, curves, stops, rows)
        n = own.stops
        rand, rand_means = random_matched(curves, stops, rows, ok, rng, draws)
        b_stops, thr = bayes_matched(masked, n, rng)
        bayes = score_stops("bayes (exact P)", curves, b_stops, rows, f"P < {thr:.3g}" if n else "")
        oracle = oracle_scores(curves, rows, ok, n)
        p_value = float((rand_means <= own.mean_p + 1e-12).mean()) if n else float("nan")
        blocks.append(Block(name, [own, rand, bayes, oracle], thr, p_value))

    mc_n, mc_z = mc_check(curves, rows, mc_min_visits)
    # Critic: p_t from V(s_t) against the exact P of the same state (prefix before token t).
    valid = ~np.isnan(rows.values)
    p_critic = success_probability(torch.as_tensor(rows.values[valid]).double(), cfg.stop).numpy()
    p_exact = curves[:, :-1][valid]
    mae = float(np.abs(p_critic - p_exact).mean())
    corr = float(np.corrcoef(p_critic, p_exact)[0, 1]) if p_critic.std() > 0 and p_exact.std() > 0 else float("nan")
    report = Report(
        blocks=blocks, rows=n_rows, success_rate=float(rows.success.mean()),
        doomed_rate=float((rows.failure_step >= 0).mean()), train_success=train_success,
        mc_checked=mc_n, mc_max_z=mc_z, critic_mae=mae, critic_corr=corr,
        normalizer=trainer.rule.state_dict().get("normalizer", {}), seconds=time.perf_counter() - t0,
        settings=dict(steps=steps, seed=seed, rows=n_rows, batch_size=batch_size, warmup_steps=warmup_steps,
                      overrides=list(overrides), stop={k: getattr(cfg.stop, k) for k in
                                                       ("accumulate", "gate", "kappa", "tau", "tau_min", "rho",
                                                        "min_tokens")}),
    )
    return report, rows, curves


# --- 5. output ------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    if np.isnan(a) or np.isnan(b):
        return "n/a"
    if b == 0:
        return "1.00" if a == 0 else "inf"
    return f"{a / b:.2f}"


def _num(x: float, fmt: str) -> str:
    return "n/a" if np.isnan(x) else format(x, fmt)


def format_report(rep: Report) -> str:
    s = rep.settings
    lines = [
        f"detector_vs_bayes: {ENV_ID}, ESPO-trained toy policy ({s['steps']} steps x {s['batch_size']} rows, "
        f"seed {s['seed']}), {rep.rows} frozen-policy rows",
        f"stop config: {s['stop']}; regret normaliser mean {rep.normalizer.get('mean', float('nan')):.3f}, "
        f"var {rep.normalizer.get('var', float('nan')):.3f}",
        f"frozen policy: success {rep.success_rate:.3f}, doomed {rep.doomed_rate:.3f} "
        f"(training success, last 10 steps: {rep.train_success:.3f})",
        "",
    ]
    head = (f"{'detector':<18} {'stops':>6} {'mean P@stop':>11} {'x bayes':>7} {'precision':>9} "
            f"{'E[lost]':>8} {'tok saved':>9} {'x bayes':>7} {'lost/100tok':>11}  note")
    for blk in rep.blocks:
        bayes = next(x for x in blk.scores if x.name.startswith("bayes"))
        lines.append(f"[{blk.rule}]")
        lines.append(head)
        for x in blk.scores:
            lines.append(
                f"{x.name:<18} {x.stops:>6} {_num(x.mean_p, '11.4f'):>11} {_ratio(x.mean_p, bayes.mean_p):>7} "
                f"{_num(x.precision, '9.3f'):>9} {x.lost:>8.1f} {x.saved:>9.0f} {_ratio(x.saved, bayes.saved):>7} "
                f"{_num(x.lost_per_100, '11.2f'):>11}  {x.note}")
        own, rand = blk.scores[0], blk.scores[1]
        if own.stops == 0:
            verdict = f"{blk.rule} never fires on these rows: nothing to score."
        elif blk.p_value <= 0.05:
            verdict = (f"{blk.rule} beats random at matched count and positions: mean P@stop {own.mean_p:.4f} vs "
                       f"{rand.mean_p:.4f}; p = {blk.p_value:.3f} (share of {RANDOM_DRAWS} random draws as low).")
        else:
            verdict = (f"{blk.rule} is NO better than random here: mean P@stop {own.mean_p:.4f} vs "
                       f"{rand.mean_p:.4f}; p = {blk.p_value:.3f} (share of {RANDOM_DRAWS} random draws as low).")
        lines += [verdict, ""]
    lines.append(f"MC check: {rep.mc_checked} prefixes visited >= {MC_MIN_VISITS} times, max |exact P - empirical| = "
                 f"{rep.mc_max_z:.2f} standard errors")
    lines.append(f"critic: value-gate p_t vs exact P(success | s_t): mean |diff| {rep.critic_mae:.3f}, "
                 f"correlation {rep.critic_corr:.3f}")
    lines.append(f"runtime {rep.seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="ESPO training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=4000, help="rows sampled from the frozen policy")
    parser.add_argument("--batch-size", type=int, default=32, help="training rows per step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override (repeatable), e.g. stop.tau=4")
    args = parser.parse_args(argv)
    report, _, _ = measure(args.steps, args.seed, args.rows, batch_size=args.batch_size,
                           overrides=tuple(args.overrides))
    print(format_report(report))


if __name__ == "__main__":
    main()
