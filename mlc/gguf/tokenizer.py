"""Build a `tokenizers` tokenizer from GGUF's `tokenizer.ggml.*` metadata.

Two kinds: `gpt2` (byte-level BPE with merges, split by the pre-tokenizer regex that
`tokenizer.ggml.pre` names) and `llama` (SentencePiece BPE: pieces ranked by score, `▁` for
spaces, `<0xXX>` byte fallback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from .reader import GGUFError

# ggml token types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # SentencePiece's visible space

# How text is split before byte-level BPE, by `tokenizer.ggml.pre`. Absent or unknown names
# (`gpt-2` among them) use GPT-2's own split (the `ByteLevel` default).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
DIGITS_FIRST = {"smollm"}


def byte_level_pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    """The split before byte-level BPE that llama.cpp's `tokenizer.ggml.pre` `name` means."""
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in DIGITS_FIRST:  # every digit alone, then GPT-2's split of the rest
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    split = PRE_TOKENIZER_SPLITS.get(name)
    if split is None:
        return gpt2
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _types(meta: dict[str, Any]) -> list[int]:
    return list(
        meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(meta["tokenizer.ggml.tokens"])
    )


def _byte_level_bpe(meta: dict[str, Any]) -> Tokenizer:
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) and user-defined ones must match whole in the text. A
    # control token spelled outside the byte alphabet is a mislabelled ordinary token.
    types = _types(meta)
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types, strict=False)
            if kind == _CONTROL and set(t) <= alphabet
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types, strict=False)
            if kind == _USER_DEFINED
        ]
    )
    return tokenizer


def merges_from_scores(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple]:
    """SentencePiece BPE merges: every split of a piece into two pieces of the vocabulary, ranked
    by the score of the piece they make (best first), as SentencePiece picks its next merge."""
    index = {t: i for i, t in enumerate(tokens) if types[i] in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for piece, i in index.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                ranked.append((-scores[i], i, index[left], index[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_bpe(meta: dict[str, Any]) -> Tokenizer:
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = _types(meta)
    scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    if "tokenizer.ggml.scores" not in meta and "tokenizer.ggml.merges" not in meta:
        raise GGUFError("a `llama` tokenizer needs tokenizer.ggml.scores or .merges")
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = merges_from_scores(tokens, scores, types)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    if unk_id is None and _UNKNOWN in types:
        unk_id = types.index(_UNKNOWN)
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=_BYTE in types,
        )
    )
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPACE, prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types, strict=False)
            if kind == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types, strict=False)
            if kind == _USER_DEFINED
        ]
    )
    return tokenizer


_BUILDERS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}


def tokenizer_from_gguf(meta: dict[str, Any], path: Path) -> Tokenizer:
    kind = meta.get("tokenizer.ggml.model")
    if kind not in _BUILDERS:
        raise GGUFError(
            f"{path}: tokenizer kind {kind!r} is not supported yet "
            f"(supported: {', '.join(_BUILDERS)})"
        )
    return _BUILDERS[kind](meta)


def adds_bos(meta: dict[str, Any]) -> bool:
    """Whether prompts start with BOS: the file's flag, else llama.cpp's default per kind
    (SentencePiece vocabularies add it)."""
    flag = meta.get("tokenizer.ggml.add_bos_token")
    if flag is None:
        return meta.get("tokenizer.ggml.model") == "llama"
    return bool(flag)
