"""The toy GRU backend: step-wise decoding equals the teacher-forced forward, positions included."""

import pytest
import torch

from testbed.toy import ToyBackend


def _decode(backend, prompts, T, seed=0):
    """Sample T tokens per row step by step; return tokens (B, T) and the per-step log-softmax (B, T, V)."""
    g = torch.Generator().manual_seed(seed)
    backend.begin(prompts)
    toks, logps = [], []
    for _ in range(T):
        logits = backend.step(with_values=False).logits
        lp = torch.log_softmax(logits, -1)
        tok = torch.multinomial(lp.exp(), 1, generator=g).squeeze(-1)
        backend.advance(tok, keep=torch.ones(len(tok), dtype=torch.bool))
        toks.append(tok)
        logps.append(lp)
    return torch.stack(toks, 1), torch.stack(logps, 1)


def test_stepwise_decoding_matches_teacher_forcing_with_positions():
    b = ToyBackend(8, 1, seed=3, max_positions=16)
    prompts = [[2, 3], [4, 5, 6, 7], [2]]  # different prompt lengths: positions are per row
    tokens, logps = _decode(b, prompts, 6)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logp, _ = b.policy_forward(prompts, tokens, mask, temperature=1.0)
    torch.testing.assert_close(logp, logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_a_carried_prefix_decodes_like_the_uncut_row():
    """T-PPO re-encodes prompt + carried tokens as the context: the next logits equal the uncut row's."""
    b = ToyBackend(8, 1, seed=4, max_positions=16)
    tokens, logps = _decode(b, [[2, 3]], 5)
    b.begin([[2, 3] + tokens[0, :3].tolist()])
    torch.testing.assert_close(torch.log_softmax(b.step(with_values=False).logits, -1)[0], logps[0, 3],
                               atol=1e-5, rtol=1e-5)


def test_the_position_input_feeds_the_policy():
    """The logits depend on the position table (and a backend without positions has none)."""
    b = ToyBackend(8, 1, seed=5, max_positions=16)
    b.begin([[2, 3]])
    before = b.step(with_values=False).logits
    with torch.no_grad():
        b.policy.pos_embed.weight[1] += 1.0  # the last prompt token sits at column 1
    b.begin([[2, 3]])
    assert not torch.allclose(before, b.step(with_values=False).logits)
    assert ToyBackend(8, 1, seed=5).policy.pos_embed is None


def test_eos_bias_moves_only_the_initial_eos_logit():
    base = ToyBackend(10, 1, seed=3, reference=True)
    biased = ToyBackend(10, 1, seed=3, reference=True, eos_bias=-3.0)
    b0, b1 = base.state_dict(), biased.state_dict()
    for name in b0:
        if name.endswith("head.bias") and name.startswith(("policy", "reference")):
            expect = b0[name].clone()
            expect[1] -= 3.0
            torch.testing.assert_close(b1[name], expect)
        else:
            torch.testing.assert_close(b1[name], b0[name], msg=name)
    assert torch.equal(ToyBackend(10, 1, seed=3, eos_bias=0.0).policy.head.bias, base.policy.head.bias)


def test_prompt_input_decodes_like_teacher_forcing_and_through_a_carry():
    """With the prompt fed at every step, step-wise decoding, the teacher-forced forward and a carried
    prefix (prompt + tokens re-encoded as the context) all agree; the prompt vector moves the logits."""
    b = ToyBackend(8, 1, seed=6, max_positions=16, prompt_input=2)
    prompts = [[2, 3], [4, 5], [3, 2]]
    tokens, logps = _decode(b, prompts, 6)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logp, _ = b.policy_forward(prompts, tokens, mask, temperature=1.0)
    torch.testing.assert_close(logp, logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)
    b.begin([[2, 3] + tokens[0, :3].tolist()])
    torch.testing.assert_close(torch.log_softmax(b.step(with_values=False).logits, -1)[0], logps[0, 3],
                               atol=1e-5, rtol=1e-5)
    b.begin([[2, 3]])
    b.advance(torch.tensor([4]), keep=torch.ones(1, dtype=torch.bool))
    before = b.step(with_values=False).logits
    with torch.no_grad():
        b.policy.prompt_embed.weight[2] += 1.0
    b.begin([[2, 3]])
    b.advance(torch.tensor([4]), keep=torch.ones(1, dtype=torch.bool))
    assert not torch.allclose(before, b.step(with_values=False).logits)


def test_prompt_input_off_adds_nothing_and_on_keeps_the_other_weights():
    off, on = ToyBackend(8, 1, seed=7, max_positions=16), ToyBackend(8, 1, seed=7, max_positions=16, prompt_input=2)
    assert off.policy.prompt_embed is None
    shared = off.state_dict()
    for name, v in on.state_dict().items():
        if "prompt_embed" not in name:
            torch.testing.assert_close(v, shared[name], msg=name)


def test_prompt_readout_starts_as_without_it_and_decodes_like_teacher_forcing():
    """The bilinear prompt x position term is zero at initialisation (same outputs, same other weights);
    once trained it moves the logits by column and by prompt, and step-wise decoding, the teacher-forced
    forward and the critic agree with it on."""
    plain = ToyBackend(8, 1, seed=6, max_positions=16, prompt_input=2)
    bil = ToyBackend(8, 1, seed=6, max_positions=16, prompt_input=2, prompt_readout=True)
    prompts = [[2, 3], [4, 5], [3, 2]]
    t0, l0 = _decode(plain, prompts, 6)
    t1, l1 = _decode(bil, prompts, 6)
    assert torch.equal(t0, t1)
    torch.testing.assert_close(l0, l1)
    with torch.no_grad():
        for trunk in (bil.policy, bil.critic):
            trunk.readout.weight.normal_()
            trunk.readout_pos.weight.normal_()
    tokens, logps = _decode(bil, prompts, 6)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logp, _ = bil.policy_forward(prompts, tokens, mask, temperature=1.0)
    torch.testing.assert_close(logp, logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)
    # the critic: the teacher-forced values equal the decoding ones, token by token
    bil.begin(prompts)
    values = []
    for t in range(tokens.shape[1]):
        values.append(bil.step().values)
        bil.advance(tokens[:, t], keep=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(bil.critic_forward(prompts, tokens, mask), torch.stack(values, 1), atol=1e-5, rtol=1e-5)
    bil.begin([[2, 3]])
    a = bil.step(with_values=False).logits
    with torch.no_grad():
        bil.policy.readout_pos.weight[2] += 1.0  # the first response token's column
    bil.begin([[2, 3]])
    assert not torch.allclose(a, bil.step(with_values=False).logits)


def test_prompt_readout_needs_the_prompt_input():
    with pytest.raises(ValueError, match="prompt input"):
        ToyBackend(8, 1, seed=6, max_positions=16, prompt_readout=True)
    from testbed import config as config_mod
    from testbed.config_schema import ConfigError
    with pytest.raises(ConfigError, match="model.prompt_readout: needs model.prompt_input"):
        config_mod.from_dict({"model": {"prompt_readout": True}})


def _transformer(seed=3, **kw):
    return ToyBackend(8, 1, seed=seed, max_positions=16, arch="transformer", hidden_size=16, layers=2, heads=2, **kw)


def test_transformer_kv_cached_decoding_matches_teacher_forcing():
    """Per-row prompt lengths: the cache columns of a shorter prompt's right pads are overwritten before any
    attention reads them, so step-wise logits equal the full causal pass; values too."""
    b = _transformer()
    prompts = [[2, 3], [4, 5, 6, 7], [2]]
    tokens, logps = _decode(b, prompts, 6)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logp, _ = b.policy_forward(prompts, tokens, mask, temperature=1.0)
    torch.testing.assert_close(logp, logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        b.critic.head.weight.normal_()  # zero at initialisation: make the values informative
    b.begin(prompts)
    vals = []
    for t in range(6):
        vals.append(b.step().values)
        b.advance(tokens[:, t], keep=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(b.critic_forward(prompts, tokens, mask), torch.stack(vals, 1), atol=1e-5, rtol=1e-5)


def test_transformer_decoding_survives_dropped_rows_and_a_carried_prefix():
    b = _transformer(seed=4)
    tokens, logps = _decode(b, [[2, 3], [5, 6]], 5)
    b.begin([[2, 3], [5, 6]])
    b.advance(tokens[:, 0], keep=torch.tensor([False, True]))  # row 0 ends; row 1 goes on alone
    b.advance(tokens[1:, 1], keep=torch.tensor([True]))
    torch.testing.assert_close(torch.log_softmax(b.step(with_values=False).logits, -1)[0], logps[1, 2],
                               atol=1e-5, rtol=1e-5)
    b.begin([[2, 3] + tokens[0, :3].tolist()])  # T-PPO re-encodes prompt + carried tokens
    torch.testing.assert_close(torch.log_softmax(b.step(with_values=False).logits, -1)[0], logps[0, 3],
                               atol=1e-5, rtol=1e-5)


def test_transformer_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="prompt_input"):
        _transformer(prompt_input=2)
    with pytest.raises(ValueError, match="positions"):
        ToyBackend(8, 1, arch="transformer")
    with pytest.raises(ValueError, match="model.heads"):
        ToyBackend(8, 1, max_positions=16, arch="transformer", hidden_size=10, heads=3)
    with pytest.raises(ValueError, match="model.arch"):
        ToyBackend(8, 1, arch="lstm")
    b = _transformer()
    b.begin([[2] * 15])
    b.advance(torch.tensor([3]), keep=torch.tensor([True]))  # column 15: the last position
    with pytest.raises(ValueError, match="beyond"):
        b.advance(torch.tensor([3]), keep=torch.tensor([True]))
