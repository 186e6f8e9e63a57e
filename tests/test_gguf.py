"""GGUF import: our dequantizers, every architecture against `transformers` reading the same
file, every tensor type, and bad files."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import gguf  # the reference reader and writer of GGUF files
import numpy as np
import pytest
import sentencepiece as spm  # trains the SentencePiece reference vocabulary
import torch
from reference import hf_logits, load_hf, quantize_activations_int8
from tokenizer_samples import SENTENCEPIECE_BPE, TEXT, tokenizer_samples

from mlc import ChatModule, GenerationConfig
from mlc.build import BuildOptions, build
from mlc.gguf.architectures import ARCHITECTURES, SUPPORTED_ARCHITECTURES, for_model_type
from mlc.gguf.dequantize import GGML_TYPES, dequantize
from mlc.gguf.export import export_gguf
from mlc.gguf.reader import GGUFError
from mlc.gguf.rope_factors import llama3_rope_factors, llama3_scaling
from mlc.hf_checkpoint import HFCheckpoint
from mlc.models import get_architecture
from mlc.runtime import CompiledModel
from mlc.testing.random_model import CORPUS, save_llama, save_model

TINY = {"num_key_value_heads": 2, "hidden_size": 128, "intermediate_size": 256}
TINY_VOCAB = 600  # the SentencePiece vocabulary: 256 byte pieces, characters, merges
# Types the gguf package can write; the K-quants are checked block by block below.
WRITABLE_TYPES = {
    "blk.0.attn_q.weight": "Q4_0",
    "blk.0.attn_k.weight": "Q4_1",
    "blk.0.attn_v.weight": "Q5_0",
    "blk.0.attn_output.weight": "Q5_1",
    "blk.0.ffn_gate.weight": "Q8_0",
    "blk.0.ffn_up.weight": "F16",
    "blk.0.ffn_down.weight": "BF16",
}


def _random_blocks(kind, n_blocks: int, rng) -> np.ndarray:
    """Random bytes in the type's block layout, with finite float16 scales where they live."""
    raw = rng.integers(0, 256, size=(n_blocks, kind.type_size), dtype=np.uint8)
    scale_offsets = {
        "Q6_K": [208],
        "Q4_1": [0, 2],
        "Q5_1": [0, 2],
        "Q2_K": [80, 82],
        "Q3_K": [108],
        "Q4_K": [0, 2],
        "Q5_K": [0, 2],
    }
    if kind.block_size > 1:
        for offset in scale_offsets.get(kind.name, [0]):
            scales = rng.uniform(-1, 1, n_blocks).astype(np.float16)
            raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    else:
        values = rng.normal(size=n_blocks).astype(np.float32 if kind.type_size == 4 else np.float16)
        if kind.name == "BF16":
            values = (rng.normal(size=n_blocks).astype(np.float32).view(np.uint32) >> 16).astype(
                np.uint16
            )
        raw = values.view(np.uint8).reshape(n_blocks, kind.type_size)
    return raw


@pytest.mark.parametrize("type_id", sorted(GGML_TYPES))
def test_dequantize_matches_the_gguf_package(type_id):
    kind = GGML_TYPES[type_id]
    raw = _random_blocks(kind, 64, np.random.default_rng(type_id))
    ours = dequantize(raw.reshape(-1), type_id, (64 * kind.block_size,))
    reference = gguf.quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType(type_id))
    np.testing.assert_array_equal(ours, np.asarray(reference, dtype=np.float32).reshape(-1))
    assert np.abs(ours).max() > 0


def _nothing_written(out_dir) -> bool:
    return not out_dir.exists() or not list(out_dir.iterdir())


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_llama(tmp_path_factory.mktemp("gguf") / "tiny", **TINY)


def load_gguf_reference(path, **config):
    """`transformers` reading the GGUF file itself, in float64 with eager attention (and eager
    experts: the grouped ones take no float64), as `reference.load_hf` runs a model directory;
    `config` sets fields its loader does not read."""
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        dtype=torch.float64,
        attn_implementation="eager",
        # Every weight dequantized into a dense float64 model, not computed in GGUF blocks by
        # float32 kernels.
        quantization_config=GgufConfig(dequantize=True),
        **({"experts_implementation": "eager"} if "moe" in path.stem else {}),
        **config,
    )
    return model.eval()


