"""Every architecture against transformers on the same random weights: prefill and decode logits
(fp32 and q4f32_1 against the dequantized weights) and greedy generation.

Adding an architecture is adding a model file and one entry to `ARCHITECTURES`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import dequantized_reference, hf_greedy, hf_logits, load_hf

from mlc import ChatModule, GenerationConfig
from mlc.runtime import CompiledModel

# fp32 on both sides; the differences are summation order and LLVM fast-math reassociation.
ATOL = 1e-4
NUM_DECODE_STEPS = 6

# 12 heads: the last 4 ALiBi slopes (odd powers of 2^-0.5) are not exact in bfloat16, where
# transformers makes the bias.
FALCON_RW = {
    "model_type": "falcon",
    "alibi": True,
    "multi_query": False,
    "parallel_attn": False,
    "bias": True,
    "hidden_size": 96,
    "num_attention_heads": 12,
}

# One entry per architecture: logits (fp32 and q4f32_1) and greedy generation.
# name → tiny `config.json` settings (`model_type` included) on top of `TINY_SETTINGS`.
ARCHITECTURES: dict[str, dict] = {
    "gqa": {"model_type": "llama", "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "num_key_value_heads": 2, "sliding_window": None},
    "qwen2": {"model_type": "qwen2", "num_key_value_heads": 2},
    "qwen3": {"model_type": "qwen3", "num_key_value_heads": 2, "head_dim": 32},
    "gemma": {"model_type": "gemma", "num_key_value_heads": 1, "head_dim": 32},
    # Attention soft-capping: see the test below.
    "gemma2": {
        "model_type": "gemma2",
        "num_key_value_heads": 2,
        "head_dim": 32,
        "query_pre_attn_scalar": 24,
        "final_logit_softcapping": 5.0,
        "attn_logit_softcapping": None,
        "sliding_window": 64,
    },
    "phi3": {"model_type": "phi3", "num_key_value_heads": 2},
    "stablelm": {"model_type": "stablelm", "num_key_value_heads": 2, "use_qkv_bias": True},
    "gpt_neox": {"model_type": "gpt_neox", "rotary_pct": 0.5},
    "gpt2": {"model_type": "gpt2"},
    "phi": {"model_type": "phi", "num_key_value_heads": 2},
    "gpt_bigcode": {"model_type": "gpt_bigcode"},
    "gptj": {"model_type": "gptj", "rotary_dim": 8},
    # Falcon-7B's layout: multi-query, parallel attention under one norm.
    "falcon": {"model_type": "falcon"},
    # Falcon-RW's layout: ALiBi instead of rotary, MHA, sequential block, biases (more in
    # tests/test_cpu_kernels.py).
    "falcon-rw-alibi": FALCON_RW,
    # Granite's four multipliers, away from 1 so that each one shows.
    "granite": {
        "model_type": "granite",
        "num_key_value_heads": 2,
        "embedding_multiplier": 3.0,
        "residual_multiplier": 0.4,
        "attention_multiplier": 0.09,
        "logits_scaling": 2.5,
    },
    # StableLM 2 12B's per-head LayerNorm of queries and keys (a weight per head).
    "stablelm-qk-layernorm": {
        "model_type": "stablelm",
        "num_key_value_heads": 2,
        "qk_layernorm": True,
        "use_parallel_residual": True,
    },
    "olmo2": {"model_type": "olmo2", "num_key_value_heads": 2},
    # Layer 1 attends without RoPE (NoPE).
    "smollm3": {"model_type": "smollm3", "num_key_value_heads": 2, "no_rope_layers": [1, 0]},
    # Mixtures of experts: the router's top k of 4 experts, a dense layer among sparse ones.
    "mixtral": {"model_type": "mixtral", "num_key_value_heads": 2, "num_local_experts": 4},
    "qwen3_moe": {
        "model_type": "qwen3_moe",
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 48,
        "norm_topk_prob": True,
        "mlp_only_layers": [1],
    },
    # A shared expert beside the routed ones, gated by a sigmoid.
    "qwen2_moe": {
        "model_type": "qwen2_moe",
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 48,
        "shared_expert_intermediate_size": 96,
    },
    "olmoe": {
        "model_type": "olmoe",
        "num_key_value_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
    },
    # A sliding layer (local RoPE base) with a window shorter than the prompt, then a global one.
    "gemma3": {
        "model_type": "gemma3_text",
        "num_key_value_heads": 2,
        "head_dim": 32,
        "query_pre_attn_scalar": 24,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
    },
}

PHI3_LONGROPE = {
    "model_type": "phi3",
    "num_key_value_heads": 2,
    "rope_scaling": {
        "rope_type": "longrope",
        "short_factor": [1.0 + 0.1 * i for i in range(8)],
        "long_factor": [2.0 + 0.5 * i for i in range(8)],
    },
}

# Other options of those architectures, checked on fp32 logits only.
VARIANTS: dict[str, dict] = {
    "mha": {},
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
    # Qwen3 with YaRN as its model card enables it (the factor, the original context; defaults
    # for the rest): rotated in the model, since the cache has no YaRN.
    "qwen3-yarn-rope-scaling": {
        **ARCHITECTURES["qwen3"],
        "rope_theta": 1000.0,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    },
    "odd-sizes": {
        "hidden_size": 320,
        "num_attention_heads": 5,
        "num_key_value_heads": 5,
        "intermediate_size": 864,
        "vocab_size": 301,
    },
    "attention-and-mlp-bias": {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 2},
    "stablelm-parallel": {
        "model_type": "stablelm",
        "partial_rotary_factor": 0.5,
        "use_parallel_residual": True,
    },
    # LongRoPE (Phi-3-mini-128k): all positions within the original 20 (short factors) here.
    "phi3-longrope": {"original_max_position_embeddings": 20, **PHI3_LONGROPE},
    # Past the original 8 from the start: long factors throughout.
    "phi3-longrope-long": {"original_max_position_embeddings": 8, **PHI3_LONGROPE},
    "gpt_neox-sequential": {"model_type": "gpt_neox", "use_parallel_residual": False},
    "gpt_bigcode-mha": {"model_type": "gpt_bigcode", "multi_query": False},
    # Falcon-40B's layout: grouped per key/value head, separate norms for attention and MLP.
    "falcon-new-architecture": {
        "model_type": "falcon",
        "new_decoder_architecture": True,
        "num_kv_heads": 2,
        "bias": True,
    },
    "falcon-sequential-mha": {"model_type": "falcon", "multi_query": False, "parallel_attn": False},
    # Gemma 2 2B/9B's head_dim 256 with soft-capping and a window: the CPU attention kernels'
    # unrolled head loops at their largest (a build once took minutes there).
    "gemma2-head-dim-256": {
        **ARCHITECTURES["gemma2"],
        "head_dim": 256,
        "attn_logit_softcapping": 50.0,
        "sliding_window": 8,
    },
    # Phi's one LayerNorm (with bias) shared by the heads of the queries, one by the keys.
    "phi-qk-layernorm": {"model_type": "phi", "num_key_value_heads": 2, "qk_layernorm": True},
    "mixtral-8-experts-top-1": {
        "model_type": "mixtral",
        "num_key_value_heads": 2,
        "num_local_experts": 8,
        "num_experts_per_tok": 1,
    },
    "qwen3_moe-unnormalised-top-3": {
        **ARCHITECTURES["qwen3_moe"],
        "num_experts_per_tok": 3,
        "norm_topk_prob": False,
        "mlp_only_layers": [],
    },
    # The NoPE layer slides (a window shorter than the prompt) and the RoPE one does not.
    "smollm3-sliding-nope": {
        **ARCHITECTURES["smollm3"],
        "use_sliding_window": True,
        "sliding_window": 8,
        "rope_theta": 10000.0,
    },
    # YaRN on the layers that rotate (SmolLM3's long context); the NoPE layer stays unrotated.
    "smollm3-yarn": {
        **ARCHITECTURES["smollm3"],
        "rope_theta": 1000.0,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": 32,
        },
    },
    # Linear scaling on the global layer only, softcapped logits, the local layer first.
    "gemma3-linear-rope-scaling": {
        **ARCHITECTURES["gemma3"],
        "layer_types": ["full_attention", "sliding_attention"],
        "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        "final_logit_softcapping": 5.0,
    },
}
ALL_CONFIGS = {**ARCHITECTURES, **VARIANTS}
# Builds other test files share keep their plain weights; ours get noisy biases and norms.
SHARED_BUILDS = ("gqa", "mha")


def settings(name: str) -> dict:
    return ALL_CONFIGS[name] if name in SHARED_BUILDS else {**ALL_CONFIGS[name], "vector_std": 0.1}


GREEDY_PROMPTS = ["Once upon a time", "The quick brown fox", "def add(a, b):", "In the beginning"]


def logit_errors(engine: CompiledModel, reference_model, seed: int = 1) -> list[float]:
    """Max |ours - reference| after a 13-token prefill and each of 5 decode steps; asserts the
    reference logits are far from flat, so that the comparison can fail."""
    vocab = reference_model.config.vocab_size
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, vocab, size=13).tolist()
    follow = rng.integers(3, vocab, size=NUM_DECODE_STEPS).tolist()
    reference = hf_logits(reference_model, prompt + follow)
    assert reference[len(prompt) - 1 :].std(axis=-1).min() > 0.1
    errors = [np.abs(engine.prefill(prompt) - reference[len(prompt) - 1]).max()]
    for step, token in enumerate(follow[:-1]):
        errors.append(np.abs(engine.decode(token) - reference[len(prompt) + step]).max())
    return [float(e) for e in errors]


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_prefill_and_decode_logits_match_transformers(tiny_builds, name):
    hf_dir, built = tiny_builds.get(name, **settings(name))
    errors = logit_errors(CompiledModel(built), load_hf(hf_dir))
    assert max(errors) <= ATOL, errors


@pytest.mark.parametrize("name", [*ARCHITECTURES, "odd-sizes"])
def test_greedy_generation_matches_transformers(tiny_builds, name):
    hf_dir, built = tiny_builds.get(name, **settings(name))
    hf = load_hf(hf_dir)
    cm = ChatModule(str(built))
    lengths = []
    # A random model may end at once: try prompts until one runs long enough to mean something.
    for prompt in GREEDY_PROMPTS:
        cm.reset_chat()
        cm.generate(prompt, GenerationConfig(temperature=0, max_tokens=32))
        prompt_ids = [1, *cm.tokenizer.encode(prompt, add_special_tokens=False).ids]
        reference = hf_greedy(hf, prompt_ids, 32)
        ours = cm.last_output_ids
        assert ours == reference[: len(ours)], prompt
        if len(ours) < 32:  # stopped at EOS (`hf_greedy` forbids it): transformers' next pick too
            assert hf_logits(hf, prompt_ids + ours)[-1].argmax() == hf.config.eos_token_id
        lengths.append(len(ours))
        if len(ours) >= 16:
            break
    assert max(lengths) >= 16, lengths


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_q4f32_1_logits_match_transformers_on_dequantized_weights(tiny_builds, name):
    hf_dir, built = tiny_builds.get(name, quantization="q4f32_1", **settings(name))
    reference_model = dequantized_reference(hf_dir, "q4f32_1")
    errors = logit_errors(CompiledModel(built), reference_model, seed=2)
    assert max(errors) <= ATOL, errors
    # The reference really runs the quantized weights: they change the logits.
    original = logit_errors(CompiledModel(built), load_hf(hf_dir), seed=2)
    assert max(original) > 10 * ATOL, original


def test_gemma2_attention_soft_capping_is_exact(tiny_builds):
    """Gemma 2 caps attention scores at 50 (`50 * tanh(score / 50)`): our CPU kernels do too.
    (Sliding windows: tests/test_sliding_window.py.)"""
    softcap = {**settings("gemma2"), "attn_logit_softcapping": 50.0}
    hf_dir, built = tiny_builds.get("gemma2-attention-softcap", **softcap)
    engine = CompiledModel(built)
    errors = logit_errors(engine, load_hf(hf_dir))
    assert max(errors) <= ATOL, errors
    # The cap matters: transformers without it differs.
    uncapped = load_hf(hf_dir)
    uncapped.config.attn_logit_softcapping = None
    for layer in uncapped.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    engine.reset()
    assert max(logit_errors(engine, uncapped)) > 10 * ATOL


def test_q4f16_1_layer_norm_architecture_within_fp16_tolerance(tiny_builds):
    """fp16 activations with LayerNorm, learned positions and a GELU MLP (GPT-2): within 1 % of
    the logit range of transformers on the dequantized weights, as for Llama."""
    hf_dir, built = tiny_builds.get("gpt2", quantization="q4f16_1", **settings("gpt2"))
    reference_model = dequantized_reference(hf_dir, "q4f16_1")
    reference = hf_logits(reference_model, list(range(5, 25)))
    engine = CompiledModel(built)
    ours = [engine.prefill(list(range(5, 20)))] + [engine.decode(t) for t in range(20, 24)]
    tolerance = 1e-2 * float(np.abs(reference).max())
    np.testing.assert_allclose(np.stack(ours), reference[14:19], atol=tolerance, rtol=0)


@torch.no_grad()
def test_longrope_switches_to_the_long_factors_past_the_original_window(tiny_builds):
    """Each forward pass reaching past `original_max_position_embeddings` (20) rotates with the
    long factors, as transformers' forward with a KV cache does. (Its `generate` instead drops
    the cache at the crossing and re-prefills everything with the long factors.)"""
    hf_dir, built = tiny_builds.get("phi3-longrope", **settings("phi3-longrope"))
    hf = load_hf(hf_dir)
    tokens = list(range(3, 30))
    engine = CompiledModel(built)
    ours = [engine.prefill(tokens[:12])] + [engine.decode(t) for t in tokens[12:]]
    out = hf(torch.tensor([tokens[:12]]), use_cache=True)
    reference = [out.logits[0, -1].numpy()]
    for token in tokens[12:]:
        out = hf(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        reference.append(out.logits[0, -1].numpy())
    np.testing.assert_allclose(np.stack(ours), np.stack(reference), atol=ATOL, rtol=0)
    # Past the crossing the long factors matter: a one-shot forward (all long) differs.
    assert np.abs(ours[-1] - hf_logits(hf, tokens)[-1]).max() > 0.1


# YaRN settings: the tiny model's, Qwen2.5's card (factor 4 over 32,768), and every optional
# field (betas, no truncation, an explicit attention factor; DeepSeek's mscale pair).
YARN_CASES = [
    (1000.0, 32, 32, {"factor": 4.0, "original_max_position_embeddings": 32}),
    (1e6, 128, 32768, {"factor": 4.0, "original_max_position_embeddings": 32768}),
    (
        1e4,
        64,
        4096,
        {
            "factor": 2.0,
            "beta_fast": 16,
            "beta_slow": 2,
            "truncate": False,
            "attention_factor": 1.5,
        },
    ),
    (1e4, 64, 4096, {"factor": 8.0, "mscale": 1.0, "mscale_all_dim": 0.707}),
]


@pytest.mark.parametrize("case", range(len(YARN_CASES)))
def test_yarn_frequencies_match_transformers(case):
    """Our YaRN inverse frequencies and cos/sin factor against transformers' own, to float32
    rounding (numpy's and torch's `pow` may differ by an ulp); the ramp must show: some
    frequencies kept, some divided by the factor."""
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mlc.models.layers import complete_yarn
    from mlc.models.rotary import rope_inv_freq, yarn_parameters

    theta, head_dim, context, fields = YARN_CASES[case]
    scaling = {"rope_type": "yarn", **fields}
    config = Qwen2Config(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=context,
        rope_parameters={"rope_theta": theta, **scaling},
    )
    reference, reference_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    ours, factor = yarn_parameters(theta, head_dim, complete_yarn(scaling, {}, context))
    np.testing.assert_allclose(ours, reference.numpy(), rtol=3e-7, atol=0)
    assert factor == pytest.approx(reference_factor, rel=1e-12)
    plain = rope_inv_freq(theta, head_dim, [1.0] * (head_dim // 2))
    assert np.isclose(ours[0], plain[0], rtol=1e-6)
    assert np.isclose(ours[-1], plain[-1] / scaling["factor"], rtol=1e-6)
