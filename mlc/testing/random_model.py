"""Random-weight Hugging Face models with a trained tokenizer, made on the spot (no downloads).

Tests, benchmarks and the quick start use them; they need the `test` extra (torch, transformers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "Once upon a time there was a little robot who loved to read books.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Héllo wörld! Ça va? 你好，世界。 こんにちは 🙂🚀",
    "def add(a, b):\n    return a + b\n",
    "In the beginning the Universe was created. This has made a lot of people very angry.",
]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on a tiny corpus: covers every byte, so any text encodes."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


# Shapes for a tiny model, in the field names most configs use; configs that name a field
# differently (GPT-2's `n_embd`) map it through their `attribute_map`, and fields a config lacks
# are left out.
TINY_SETTINGS: dict[str, Any] = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    rms_norm_eps=1e-5,
)


def save_model(
    path: Path,
    seed: int = 0,
    safetensors: bool = True,
    model_type: str = "llama",
    max_shard_size: str | None = None,
    init_std: float | None = 0.2,
    vector_std: float | None = None,
    dtype: str = "float32",
    **overrides: Any,
) -> Path:
    """A random causal LM of any `model_type` with a matching tokenizer, saved as a model
    directory. `overrides` are `config.json` fields, passed as they are. `vector_std` adds noise
    to the 1-D parameters (biases start at zero, norm weights at one), so that a misplaced one
    shows. `dtype` is the torch dtype the weights are made and saved in (`bfloat16` halves the
    memory a benchmark-sized model needs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    blank = AutoConfig.for_model(model_type)
    settings = {k: v for k, v in TINY_SETTINGS.items() if hasattr(blank, k)}
    if blank.to_dict().get("head_dim") is not None and "head_dim" not in overrides:
        hidden = overrides.get("hidden_size", settings["hidden_size"])
        settings["head_dim"] = hidden // overrides.get(
            "num_attention_heads", settings["num_attention_heads"]
        )
    if (getattr(blank, "pad_token_id", None) or 0) >= settings["vocab_size"]:
        settings["pad_token_id"] = 0  # Phi-3's default (32000) is outside a tiny vocabulary
    settings.update(overrides)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **settings)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    if init_std is not None:
        # transformers' init is small; widen it so logits differ clearly between tokens.
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim > 1:
                    p.normal_(0, init_std)
                elif vector_std:
                    p.add_(torch.randn_like(p), alpha=vector_std)
    path.mkdir(parents=True, exist_ok=True)
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **extra)
    if not safetensors:  # the older PyTorch pickle layout
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        for file in path.glob("model*.safetensors*"):
            file.unlink()
    tokenizer = make_tokenizer(config.vocab_size)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    return path


# The Llama family was the first; its callers keep the old name.
save_llama = save_model


QWEN3_SHAPE: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "init_std": None,
    "dtype": "bfloat16",
    "max_shard_size": "2GB",
}

# Shapes for tests, the quick start and benchmarks.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_key_value_heads": 2},
    # TinyLlama-1.1B's shape (random weights): the reference for speed measurements.
    "tinyllama-1.1b": {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "init_std": None,
        "max_shard_size": "2GB",
    },
    # Qwen3-0.6B's shape (random weights): the dense twin of `qwen3-moe-3b-a0.6b`.
    "qwen3-0.6b": {
        "model_type": "qwen3",
        **QWEN3_SHAPE,
        "intermediate_size": 3072,
    },
    # A Qwen3-MoE shape with Qwen3-0.6B's active parameters: 80 experts of width 384, 8 per
    # token (as much as the dense MLP of width 3072); about 3 B parameters in all.
    "qwen3-moe-3b-a0.6b": {
        "model_type": "qwen3_moe",
        **QWEN3_SHAPE,
        "intermediate_size": 3072,
        "num_experts": 80,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 384,
        "norm_topk_prob": True,
    },
}
