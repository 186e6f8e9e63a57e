"""Mixture-of-experts models beyond logit parity (tests/test_parity.py): the kernels read only
the chosen experts, batched decode equals sequential decode, and configs we cannot run are
refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import dequantized_reference, hf_logits, load_hf, quantize_activations_int8
from safetensors.numpy import load_file, save_file
from test_parity import settings as parity_settings

from mlc.build import BuildOptions, build
from mlc.models import get_architecture
from mlc.runtime import CompiledModel
from mlc.testing.random_model import save_model

# 16 experts, one per token: over 9 tokens most experts of a layer go unused.
SPARSE = {
    "model_type": "mixtral",
    "num_key_value_heads": 2,
    "num_local_experts": 16,
    "num_experts_per_tok": 1,
    "intermediate_size": 32,
}
CODE = "q4a8_1"
PROMPT = [5, 17, 42, 99, 123, 7]
FOLLOW = [250, 31, 64]


def chosen_experts(model, token_ids: list[int], layer: int) -> set[int]:
    """The experts transformers' router picks in `layer` for these tokens (all positions)."""
    picked: set[int] = set()

    def hook(_module, _inputs, output):
        picked.update(int(e) for e in output[2].flatten())  # (logits, scores, indices)

    handle = model.model.layers[layer].mlp.gate.register_forward_hook(hook)
    try:
        hf_logits(model, token_ids)
    finally:
        handle.remove()
    return picked


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # NaN to packed ints
def test_unchosen_experts_are_never_read(tmp_path):
    """NaN in every weight of an expert no token chooses: a kernel that read it (a dense
    mixture, or a masked one) would turn the logits into NaN. Quantized (`q4f32_1`), the
    expert's scales are NaN."""
    code = "q4f32_1"
    hf_dir = save_model(tmp_path / "hf", vector_std=0.1, **SPARSE)
    tokens = PROMPT + FOLLOW
    clean = load_hf(hf_dir)
    unchosen = sorted(set(range(16)) - chosen_experts(clean, tokens, layer=0))
    assert unchosen, "every expert was chosen: the check could not fail"
    poisoned_expert = unchosen[0]
    weights = load_file(hf_dir / "model.safetensors")
    prefix = f"model.layers.0.block_sparse_moe.experts.{poisoned_expert}."
    poisoned = [n for n in weights if n.startswith(prefix)]
    assert len(poisoned) == 3
    for name in poisoned:
        weights[name] = np.full_like(weights[name], np.nan)
    save_file(weights, hf_dir / "model.safetensors", metadata={"format": "pt"})

    options = BuildOptions(model=hf_dir, output=tmp_path / "dist", quantization=code, quiet=True)
    built = build(options)
    engine = CompiledModel(built)
    reference = hf_logits(dequantized_reference(hf_dir, code), tokens)  # skips them too
    ours = [engine.prefill(PROMPT)] + [engine.decode(t) for t in FOLLOW[:-1]]
    assert all(np.isfinite(o).all() for o in ours)
    for step, logits in enumerate(ours):
        np.testing.assert_allclose(logits, reference[len(PROMPT) - 1 + step], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("name", "code"),
    [("mixtral", "q0f32"), ("qwen2_moe", "q0f32"), ("qwen3_moe", CODE)],
)
def test_batched_decode_of_8_sequences_equals_sequential(tiny_builds, name, code):
    _, built = tiny_builds.get(name, code, **parity_settings(name))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 300, size=n).astype(np.int32) for n in (3, 9, 5, 12, 1, 7, 4, 8)]
    nexts = [int(t) for t in rng.integers(3, 300, size=8)]
    solo = []
    for prompt, token in zip(prompts, nexts, strict=True):
        engine = CompiledModel(built)
        engine.prefill(prompt)
        solo.append(engine.decode(token))
    batch = CompiledModel(built, max_batch_size=8)
    for seq in range(8):
        if seq:  # sequence 0 exists from the start
            batch.add_sequence(seq)
        batch.forward_prefill([seq], [prompts[seq]])
    together = batch.forward_decode(list(range(8)), nexts)
    np.testing.assert_array_equal(together, np.stack(solo))


