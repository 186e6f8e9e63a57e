"""For tokenizer comparisons: a few hundred varied strings (Unicode, whitespace runs, digits,
code, special tokens, spans of the shipped English text) and tokenizer.json files of each kind
our own tokenizers (the web page's, the native runtime's) read."""

from __future__ import annotations

import json
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


def tokenizer_variants(folder: Path, tiny_tokenizer: Path) -> dict[str, Path]:
    """tokenizer.json files of the kinds our own tokenizers read: byte-level BPE (our tiny models,
    SmolLM2's GPT-2 split, Llama 3's and Qwen2's splits) and SentencePiece BPE with byte
    fallback (our GGUF conversion, `transformers`' conversion, and its older normalizer form)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    from mlc.default_model import embedded_gguf
    from mlc.gguf.checkpoint import GGUFCheckpoint
    from mlc.gguf.sentencepiece_model import read_sentencepiece_model
    from mlc.gguf.tokenizer import tokenizer_from_gguf

    paths = {"tiny": tiny_tokenizer}
    meta = dict(GGUFCheckpoint(embedded_gguf()).file.metadata)
    for pre in ("default", "smollm", "llama3", "qwen2"):
        paths[f"smollm2-{pre}"] = folder / f"smollm2-{pre}.json"
        tokenizer_from_gguf({**meta, "tokenizer.ggml.pre": pre}, embedded_gguf()).save(
            str(paths[f"smollm2-{pre}"])
        )
    model_file = folder / "tokenizer.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.read_text().splitlines()),
        model_prefix=str(model_file.with_suffix("")),
        vocab_size=600,
        **SENTENCEPIECE_BPE,
    )
    sp = read_sentencepiece_model(model_file)
    spm_meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": sp.pieces,
        "tokenizer.ggml.scores": sp.scores,
        "tokenizer.ggml.token_type": sp.types,
    }
    paths["sentencepiece-gguf"] = folder / "sentencepiece-gguf.json"
    tokenizer_from_gguf(spm_meta, model_file).save(str(paths["sentencepiece-gguf"]))
    hf_dir = folder / "hf"
    LlamaTokenizerFast(vocab_file=str(model_file)).save_pretrained(str(hf_dir))
    paths["sentencepiece-hf"] = hf_dir / "tokenizer.json"
    legacy = json.loads(paths["sentencepiece-hf"].read_text())
    legacy["pre_tokenizer"] = None
    legacy["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    paths["sentencepiece-legacy"] = folder / "sentencepiece-legacy.json"
    paths["sentencepiece-legacy"].write_text(json.dumps(legacy))
    return paths


EXTRA_SAMPLES = [
    "\u00a0nbsp\u00a0 and\u3000ideographic",
    "next\x85line and \ufeffBOM",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|user|> hi <|im_start|>x",
    "x <|user|>y",
    "<s>Hello</s>",
    "I'm, you're; we'll HE'S",
    "ÅÄÖ\u0301 ℌ𝔢𝔩𝔩𝔬 ١٢٣",
    "▁already marked",
    "<0x41>",
]


# Chat template checks: a Llama-3-style template, and a conversation whose contents have
# surrounding white space of several kinds.
LLAMA3_STYLE = (  # trims every message, as Llama 3's template does
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 "
    "== 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
CONVERSATION = ["Hi there", " spaced answer \n", "Ünïcödé\tnext", "Sure.", "\x1c last one \xa0"]
