"""Supervised warm-start (``model.sft``, :mod:`llm_backend.sft`) on the tiny random Llama with the real
tokenizer: response-only cross-entropy, the loss falls, determinism, the before/after report of a run
and of ``testbed sft``, no second SFT on a resume; the long-chain presets load and fit their rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.metrics import read_metrics

from testbed import config as C

pytest.importorskip("transformers")
from llm_backend import tokenizer as tokenizer_mod  # noqa: E402

try:
    tokenizer_mod.embedded_gguf_path()
except (ModuleNotFoundError, FileNotFoundError) as e:  # pragma: no cover - environment without the model
    pytest.skip(f"embedded SmolLM2 tokenizer unavailable: {e}", allow_module_level=True)

from llm_backend import sft  # noqa: E402
from testbed.ops.build import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ["long_chain_ppo", "long_chain_espo", "long_chain_espo_paper", "long_chain_tppo"]
TINY = ["model.path=tiny", "model.dtype=float32", "run.progress=false", "run.threads=1"]


def _cfg(tmp_path, *extra):
    return C.load(ROOT / "configs" / "llm" / "long_chain_ppo.yaml",
                  [f"run.out_dir={tmp_path}", *TINY, "rollout.batch_size=4", "rollout.max_len=24",
                   "algo.minibatch_size=4", "task.source_kwargs.steps=[2, 3]", *extra])


def _setup(tmp_path, *extra, seed=0):
    cfg = _cfg(tmp_path, *extra)
    _, backend = build(cfg, num_slots=4)
    from llm_backend.task import make_task

    train = make_task(cfg.task, cfg.model, num_slots=4, seed=seed)
    return cfg, train, backend


def test_settings_fill_defaults_and_name_bad_keys():
    assert sft.sft_settings({}) == sft.SFT_KEYS
    assert sft.sft_settings({"steps": 3, "lr": "1e-4"})["lr"] == 1e-4  # YAML's 1e-4 is a string
    for spec, key in [({"step": 3}, "model.sft: unknown"), ({"steps": -1}, "model.sft.steps"),
                      ({"steps": 2.5}, "model.sft.steps"), ({"batch_size": 0}, "model.sft.batch_size"),
                      ({"lr": 0}, "model.sft.lr"), ({"lr": "fast"}, "model.sft.lr"), ({"eval_size": -2}, "model.sft.eval_size")]:
        with pytest.raises(C.ConfigError, match=key):
            sft.sft_settings(spec)
    with pytest.raises(C.ConfigError, match="model.sft"):
        C.from_dict({"model": {"kind": "toy", "sft": {"steps": 2}}})


def test_batch_is_the_task_prompt_and_the_canonical_solution(tmp_path):
    from llm_backend.chain_problems import chain_solution

    _, task, _ = _setup(tmp_path)
    prompts, tokens, mask = sft.sft_batch(task, np.arange(4))
    tok = task.tokenizer
    for i in range(4):
        p = task._problems[i]
        assert prompts[i] == task.prompt_ids(p.question)  # the prompt RL decodes from
        row = tokens[i, mask[i]].tolist()
        assert row[-1] == task.eos_token_id and int(mask[i].sum()) == len(row)
        text = tok.decode(row[:-1])
        assert text == chain_solution(p.question, p.meta["operands"]) and text.endswith(f"\\boxed{{{p.answer}}}.")
        assert text.count("=") == len(p.meta["operands"]) - 1
    assert not mask.all()  # rows of different lengths, right-padded


def test_loss_is_cross_entropy_on_response_tokens_only(tmp_path):
    _, task, backend = _setup(tmp_path)
    prompts, tokens, mask = sft.sft_batch(task, np.arange(4))
    loss = sft.sft_loss(backend, prompts, tokens, mask)
    # oracle: the plain model over [prompt | response], labels only at response positions
    total, count = 0.0, 0
    for i in range(4):
        resp = tokens[i, mask[i]]
        ids = torch.tensor([prompts[i] + resp.tolist()])
        with torch.no_grad():
            logits = backend.policy(input_ids=ids).logits[0].float()
        labels = torch.full((ids.shape[1],), -100)
        labels[len(prompts[i]):] = resp
        ce = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
        total += float(ce)
        count += len(resp)
    torch.testing.assert_close(float(loss.detach()), total / count, rtol=1e-4, atol=1e-4)
    # a prompt token carries no loss: the loss with every label position counted would differ
    with torch.no_grad():
        logits = backend.policy(input_ids=torch.tensor([prompts[0] + tokens[0, mask[0]].tolist()])).logits[0]
    everything = torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(prompts[0] + tokens[0, mask[0]].tolist())[1:])
    assert abs(float(everything) - total / count) > 1e-3


def _finetune(tmp_path, steps=12, dtype="float32"):
    torch.manual_seed(0)
    _, task, backend = _setup(tmp_path, f"model.dtype={dtype}")
    losses = sft.supervised_finetune(backend, task, steps=steps, lr=1e-2, batch_size=4)
    return losses, {k: v.detach().clone() for k, v in backend.policy.state_dict().items()}


def test_loss_falls_and_training_is_deterministic(tmp_path):
    a, wa = _finetune(tmp_path)
    assert np.mean(a[-3:]) < 0.6 * a[0], a
    b, wb = _finetune(tmp_path)
    assert a == b
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_bf16_policy_learns_through_fp32_master_weights(tmp_path):
    losses, _ = _finetune(tmp_path, steps=8, dtype="bfloat16")
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses


def test_only_the_policy_trains(tmp_path):
    _, task, backend = _setup(tmp_path)
    head = {k: v.clone() for k, v in backend.value_head.state_dict().items()}
    before = {k: v.clone() for k, v in backend.policy.state_dict().items()}
    sft.supervised_finetune(backend, task, steps=2, lr=1e-3, batch_size=4)
    assert all(torch.equal(v, backend.value_head.state_dict()[k]) for k, v in head.items())
    assert any(not torch.equal(v, backend.policy.state_dict()[k]) for k, v in before.items())


def test_a_run_warms_up_once_writes_the_report_and_resumes_without_it(tmp_path, capsys):
    from testbed.ops.trainer import Trainer

    extra = ["run.steps=1", "run.eval_every=1", "run.eval_size=4", "run.checkpoint_every=1",
             "model.sft.steps=3", "model.sft.batch_size=2", "model.sft.eval_size=0"]
    cfg = _cfg(tmp_path, *extra)
    Trainer(cfg).train()
    run = tmp_path / cfg.run.name
    report = json.loads((run / "sft.json").read_text())
    assert len(report["losses"]) == 3 and report["eval_size"] == 4
    assert 0 <= report["pass@1/before"] <= 1 and 0 <= report["pass@1/after"] <= 1
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert report["pass@1/after"] == first["eval/pass@1"]  # the step-0 evaluation is the post-SFT one
    assert "sft: 3 steps, held-out greedy pass@1" in capsys.readouterr().out
    stamp = (run / "sft.json").stat().st_mtime_ns
    Trainer(_cfg(tmp_path, *extra[1:], "run.steps=2")).train()  # resumes from step 1: no second SFT
    assert (run / "sft.json").stat().st_mtime_ns == stamp
    assert "sft:" not in capsys.readouterr().out


def test_a_run_without_step0_eval_measures_after_itself(tmp_path):
    from testbed.ops.trainer import Trainer

    cfg = _cfg(tmp_path, "run.steps=1", "run.eval_every=0", "model.sft.steps=2", "model.sft.batch_size=2",
               "model.sft.eval_size=3")
    Trainer(cfg).train()
    report = json.loads((tmp_path / cfg.run.name / "sft.json").read_text())
    assert report["eval_size"] == 3 and {"pass@1/before", "pass@1/after", "length/mean/after"} <= set(report)


def test_a_cached_warm_start_gives_the_run_that_trained_it(tmp_path):
    """``run.sft_cache``: the first run stores the stage, a second run (another method: a stop rule) loads
    it; each equals a run that trained the stage itself, metric for metric and weight for weight. Another
    SFT setting is another entry."""
    from testbed.ops.trainer import Trainer

    def stable(recs):  # without wall-clock fields (the only ones two identical runs differ in)
        return [{k: v for k, v in r.items() if "time/" not in k and "per_second" not in k} for r in recs]

    cache = tmp_path / "cache"
    extra = ["run.steps=2", "run.eval_every=1", "run.eval_size=4", "run.checkpoint_every=2", "model.sft.steps=3",
             "model.sft.batch_size=2", "rollout.temperature=1.0"]
    espo = ["stop.rule=espo", "stop.warmup_steps=0", "stop.min_tokens=2"]

    def run(name, *more):
        t = Trainer(_cfg(tmp_path, *extra, f"run.name={name}", *more))
        t.train()
        weights = {k: v.clone() for k, v in t.backend.state_dict().items()}
        report = json.loads((tmp_path / name / "sft.json").read_text())
        return stable(read_metrics(tmp_path / name / "metrics.jsonl")), weights, report

    stored = run("stored", f"run.sft_cache={cache}")
    loaded = run("loaded", f"run.sft_cache={cache}", *espo)
    assert stored[2]["cache"].startswith("stored ") and loaded[2]["cache"] == "loaded " + stored[2]["cache"][7:]
    assert len(list(cache.iterdir())) == 1
    for cached, name, more in ((stored, "plain", []), (loaded, "plain_espo", espo)):
        metrics, weights, report = run(name, *more)
        assert "cache" not in report and cached[0] == metrics
        assert all(torch.equal(weights[k], cached[1][k]) for k in weights)
        assert {k: v for k, v in cached[2].items() if k not in ("cache", "time/train")} == \
            {k: v for k, v in report.items() if k != "time/train"}
    assert any(r["stop/rate"] > 0 for r in loaded[0])  # the second method really differs after the stage
    run("other_lr", f"run.sft_cache={cache}", "model.sft.lr=3e-4")
    assert len(list(cache.iterdir())) == 2


def test_cli_sft_writes_the_report(tmp_path, capsys):
    from testbed.ops.cli import main

    out = tmp_path / "sft"
    args = ["sft", str(ROOT / "configs" / "llm" / "long_chain_ppo.yaml"), *TINY, "rollout.max_len=16",
            "task.source_kwargs.steps=[2, 3]", "model.sft.steps=2", "model.sft.batch_size=2", "model.sft.eval_size=2",
            f"run.out_dir={tmp_path}", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "sft.json").read_text())
    assert len(report["losses"]) == 2 and "pass@1/before" in report and "pass@1/after" in report
    assert "held-out greedy pass@1" in capsys.readouterr().out
    assert main([*args[:-2], "model.sft.steps=0", "--out", str(out)]) == 2  # nothing to do: one error line


def test_cli_sft_help():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "testbed.ops.cli", "sft", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=False)
    assert res.returncode == 0 and "model.sft" in res.stdout and "--save" in res.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_long_chain_presets_load_share_the_task_and_fit_their_rows(preset):
    from llm_backend.chain_problems import chain_solution, iter_chain_problems

    cfg = C.load(ROOT / "configs" / "llm" / f"{preset}.yaml")
    ref = C.load(ROOT / "configs" / "llm" / "long_chain_ppo.yaml")
    assert cfg.task.source == "chain" and cfg.task.source_kwargs == ref.task.source_kwargs
    assert cfg.model.sft == ref.model.sft and sft.sft_settings(cfg.model.sft)["steps"] >= 1
    assert (cfg.rollout.batch_size, cfg.rollout.max_len) == (ref.rollout.batch_size, ref.rollout.max_len)
    knobs = {k: v for k, v in cfg.task.source_kwargs.items() if k != "example"}
    tok = tokenizer_mod.load_tokenizer(cfg.model.path)
    longest = max(len(tok(chain_solution(p.question, p.meta["operands"]))["input_ids"]) + 1
                  for p, _ in zip(iter_chain_problems(0, "test", **knobs), range(300)))
    assert cfg.rollout.max_len >= longest + 16  # room for a wrong detour
    if preset == "long_chain_espo":
        espo = C.load(ROOT / "configs" / "llm" / "espo.yaml")
        assert cfg.stop == espo.stop
    if preset == "long_chain_espo_paper":
        assert cfg.stop == C.load(ROOT / "configs" / "llm" / "espo_paper.yaml").stop
    if preset == "long_chain_tppo":
        assert cfg.tppo.enabled and cfg.tppo == C.load(ROOT / "configs" / "llm" / "tppo.yaml").tppo


@pytest.mark.parametrize("preset", ["long_chain_espo", "long_chain_tppo"])
def test_long_chain_presets_train_with_the_tiny_model(tmp_path, preset):
    from testbed.ops.trainer import Trainer

    cfg = C.load(ROOT / "configs" / "llm" / f"{preset}.yaml",
                 [f"run.out_dir={tmp_path}", *TINY, "rollout.batch_size=4", "rollout.max_len=16", "algo.minibatch_size=4",
                  "run.steps=2", "run.eval_every=0", "model.sft.steps=1", "model.sft.batch_size=2",
                  "model.sft.eval_size=2", "tppo.window=8"])
    assert Trainer(cfg).train()["complete"]
    assert (tmp_path / cfg.run.name / "sft.json").is_file()
