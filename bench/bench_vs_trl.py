"""Seconds per GRPO step: TRL's ``GRPOTrainer`` against this project's ``configs/llm/grpo.yaml``, in one run.

Both train the same model (the embedded SmolLM2-135M-Instruct, bf16 weights) on the same prompts (the
math task's chat prompts for the first ``sum2`` training problems, in order, each sampled ``--group``
times), with the same number of prompts per step, completion length cap, temperature and torch threads.
One step is one optimiser-step's worth of rollouts: ``--prompts x --group`` completions generated and
trained on. TRL: ``per_device_train_batch_size = rows / 2`` with 2 gradient-accumulation steps (so one
TRL step generates all rows at once and updates once); this project: its preset (minibatches of 8, one
epoch, so two optimiser updates per step), no critic (GRPO reads no values), shared prompt prefix.
KL is off in both (TRL's default ``beta = 0``; the preset has no reference). Reward: the same
answer checker (``llm_backend.rewards.check_answers``, integer answers).

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


def run_trl(args, problems) -> tuple[float, float]:
    """(s/step wall, s/step CPU) of TRL's GRPOTrainer over the timed steps."""
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
    marks: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=rows // 2, gradient_accumulation_steps=2,
            num_generations=args.group, max_completion_length=args.max_new_tokens, temperature=args.temperature,
            top_p=1.0, learning_rate=args.lr, lr_scheduler_type="constant", max_steps=args.steps + 1, logging_steps=1, report_to="none",
            use_cpu=True, bf16=False, save_strategy="no", shuffle_dataset=False, seed=args.seed, beta=0.0,
            dataloader_num_workers=0, disable_tqdm=True, log_level="error",
        )
        trainer = GRPOTrainer(model=model, reward_funcs=accuracy, args=cfg, train_dataset=data,
                              processing_class=tokenizer, callbacks=[Clock()])
        trainer.train()
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    n = len(marks) - 1
    return (w1 - w0) / n, (c1 - c0) / n


def run_ours(args) -> tuple[float, float]:
    """(s/step wall, s/step CPU) of ``configs/llm/grpo.yaml`` at the same shape over the timed steps."""
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
        ])
        tr = Trainer(cfg)
        log = tr.logger.log

        def timed_log(record):
            marks.append((time.perf_counter(), time.process_time()))
            log(record)

        tr.logger.log = timed_log
        tr.train()
        recs = [json.loads(x) for x in (Path(tmp) / cfg.run.name / "metrics.jsonl").read_text().splitlines()]
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    n = len(marks) - 1
    lengths = [r["length/mean"] for r in recs[1:]]
    print(f"  ours: mean response length over the timed steps {sum(lengths) / len(lengths):.1f} tokens")
    return (w1 - w0) / n, (c1 - c0) / n


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
          f"{args.max_new_tokens} new tokens, temperature {args.temperature}, threads {torch.get_num_threads()}, "
          f"{args.steps} timed steps; trl={trl.__version__} transformers={transformers.__version__} "
          f"torch={torch.__version__} load avg={os.getloadavg()[0]:.1f} (cpus {os.cpu_count()})")
    problems = _problems(args.prompts * (args.steps + 1), args.seed)
    ours_w, ours_c = run_ours(args)
    trl_w, trl_c = run_trl(args, problems)
    print(f"{'':<28} {'s/step wall':>11} {'s/step cpu':>10}")
    print(f"{'TRL GRPOTrainer':<28} {trl_w:>11.2f} {trl_c:>10.2f}")
    print(f"{'testbed configs/llm/grpo':<28} {ours_w:>11.2f} {ours_c:>10.2f}")
    print(f"ratio (TRL / testbed): wall {trl_w / ours_w:.2f}x, cpu {trl_c / ours_c:.2f}x")
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
