"""A few hundred varied strings for tokenizer comparisons: Unicode, whitespace runs, digits,
code, special tokens, and spans of the shipped English text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXT = Path(__file__).parent / "data" / "public_domain.txt"

# SentencePiece BPE training options like Llama 2's: byte fallback, digits split, whitespace kept
# as is, one user-defined and one control symbol. (`vocab_size` is up to the caller.)
SENTENCEPIECE_BPE: dict = dict(
    model_type="bpe",
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    user_defined_symbols=["<|user|>"],
    control_symbols=["<|im_start|>"],
    character_coverage=1.0,
    minloglevel=2,
)

FIXED = [
    "Hello, world!",
    "  leading spaces",
    "trailing   ",
    "tabs\tand\nnewlines\n\n\n",
    "12345 67.89 1e10 0x1F",
    "naïve café résumé Ünïcödé",
    "日本語のテキスト",
    "emoji 🙂🚀👍🏽",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nhi<|im_end|>",
    "URL https://example.org/a?b=c&d=e",
    "mixed CASE and camelCaseWords",
    "a" * 50,
    "a  b   c    d",
    "\u200b zero width",
    "Ελληνικά και русский",
    "¿Qué? ¡Sí!",
    " ",
    "",
]


def tokenizer_samples(count: int = 300, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = TEXT.read_text().split()
    samples = list(FIXED)
    for _ in range(count):
        start = int(rng.integers(0, len(words) - 12))
        sample = " ".join(words[start : start + int(rng.integers(1, 12))])
        samples.append(sample if rng.random() < 0.5 else sample.upper() + " " + sample)
    return samples
