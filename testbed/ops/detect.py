"""``testbed detect``: score a stop rule offline on step-labelled solutions (ProcessBench's format).

Each item (``id``, ``problem``, ``steps``: list of strings, ``label``: index of the first wrong step,
-1 when every step is right) becomes one response: the steps joined by blank lines, after the task's
chat prompt for ``problem``. The response is teacher-forced through the model (one forward pass for
transformers backends, :mod:`llm_backend.teacher`; step-wise decoding for others): per-token regret ``g_t = max_a log pi(a|s_t) - log pi(a_t|s_t)`` under the sampling temperature and,
when a trained critic exists, values. The configured stop rule then runs over each response, and the
first token at which it fires is mapped to its step.

Which rule: the config's ``stop.rule``. Without a trained critic (the default model, no
``--checkpoint``) values mean nothing, so ``espo`` runs as ``regret_only`` (the value gate as if
p_t = 1) and ``value_only`` is refused. The regret normaliser comes from the run's checkpoint; without
one it is fitted (label-free) on the regrets of the items themselves, once, before any rule runs.

Per item (``items.jsonl``): ``id``, ``label``, ``score`` (the rule's largest margin over the solution:
``S_t - threshold_t`` for ``espo`` / ``regret_only``, ``rho - p_t`` for ``value_only``; the rule fires
where it is > 0), ``first_stop_step`` (-1: never fired), ``stop_token``, ``tokens``.

Summary (``detect.json``): ``n``; ``auroc`` of ``score`` for "has an error" and ``auroc_ci``, its 95%
percentile-bootstrap interval over items (:data:`AUROC_RESAMPLES` draws); a stop at or after the
labelled step of an erroneous item is a **detection**, a stop before it or on a correct item a **false
stop**: ``precision`` = detections / stops, ``recall`` = detections / erroneous items, ``delay`` = mean
``first_stop_step - label`` over detections (steps), ``false_stop_rate`` = false stops / items;
``baselines``: for the rule's score, the same rule over each row's regrets shuffled (``rule_shuffled``: what
accumulating them in order adds) and :data:`testbed.scoring.BASELINE_SCORES` (length, mean and largest NLL,
mean entropy, largest regret; with a trained critic ``-min V`` and the value's drop): each one's AUROC with
its interval, the paired AUROC difference against length with its bootstrap interval, and a logistic fit of
the label on the score and log(length) (``given_length``: is it informative once length is known?).
ProcessBench's ``f1``: harmonic mean of the accuracy on erroneous items (``first_stop_step == label``)
and on correct items (``first_stop_step == -1``). ``random`` holds the same metrics for a random
detector matched in stop rate (each item stopped with the rule's stop rate, at a relative position
drawn from the rule's own stops), averaged over ``RANDOM_REPEATS`` seeded draws.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from testbed import config as config_mod
from testbed import runfiles, scoring
from testbed.runfiles import atomic_write
from testbed.stopping import StopContext, make_stop_rule

RANDOM_REPEATS = scoring.RANDOM_REPEATS
"""Draws of the rate-matched random detector averaged in ``detect.json``."""

STEP_SEPARATOR = "\n\n"
"""How an item's steps are joined into one response (ProcessBench's own rendering)."""

DEFAULT_CONFIG = {
    "task": {"kind": "math"},
    "model": {"kind": "hf", "path": "default", "dtype": "bfloat16", "critic": "head"},
    "rollout": {"temperature": 0.7},
    "stop": {"rule": "espo", "accumulate": "cusum", "gate": "scaled", "kappa": 2.0, "tau": 8.0, "tau_min": 1.0,
             "min_tokens": 8},
}
"""Without ``--config`` or ``--checkpoint``: the default model and the stop settings of configs/llm/espo.yaml."""

SUPPORTED_RULES = ("espo", "regret_only", "value_only")


class DataError(config_mod.ConfigError):
    """A malformed step-labelled data file; the message names the file and the item."""


class MissingDataFile(DataError, FileNotFoundError):
    """``--data`` names no file (a user error, and still a ``FileNotFoundError`` for callers)."""


@dataclass
class Item:
    id: str
    problem: str
    steps: list[str]
    label: int


def load_items(path: str | Path, limit: int | None = None) -> list[Item]:
    """Read a ProcessBench-format file: a JSON list of items, or JSON Lines (one item per line)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataFile(f"--data: no such file {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if limit is not None and limit < 1:
        raise DataError(f"--limit: must be >= 1 (the number of items to score), got {limit}")
    text = path.read_text()
    try:
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
        raw = list(enumerate(data))
    except json.JSONDecodeError as e:
        raw = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                raw.append((n, json.loads(line)))
            except json.JSONDecodeError:
                raise DataError(f"{path}: not JSON ({e.msg} at line {e.lineno}) nor JSON Lines (line {n + 1})") from None
    items = []
    for i, obj in raw:
        where = f"{path}: item {i}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
        where += f" (id {obj.get('id')!r})" if "id" in obj else ""
        for key in ("id", "problem", "steps", "label"):
            if key not in obj:
                raise DataError(f"{where}: missing {key!r}")
        steps, label = obj["steps"], obj["label"]
        if not isinstance(obj["problem"], str):
            raise DataError(f"{where}: 'problem' must be a string")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise DataError(f"{where}: 'steps' must be a non-empty list of strings")
        if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
            raise DataError(f"{where}: 'label' must be an integer in [-1, {len(steps) - 1}], got {label!r}")
        items.append(Item(str(obj["id"]), obj["problem"], steps, label))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError(f"{path}: no items")
    return items


# --- metrics: the one definition, in testbed.scoring (the old names stay importable here) -----------

auroc, auroc_interval, random_baseline = scoring.auroc, scoring.auroc_interval, scoring.random_baseline
stop_metrics = scoring.first_stop_metrics
"""The ProcessBench metrics of first-stop steps (:func:`testbed.scoring.first_stop_metrics`)."""
AUROC_RESAMPLES = scoring.AUROC_RESAMPLES


# --- teacher forcing ---------------------------------------------------------------------------------


TEACHER_ENTRY_POINTS = {"hf": "llm_backend.teacher:teacher_stats"}
"""``model.kind`` -> a one-pass teacher-forced regret function ``(backend, prompts, tokens, mask, *,
temperature) -> (B, T)``; other backends replay the responses through step-wise decoding."""


def teacher_force(backend, prompts: list[list[int]], responses: list[list[int]], *, temperature: float,
                  with_values: bool, regret_fn=None) -> tuple[list[Tensor], list[Tensor] | None, dict[str, list[Tensor]]]:
    """Per-token regret (and values, and the baselines' token statistics) of ``responses`` after ``prompts``.

    With ``regret_fn`` (one teacher-forced pass returning ``{regret, nll, entropy}`` (B, T) tensors) and
    ``backend.critic_forward`` for values; without it through the decoding protocol (``begin`` / ``step`` /
    ``advance``). Returns one ``(T_i,)`` regret tensor per row, when ``with_values`` one ``(T_i,)`` value
    tensor (V(s_t), the state before token t), and ``{"nll": [...], "entropy": [...]}`` per row.
    """
    B = len(prompts)
    lengths = torch.tensor([len(r) for r in responses])
    T = int(lengths.max())
    tokens = torch.zeros(B, T, dtype=torch.long)
    for i, r in enumerate(responses):
        tokens[i, :len(r)] = torch.as_tensor(r)

    def rows(x: Tensor) -> list[Tensor]:
        return [x[i, :int(lengths[i])] for i in range(B)]

    if regret_fn is not None:
        mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
        dev = backend.device
        with torch.no_grad():
            stats = regret_fn(backend, prompts, tokens.to(dev), mask.to(dev), temperature=temperature)
            values = backend.critic_forward(prompts, tokens.to(dev), mask.to(dev)).float().cpu() if with_values else None
        return (rows(stats["regret"].float().cpu()), rows(values) if values is not None else None,
                {k: rows(stats[k].float().cpu()) for k in ("nll", "entropy")})
    regret, nll, entropy, values = (torch.zeros(B, T) for _ in range(4))
    active = torch.arange(B)
    with torch.no_grad():
        backend.begin(prompts)
        for k in range(T):
            out = backend.step(with_values=with_values)
            logp = torch.log_softmax(out.logits.float().cpu() / temperature, dim=-1)
            tok = tokens[active, k]
            chosen = logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
            regret[active, k] = (logp.amax(-1) - chosen).clamp(min=0.0)
            nll[active, k] = -chosen
            entropy[active, k] = -(logp.exp() * logp).sum(-1)
            if with_values and out.values is not None:
                values[active, k] = out.values.float().cpu()
            keep = lengths[active] > k + 1
            backend.advance(tok.to(backend.device), keep.to(backend.device))
            active = active[keep]
    return rows(regret), rows(values) if with_values else None, {"nll": rows(nll), "entropy": rows(entropy)}


def run_rule(rule, cfg: config_mod.Config, regrets: list[Tensor], values: list[Tensor] | None) -> tuple[list[int], list[float]]:
    """The rule over each response (all rows at once, one slot each): first firing token (-1) and the
    largest margin (> 0 where it fires)."""
    n = len(regrets)
    lengths = torch.tensor([len(r) for r in regrets])
    rule.reset(torch.arange(n), 0)
    rule.warmup.force_on()  # offline: warm-up long over
    first = torch.full((n,), -1, dtype=torch.long)
    best = torch.full((n,), -math.inf, dtype=torch.float64)
    train_step = max(cfg.stop.warmup_steps, 0) + 10**6  # offline: warm-up long over
    for t in range(int(lengths.max())):
        rows = (lengths > t).nonzero().squeeze(-1)
        g = torch.stack([regrets[i][t] for i in rows.tolist()])
        v = torch.stack([values[i][t] for i in rows.tolist()]) if values is not None else torch.ones(len(rows))
        ctx = StopContext(slots=rows, positions=torch.full((len(rows),), t), logits=torch.zeros(len(rows), 1),
                          tokens=torch.zeros(len(rows), dtype=torch.long), regret=g, values=v,
                          failure_step=torch.full((len(rows),), -1), train_step=train_step)
        stop = rule(ctx)
        margin = rule.last_margin  # the rule's own decision (stopping.espo_margin), not a copy of it
        best[rows] = torch.maximum(best[rows], margin)
        newly = stop & (first[rows] < 0)
        first[rows[newly]] = t
    return first.tolist(), best.tolist()


# --- the command --------------------------------------------------------------------------------------


def _resolve(config: str | None, checkpoint: str | None) -> tuple[config_mod.Config, Path | None]:
    ck = None
    if checkpoint:
        run = Path(checkpoint)
        if not run.exists():
            raise config_mod.ConfigError(f"--checkpoint: {run} does not exist (give a finished run's directory)")
        ck = runfiles.find_checkpoint(run)
        if not (ck / runfiles.WEIGHTS).is_file():
            raise config_mod.ConfigError(f"--checkpoint: no checkpoints/model.safetensors under {run} "
                                         "(give a run directory that has written a checkpoint)")
    if config:
        cfg = config_mod.load(config)
    elif checkpoint and (Path(checkpoint) / "config.yaml").is_file():
        cfg = config_mod.load(Path(checkpoint) / "config.yaml")
    else:
        cfg = config_mod.from_dict(DEFAULT_CONFIG)
    if cfg.stop.rule not in SUPPORTED_RULES:
        raise config_mod.ConfigError(f"stop.rule: detect scores {', '.join(SUPPORTED_RULES)}, not {cfg.stop.rule!r}")
    return cfg, ck


def detect(data: str, *, out: str, config: str | None = None, checkpoint: str | None = None,
           limit: int | None = None, batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Run the benchmark; writes ``out/items.jsonl`` and ``out/detect.json`` and returns the latter."""
    from tqdm.auto import tqdm

    from testbed.ops.build import build_backend, build_task, load_entry_point
    from testbed.errors import check_output_folder

    check_output_folder(out, "--out")  # before any scoring: a bad --out must not cost the whole run
    items = load_items(data, limit)
    cfg, ck = _resolve(config, checkpoint)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    rule_name = cfg.stop.rule
    has_critic = ck is not None
    if not has_critic:
        if rule_name == "value_only":
            raise config_mod.ConfigError("stop.rule: value_only needs a trained critic (--checkpoint RUN)")
        if rule_name == "espo":
            cfg.stop.rule = "regret_only"  # no trained critic: the value gate as if p_t = 1
    task = build_task(cfg, num_slots=1)
    backend = build_backend(cfg, task)
    rule = make_stop_rule(cfg.stop, num_slots=len(items), seed=cfg.run.seed)
    if ck is not None:
        from safetensors.torch import load_file

        backend.load_state_dict(load_file(str(ck / runfiles.WEIGHTS)))
        state_path = ck / runfiles.TRAINER_STATE
        if state_path.is_file():
            state = torch.load(state_path, weights_only=True)
            rule.load_state_dict(json.loads(state["rule"]))

    tok = task.tokenizer
    prompts, responses, token_steps = [], [], []
    for it in items:
        text = STEP_SEPARATOR.join(s.strip() for s in it.steps)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        bounds = np.cumsum([len(s.strip()) + len(STEP_SEPARATOR) for s in it.steps])  # end (excl.) of each step + sep
        token_steps.append(np.minimum(np.searchsorted(bounds, [o[0] for o in offsets], side="right"), len(it.steps) - 1))
        prompts.append(task.prompt_ids(it.problem))
        responses.append(ids)

    spec = TEACHER_ENTRY_POINTS.get(cfg.model.kind)
    regret_fn = load_entry_point(spec) if spec else None
    regrets: list[Tensor] = []
    values: list[Tensor] | None = [] if has_critic else None
    token_stats: dict[str, list[Tensor]] = {"nll": [], "entropy": []}
    bar = tqdm(total=len(items), desc="detect", disable=not progress, leave=False)
    for s in range(0, len(items), batch_size):
        r, v, extra = teacher_force(backend, prompts[s:s + batch_size], responses[s:s + batch_size],
                                    temperature=cfg.rollout.temperature, with_values=has_critic, regret_fn=regret_fn)
        regrets += r
        for k in token_stats:
            token_stats[k] += extra[k]
        if values is not None:
            values += v
        bar.update(len(r))
    bar.close()
    normaliser = getattr(rule, "normalizer", None)
    fitted = normaliser is not None and not normaliser.ready
    if fitted:  # label-free: the items' own regret statistics
        flat = torch.cat(regrets)
        normaliser.update(flat.unsqueeze(0), torch.ones(1, len(flat), dtype=torch.bool))
    first_tok, scores = run_rule(rule, cfg, regrets, values)
    # the same rule over each row's regrets in a shuffled order: what accumulating them in order adds
    g = torch.Generator().manual_seed(cfg.run.seed)
    shuffled = [r[torch.randperm(len(r), generator=g)] for r in regrets]
    rule_shuffled = make_stop_rule(cfg.stop, num_slots=len(items), seed=cfg.run.seed)
    rule_shuffled.load_state_dict(rule.state_dict())  # the same normaliser and threshold
    _, scores_shuffled = run_rule(rule_shuffled, cfg, shuffled, values)
    base = {name: [] for name in scoring.BASELINE_SCORES}
    for i in range(len(items)):
        row = scoring.baseline_scores(regrets[i].numpy(), token_stats["nll"][i].numpy(), token_stats["entropy"][i].numpy(),
                                      values[i].numpy() if values is not None else None)
        for name in base:
            base[name].append(row[name])
    base["rule_shuffled"] = scores_shuffled

    labels = [it.label for it in items]
    erroneous = [y >= 0 for y in labels]
    first_step = [int(token_steps[i][t]) if t >= 0 else -1 for i, t in enumerate(first_tok)]
    summary: dict[str, Any] = {
        "n": len(items),
        "n_erroneous": sum(y >= 0 for y in labels),
        "data": str(data),
        "checkpoint": checkpoint or None,
        "rule": cfg.stop.rule + (f" ({rule_name} without a trained critic)" if cfg.stop.rule != rule_name else ""),
        "normaliser": "fitted on the items (label-free)" if fitted else "from the run's checkpoint",
        "auroc": scoring.auroc(scores, erroneous),
        "auroc_ci": list(scoring.auroc_interval(scores, erroneous, seed=cfg.run.seed)),
        **scoring.first_stop_metrics(first_step, labels),
    }
    summary["baselines"] = scoring.compare_scores({"rule": scores, **base}, erroneous, seed=cfg.run.seed)
    fractions = [t / len(responses[i]) for i, t in enumerate(first_tok) if t >= 0]
    summary["random"] = scoring.random_baseline([len(r) for r in responses], token_steps, labels, rate=summary["stop_rate"],
                                        fractions=fractions, min_tokens=cfg.stop.min_tokens, seed=cfg.run.seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "items.jsonl", "".join(
        json.dumps({"id": it.id, "label": it.label, "score": _finite(sc), "first_stop_step": fs, "stop_token": ft,
                    "tokens": len(r), "steps": len(it.steps),
                    "baselines": {k: _finite(float(v[i])) for k, v in base.items()}}) + "\n"
        for i, (it, sc, fs, ft, r) in enumerate(zip(items, scores, first_step, first_tok, responses))))
    summary = _finite(summary)
    atomic_write(out_dir / "detect.json", json.dumps(summary, indent=2))
    return summary


def _finite(x):
    """NaN (an undefined metric, e.g. precision without stops) as JSON null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and not math.isfinite(x) else x