def test_q4a8_1_quantized_experts_match_transformers(tiny_builds):
    """Under `q4a8_1` the experts are 4-bit with int8 activations, as the other Linear
    layers: transformers on the dequantized weights and int8-rounded matmul inputs (the
    experts' too), within the int8 tests' 1e-4."""
    hf_dir, built = tiny_builds.get("qwen3_moe", CODE, **parity_settings("qwen3_moe"))
    rng = np.random.default_rng(5)
    prompt, follow = rng.integers(3, 300, 13).tolist(), rng.integers(3, 300, 5).tolist()
    reference_model = quantize_activations_int8(dequantized_reference(hf_dir, CODE), experts=True)
    reference = hf_logits(reference_model, prompt + follow)
    engine = CompiledModel(built)
    ours = [engine.prefill(prompt)] + [engine.decode(t) for t in follow[:-1]]
    np.testing.assert_allclose(np.stack(ours), reference[len(prompt) - 1 : -1], atol=1e-4, rtol=0)
    # The experts' activations really are int8: with float ones the reference moves away.
    float_inputs = quantize_activations_int8(dequantized_reference(hf_dir, CODE))
    moved = hf_logits(float_inputs, prompt)[-1]
    assert np.abs(moved - reference[len(prompt) - 1]).max() > 1e-3
    # And their weights 4-bit: with the float weights the reference moves away.
    float_experts = quantize_activations_int8(dequantized_reference(hf_dir, CODE), experts=True)
    original = dict(load_hf(hf_dir).named_parameters())
    with torch.no_grad():
        for name, param in float_experts.named_parameters():
            if ".experts." in name:
                param.copy_(original[name])
    moved = hf_logits(float_experts, prompt)[-1]
    assert np.abs(moved - reference[len(prompt) - 1]).max() > 1e-2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_local_experts": None, "num_experts": None}, "lacks 'num_experts'"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok 5 is not in 1..4"),
        ({"scoring_func": "sigmoid"}, "scoring_func 'sigmoid' is not supported"),
    ],
)
def test_configs_we_cannot_run_are_refused_naming_the_field(change, message):
    config = {
        "model_type": "mixtral",
        "vocab_size": 320,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_local_experts": 4,
        **change,
    }
    config = {k: v for k, v in config.items() if v is not None}
    arch = get_architecture(config)
    with pytest.raises(ValueError, match=message):
        arch.CONFIG.from_hf(config)


def test_olmoe_clip_qkv_is_refused():
    config = {
        "model_type": "olmoe",
        "vocab_size": 320,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_experts": 4,
        "clip_qkv": 8.0,
    }
    with pytest.raises(ValueError, match="clip_qkv"):
        get_architecture(config).CONFIG.from_hf(config)


def test_expert_weights_are_stacked_per_expert():
    """Our `[experts, 2 * inter, hidden]` holds expert e's gate rows, then its up rows."""
    arch = get_architecture({"model_type": "mixtral"})
    config = arch.CONFIG.from_hf(
        {
            "model_type": "mixtral",
            "vocab_size": 10,
            "hidden_size": 4,
            "intermediate_size": 3,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "num_local_experts": 2,
        }
    )
    source = arch.hf_weight_map(config)["layers.0.mlp.experts_gate_up.weight"]
    arrays = [np.full((3, 4), float(i)) for i in range(4)]  # e0 w1, e0 w3, e1 w1, e1 w3
    assert source.hf_names[:2] == (
        "model.layers.0.block_sparse_moe.experts.0.w1.weight",
        "model.layers.0.block_sparse_moe.experts.0.w3.weight",
    )
    stacked = source.build(arrays)
    assert stacked.shape == (2, 6, 4)
    assert torch.equal(
        torch.from_numpy(stacked[1, 3:]), torch.full((3, 4), 3.0, dtype=torch.float64)
    )