def max_logit_error(built, reference: np.ndarray, prompt: list[int], split: int) -> float:
    """Prefill `prompt[:split]`, then decode the rest one token at a time; every step's logits
    must be within 1e-4 of `reference` (logits at every position of the prompt)."""
    engine = CompiledModel(built)
    ours = [engine.prefill(prompt[:split])] + [engine.decode(t) for t in prompt[split:-1]]
    worst = 0.0
    for logits, expected in zip(ours, reference[split - 1 :], strict=False):
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
        worst = max(worst, float(np.abs(logits - expected).max()))
    return worst


PROMPT = list(range(5, 30))

# Every architecture `transformers` reads from GGUF that we support, as a tiny random model:
# (`config.json` settings, the fields `transformers` must be told). Its loader ignores some
# fields llama.cpp's converter writes and keeps its own defaults, which the settings match where
# that is cheap (GPT-2's 1024 positions, StableLM's rotary fraction 0.25, Phi-3's full rotary)
# and are told otherwise: Qwen3's head_dim (the file's `attention.key_length`; its default, 128,
# is slow to build) and Gemma 2's `query_pre_attn_scalar`, which the file has no field for and
# llama.cpp takes to be head_dim (its default is 256; a head_dim 256 build took >15 min here).
QWEN3_MOE = {
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 48,
    "norm_topk_prob": True,
}
QWEN2_MOE = {
    "num_key_value_heads": 2,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 48,
    "shared_expert_intermediate_size": 96,
    "norm_topk_prob": False,
}
GGUF_ARCHITECTURES = {
    "qwen2": ({"num_key_value_heads": 2}, {}),
    "qwen3": ({"num_key_value_heads": 2, "head_dim": 32}, {"head_dim": 32}),
    "gemma2": (
        {
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 16,  # shorter than the prompt
        },
        {"query_pre_attn_scalar": 32},
    ),
    # Six layers: llama.cpp's pattern of five sliding layers (local RoPE base) and one global.
    "gemma3_text": (
        {
            "num_hidden_layers": 6,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 8,  # shorter than the prompt
            "layer_types": None,
        },
        {"query_pre_attn_scalar": 32},
    ),
    "phi3": ({"num_key_value_heads": 2}, {}),
    # Experts stacked `[experts, out, in]` per layer, the router kept F32. transformers' loader
    # reads neither the experts' width (`expert_feed_forward_length`) nor llama.cpp's fixed
    # renormalisation of the top k.
    "qwen3_moe": (
        QWEN3_MOE,
        {"head_dim": 32, "moe_intermediate_size": 48, "norm_topk_prob": True},
    ),
    # Qwen2-MoE's shared expert and its one-row gate besides the routed experts.
    "qwen2_moe": (
        QWEN2_MOE,
        {"moe_intermediate_size": 48, "shared_expert_intermediate_size": 96},
    ),
    "stablelm": ({"num_key_value_heads": 2, "use_qkv_bias": True}, {}),
    "gpt2": ({"max_position_embeddings": 1024}, {}),
    "falcon": ({}, {}),  # Falcon-7B's layout: multi-query, one norm, parallel attention and MLP
}


@pytest.mark.parametrize("model_type", sorted(GGUF_ARCHITECTURES))
def test_architecture_matches_transformers_gguf_loader(model_type, tmp_path):
    """Our exporter writes what llama.cpp's converter does; `transformers` reads that file back
    into exactly the original weights; our build of the file matches `transformers` on it."""
    settings, told = GGUF_ARCHITECTURES[model_type]
    model_dir = save_model(tmp_path / model_type, model_type=model_type, vector_std=0.1, **settings)
    path = export_gguf(model_dir, tmp_path / f"{model_type}.gguf", "F32")
    reference_model = load_gguf_reference(path, **told)
    original = load_hf(model_dir)
    read, written = reference_model.state_dict(), original.state_dict()
    assert read.keys() == written.keys()
    for name, value in written.items():
        torch.testing.assert_close(read[name], value, atol=1e-6, rtol=0, msg=name)
    reference = hf_logits(reference_model, PROMPT)
    np.testing.assert_allclose(reference, hf_logits(original, PROMPT), atol=1e-5, rtol=0)

    built = build(
        BuildOptions(model=path, quantization="q0f32", output=tmp_path / "dist", quiet=True)
    )
    assert json.loads((built / "mlc-chat-config.json").read_text())["model_type"] == model_type
    error = max_logit_error(built, reference, PROMPT, split=20)
    print(f"{model_type}: max logit error {error:.2e}")


