"""Group quantization: packing, fused kernels, sizes, and parity with transformers running the
dequantized weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tvm
from reference import dequantized_reference, hf_greedy, hf_logits, load_hf

from mlc import ChatModule, GenerationConfig
from mlc.quantization import QUANTIZATIONS, get_quantization
from mlc.quantization.group_quant import GroupQuantization
from mlc.runtime import CompiledModel

GROUP_CODES = ["q4f16_1", "q4f32_1", "q3f16_1", "q8f16_1"]
GQA = {"num_key_value_heads": 2}
# K = 100 and 150 are multiples of neither 32 nor 40: every layer needs padding.
RAGGED_K = {
    "hidden_size": 100,
    "num_attention_heads": 5,
    "num_key_value_heads": 1,
    "intermediate_size": 150,
}
# fp32 everywhere: only summation order differs.
F32_ATOL = 1e-4
# fp16 activations: every op rounds to 11 significant bits (relative 4.9e-4). A logit passes
# through about a dozen rounded ops per layer (norm, projections, attention, residuals), so
# errors of a few 1e-3 of the logit range are expected; measured 0.2-0.5 %. We allow 1 %.
F16_TOL_OF_RANGE = 1e-2


def tolerance(code: str, reference: np.ndarray) -> float:
    if get_quantization(code).model_dtype == "float32":
        return F32_ATOL
    return F16_TOL_OF_RANGE * float(np.abs(reference).max())


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 40), (8, 32)])
@pytest.mark.parametrize("shape", [(7, 45), (3, 97), (1, 8), (5, 320)])
def test_pack_unpack_round_trip(bits, group, shape):
    scheme = GroupQuantization("t", "float32", bits=bits, group_size=group, scale_dtype="float32")
    rng = np.random.default_rng(0)
    kp = scheme.padded_k(shape[1])
    q = rng.integers(0, 2**bits, size=(shape[0], kp)).astype(np.uint32)
    words = scheme.pack(q)
    assert words.dtype == np.uint32 and words.shape == (shape[0], kp // (32 // bits))
    np.testing.assert_array_equal(scheme.unpack(words), q)


@pytest.mark.parametrize("shape", [(7, 45), (5, 320), (3, 600), (2, 1100)])
def test_q4a8_stores_the_same_words_transposed_in_blocks(shape):
    """q4a8_1 packs like q4f16_1 and then moves words (those of each block of 16 groups)."""
    scheme, plain = get_quantization("q4a8_1"), get_quantization("q4f16_1")
    kp = scheme.padded_k(shape[1])
    q = np.random.default_rng(0).integers(0, 16, size=(shape[0], kp)).astype(np.uint32)
    words, plain_words = scheme.pack(q), plain.pack(q)
    np.testing.assert_array_equal(scheme.unpack(words), q)
    np.testing.assert_array_equal(np.sort(words, axis=1), np.sort(plain_words, axis=1))
    assert np.array_equal(words, plain_words) == (kp < 512)  # blocks exist from 512 values on


@pytest.mark.parametrize("code", GROUP_CODES)
def test_quantize_matches_the_definition(code):
    scheme = get_quantization(code)
    w = np.random.default_rng(1).normal(size=(6, 77)).astype(np.float32)
    q_weight, q_scale = scheme.quantize_weight(w)
    kp = scheme.padded_k(77)
    assert q_weight.shape == (6, kp // scheme.elems_per_word)
    assert q_scale.shape == (6, kp // scheme.group_size) and q_scale.dtype == scheme.scale_dtype
    padded = np.zeros((6, kp), np.float32)
    padded[:, :77] = w
    groups = padded.reshape(6, -1, scheme.group_size)
    expect_scale = np.abs(groups).max(-1) / scheme.max_int
    np.testing.assert_allclose(q_scale.astype(np.float32), expect_scale, rtol=1e-3)
    q = scheme.unpack(q_weight).astype(np.int64)
    assert q.min() >= 0 and q.max() <= 2 * scheme.max_int
    w_deq = scheme.dequantize_weight(q_weight, q_scale, 77)
    step = np.repeat(q_scale.astype(np.float32), scheme.group_size, axis=1)[:, :77]
    assert np.all(np.abs(w_deq - w) <= step / 2 + 1e-6)


def test_every_code_is_registered():
    assert {"q0f32", "q0f16", *GROUP_CODES} <= set(QUANTIZATIONS)
    assert get_quantization("q4f16_1").elems_per_word == 8
    assert get_quantization("q3f16_1").elems_per_word == 10
    assert get_quantization("q8f16_1").elems_per_word == 4


@pytest.mark.parametrize("code", [*GROUP_CODES, "q0f16"])
def test_logits_match_transformers_on_dequantized_weights(tiny_builds, code):
    hf_dir, built = tiny_builds.get("gqa", quantization=code, **GQA)
    reference_model = dequantized_reference(hf_dir, code)
    rng = np.random.default_rng(2)
    prompt, follow = rng.integers(3, 320, 14).tolist(), rng.integers(3, 320, 5).tolist()
    reference = hf_logits(reference_model, prompt + follow)
    atol = tolerance(code, reference)
    engine = CompiledModel(built)
    errors = [np.abs(engine.prefill(prompt) - reference[len(prompt) - 1]).max()]
    for step, token in enumerate(follow[:-1]):
        errors.append(np.abs(engine.decode(token) - reference[len(prompt) + step]).max())
    assert max(errors) <= atol, (code, errors, atol)
    if code in ("q4f16_1", "q3f16_1"):
        # The check can tell the quantized weights from the original ones.
        original = hf_logits(load_hf(hf_dir), prompt)[-1]
        assert np.abs(original - reference[len(prompt) - 1]).max() > 3 * atol


@pytest.mark.parametrize(
    "code,config", [("q4f32_1", "ragged-k"), ("q3f16_1", "ragged-k"), ("q4f32_1", "tied")]
)
def test_padding_and_tied_quantized_lm_head(tiny_builds, code, config):
    settings = RAGGED_K if config == "ragged-k" else {**GQA, "tie_word_embeddings": True}
    hf_dir, built = tiny_builds.get(config, quantization=code, **settings)
    reference = hf_logits(dequantized_reference(hf_dir, code), list(range(5, 25)))
    engine = CompiledModel(built)
    ours = [engine.prefill(list(range(5, 20)))]
    ours += [engine.decode(t) for t in range(20, 24)]
    np.testing.assert_allclose(
        np.stack(ours), reference[14:19], atol=tolerance(code, reference), rtol=0
    )


def test_q4f32_1_greedy_generation_matches_transformers(tiny_builds):
    hf_dir, built = tiny_builds.get("gqa", quantization="q4f32_1", **GQA)
    cm = ChatModule(str(built))
    cm.generate("Once upon a time", GenerationConfig(temperature=0, max_tokens=32))
    prompt_ids = [1, *cm.tokenizer.encode("Once upon a time", add_special_tokens=False).ids]
    reference_model = dequantized_reference(hf_dir, "q4f32_1")
    reference = hf_greedy(reference_model, prompt_ids, 32)
    ours = cm.last_output_ids
    if len(ours) < 32:
        assert reference[len(ours)] == reference_model.config.eos_token_id
    assert ours == reference[: len(ours)] and len(ours) >= 8


def test_tensor_cache_records_sizes_and_q4_costs_4_5_bits(tiny_builds):
    hf_dir, built = tiny_builds.get("gqa", quantization="q4f16_1", **GQA)
    cache = json.loads((built / "tensor-cache.json").read_text())
    meta = cache["metadata"]
    records = [r for shard in cache["records"] for r in shard["records"]]
    assert meta["ParamBytes"] == sum(r["nbytes"] for r in records)
    assert meta["BitsPerParam"] == pytest.approx(8 * meta["ParamBytes"] / meta["ParamSize"])
    quantized_bytes = sum(
        r["nbytes"] for r in records if r["name"].endswith(("q_weight", "q_scale"))
    )
    quantized_params = sum(
        r["shape"][0] * r["shape"][1] * 8 for r in records if r["name"].endswith("q_weight")
    )
    assert 8 * quantized_bytes / quantized_params == pytest.approx(4.5, rel=0.05)
    # ParamSize counts the model's parameters (before quantization) once each.
    hf_params = sum(p.numel() for p in load_hf(hf_dir).parameters())
    assert meta["ParamSize"] == hf_params
    config = json.loads((built / "mlc-chat-config.json").read_text())
    assert config["quantization"] == "q4f16_1"
    assert "embedding" in config["quantization_scheme"]["quantized"]


def _compiled_prim_funcs(built) -> dict[str, tvm.tirx.PrimFunc]:
    """The scheduled TIR of a build, re-lowered from the same model and pipeline."""
    from mlc.compiler import attach_shape_bounds, export_model
    from mlc.models import llama
    from mlc.pipeline import relax_pipeline
    from mlc.targets import get_target

    config = json.loads((built / "mlc-chat-config.json").read_text())
    scheme = get_quantization(config["quantization"])
    model_config = llama.LlamaConfig.from_dict(config["model_config"])
    model = scheme.quantize_model(llama.LlamaForCausalLM(model_config, scheme.model_dtype))
    preset = get_target("llvm")
    target = preset.tvm_target()
    mod, _ = export_model(model, target)
    mod = relax_pipeline(preset, target)(attach_shape_bounds(mod, 64, 1))
    return {g.name_hint: f for g, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("code", ["q4f16_1", "q3f16_1"])
def test_no_dequantize_kernel_stands_alone(tiny_builds, code):
    _, built = tiny_builds.get("gqa", quantization=code, **GQA)
    funcs = _compiled_prim_funcs(built)
    scheme = get_quantization(code)
    readers = {}
    for name, func in funcs.items():
        text = func.script()
        packed = re.findall(r'\w+: T\.Buffer\(\(([^"]*)\), "uint32"\)', text)
        if packed:
            readers[name] = (text, [_extents(dims) for dims in packed])
    # qkv, o, gate_up, down (in prefill and in decode), the LM head twice, the embedding.
    assert len(readers) >= 9, sorted(readers)
    for name, (text, packed_shapes) in readers.items():
        is_lookup = "dequantize_take" in name
        reduces = "T.axis.reduce" in text or re.search(r'T\.axis\.remap\("[SR]*R', text)
        assert is_lookup or reduces, f"{name} dequantizes without a matmul"
        # No kernel allocates a buffer as large as the dequantized weight: nothing materialised.
        weight_elements = max(np.prod(shape) for shape in packed_shapes) * scheme.elems_per_word
        for dims in re.findall(r"alloc_buffer\(\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            assert np.prod(_extents(dims)) < weight_elements, f"{name} allocates ({dims})"
    assert not [n for n in funcs if n.startswith("dequantize") and n not in readers]


def _extents(dims: str) -> list[int]:
    """Static extents of a TVMScript shape (symbolic extents count as 1)."""
    found = re.findall(r"T\.int64\((\d+)\)|(?<![\w.])(\d+)(?![\w.(])", dims)
    return [int(a or b) for a, b in found] or [1]
