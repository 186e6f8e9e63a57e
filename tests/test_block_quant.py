"""`q4a8_2`: full-precision weights quantized into GGML blocks (Q4_1 with searched scale and
minimum, Q8_0 for the embedding and head). The blocks against the `gguf` package's decoder and
its reference quantizer; the built model against transformers running the same weights."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from reference import hf_logits, load_hf, quantize_activations_int8
from test_gguf import max_logit_error

from mlc.build import BuildOptions, build
from mlc.quantization import get_quantization
from mlc.quantization.block_search import encode_q4_1, encode_q8_0
from mlc.quantization.ggml_blocks import FORMATS
from mlc.runtime import CompiledModel

GQA = {"num_key_value_heads": 2}
Q4_1, Q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0


def _weights(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "normal":
        return (rng.standard_normal((96, 576)) * 0.02).astype(np.float32)
    return (rng.standard_t(3, (96, 576)) * 0.02).astype(np.float32)  # heavy tails


def _ours(fmt: str, blocks: np.ndarray) -> np.ndarray:
    return FORMATS[fmt].dequantize(FORMATS[fmt].from_ggml_blocks(blocks))


@pytest.mark.parametrize("kind", ["normal", "heavy-tailed"])
def test_searched_q4_1_blocks_are_gguf_blocks_and_beat_min_max(kind):
    w = _weights(kind)
    blocks = encode_q4_1(w)
    decoded = gguf.quants.dequantize(blocks.reshape(len(w), -1), Q4_1)
    np.testing.assert_array_equal(decoded, _ours("Q4_1", blocks))  # the bytes mean one thing
    # The gguf package's quantizer is llama.cpp's reference: m = min, d = (max - min) / 15.
    plain = gguf.quants.dequantize(gguf.quants.quantize(w, Q4_1), Q4_1)
    rms = lambda v: float(np.sqrt(((v - w) ** 2).mean()))  # noqa: E731
    assert rms(decoded) < 0.95 * rms(plain), (rms(decoded), rms(plain))
    # Never worse block by block, by the weighted error the search minimises.
    x = w.reshape(len(w), -1, 32)
    weight = np.abs(x).mean(-1, keepdims=True) + np.abs(x)
    ours_err = (weight * (decoded.reshape(x.shape) - x) ** 2).sum(-1)
    plain_err = (weight * (plain.reshape(x.shape) - x) ** 2).sum(-1)
    assert np.all(ours_err <= plain_err * (1 + 1e-6))


def test_q8_0_blocks_are_gguf_blocks_within_half_a_step():
    w = _weights("normal")
    blocks = encode_q8_0(w)
    decoded = gguf.quants.dequantize(blocks.reshape(len(w), -1), Q8_0)
    np.testing.assert_array_equal(decoded, _ours("Q8_0", blocks))
    step = np.repeat(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32), 32, 1)
    assert np.all(np.abs(decoded - w) <= step / 2 * (1 + 1e-6))


def test_q4a8_2_model_matches_transformers_on_its_weights(tiny_builds):
    hf_dir, built = tiny_builds.get("gqa", "q4a8_2", **GQA)
    reference = load_hf(hf_dir)
    head = {"model.embed_tokens.weight", "lm_head.weight"}
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if param.ndim == 2:
                fmt, encode = ("Q8_0", encode_q8_0) if name in head else ("Q4_1", encode_q4_1)
                w = param.numpy().astype(np.float32)
                param.copy_(torch.from_numpy(_ours(fmt, encode(w)).astype(np.float64)))
    prompt = list(range(7, 40))
    plain = hf_logits(reference, prompt)
    expected = hf_logits(quantize_activations_int8(reference), prompt)
    # Prefill, then decode step by step: within 1e-4 of the reference at every position.
    max_logit_error(built, expected, prompt, split=20)
    # The comparison can fail: without the int8 activations the logits move far more.
    assert np.abs(plain - expected).max() > 1e-2


def test_q4a8_2_is_closer_to_the_float_model_than_q4a8_1(tiny_builds):
    """Same weights, same activations: the asymmetric, searched blocks lose less."""
    prompt = np.random.default_rng(3).integers(3, 320, 60).tolist()
    logits = {
        code: CompiledModel(tiny_builds.get("gqa", code, **GQA)[1])
        .prefill(prompt, all_logits=True)
        .astype(np.float64)
        for code in ("q0f32", "q4a8_1", "q4a8_2")
    }

    def kl(code: str) -> float:
        p = logits["q0f32"] - np.logaddexp.reduce(logits["q0f32"], -1, keepdims=True)
        q = logits[code] - np.logaddexp.reduce(logits[code], -1, keepdims=True)
        return float((np.exp(p) * (p - q)).sum(-1).mean())

    assert kl("q4a8_2") < 0.7 * kl("q4a8_1"), (kl("q4a8_2"), kl("q4a8_1"))


def test_q4a8_2_is_refused_for_gpu_targets(tiny_builds, tmp_path):
    hf_dir, _ = tiny_builds.get("gqa", **GQA)
    options = BuildOptions(
        model=hf_dir, quantization="q4a8_2", target="vulkan", output=tmp_path, quiet=True
    )
    with pytest.raises(ValueError, match="q4a8_2 runs on the CPU targets .* use --quantization"):
        build(options)
    assert get_quantization("q4a8_2").cpu_only and not get_quantization("q4f16_1").cpu_only


def test_q4a8_2_experts_are_q4_1_blocks(tiny_builds):
    """A mixture of experts under `q4a8_2`: every expert stack becomes searched `Q4_1` blocks
    (the router stays float), multiplied by the gather kernel with int8 activations; against
    transformers running the blocks' values with int8-rounded matmul inputs, experts' too."""
    from reference import is_router
    from test_parity import settings as parity_settings

    settings = {**parity_settings("qwen3_moe"), "moe_intermediate_size": 64}  # whole blocks
    hf_dir, built = tiny_builds.get("qwen3_moe-64", "q4a8_2", **settings)
    reference = load_hf(hf_dir)
    head = {"model.embed_tokens.weight", "lm_head.weight"}
    original = {}
    with torch.no_grad():
        for name, param in reference.named_parameters():
            expert = param.ndim == 3 and ".experts." in name
            if (param.ndim != 2 and not expert) or is_router(name):
                continue
            fmt, encode = ("Q8_0", encode_q8_0) if name in head else ("Q4_1", encode_q4_1)
            w = param.numpy().astype(np.float32)
            value = _ours(fmt, encode(w.reshape(-1, w.shape[-1]))).reshape(w.shape)
            original[name] = param.clone()
            param.copy_(torch.from_numpy(value.astype(np.float64)))
    margins: list[float] = []
    int8 = quantize_activations_int8(reference, experts=True, margins=margins)
    prompt = list(range(61, 77))  # no int8 activation within 3e-4 of a rounding boundary
    expected = hf_logits(int8, prompt)
    max_logit_error(built, expected, prompt, split=10)
    # Well-posed (see test_gguf_native's mixed file) and able to fail: with the experts' float
    # weights the logits move.
    assert min(margins) > 1e-4
    with torch.no_grad():
        for name, param in int8.named_parameters():
            if ".experts." in name:
                param.copy_(original[name])
    assert np.abs(hf_logits(int8, prompt) - expected).max() > 1e-2
