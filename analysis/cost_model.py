"""A cost model that counts what a training step costs: decoding (with the KV length each token
attends over), prefill (re-prefill of carried rows included), training token-passes and a fixed
cost per optimizer step, priced with unit costs measured on this CPU or projected for a named GPU.

Counts come from a run's ``metrics.jsonl`` (they do not depend on the machine's load); per step:

- ``S``: decoding steps (``gen/decode_steps + gen/value_steps``), each reads every weight once;
- ``R``: row-steps (``tokens/generated``), one token of one row through the model;
- ``K``: attended positions (``gen/kv_row_tokens``): a row's k-th new token attends over its context
  plus k, so long and carried rows cost more per token;
- ``P``: prefill tokens (``gen/prefill_tokens``): every row's context is encoded when a segment
  begins, carried rows' tokens again under the new weights (``gen/reprefill_tokens`` of them);
- ``V``: critic values taken during decoding (``tokens/critic_decode``), priced as one forward token each
  (what a critic of the policy's size costs when it values the rows in one pass after decoding; a value
  gate needs them while decoding, which costs no less);
- ``N``: training token-passes, one token forward and backward through one model: per epoch the
  actor's forwarded positions (``tokens/actor_forward``) and the critic's (``tokens/critic``), times
  ``algo.epochs``, plus T-PPO's forward that re-values finished rows (a third of a pass per token);
- ``U``: optimizer steps (``updates/actor + updates/critic``).

Cost of a step = ``a*S + b*R + k*K + p*(P + V)`` (generation) ``+ c*N + u*U`` (training). :class:`UnitCosts`
holds ``a, b, k, p, c, u``; :func:`measured` reads them from ``bench/cost_units.py``'s JSON (the LLM
backend on this CPU), :func:`gpu_projection` derives them from a GPU's published peak figures and a
model's shapes, with the efficiencies it assumes stated (a projection, not a measurement), and
:func:`sensitivity` shows how a conclusion moves when each constant is halved or doubled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO / "docs" / "cost_units.json"
"""Unit costs of the LLM backend on this CPU, written by ``bench/cost_units.py`` (run it alone)."""

CONSTANTS = ("decode_step", "decode_row", "decode_kv", "prefill_token", "train_token", "update")
GENERATION = ("decode_step", "decode_row", "decode_kv", "prefill_token")


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of each count (module docstring); ``source`` says where they come from."""

    decode_step: float
    """a: one decoding step, whatever the batch (the weights are read once)."""
    decode_row: float
    """b: one row's token in a decoding step (its matmul share)."""
    decode_kv: float
    """k: one attended position of one row in a decoding step (the KV cache read)."""
    prefill_token: float
    """p: one context token encoded at a segment's start."""
    train_token: float
    """c: one token forward and backward through one model (actor or critic)."""
    update: float
    """u: one optimizer step (clip + Adam over every parameter), whatever the batch."""
    source: str = ""

    def __post_init__(self):
        for name in CONSTANTS:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"UnitCosts.{name}: must be a finite number >= 0, got {v!r}")

    def scaled(self, name: str, factor: float) -> "UnitCosts":
        if name not in CONSTANTS:
            raise ValueError(f"UnitCosts: no constant {name!r}; choose from {CONSTANTS}")
        return replace(self, **{name: getattr(self, name) * factor}, source=f"{self.source}; {name} x{factor:g}")


def measured(path: str | Path = MEASURED) -> UnitCosts | None:
    """The unit costs ``bench/cost_units.py`` wrote (None when the file is missing)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e}); rerun bench/cost_units.py") from None
    missing = [k for k in CONSTANTS if k not in raw.get("units", {})]
    if missing:
        raise ValueError(f"{p}: units lack {missing}; rerun bench/cost_units.py")
    return UnitCosts(**{k: float(raw["units"][k]) for k in CONSTANTS},
                     source=f"measured: {raw.get('model', '?')} on this CPU, {raw.get('threads', '?')} threads ({p.name})")


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float
    """Published dense bf16 tensor-core peak."""
    hbm_tbs: float
    """Published memory bandwidth."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    params: float
    layers: int
    kv_width: int
    """Key (= value) width per layer: kv heads x head dim."""


H200 = GPU("NVIDIA H200 SXM", bf16_tflops=989.0, hbm_tbs=4.8)
"""NVIDIA's published figures: 989 TFLOP/s dense bf16 (1979 with sparsity), 4.8 TB/s HBM3e."""
QWEN25_7B = ModelShape("Qwen2.5-7B", params=7.62e9, layers=28, kv_width=512)
"""Its published config: 28 layers, 4 KV heads x 128 (grouped-query attention), 7.62B parameters."""
ASSUMED = {"mfu": 0.4, "bandwidth_eff": 0.7, "adam_bytes_per_param": 32.0}
"""Efficiencies the projection assumes (not measured): the fraction of peak FLOP/s that prefill and
training reach, of peak bandwidth that decoding reaches, and bytes an Adam step moves per parameter
(fp32 master weight, gradient, two moments read and written, a bf16 copy written)."""


