"""Probe (issue 18 item 2): does transformers StaticCache + torch.compile speed up a decode step of the
default model at batch 16 after a 128-token prompt? Prints eager (static and dynamic cache) and compiled
step times. Run alone: PYTHONPATH=. .venv/bin/python bench/probe_compile_decode.py
"""
import time, torch
from transformers import StaticCache
from llm_backend.models import load_causal_lm
from testbed.config import ModelSection
torch.set_num_threads(2)
m = load_causal_lm(ModelSection(kind="hf", path="default", dtype="bfloat16")).eval()
B, P, STEPS = 16, 128, 16
ids = torch.randint(100, 40000, (B, P))
def run(model_fn, cache, label):
    with torch.no_grad():
        pos = torch.arange(P)
        out = m(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        times = []
        for k in range(STEPS):
            cp = torch.tensor([P + k])
            t0 = time.perf_counter()
            logits = model_fn(tok, cache, cp)
            times.append(time.perf_counter() - t0)
            tok = logits[:, -1].argmax(-1, keepdim=True)
    print(f"{label}: first step {times[0]*1e3:.0f} ms, median of the rest {sorted(times[1:])[len(times)//2]*1e3:.1f} ms", flush=True)
def eager(tok, cache, cp):
    return m(input_ids=tok, past_key_values=cache, cache_position=cp, use_cache=True).logits
cfg = m.config
run(eager, StaticCache(config=cfg, max_cache_len=P + STEPS + 1), "eager, static cache")
from transformers import DynamicCache
run(eager, DynamicCache(), "eager, dynamic cache")
compiled = torch.compile(eager, dynamic=False)
t0 = time.perf_counter()
run(compiled, StaticCache(config=cfg, max_cache_len=P + STEPS + 1), "compiled, static cache (first step includes compile)")
print(f"compile+run wall {time.perf_counter()-t0:.0f} s", flush=True)
run(compiled, StaticCache(config=cfg, max_cache_len=P + STEPS + 1), "compiled, static cache, second run")
