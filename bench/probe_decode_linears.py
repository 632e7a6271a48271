"""Probe (issue 18 item 2): the time of one decode step's matrix products alone (SmolLM2-135M shapes: 30 layers x
7 linears, and the LM head) at M = 1 and 16, bf16 and fp32. Run alone:
PYTHONPATH=. .venv/bin/python bench/probe_decode_linears.py
"""
import time, torch
torch.set_num_threads(2)
def t(fn, n=200):
    for _ in range(10): fn()
    t0=time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter()-t0)/n
for dt in (torch.bfloat16, torch.float32):
    for B in (1, 16):
        tot=0; byts=0
        for (i,o) in ((576,576),(576,192),(576,192),(576,576),(576,1536),(576,1536),(1536,576)):
            W=torch.randn(o,i,dtype=dt); x=torch.randn(B,i,dtype=dt)
            tot+=t(lambda: torch.nn.functional.linear(x,W)); byts+=W.numel()*W.element_size()
        print(f"{dt} B={B}: one layer's 7 linears {tot*1e3:.3f} ms -> x30 layers {tot*30e3:.1f} ms; weight bytes {byts*30/1e6:.0f} MB -> {byts/tot/1e9:.1f} GB/s")
    W=torch.randn(49152,576,dtype=dt); x=torch.randn(16,576,dtype=dt)
    print(f"{dt} LM head B=16: {t(lambda: torch.nn.functional.linear(x,W), 20)*1e3:.1f} ms")