def gpu_projection(gpu: GPU = H200, model: ModelShape = QWEN25_7B, **assumed: float) -> UnitCosts:
    """Unit costs for ``model`` in bf16 on ``gpu`` from published peaks and :data:`ASSUMED` (override by keyword).

    A decoding step reads every weight (``2 * params`` bytes) at the effective bandwidth; each row adds
    its ``2 * params`` FLOPs at the effective peak and each attended position its K and V
    (``2 * layers * kv_width * 2`` bytes); prefill costs ``2 * params`` FLOPs a token, training
    ``6 * params`` (forward + backward), an optimizer step ``adam_bytes_per_param * params`` bytes.
    """
    unknown = set(assumed) - set(ASSUMED)
    if unknown:
        raise ValueError(f"gpu_projection: unknown assumption(s) {sorted(unknown)}; known: {sorted(ASSUMED)}")
    e = {**ASSUMED, **assumed}
    flops = gpu.bf16_tflops * 1e12 * e["mfu"]
    bw = gpu.hbm_tbs * 1e12 * e["bandwidth_eff"]
    n = model.params
    return UnitCosts(
        decode_step=2 * n / bw, decode_row=2 * n / flops, decode_kv=2 * model.layers * model.kv_width * 2 / bw,
        prefill_token=2 * n / flops, train_token=6 * n / flops, update=e["adam_bytes_per_param"] * n / bw,
        source=(f"projection: {model.name} bf16 on one {gpu.name} (published {gpu.bf16_tflops:g} TFLOP/s, "
                f"{gpu.hbm_tbs:g} TB/s; assumed mfu {e['mfu']:g}, bandwidth efficiency {e['bandwidth_eff']:g})"),
    )


COUNT_COLUMNS = {"S": ("gen/decode_steps", "gen/value_steps"), "R": ("tokens/generated",),
                 "K": ("gen/kv_row_tokens",), "P": ("gen/prefill_tokens",), "V": ("tokens/critic_decode",),
                 "U": ("updates/actor", "updates/critic")}


def _col(run: pd.DataFrame, key: str) -> np.ndarray:
    return run[key].fillna(0.0).to_numpy(dtype=float) if key in run else np.zeros(len(run))


def _config(run: pd.DataFrame, key: str, default):
    col = f"config/{key}"
    return run[col].iloc[0] if col in run and len(run) else default


def counts(run: pd.DataFrame) -> pd.DataFrame:
    """Per-step counts ``S, R, K, P, V, N, U`` (module docstring) of one run's steps, in step order.

    Raises if the run predates the counters (``gen/kv_row_tokens``): pricing it would undercount."""
    r = run.sort_values("step")
    if len(r) and ("gen/kv_row_tokens" not in r or r["gen/kv_row_tokens"].isna().all()):  # NaN: a joined table
        raise ValueError("the run lacks gen/kv_row_tokens (it predates the cost model's counters): rerun it")
    out = pd.DataFrame({"step": r["step"].to_numpy()})
    for name, cols in COUNT_COLUMNS.items():
        out[name] = sum(_col(r, c) for c in cols)
    epochs = float(_config(r, "algo.epochs", 1))
    tppo = bool(_config(r, "tppo.enabled", False))
    crit = _col(r, "tokens/critic")
    out["N"] = epochs * (_col(r, "tokens/actor_forward") + crit) + (crit / 3 if tppo else 0.0)
    return out


def price(c: pd.DataFrame, u: UnitCosts) -> pd.DataFrame:
    """Seconds per step: ``gen`` (decoding + prefill), ``train`` and ``total`` for counts ``c``."""
    gen = u.decode_step * c["S"] + u.decode_row * c["R"] + u.decode_kv * c["K"] + u.prefill_token * (c["P"] + c["V"])
    train = u.train_token * c["N"] + u.update * c["U"]
    return pd.DataFrame({"step": c["step"], "gen": gen, "train": train, "total": gen + train})


def generation_share(c: pd.DataFrame, u: UnitCosts) -> float:
    """Generation's share of the priced cost over the steps of ``c``."""
    p = price(c, u)
    tot = float(p["total"].sum())
    return float(p["gen"].sum()) / tot if tot > 0 else math.nan


def amdahl_bound(share: float) -> float:
    """The largest speed-up any change to generation alone can give when it is ``share`` of the cost."""
    return math.inf if share >= 1 else 1.0 / (1.0 - share)


def sensitivity(fn, u: UnitCosts, factors=(0.5, 2.0)) -> pd.DataFrame:
    """``fn(units) -> float`` at ``u`` and with each constant scaled by each factor, one row per constant."""
    base = fn(u)
    rows = [{"constant": name, "base": base, **{f"x{f:g}": fn(u.scaled(name, f)) for f in factors}}
            for name in CONSTANTS]
    return pd.DataFrame(rows)


def describe(u: UnitCosts) -> dict:
    """The constants in milliseconds (tables), with the source."""
    return {**{f"{k}_ms": v * 1e3 for k, v in asdict(u).items() if k in CONSTANTS}, "source": u.source}
