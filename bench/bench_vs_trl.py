"""Seconds per GRPO step: TRL's ``GRPOTrainer`` against this project's ``configs/llm/grpo.yaml``, in one run.

Both train the same model (the embedded SmolLM2-135M-Instruct, bf16 weights) on the same prompts (the
math task's chat prompts for the first ``sum2`` training problems, in order, each sampled ``--group``
times), with the same number of prompts per step, completion length cap, temperature and torch threads.
One step is one optimiser-step's worth of rollouts: ``--prompts x --group`` completions generated and
trained on. TRL: ``per_device_train_batch_size = rows / 2`` with 2 gradient-accumulation steps (so one
TRL step generates all rows at once and updates once); this project: its preset with one minibatch of
all rows (``algo.minibatch_size = rows``: one optimiser update per step, as TRL; ``--preset-minibatch``
keeps the preset's minibatches of 8, two updates), no critic (GRPO reads no values), shared prompt prefix.
KL is off in both (TRL's default ``beta = 0``; the preset has no reference). Reward: the same
answer checker (``llm_backend.rewards.check_answers``, integer answers).

Equal work: every completion is exactly ``--max-new-tokens`` tokens on both sides (TRL:
``generation_kwargs = {min_new_tokens: N}``, so EOS cannot end a row early; this project: the task's end
token is set to an id the model never emits, so every row runs to the length cap), so both generate and
train on the same number of tokens; the printed lengths check it. ``--natural-lengths`` lets EOS end
rows as in training (the lengths then differ and are printed).

Per phase, over the timed steps: TRL's ``_generate`` (generation), the rest of
``_generate_and_score_completions`` (old-policy log-probs, rewards, advantages) and the remainder of the
step (loss forward + backward + optimiser: the update); this project's ``time/gen`` (generation, whose
sampling already gives the old log-probs, so there is no separate log-prob pass) and ``time/actor`` (the
update).

The first step of each is a warm-up and not timed; the printed time is the mean of the remaining
steps' wall-clock (and this process's CPU seconds over them: it runs everything in one process).

Usage (needs the ``bench`` extra: ``pip install -e '.[llm,bench]'``, i.e. ``trl``)::

    PYTHONPATH=. python bench/bench_vs_trl.py                 # 4 prompts x 4, 48 tokens, 2 threads, 5 timed steps
    PYTHONPATH=. python bench/bench_vs_trl.py --quick         # 2 timed steps of 8 tokens: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _problems(n: int, seed: int):
    from llm_backend.problems import iter_problems

    it = iter_problems("sum2", seed, "train")
    return [next(it) for _ in range(n)]


def _timed_method(obj, name: str, acc: dict) -> None:
    """Accumulate the wall seconds of ``obj.name`` calls into ``acc[name]``."""
    inner = getattr(obj, name)
    acc[name] = 0.0

    def wrapped(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            acc[name] += time.perf_counter() - t0

    setattr(obj, name, wrapped)


def run_trl(args, problems) -> tuple[float, float, dict]:
    """(s/step wall, s/step CPU, per-phase s/step and mean completion length) of TRL's GRPOTrainer
    over the timed steps."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from llm_backend.models import load_causal_lm
    from llm_backend.rewards import check_answers
    from llm_backend.task import make_task
    from testbed.config import ModelSection, TaskSection

    task = make_task(TaskSection(kind="math", difficulty="sum2"), ModelSection(kind="hf", path=args.model),
                     num_slots=1, seed=args.seed)
    model = load_causal_lm(ModelSection(kind="hf", path=args.model, dtype="bfloat16"))
    tokenizer = task.tokenizer
    data = Dataset.from_list([{"prompt": task.messages(p.question), "answer": p.answer} for p in problems])

    def accuracy(prompts, completions, answer, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(r.correct) for r in check_answers(texts, answer, integer_answers=True)]

    rows = args.prompts * args.group
    marks: list[tuple[float, float, dict]] = []
    acc: dict = {}
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time(), dict(acc)))

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=rows // 2, gradient_accumulation_steps=2,
            num_generations=args.group, max_completion_length=args.max_new_tokens, temperature=args.temperature,
            top_p=1.0, learning_rate=args.lr, lr_scheduler_type="constant", max_steps=args.steps + 1, logging_steps=1, report_to="none",
            use_cpu=True, bf16=False, save_strategy="no", shuffle_dataset=False, seed=args.seed, beta=0.0,
            dataloader_num_workers=0, disable_tqdm=True, log_level="error",
            generation_kwargs={} if args.natural_lengths else {"min_new_tokens": args.max_new_tokens},
        )
        trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=cfg, train_dataset=data,
                              processing_class=tokenizer, callbacks=[Clock()])
        _timed_method(trainer, "_generate", acc)
        _timed_method(trainer, "_generate_and_score_completions", acc)
        trainer.train()
    (w0, c0, a0), (w1, c1, a1) = marks[0], marks[-1]
    n = len(marks) - 1
    gen = (a1["_generate"] - a0["_generate"]) / n
    score = (a1["_generate_and_score_completions"] - a0["_generate_and_score_completions"]) / n
    wall = (w1 - w0) / n
    timed = lengths[1:] or lengths
    phases = {"generation": gen, "log-probs, rewards": score - gen, "update": wall - score,
              "length": sum(timed) / max(len(timed), 1)}
    return wall, (c1 - c0) / n, phases


