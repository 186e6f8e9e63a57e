"""GGUF import: our dequantizers, the Q/K un-permutation, every tensor type, and bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference import hf_logits, load_hf
from tokenizer_samples import TEXT, tokenizer_samples

from mlc import ChatModule, GenerationConfig
from mlc.build import BuildOptions, build
from mlc.gguf.dequantize import GGML_TYPES, dequantize
from mlc.gguf.export import export_gguf
from mlc.gguf.reader import GGUFError
from mlc.random_model import CORPUS, save_llama
from mlc.runtime import CompiledModel

gguf = pytest.importorskip("gguf", reason="the gguf package is the reference for GGUF files")

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
    scale_offsets = {"Q6_K": [208], "Q4_1": [0, 2], "Q5_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2]}
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


def test_f32_gguf_equals_the_original_model(tiny_hf, tmp_path):
    """Export permutes Q/K rows into llama.cpp's layout; import must undo it exactly."""
    path = export_gguf(tiny_hf, tmp_path / "tiny-f32.gguf", "F32")
    built = build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    prompt = list(range(5, 30))
    reference = hf_logits(load_hf(tiny_hf), prompt)
    engine = CompiledModel(built)
    np.testing.assert_allclose(engine.prefill(prompt[:20]), reference[19], atol=1e-4, rtol=0)
    for i in range(20, 24):
        np.testing.assert_allclose(engine.decode(prompt[i]), reference[i], atol=1e-4, rtol=0)


def test_every_writable_type_matches_transformers_gguf_loader(tiny_hf, tmp_path):
    from transformers import AutoModelForCausalLM

    path = export_gguf(tiny_hf, tmp_path / "tiny-mixed.gguf", "Q8_0", overrides=WRITABLE_TYPES)
    built = build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    reference_model = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    prompt = list(range(7, 30))
    reference = hf_logits(reference_model, prompt)
    engine = CompiledModel(built)
    np.testing.assert_allclose(engine.prefill(prompt[:18]), reference[17], atol=1e-4, rtol=0)
    for i in range(18, 22):
        np.testing.assert_allclose(engine.decode(prompt[i]), reference[i], atol=1e-4, rtol=0)


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
    with pytest.raises(GGUFError, match="architecture 'mamba' is not supported"):
        build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert _nothing_written(tmp_path / "dist")


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
    import io

    spm = pytest.importorskip("sentencepiece", reason="sentencepiece trains the reference")
    folder = tmp_path_factory.mktemp("spm")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.read_text().splitlines() + CORPUS * 5),
        model_writer=proto,
        model_type="bpe",
        vocab_size=TINY_VOCAB,
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
    model_dir = save_llama(folder / "model", vocab_size=TINY_VOCAB, **TINY)
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer.model").write_bytes(proto.getvalue())
    path = export_gguf(model_dir, folder / "spm.gguf", "Q8_0")
    return path, spm.SentencePieceProcessor(model_proto=proto.getvalue())


def test_sentencepiece_tokenizer_matches_references(sentencepiece_gguf, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path, sp = sentencepiece_gguf
    built = build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
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


def test_qwen2_gguf_matches_transformers_gguf_loader(tmp_path):
    """Qwen2 (q/k/v biases, rotary on the Hugging Face layout: no Q/K permutation) read from a
    GGUF file as `transformers` reads it."""
    from transformers import AutoModelForCausalLM

    model_dir = save_llama(tmp_path / "qwen2", model_type="qwen2", vector_std=0.1, **TINY)
    path = export_gguf(model_dir, tmp_path / "qwen2.gguf", "Q8_0", architecture="qwen2")
    built = build(BuildOptions(model=path, output=tmp_path / "dist", quiet=True))
    assert json.loads((built / "mlc-chat-config.json").read_text())["model_type"] == "qwen2"
    reference_model = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    prompt = list(range(7, 30))
    reference = hf_logits(reference_model, prompt)
    engine = CompiledModel(built)
    np.testing.assert_allclose(engine.prefill(prompt[:18]), reference[17], atol=1e-4, rtol=0)
    for i in range(18, 22):
        np.testing.assert_allclose(engine.decode(prompt[i]), reference[i], atol=1e-4, rtol=0)
    # The biases are there and matter: the GGUF-loaded model is not bias-free.
    assert reference_model.model.layers[0].self_attn.q_proj.bias.abs().max() > 0
