"""Settings of the ESPO phase diagram (settings only; ``spec`` assembles them).

The headline's methods (PPO, both ESPOs, each one's matched random truncation, the oracle; exactly the
presets of ``analysis.experiments.espo_headline.sweep``) over a grid of derailment ``R`` (a doomed row
runs on to an expected ``R x`` a successful row's length) x recovery rate (the chance that a fatal step
can be repaired by a REVISE move at a 3-token cost), on ``testbed/PlantedFailureDerail-v0`` (the default
problems: 16, L = 12), and, in the paper-like cell, over failure position (the critical positions placed
in the first, middle or last third of the response). The env axis names each cell ``R<r>_rep<p>`` (failure
points anywhere) or ``R<r>_rep<p>_<position>``; run names are ``<method>-<cell>-s<seed>``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.espo_headline import sweep as headline

BASE_CONFIG = headline.BASE_CONFIG
METHODS: dict[str, dict] = dict(headline.METHODS)
"""PPO, ESPO, random, ESPO (paper), random (paper), oracle: the headline's presets as they are."""

ENV_ID = "testbed/PlantedFailureDerail-v0"
MAX_LEN = 128
"""Rollout cap: 2.5x the longest mean doomed run-on (R = 3: 39 tokens), so the cap cuts few rows."""
REPAIR_COST = 3
DERAIL = (1.0, 3.0)
REPAIR = (0.0, 0.5)
PAPER_LIKE = (3.0, 0.5)
"""The cell closest to ESPO's paper (doomed rows run long, some failures repairable):
``configs/regimes/espo_paper_like.yaml``."""
POSITIONS: dict[str, tuple[float, float]] = {"early": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "late": (2 / 3, 1.0)}
"""Failure position: ``critical_zone`` (fractions of L) of the position cells, all at :data:`PAPER_LIKE`."""
ANYWHERE = "any"
FULL_DERAIL = (1.0, 2.0, 3.0)
FULL_REPAIR = (0.0, 0.25, 0.5)


STOP_VALUE = {"rows": 512, "continuations": 16}
"""The measurement of each finished run (``testbed.ops.stop_value``): 512 rows of its final policy with its
own stop rule, each stopped row continued 16 times without stopping: the success probability a stop throws
away (with recovery a "doomed"-looking row may still be repaired, and derailed ones are not all alike)."""


def measurements(quick: bool = False) -> dict[str, dict]:
    """What the runner measures on each finished run (``testbed.ops.studies.MEASUREMENTS``)."""
    return {"stop_value": dict(STOP_VALUE)}


def cell_name(derail: float, repair: float) -> str:
    return f"R{derail:g}_rep{repair:g}"


def cell(derail: float, repair: float) -> dict:
    """Overrides of one cell of the diagram."""
    return {"task.env_id": ENV_ID, "rollout.max_len": MAX_LEN, "task.env_kwargs.derail": float(derail),
            "task.env_kwargs.repair_prob": float(repair), "task.env_kwargs.repair_cost": REPAIR_COST}


def envs(full: bool = False) -> dict[str, dict]:
    """Cell name -> overrides: :data:`DERAIL` x :data:`REPAIR` (``full``: the 3 x 3 grid), then the
    :data:`POSITIONS` cells of the paper-like cell."""
    ds, rs = (FULL_DERAIL, FULL_REPAIR) if full else (DERAIL, REPAIR)
    out = {cell_name(d, r): cell(d, r) for d in ds for r in rs}
    for name, zone in POSITIONS.items():
        out[f"{cell_name(*PAPER_LIKE)}_{name}"] = {**cell(*PAPER_LIKE), "task.env_kwargs.critical_zone": list(zone)}
    return out


ENVS: dict[str, dict] = envs(full=True)
"""Every cell the study knows, in table order."""

SEEDS = list(range(5))
"""5 seeds a cell by default (the issue's minimum): estimates with intervals; the exact test's smallest
two-sided p-value at n = 5 is 1/16, so no claim can be decided at this size (the report says so)."""
FULL_SEEDS = list(range(10))
QUICK: dict = {"steps": 12, "seeds": [0], "overrides": {"rollout.batch_size": 32, "algo.minibatch_size": 32}}
AXES = ("method", "env", "seed")


def axis_values(env: str) -> tuple[float, float]:
    """``(R, recovery rate)`` of a cell name."""
    r, p = env.split("_rep")
    return float(r[1:]), float(p.split("_")[0])


def position(env: str) -> str:
    """The failure position of a cell name (:data:`ANYWHERE` for the R x recovery grid)."""
    parts = env.split("_")
    return parts[2] if len(parts) > 2 else ANYWHERE


def spec(out_dir: str | Path, quick: bool = False, full: bool = False) -> dict:
    q = QUICK if quick else {}
    seeds = q.get("seeds", FULL_SEEDS if full else SEEDS)
    cells = envs(full)
    if quick:
        cells = {k: cells[k] for k in list(cells)[-1:]}
    return {
        "base": BASE_CONFIG,
        "out_dir": str(out_dir),
        "overrides": {"run.steps": q["steps"], **q["overrides"]} if quick else {},
        "axes": {"method": METHODS, "env": cells, "seed": list(seeds)},
    }


FULL_FOLDER = "full"
"""``--full`` (3 x 3 cells, 10 seeds) has its own folder."""


def grids(root: Path, quick: bool = False, full: bool = False) -> list[dict]:
    """The study's one grid, its runs under ``root / "runs"``."""
    return [spec(Path(root) / "runs", quick=quick, full=full)]