def run_ours(args) -> tuple[float, float, dict]:
    """(s/step wall, s/step CPU, per-phase s/step and mean response length) of
    ``configs/llm/grpo.yaml`` at the same shape over the timed steps."""
    from testbed import config as C
    from testbed.ops.trainer import Trainer

    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.load(ROOT / "configs" / "llm" / "grpo.yaml", [
            f"run.out_dir={tmp}", f"run.steps={args.steps + 1}", "run.eval_every=0", "run.progress=false",
            f"run.checkpoint_every={args.steps + 10}", f"run.threads={args.threads}", f"run.seed={args.seed}",
            f"model.path={args.model}", f"rollout.batch_size={args.prompts * args.group}",
            f"rollout.group_size={args.group}", f"rollout.max_len={args.max_new_tokens}",
            f"rollout.temperature={args.temperature}", f"algo.lr_actor={args.lr}",
            *([] if args.preset_minibatch else [f"algo.minibatch_size={args.prompts * args.group}"]),
        ])
        tr = Trainer(cfg)
        if not args.natural_lengths:  # an end token the model never emits: every row runs to max_len
            tr.task.eos_token_id = tr.backend.vocab_size + 1
        log = tr.logger.log

        def timed_log(record):
            marks.append((time.perf_counter(), time.process_time()))
            log(record)

        tr.logger.log = timed_log
        tr.train()
        recs = [json.loads(x) for x in (Path(tmp) / cfg.run.name / "metrics.jsonl").read_text().splitlines()]
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    n = len(marks) - 1
    timed = recs[1:]
    mean = lambda key: sum(r.get(key) or 0.0 for r in timed) / len(timed)  # noqa: E731
    wall = (w1 - w0) / n
    phases = {"generation": mean("time/gen"), "log-probs, rewards": 0.0, "update": mean("time/actor") + mean("time/critic"),
              "length": mean("length/mean")}
    phases["log-probs, rewards"] = wall - phases["generation"] - phases["update"]  # the rest of the step
    return wall, (c1 - c0) / n, phases


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model.path for both (default: the embedded SmolLM2)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="samples per prompt (GRPO group size)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 timed steps of 8 new tokens (checks that it runs)")
    ap.add_argument("--natural-lengths", action="store_true", help="let EOS end rows (unequal work; lengths printed)")
    ap.add_argument("--preset-minibatch", action="store_true",
                    help="keep the preset's minibatches of 8 (two optimiser updates a step; TRL does one)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.max_new_tokens = 2, 8
    if (args.prompts * args.group) % 2:
        ap.error("--prompts x --group must be even (two gradient-accumulation halves for TRL)")
    try:
        import trl
    except ModuleNotFoundError:
        raise SystemExit("bench_vs_trl needs TRL: pip install -e '.[llm,bench]'") from None
    import transformers

    torch.set_num_threads(args.threads)
    print(f"# bench_vs_trl: model={args.model} {args.prompts} prompts x {args.group} samples, "
          f"{args.max_new_tokens} new tokens{'' if args.natural_lengths else ' (every row)'}, temperature {args.temperature}, "
          f"threads {torch.get_num_threads()}, ours: {'preset minibatches' if args.preset_minibatch else 'one update a step'}, "
          f"{args.steps} timed steps; trl={trl.__version__} transformers={transformers.__version__} "
          f"torch={torch.__version__} load avg={os.getloadavg()[0]:.1f} (cpus {os.cpu_count()})")
    problems = _problems(args.prompts * (args.steps + 1), args.seed)
    ours_w, ours_c, ours_p = run_ours(args)
    trl_w, trl_c, trl_p = run_trl(args, problems)
    print(f"{'':<28} {'s/step wall':>11} {'s/step cpu':>10}")
    print(f"{'TRL GRPOTrainer':<28} {trl_w:>11.2f} {trl_c:>10.2f}")
    print(f"{'testbed configs/llm/grpo':<28} {ours_w:>11.2f} {ours_c:>10.2f}")
    print(f"ratio (TRL / testbed): wall {trl_w / ours_w:.2f}x, cpu {trl_c / ours_c:.2f}x")
    print(f"\n{'phase (s/step wall)':<28} {'TRL':>8} {'testbed':>8} {'TRL/testbed':>12}")
    for k in ("generation", "log-probs, rewards", "update"):
        ratio = f"{trl_p[k] / ours_p[k]:.2f}x" if ours_p[k] > 0.005 else "-"
        print(f"{k:<28} {trl_p[k]:>8.2f} {ours_p[k]:>8.2f} {ratio:>12}")
    print(f"{'mean completion tokens':<28} {trl_p['length']:>8.1f} {ours_p['length']:>8.1f}")
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
