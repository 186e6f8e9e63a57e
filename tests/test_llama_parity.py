"""Logits and greedy tokens of our CPU build against transformers on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from reference import hf_greedy, hf_logits, load_hf

from mlc import ChatModule, GenerationConfig
from mlc.runtime import CompiledModel

# fp32 on both sides; the differences are summation order and LLVM fast-math reassociation.
ATOL = 1e-4

CONFIGS = {
    "mha": {},
    "gqa": {"num_key_value_heads": 2},
    "mqa-tied-embeddings": {"num_key_value_heads": 1, "tie_word_embeddings": True},
    "llama3-rope-scaling": {
        "num_key_value_heads": 2,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    },
    "linear-rope-scaling": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "odd-sizes": {
        "hidden_size": 320,
        "num_attention_heads": 5,
        "num_key_value_heads": 5,
        "intermediate_size": 864,
        "vocab_size": 301,
    },
    "attention-and-mlp-bias": {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "num_key_value_heads": 2, "sliding_window": None},
}
NUM_DECODE_STEPS = 6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_and_decode_logits_match_transformers(tiny_builds, name):
    hf_dir, built = tiny_builds.get(name, **CONFIGS[name])
    hf = load_hf(hf_dir)
    vocab = hf.config.vocab_size
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, vocab, size=13).tolist()
    follow = rng.integers(3, vocab, size=NUM_DECODE_STEPS).tolist()
    reference = hf_logits(hf, prompt + follow)

    engine = CompiledModel(built)
    ours = engine.prefill(prompt)
    np.testing.assert_allclose(ours, reference[len(prompt) - 1], atol=ATOL, rtol=0)
    for step, token in enumerate(follow[:-1]):
        ours = engine.decode(token)
        np.testing.assert_allclose(
            ours, reference[len(prompt) + step], atol=ATOL, rtol=0, err_msg=f"decode step {step}"
        )
    # The check must be able to fail: the logits are far from flat.
    assert reference.std() > 0.1


@pytest.mark.parametrize("name", ["gqa", "odd-sizes"])
def test_greedy_generation_matches_transformers(tiny_builds, name):
    hf_dir, built = tiny_builds.get(name, **CONFIGS[name])
    hf = load_hf(hf_dir)
    cm = ChatModule(str(built))
    cm.generate("Once upon a time", GenerationConfig(temperature=0, max_tokens=32))
    prompt_ids = [1, *cm.tokenizer.encode("Once upon a time", add_special_tokens=False).ids]
    reference = hf_greedy(hf, prompt_ids, 32)
    ours = cm.last_output_ids
    if len(ours) < 32:  # stopped at EOS: transformers must have produced it there too
        assert reference[len(ours)] == hf.config.eos_token_id
    assert ours == reference[: len(ours)]
    assert len(ours) >= 8
