"""Build a `tokenizers` tokenizer from GGUF's `tokenizer.ggml.*` metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from .reader import GGUFError

# ggml token types
_CONTROL, _USER_DEFINED = 3, 4


def _byte_alphabet() -> set[str]:
    """The 256 printable characters GPT-2's byte-level BPE spells bytes with."""
    return set(pre_tokenizers.ByteLevel.alphabet())


def _byte_level_bpe(meta: dict[str, Any]) -> Tokenizer:
    alphabet = _byte_alphabet()
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    # Control tokens (<|im_start|>, ...) and user-defined ones must match whole in the text. A
    # control token spelled outside the byte alphabet is a mislabelled ordinary token.
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, types, strict=False)
        if kind == _CONTROL and set(t) <= alphabet
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(tokens, types, strict=False)
        if kind == _USER_DEFINED
    ]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)
    return tokenizer


_BUILDERS = {"gpt2": _byte_level_bpe}


def tokenizer_from_gguf(meta: dict[str, Any], path: Path) -> Tokenizer:
    kind = meta.get("tokenizer.ggml.model")
    if kind not in _BUILDERS:
        raise GGUFError(
            f"{path}: tokenizer kind {kind!r} is not supported yet "
            f"(supported: {', '.join(_BUILDERS)})"
        )
    return _BUILDERS[kind](meta)
