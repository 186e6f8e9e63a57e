"""Sliding-window attention against transformers at the same window, on conversations longer
than the window: every token stays in the KV cache and the CPU kernels mask by position.

Prefill runs in chunks of 8 tokens, so later chunks attend to cached keys (the paged-prefix
kernel) as well as to themselves, across the window's edge; a second turn does the same after
decoding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import hf_logits, load_hf

from mlc.runtime import CompiledModel

ATOL = 1e-4
WINDOW = 16
CHUNK = {"prefill_chunk_size": 8}

MODELS: dict[str, dict] = {
    # Every layer slides.
    "mistral": {"model_type": "mistral", "num_key_value_heads": 2, "sliding_window": WINDOW},
    # Layers from `max_window_layers` on slide: layer 0 attends to everything, layer 1 slides.
    "qwen2": {
        "model_type": "qwen2",
        "num_key_value_heads": 2,
        "use_sliding_window": True,
        "sliding_window": WINDOW,
        "max_window_layers": 1,
        "vector_std": 0.1,
    },
    "qwen3": {
        "model_type": "qwen3",
        "num_key_value_heads": 2,
        "head_dim": 32,
        "use_sliding_window": True,
        "sliding_window": WINDOW,
        "max_window_layers": 1,
        "vector_std": 0.1,
    },
    # Every layer slides.
    "phi3": {
        "model_type": "phi3",
        "num_key_value_heads": 2,
        "sliding_window": WINDOW,
        "vector_std": 0.1,
    },
    # Even layers slide; attention scores are soft-capped in every layer. (Untied embeddings:
    # tied, the tiny random model just repeats its last input token.)
    "gemma2": {
        "tie_word_embeddings": False,
        "model_type": "gemma2",
        "num_key_value_heads": 2,
        "head_dim": 32,
        "query_pre_attn_scalar": 24,
        "final_logit_softcapping": 5.0,
        "attn_logit_softcapping": 50.0,
        "sliding_window": WINDOW,
        "vector_std": 0.1,
    },
}


def build(tiny_builds, name: str):
    hf_dir, built = tiny_builds.get(f"{name}-window", build_options=CHUNK, **MODELS[name])
    return load_hf(hf_dir), CompiledModel(built)


@pytest.mark.parametrize("name", list(MODELS))
def test_chunked_prefill_decode_and_second_turn_match_transformers(tiny_builds, name):
    hf, engine = build(tiny_builds, name)
    assert engine.context_window_size > 4 * WINDOW
    rng = np.random.default_rng(3)
    tokens = rng.integers(3, hf.config.vocab_size, size=70).tolist()
    reference = hf_logits(hf, tokens)
    # Turn 1: 37 tokens in 5 chunks, then 6 decode steps; turn 2: 20 tokens, then 6 steps.
    ours = [engine.prefill(tokens[:37], all_logits=True)]
    ours += [engine.decode(t)[None] for t in tokens[37:43]]
    ours.append(engine.prefill(tokens[43:63], all_logits=True))
    ours += [engine.decode(t)[None] for t in tokens[63:69]]
    errors = np.abs(np.concatenate(ours) - reference[:69]).max(axis=-1)
    assert errors.max() <= ATOL, errors
    # The window matters: full attention differs from it past the window.
    full = full_attention_logits(hf, tokens)
    assert np.abs(full[WINDOW + 4 :] - reference[WINDOW + 4 :]).max() > 100 * ATOL


@torch.no_grad()
def full_attention_logits(hf, tokens: list[int]) -> np.ndarray:
    """transformers' logits with a window wider than `tokens` (changes `hf`)."""
    wide = 10 * len(tokens)
    hf.config.sliding_window = wide
    for layer in hf.model.layers:
        if getattr(layer.self_attn, "sliding_window", None):
            layer.self_attn.sliding_window = wide
    return hf(torch.tensor([tokens]), use_cache=False).logits[0].numpy()


@torch.no_grad()
@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_generation_past_the_window_matches_transformers(tiny_builds, name):
    """32 greedy tokens after a 12-token prompt with a window of 16 (transformers' generate
    with its sliding-window KV cache; end-of-sequence forbidden on both sides)."""
    hf, engine = build(tiny_builds, name)
    prompt = list(range(5, 17))
    eos = hf.config.eos_token_id
    out = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=32,
        min_new_tokens=32,
        do_sample=False,
        pad_token_id=0,
    )
    reference = out[0, len(prompt) :].tolist()
    logits = engine.prefill(prompt)
    ours = []
    for _ in range(32):
        logits[eos] = -np.inf
        ours.append(int(logits.argmax()))
        logits = engine.decode(ours[-1])
    assert ours == reference
    assert len(set(ours)) > 4, ours  # not a degenerate repetition
