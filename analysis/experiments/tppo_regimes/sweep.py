"""Settings of the T-PPO phase diagram (settings only; ``spec`` assembles them).

PPO and T-PPO at two windows on lognormal-length planted-failure problems of two tail heavinesses
(``length_tail`` = p99 / p50 of the target lengths), and the heavier one again with the run-on priced on a
log scale (``tail16log``). Every run starts from ``configs/tppo.yaml`` with the
PPO preset's ``algo`` and ``model`` sections (as the T-PPO speed-up study does), and every run is
evaluated the same way: greedy whole responses to fresh held-out prompts every ``EVAL_EVERY`` steps
(``eval/pass@1``), not the rows that happen to finish within a step. Run names: ``<method>-<cell>-s<seed>``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.tppo_speedup import sweep as speedup

BASE_CONFIG = speedup.BASE_CONFIG
STEPS = 400
TPPO_STEPS = {8: 1200, 32: 600}
"""T-PPO generates at most a window per row per step; it gets more steps (about PPO's tokens), and the
study compares cost to a level, not steps."""
EVAL_EVERY = 50
EVAL_SIZE = 128
MAX_LEN = 160
BATCH = 16
ENV: dict = {"task.env_id": "testbed/PlantedFailureTail-v0", "rollout.max_len": MAX_LEN,
             "task.env_kwargs.max_len": MAX_LEN + 1, "task.env_kwargs.num_problems": 8,
             "task.env_kwargs.target_len": 16, "task.env_kwargs.critical_frac": 0.02,
             "task.env_kwargs.num_acceptable": 14, "task.env_kwargs.recoverable_cost": 0.003,
             "task.env_kwargs.overshoot": "recoverable", "task.env_kwargs.runon_cost": 0.15,
             "task.eval_problems": "each"}
"""The problems: 8 at quantile-spaced lognormal lengths, median 16 (tail 16: 4 to 100 tokens). An answer is
complete at its length L and may run on (``overshoot="recoverable"``): with an exact length a PPO policy
that has learnt the short problems never again reaches the long ones (pilots: final success 0.2-0.3, every
row ending near the median). The run-on is priced relative to L (``runon_cost``: running on by the fraction
f of L costs 0.15 f) and other wrong tokens cost 0.003: ten-seed pilots of PPO
(``bench/tppo_reliability.py``, docs/tppo_regimes.md) found PPO reliable only with a
small cost per run-on token (0.003: 10 of 10 seeds >= 0.8; 0.005 and 0.01: 5 of 10), and then every row
padded 20-35 tokens past its length, which flattened the length tail (longest / mean row 2.2); a relative
price keeps short answers close to L and lets long ones keep a margin (9 of 10 on seeds 0-9, but 7 of 10 on
held-out seeds 10-19; ratio 2.7). PPO's budget
sits at its early pilots' peak: on two seeds its held-out success reached 0.77-0.94 by step 200-400 and
then fell to 0.69-0.75 by step 1000 as it lost the longest problems (at the earlier cost of 0.01 a token). The held-out evaluations take each of the
8 problems 16 times (``task.eval_problems=each``): a greedy policy's score is then the exact mean over the
problems (with random draws of 128, a PPO seed whose final policy solves 6 of the 8, exactly 0.75, read 0.805)."""
SHAPE: dict = {"rollout.batch_size": BATCH, "algo.minibatch_size": BATCH, "algo.epochs": 1,
               "model.eos_bias": -3.0, "model.prompt_input": True}
"""The step's shape, for every method: 16 rows (as the LLM presets), one update per step, and a policy
that starts like a language model (it rarely stops at random: ``eos_bias``) and sees its prompt at every
step as a transformer does (``prompt_input``: a GRU forgets it over 100 noisy tokens, and PPO then
learnt one length for every problem). With the PPO preset's four epochs of two minibatches, generation
was 6% of PPO's projected cost in a pilot: no window could have given more than 1.07x."""
TAILS = (4.0, 16.0)
WINDOWS = (8, 32)
DEFERRED_WINDOW = 32


SAMPLED_K = 128
"""The final policy of every run is also read sampled, each of the 8 problems this many times
(``testbed.ops.evaluate.measure_sampled``): the success of the policy as trained, beside the greedy evaluation."""


def measurements(quick: bool = False) -> dict[str, dict]:
    """What the runner measures on each finished run (``testbed.ops.studies.MEASUREMENTS``)."""
    return {"sampled_success": {"k": 8 if quick else SAMPLED_K}}


def cell_name(tail: float) -> str:
    return f"tail{tail:g}"


LOG_PRICE_TAIL = 16.0
"""The cell run again with the run-on priced ``c * ln(1 + f)`` (``runon_price="log"``): the linear price reaches 0
at ``f = 1 / c`` (a short answer run on by 7 L scores 0 like a failure, and so does every row of a policy that
has stopped ending); PPO ends >= 0.8 on 34 of 40 seeds there, against 29 of 50 with the linear price, but pads
answers longer, so its longest / mean row falls to 2.36 (pilots, docs/tppo_regimes.md)."""


def envs() -> dict[str, dict]:
    cells = {cell_name(t): {**ENV, "task.env_kwargs.length_tail": float(t)} for t in TAILS}
    cells[cell_name(LOG_PRICE_TAIL) + "log"] = {**cells[cell_name(LOG_PRICE_TAIL)], "task.env_kwargs.runon_price": "log"}
    return cells


ENVS = envs()


def methods(quick: bool = False) -> dict[str, dict]:
    out = {"ppo": {"tppo.enabled": False, "algo.estimator": "gae", "stop.rule": "none"}}
    for w in WINDOWS:
        out[f"tppo_w{w}"] = {"tppo.enabled": True, "tppo.window": w, "algo.estimator": "egae", "stop.rule": "none",
                             **({} if quick else {"run.steps": TPPO_STEPS[w]})}
    # Deferred credit (a row's tokens train the policy once the row finishes): the 8-token window with the
    # paper's window credit collapses here, and on the LLM window credit lost accuracy where deferred did not.
    out[f"tppo_w{DEFERRED_WINDOW}_deferred"] = {**out[f"tppo_w{DEFERRED_WINDOW}"], "tppo.credit": "deferred"}
    return out


METHODS = methods()
SEEDS = list(range(5))
FULL_SEEDS = list(range(10))
QUICK: dict = {"steps": 12, "seeds": [0], "overrides": {"run.eval_every": 6, "run.eval_size": 16}}
AXES = ("method", "env", "seed")


def spec(out_dir: str | Path, quick: bool = False, full: bool = False) -> dict:
    q = QUICK if quick else {}
    cells = envs()
    if quick:
        cells = {k: cells[k] for k in list(cells)[-1:]}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {**speedup.ppo_settings(), **SHAPE, "run.steps": q.get("steps", STEPS),
                      "run.eval_every": EVAL_EVERY, "run.eval_size": EVAL_SIZE, **q.get("overrides", {})},
        "axes": {"method": methods(quick), "env": cells, "seed": list(q.get("seeds", FULL_SEEDS if full else SEEDS))},
    }


FULL_FOLDER = "full"


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    return [spec(Path(root) / "runs", quick=quick, full=full)]
