"""PPO alone on one cell of the T-PPO phase diagram, with changes: the reliability pilots of docs/tppo_regimes.md
(their spec and their reading; ``bench/tppo_reliability.py`` runs them, as analysis does not start runs).

    PYTHONPATH=. python bench/tppo_reliability.py NAME [KEY=VALUE ...] [--cell tail16] [--seeds 0-9]
        [--methods ppo] [--out out/tppo_pilots] [--workers 1] [--csv docs/tppo_regimes/ppo_reliability_pilots.csv]

Runs PPO with the diagram's settings for ``--cell`` (``sweep.spec``), each ``KEY=VALUE`` (a YAML value)
applied over them, cell settings included: a sweep's axis values override its common ``overrides``, so a
change to an env kwarg passed as a common override would silently be lost. Runs go to ``OUT/NAME/``;
finished ones are skipped, so a pilot stopped part-way resumes. Prints each seed's final policy's held-out
success (``final_eval.json``), its peak over the periodic evaluations and how many seeds reach
``--level``; ``--csv`` appends the finished runs to a pilots table labelled ``NAME: KEY=VALUE ...``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from analysis.experiments.tppo_regimes import sweep as S

CSV_FIELDS = ("pilot", "run", "seed", "finished", "last_step", "final_eval", "peak_eval", "evals", "final_policy_eval",
              "final_sampled_eval", "tail_ratio", "gen_share")
"""The columns of docs/tppo_regimes/ppo_reliability_pilots.csv (``final_eval``: the last periodic evaluation;
``final_policy_eval``: the greedy evaluation after the last step, ``final_eval.json``; ``final_sampled_eval``:
the final policy's sampled success, ``testbed.ops.evaluate.measure_sampled`` run by the bench's ``--sampled``, empty
where it was not measured; ``tail_ratio`` and ``gen_share``: the run's two other regime checks,
:func:`regime_checks`, empty in rows written before 2026-12-08)."""


def parse_changes(items: list[str]) -> dict:
    """``["a.b=0.1", ...]`` -> ``{"a.b": 0.1}`` (values read as YAML); a malformed item raises naming it."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"change {item!r}: expected KEY=VALUE (for example algo.entropy_coef=0.01)")
        out[key] = yaml.safe_load(value)
    return out


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` or ``"0,2,5"`` -> a list of seeds."""
    try:
        if "-" in text:
            lo, hi = (int(p) for p in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a range like 0-9 or a list like 0,2,5") from None


def pilot_spec(out_dir: str | Path, cell: str, seeds: list[int], changes: dict,
               methods: tuple[str, ...] = ("ppo",)) -> dict:
    """The sweep spec: ``methods`` (PPO by default) on ``cell`` at ``seeds``, ``changes`` over every setting of
    the diagram's run. With more methods the folder is a small diagram of its own (a confirmation on fresh
    seeds), which ``bench/tppo_reliability.py`` scores as one family."""
    cells, known = S.envs(), S.methods()
    if cell not in cells:
        raise ValueError(f"--cell {cell!r}: the diagram's cells are {sorted(cells)}")
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise ValueError(f"--methods {','.join(methods)!r}: the diagram's methods are {sorted(known)}")
    spec = S.spec(out_dir)
    spec["overrides"]["run.threads"] = 1
    # The changes go into the innermost axis value, so they win over the method's and the cell's settings too.
    spec["axes"] = {"method": {m: known[m] for m in methods}, "env": {cell: {**cells[cell], **changes}}, "seed": seeds}
    return spec


def read_run(run_dir: Path) -> dict | None:
    """One pilot run's row of the pilots table (None if it has not logged a step)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [(r["step"], r["eval/pass@1"]) for r in recs if "eval/pass@1" in r]
    if not recs or not evals:
        return None
    final = run_dir / "final_eval.json"
    return {"run": run_dir.name, "seed": int(run_dir.name.rsplit("-s", 1)[1]), "finished": final.exists(),
            "last_step": recs[-1]["step"], "final_eval": round(evals[-1][1], 4),
            "peak_eval": round(max(v for _, v in evals), 4), "evals": " ".join(f"{s}:{v:.3f}" for s, v in evals),
            "final_policy_eval": round(json.loads(final.read_text())["eval/pass@1"], 4) if final.exists() else ""}


def regime_checks(runs_dir: Path, names: list[str]) -> dict[str, dict]:
    """The diagram's two other regime checks of each of these PPO runs (``analysis.per_run``): ``tail_ratio``,
    the longest / mean row of a batch, and ``gen_share``, generation's share of PPO's projected cost."""
    from analysis.experiments.tppo_regimes import analysis as regimes
    from analysis.runs import load_runs

    pr = regimes.per_run(load_runs([runs_dir / n for n in names], axes=S.AXES))
    return {Path(r).name: {"tail_ratio": round(float(t), 4), "gen_share": round(float(g), 4)}
            for r, t, g in zip(pr["run"], pr["tail_ratio"], pr["gen_share"])}


def regime_line(checks: dict[str, dict]) -> str:
    """:func:`regime_checks` of some runs as one line: each check's mean [95% CI] over the runs, and its bar."""
    from analysis.stats import mean_ci

    tail, gen = ([c[k] for c in checks.values()] for k in ("tail_ratio", "gen_share"))
    return (f"longest / mean row {mean_ci(tail).fmt(2)}; generation "
            f"{mean_ci(gen).fmt(2)} of PPO's projected cost (bars: 2.5 and 0.6)")


def append_csv(path: Path, label: str, rows: list[dict]) -> None:
    """Append ``rows`` labelled ``label``; a table written before a column was added gains it (empty)."""
    new = not path.exists()
    if not new:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            old, header = list(reader), reader.fieldnames or []
        if tuple(header) != CSV_FIELDS:
            if set(header) - set(CSV_FIELDS):
                raise ValueError(f"{path}: columns {sorted(set(header) - set(CSV_FIELDS))} are not the pilots table's")
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
                w.writeheader()
                w.writerows(old)
            tmp.replace(path)
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"pilot": label, **r})