# Layouts `transformers`' GGUF loader cannot read (it maps no LongRoPE factors and assumes
# Falcon-7B's layout); the original model in `transformers` is the reference.
ROUND_TRIPS = {
    # Q and K rows permuted into llama.cpp's rotary layout, and back.
    "llama": ("llama", TINY),
    # Granite: Llama's layout, its four multipliers as llama.cpp's `granite.*` keys.
    "granite": (
        "granite",
        {
            **TINY,
            "embedding_multiplier": 3.0,
            "residual_multiplier": 0.4,
            "attention_multiplier": 0.09,
            "logits_scaling": 2.5,
        },
    ),
    # StableLM 2 12B's per-head q/k norms: one [heads, head_dim] tensor each in the file.
    "stablelm-qk-layernorm": (
        "stablelm",
        {"num_key_value_heads": 2, "qk_layernorm": True, "use_parallel_residual": True},
    ),
    # OLMo 2: post-branch norms and whole-projection q/k norms, no rotary permutation.
    "olmo2": ("olmo2", TINY),
    # SmolLM3: Llama's layout; llama.cpp skips RoPE on every fourth layer (here layer 3).
    "smollm3": ("smollm3", {**TINY, "num_hidden_layers": 4}),
    # Mixtral: llama with experts (`block_sparse_moe`), Q/K permuted as Llama's.
    "mixtral": (
        "mixtral",
        {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    # OLMoE: whole-projection q/k norms, experts without renormalisation.
    "olmoe": ("olmoe", {"num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": False}),
    # Falcon-40B's layout: KV groups, a norm for attention and one for the MLP.
    "falcon-40b": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    # Llama 3.1's RoPE scaling: `rope_freqs` divisors as llama.cpp's converter writes them, read
    # back as `rope_scaling` (head_dim 32, theta 1e4: 2 frequencies kept, 3 smoothed, 11 / 8).
    "llama3-rope": (
        "llama",
        {
            **TINY,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    # YaRN (Qwen2.5's long context) as `rope.scaling.*` keys, the optional ones included: the
    # first 3 frequencies kept, 4 blended, 9 divided by the factor.
    "qwen2-yarn": (
        "qwen2",
        {
            **TINY,
            "rope_theta": 100.0,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 4.0,
                "beta_slow": 1.0,
                "attention_factor": 1.25,
            },
        },
    ),
    # Phi-3-128k's LongRoPE: factors as tensors, the prompt past the original window.
    "phi3-longrope": (
        "phi3",
        {
            "original_max_position_embeddings": 16,
            "rope_scaling": {
                "type": "longrope",
                "short_factor": [1.0 + 0.05 * i for i in range(8)],
                "long_factor": [1.5 + 0.5 * i for i in range(8)],
            },
        },
    ),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_gguf_export_import_equals_the_original_model(case, tmp_path):
    model_type, settings = ROUND_TRIPS[case]
    model_dir = save_model(tmp_path / case, model_type=model_type, vector_std=0.1, **settings)
    path = export_gguf(model_dir, tmp_path / f"{case}.gguf", "F32")
    built = build(
        BuildOptions(model=path, quantization="q0f32", output=tmp_path / "dist", quiet=True)
    )
    reference = hf_logits(load_hf(model_dir), PROMPT)
    error = max_logit_error(built, reference, PROMPT, split=20)
    print(f"{case}: max logit error {error:.2e}")
    if "rope_scaling" in settings:  # the scaling shows: without it the logits move far
        config = json.loads((model_dir / "config.json").read_text())
        for key in ("rope_scaling", "rope_parameters"):
            config.pop(key, None)
        (model_dir / "config.json").write_text(json.dumps(config))
        unscaled = hf_logits(load_hf(model_dir), PROMPT)
        assert np.abs(unscaled - reference).max() > 1e-2


# Layouts llama.cpp fixes in code rather than in the file: exporting anything else is refused.
UNFAITHFUL_EXPORTS = {
    "gemma3-two-layer-pattern": (
        "gemma3_text",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        "the sliding layers",
    ),
    "gemma3-query-scalar": (
        "gemma3_text",
        {"num_hidden_layers": 6, "head_dim": 16, "query_pre_attn_scalar": 24, "layer_types": None},
        "query_pre_attn_scalar",
    ),
    "smollm3-nope-layer": ("smollm3", {"no_rope_layers": [1, 0]}, "the layers with RoPE"),
    "qwen3_moe-unnormalised": (
        "qwen3_moe",
        {**QWEN3_MOE, "norm_topk_prob": False},
        "norm_topk_prob",
    ),
    "qwen3_moe-dense-layer": ("qwen3_moe", {**QWEN3_MOE, "mlp_only_layers": [1]}, "dense layers"),
    "qwen2_moe-renormalised": (
        "qwen2_moe",
        {**QWEN2_MOE, "norm_topk_prob": True},
        "norm_topk_prob",
    ),
}


@pytest.mark.parametrize("case", sorted(UNFAITHFUL_EXPORTS))
def test_exports_llama_cpp_would_misread_are_refused(case, tmp_path):
    model_type, settings, message = UNFAITHFUL_EXPORTS[case]
    model_dir = save_model(tmp_path / case, model_type=model_type, **settings)
    with pytest.raises(ValueError, match=f"no field for {message}.*cannot be exported"):
        export_gguf(model_dir, tmp_path / f"{case}.gguf", "F32")
    assert not (tmp_path / f"{case}.gguf").exists()


EVERY_LAYOUT = {
    **{t: (t, settings) for t, (settings, _) in GGUF_ARCHITECTURES.items()},
    **ROUND_TRIPS,
}


@pytest.mark.parametrize("case", sorted(EVERY_LAYOUT))
def test_tensor_names_are_llama_cpps(case, tmp_path):
    """Every tensor's GGUF name is the one the `gguf` package (llama.cpp's own table) gives its
    Hugging Face name: the check on the layouts `transformers` cannot read."""
    model_type, settings = EVERY_LAYOUT[case]
    ckpt = HFCheckpoint(save_model(tmp_path / case, model_type=model_type, **settings))
    arch = for_model_type(model_type, ckpt.model_dir)
    layers = get_architecture(ckpt.config).CONFIG.from_hf(ckpt.config).num_hidden_layers
    package_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch.name)
    names = gguf.get_tensor_name_map(package_arch, layers)
    present = set(ckpt.names())
    pairs = [(g, h) for g, h, _ in arch.tensor_names(ckpt.config) if h in present]
    assert {h for _, h in pairs} == present
    for gguf_name, hf_name in pairs:
        # The converter stacks StableLM 2's per-head norms (`...norms.{h}`) and a mixture's
        # experts (`...experts.{e}.gate_proj`) before naming them.
        stacked = re.sub(r"(\.experts)\.\d+", r"\1", re.sub(r"\.norms\.\d+", "", hf_name))
        assert names.get_name(stacked, try_suffixes=(".weight", ".bias")) == gguf_name, hf_name


def test_every_writable_type_matches_transformers_gguf_loader(tiny_hf, tmp_path):
    path = export_gguf(tiny_hf, tmp_path / "tiny-mixed.gguf", "Q8_0", overrides=WRITABLE_TYPES)
    built = build(
        BuildOptions(model=path, quantization="q0f32", output=tmp_path / "dist", quiet=True)
    )
    prompt = list(range(7, 30))
    max_logit_error(built, hf_logits(load_gguf_reference(path), prompt), prompt, split=18)


def test_quantized_experts_keep_the_files_blocks(tmp_path):
    """A mixture of experts whose 3-D expert stacks are in blocks (Q4_1, the router F32) built
    with the file's own formats: the experts stay in their blocks, multiplied by the gather
    matmuls with int8 activations, and the logits match `transformers` on the file."""
    tensor_type = "Q4_1"
    settings = {**QWEN3_MOE, "moe_intermediate_size": 64}  # whole blocks in the down experts
    model_dir = save_model(tmp_path / "moe", model_type="qwen3_moe", vector_std=0.1, **settings)
    path = export_gguf(model_dir, tmp_path / f"moe-{tensor_type}.gguf", tensor_type)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_gate_exps.weight"] == tensor_type
    assert types["blk.0.ffn_down_exps.weight"] == tensor_type
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"
    built = build(
        BuildOptions(model=path, quantization="gguf", output=tmp_path / "dist", quiet=True)
    )
    stored = json.loads((built / "tensor-cache.json").read_text())
    names = {t["name"] for shard in stored["records"] for t in shard["records"]}
    assert {f"layers.0.mlp.experts_{p}.q_min" for p in ("gate_up", "down")} <= names
    told = {"head_dim": 32, "moe_intermediate_size": 64, "norm_topk_prob": True}
    # Every block-format Linear and expert matmul takes int8 activations, as in llama.cpp; the
    # router does not.
    margins: list[float] = []
    int8 = quantize_activations_int8(
        load_gguf_reference(path, **told), experts=True, margins=margins
    )
    prompt = list(range(262, 278))  # no int8 activation within 3e-4 of a rounding boundary
    reference = hf_logits(int8, prompt)
    assert min(margins) > 1e-4  # a well-posed comparison (see test_gguf_native's mixed file)
    max_logit_error(built, reference, prompt, split=10)
    # The file's rounding shows: the original weights' logits are elsewhere.
    assert np.abs(hf_logits(load_hf(model_dir), prompt) - reference).max() > 1e-3


def test_truncated_gguf(tiny_hf, tmp_path):
    path = export_gguf(tiny_hf, tmp_path / "tiny.gguf", "Q8_0")
    data = path.read_bytes()
    for cut in (len(data) - 1000, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated"):
            build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert _nothing_written(tmp_path / "dist")


def test_unsupported_architecture(tiny_hf, tmp_path):
    path = export_gguf(tiny_hf, tmp_path / "mamba.gguf", "F32", architecture="mamba")
    with pytest.raises(GGUFError, match="architecture 'mamba' is not supported") as error:
        build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert all(name in str(error.value) for name in SUPPORTED_ARCHITECTURES)
    assert _nothing_written(tmp_path / "dist")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ("rope_freqs.weight", "rope_freqs.weight: rope_freqs has 8 values; a head of 32 needs 16"),
        ("blk.0.attn_mystery.weight", "blk.0.attn_mystery.weight are not part of the llama"),
    ],
)
def test_tensors_mlc_cannot_place_are_refused(tiny_hf, tmp_path, monkeypatch, tensor, message):
    """A tensor the architecture's table does not know would otherwise be silently dropped."""
    llama = ARCHITECTURES["llama"]
    extra = dataclasses.replace(llama, extra_tensors=lambda hf: {tensor: np.ones(8, np.float32)})
    monkeypatch.setitem(ARCHITECTURES, "llama", extra)
    path = export_gguf(tiny_hf, tmp_path / "extra.gguf", "F32")
    monkeypatch.setitem(ARCHITECTURES, "llama", llama)
    with pytest.raises(GGUFError, match=message):
        build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert _nothing_written(tmp_path / "dist")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"rope.scaling.yarn_ext_factor": 0.5}, r"llama\.rope\.scaling\.yarn_ext_factor 0\.5"),
        ({"rope.scaling.yarn_log_multiplier": 0.1}, r"llama\.rope\.scaling\.yarn_log_multiplier"),
    ],
)
def test_yarn_keys_transformers_cannot_express_are_refused(
    tiny_hf, tmp_path, monkeypatch, keys, message
):
    """llama.cpp's YaRN extras with no `rope_scaling` equivalent would otherwise be dropped."""
    llama = ARCHITECTURES["llama"]
    yarn = {
        "rope.scaling.type": "yarn",
        "rope.scaling.factor": 4.0,
        "rope.scaling.original_context_length": 64,
        **keys,
    }
    extra = dataclasses.replace(llama, metadata=lambda hf: {**llama.metadata(hf), **yarn})
    monkeypatch.setitem(ARCHITECTURES, "llama", extra)
    path = export_gguf(tiny_hf, tmp_path / "yarn.gguf", "F32")
    monkeypatch.setitem(ARCHITECTURES, "llama", llama)
    with pytest.raises(GGUFError, match=message):
        build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert _nothing_written(tmp_path / "dist")


