"""Settings of the long-chain LLM study (settings only; :func:`grids` assembles them).

The long-chain presets as they are (``configs/llm/long_chain_*.yaml``: 6-10 one-digit ``+``/``-`` steps,
responses of about 87 tokens after the presets' SFT stage, SmolLM2-135M-Instruct), on the ESPO paper's
questions: PPO, the paper's ESPO, random truncation matched to it (same stop schedule, same stop reward)
and the oracle (stops at the verifier's first wrong number) at :data:`MAIN_SEEDS`; the current ESPO,
T-PPO (window credit, and deferred credit) and the paper's ESPO with planted wrong steps at
:data:`SIDE_SEEDS`. Every preset differs from ``long_chain_ppo.yaml`` only in the keys it sets (read from
the files here, restated nowhere), so
``testbed run configs/llm/long_chain_espo_paper.yaml run.seed=3`` is the cell ``espo_paper-s3``.

Cost: a long-chain PPO run took 15 min 46 s alone at 2 threads with fast decoding (28 min 46 s on the
transformers path, another CPU); the stop-rule runs add the ``policy_detect`` measurement, and two workers
at one thread each take longer per run (the SFT warm-start alone took 9.5 of them there, now trained once a
seed and loaded by the seed's other methods). The whole study is 32 runs (``--full``: 44, the paper's
comparison at 8 seeds): several hours of this machine, not the 90 minutes the issue sizes it for. It resumes
where it stopped (finished runs are skipped), and each finished run's records go to :data:`ARCHIVE`,
committed with the project, so it can be completed over several sittings on any machine; ``--quick`` checks
the pipeline in minutes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
PRESETS = REPO / "configs" / "llm"
BASE_CONFIG = str(PRESETS / "long_chain_ppo.yaml")
ARCHIVE = REPO / "docs" / "llm_long" / "runs"
"""Finished runs' records (no checkpoints; about 30 kB a run), restored by ``testbed demo --study llm_long``
instead of re-running them (:func:`testbed.ops.studies.restore_runs`)."""


def _flat(name: str) -> dict:
    raw = yaml.safe_load((PRESETS / f"{name}.yaml").read_text()) or {}
    return {f"{sec}.{k}": v for sec, body in raw.items() if sec != "run" for k, v in (body or {}).items()}


def preset(name: str) -> dict:
    """The keys of ``configs/llm/<name>.yaml`` (its run section aside) whose values differ from the PPO
    preset's, as ``section.key -> value`` overrides of it (nested mappings such as ``model.sft`` whole)."""
    base = _flat("long_chain_ppo")
    return {k: v for k, v in _flat(name).items() if base.get(k, object()) != v}


ESPO_PAPER = preset("long_chain_espo_paper")
PAPER_STOP_REWARD = {k: v for k, v in ESPO_PAPER.items() if k in ("stop.failure_reward", "stop.stop_penalty")}
MIN_TOKENS = {"stop.min_tokens": ESPO_PAPER["stop.min_tokens"]}
"""Every stop rule obeys the paper preset's minimum response length (the oracle and random too)."""

MAIN: dict[str, dict] = {
    "ppo": {},
    "espo_paper": dict(ESPO_PAPER),
    # the paper's warm-up ends when the critic's loss settles: the reference's schedule carries it
    "random_paper": {"stop.rule": "random", "stop.reference_run": "{out_dir}/espo_paper-s{seed}",
                     "stop.warmup": "steps", "stop.warmup_steps": 0, **MIN_TOKENS, **PAPER_STOP_REWARD},
    "oracle": {"stop.rule": "oracle", "stop.delay": 0, **MIN_TOKENS},
}
"""The paper's comparison, at :data:`MAIN_SEEDS`."""
SIDE: dict[str, dict] = {
    "espo": preset("long_chain_espo"),
    "tppo": preset("long_chain_tppo"),
    # the preset's window credit loses accuracy here; crediting a row's tokens when it finishes (the variant
    # that did not collapse on the simulator) is the other T-PPO candidate
    "tppo_deferred": {**preset("long_chain_tppo"), "tppo.credit": "deferred"},
    # a wrong result forced into half the rows at their third equation: the fatal token is known by
    # construction (the planted-step reaction)
    "espo_paper_planted": {**ESPO_PAPER, "task.source_kwargs.plant_fraction": 0.5,
                           "task.source_kwargs.plant_step": 3},
}
"""The current ESPO, T-PPO (window credit and deferred credit) and the planted-step reaction, at :data:`SIDE_SEEDS`."""
METHODS: dict[str, dict] = {**MAIN, **SIDE}
"""Every method, in table order."""

MAIN_SEEDS = list(range(5))
SIDE_SEEDS = list(range(3))
FULL_MAIN_SEEDS = list(range(8))
"""``--full``: the paper's comparison at 8 seeds, the fewest at which the report's exact sign-flip tests can
decide (at 5 every seed-level claim is undecided); the side methods stay at :data:`SIDE_SEEDS`."""
FULL_FOLDER = ""
"""``--full`` shares the folder and the archive: the runs of :data:`MAIN_SEEDS` are reused."""
QUICK: dict = {"steps": 2, "seeds": [0], "overrides": {"run.eval_every": 2, "run.eval_size": 8, "rollout.batch_size": 8,
                                                         "algo.minibatch_size": 8, "model.sft.steps": 2}}
"""``--quick``: a smoke test of the pipeline, not evidence."""
AXES = ("method", "seed")
BASELINE = "ppo"
MATCHED = {"espo_paper": "random_paper"}
"""ESPO variant -> its matched random truncation."""


POLICY_ROWS, QUICK_POLICY_ROWS = 128, 16


def measurements(quick: bool = False) -> dict[str, dict]:
    """Each finished run's final policy: 128 fresh rollouts with verifier labels, every detector and baseline
    scored on them (``testbed.ops.policy_detect``; about a minute a run)."""
    return {"policy_detect": {"rows": QUICK_POLICY_ROWS if quick else POLICY_ROWS}}


def grids(root, quick: bool = False, full: bool = False) -> list[dict]:
    """Two grids over one run folder ``root / "runs"``: :data:`MAIN` x :data:`MAIN_SEEDS` (``full``:
    :data:`FULL_MAIN_SEEDS`), then :data:`SIDE` x :data:`SIDE_SEEDS`; the SFT warm-start of each seed is
    kept in ``root / "sft_cache"`` (``run.sft_cache``)."""
    out = str(Path(root) / "runs")
    q = QUICK if quick else {}
    # every method of a seed starts from the same warm-start: trained by the first, loaded by the others
    over = {"run.sft_cache": str(Path(root) / "sft_cache"), **({"run.steps": q["steps"], **q["overrides"]} if quick else {})}
    return [{"base": BASE_CONFIG, "out_dir": out, "overrides": dict(over),
             "axes": {"method": methods, "seed": list(q.get("seeds", seeds))}}
            for methods, seeds in ((MAIN, FULL_MAIN_SEEDS if full else MAIN_SEEDS), (SIDE, SIDE_SEEDS))]