def test_yarn_llama_cpp_cannot_hold_is_not_exported(tmp_path):
    scaling = {"rope_type": "yarn", "factor": 4.0, "truncate": False}
    model_dir = save_model(tmp_path / "m", model_type="qwen2", **TINY, rope_scaling=scaling)
    with pytest.raises(ValueError, match="truncate: false.*llama.cpp has no key"):
        export_gguf(model_dir, tmp_path / "m.gguf", "F32")
    assert not (tmp_path / "m.gguf").exists()


def test_unsupported_tensor_type_is_named(tiny_hf, tmp_path):
    path = export_gguf(
        tiny_hf, tmp_path / "odd.gguf", "F32", overrides={"blk.1.ffn_down.weight": "TQ2_0"}
    )
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_down\.weight has ggml type TQ2_0"):
        build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert _nothing_written(tmp_path / "dist")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04 definitely not gguf")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    """The tiny model with a SentencePiece BPE vocabulary trained here (byte fallback, a
    user-defined and a control symbol), exported as GGUF tokenizer kind `llama`."""
    folder = tmp_path_factory.mktemp("spm")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.read_text().splitlines() + CORPUS * 5),
        model_writer=proto,
        vocab_size=TINY_VOCAB,
        **SENTENCEPIECE_BPE,
    )
    model_dir = save_llama(folder / "model", vocab_size=TINY_VOCAB, **TINY)
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer.model").write_bytes(proto.getvalue())
    path = export_gguf(model_dir, folder / "spm.gguf", "Q8_0")
    return path, spm.SentencePieceProcessor(model_proto=proto.getvalue())


def test_sentencepiece_tokenizer_matches_references(sentencepiece_gguf, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path, sp = sentencepiece_gguf
    built = build(
        BuildOptions(model=path, quantization="q0f32", output=tmp_path / "dist", quiet=True)
    )
    ours = Tokenizer.from_file(str(built / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    samples = [*tokenizer_samples(), "<|user|> hi <|im_start|>x", "x <|user|>y", "\n\n  \t"]
    ids = {s: ours.encode(s, add_special_tokens=False).ids for s in samples}
    assert all(ids[s] == hf.encode(s, add_special_tokens=False) for s in samples), [
        s for s in samples if ids[s] != hf.encode(s, add_special_tokens=False)
    ][:5]
    # SentencePiece itself, the independent reference, agrees wherever `transformers` does not
    # knowingly differ: it prepends its space even to text that starts with whitespace or with
    # a user-defined symbol, and never reads control symbols from text.
    comparable = [s for s in samples if s and not s[0].isspace() and "<|" not in s]
    assert len(comparable) > 250
    assert [s for s in comparable if ids[s] != sp.encode(s)] == []
    assert any(sp.id_to_piece(i).startswith("<0x") for s in samples for i in ids[s])
    assert [s for s in comparable if ours.decode(ids[s]) != s] == []
    # The whole path: the runtime chats with the converted vocabulary and starts with BOS.
    config = json.loads((built / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is True and config["bos_token"] == "<s>"
    cm = ChatModule(str(built), conv_template="LM")
    assert cm.generate("Once upon a time", GenerationConfig(max_tokens=4, temperature=0))


# Llama 3.1 8B and Llama 3.2 1B/3B's `rope_scaling`, and the tiny test model's.
LLAMA3_SCALINGS = [
    (500000.0, 128, 8.0, 8192),
    (500000.0, 64, 32.0, 8192),
    (10000.0, 32, 8.0, 64),
]


@pytest.mark.parametrize(("theta", "head_dim", "factor", "context"), LLAMA3_SCALINGS)
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(theta, head_dim, factor, context):
    scaling = {
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": context,
    }
    divisors = llama3_rope_factors(theta, head_dim, scaling)
    assert divisors[0] == 1.0 and divisors[-1] == factor  # both regimes and a smooth middle
    assert ((divisors > 1) & (divisors < factor)).sum() >= 3
    recovered = llama3_scaling(divisors, theta, head_dim)
    # Up to a common scale of the context and the two thresholds, which changes no divisor.
    scale = recovered["original_max_position_embeddings"] / context
    assert recovered["factor"] == factor
    assert recovered["low_freq_factor"] == pytest.approx(scale, rel=1e-6)
    assert recovered["high_freq_factor"] == pytest.approx(4 * scale, rel=1e-6)
    np.testing.assert_allclose(llama3_rope_factors(theta, head_dim, recovered), divisors, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r[::-1], "does not rise from 1"),
        (lambda r: np.ones_like(r), "does not rise from 1 to a factor > 1"),
        (lambda r: np.where(r == r.max(), r, r * 1.01), "does not follow Llama 3's"),
    ],
)
def test_rope_freqs_that_are_not_llama3s_are_refused(change, message):
    divisors = llama3_rope_factors(500000.0, 128, {"factor": 8.0})
    with pytest.raises(ValueError, match=message):
        llama3_scaling(change(divisors.astype(np.float64)), 500000.0, 128)


# tokenizer.json pre-tokenizers as Hugging Face repositories ship them (GPT-2, SmolLM2, Llama 3,
# Qwen2), and the `tokenizer.ggml.pre` llama.cpp knows each split by.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def _hf_pre_tokenizer(pre: str):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=pre in ("gpt-2", "smollm"))
    if pre == "gpt-2":
        return byte_level
    if pre == "smollm":
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    pattern = LLAMA3_PATTERN if pre == "llama-bpe" else QWEN2_PATTERN
    return pt.Sequence([pt.Split(Regex(pattern), behavior="isolated"), byte_level])


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_exported_tokenizer_names_its_split_as_llama_cpp_does(pre, tmp_path):
    """The file names the tokenizer's own split, so that llama.cpp and our import cut text where
    the original does: the import encodes every sample as the original `tokenizer.json` (runs of
    digits and spaces, where these splits differ)."""
    from tokenizers import Tokenizer

    from mlc.gguf.checkpoint import GGUFCheckpoint
    from mlc.gguf.tokenizer import tokenizer_from_gguf

    model_dir = save_model(tmp_path / "model")
    original = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    original.pre_tokenizer = _hf_pre_tokenizer(pre)
    original.save(str(model_dir / "tokenizer.json"))
    path = export_gguf(model_dir, tmp_path / "model.gguf", "F32")
    meta = dict(GGUFCheckpoint(path).file.metadata)
    assert meta["tokenizer.ggml.pre"] == pre
    imported = tokenizer_from_gguf(meta, path)
    samples = [*tokenizer_samples(), "In 2024,   12345 and  42.", "x=100;  y = 2000\n\n 7"]
    differ = 0
    for text in samples:
        assert imported.encode(text).ids == original.encode(text).ids, (pre, text)
        differ += _hf_pre_tokenizer("gpt-2").pre_tokenize_str(text) != (
            original.pre_tokenizer.pre_tokenize_str(text)
        )
    assert pre == "gpt-2" or differ, "no sample tells this split from GPT-2's"


def test_export_refuses_a_split_llama_cpp_cannot_name(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers import pre_tokenizers as pt

    model_dir = save_model(tmp_path / "model")
    original = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    original.pre_tokenizer = pt.Sequence([pt.Whitespace(), pt.ByteLevel(use_regex=False)])
    original.save(str(model_dir / "tokenizer.json"))
    with pytest.raises(ValueError, match="cannot name this tokenizer's pre-tokenizer"):
        export_gguf(model_dir, tmp_path / "model.gguf", "F32")
    assert not (tmp_path / "model.gguf").exists()
