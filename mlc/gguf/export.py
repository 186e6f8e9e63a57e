"""Export a Hugging Face Llama (or Qwen2) checkpoint to GGUF with the `gguf` package (an optional
extra).

Used to feed llama.cpp the same weights in benchmarks, and by the tests to make GGUF files of
every tensor type. Q and K rows of Llama are permuted into llama.cpp's rotary layout, as its
converter does; the tokenizer is a SentencePiece `tokenizer.model` (GGUF kind `llama`) or else a
byte-level BPE `tokenizer.json` (kind `gpt2`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlc.hf_checkpoint import HFCheckpoint

from .sentencepiece_model import read_sentencepiece_model

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def permute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Hugging Face Q/K rows (half-split rotary) → llama.cpp's interleaved layout."""
    head_dim = weight.shape[0] // num_heads
    return (
        weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_name(hf_name: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
    module = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{_LAYER_NAMES[module]}.{parts[-1]}"


def export_gguf(
    model_dir: Path,
    out_path: Path,
    tensor_type: str = "F32",
    architecture: str = "llama",
    overrides: dict[str, str] | None = None,
) -> Path:
    """Write `out_path`; 2-D weights in `tensor_type`, norms in F32. `overrides` maps a GGUF
    tensor name to another type (tests use it to cover every type)."""
    try:
        import gguf
    except ImportError as err:
        raise RuntimeError("GGUF export needs the gguf package: pip install gguf") from err
    ckpt = HFCheckpoint(model_dir)
    c = ckpt.config
    heads, kv_heads = (
        c["num_attention_heads"],
        c.get("num_key_value_heads", c["num_attention_heads"]),
    )
    writer = gguf.GGUFWriter(str(out_path), architecture)
    writer.add_block_count(c["num_hidden_layers"])
    writer.add_context_length(c.get("max_position_embeddings", 2048))
    writer.add_embedding_length(c["hidden_size"])
    writer.add_feed_forward_length(c["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(
        float(c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta", 10000.0))
    )
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(c["vocab_size"])
    writer.add_rope_dimension_count(c["hidden_size"] // heads)
    _add_tokenizer(writer, model_dir, c)
    for name in ckpt.names():
        array = ckpt.get(name).astype(np.float32)
        if architecture == "llama" and name.endswith("q_proj.weight"):
            array = permute_rotary(array, heads)
        elif architecture == "llama" and name.endswith("k_proj.weight"):
            array = permute_rotary(array, kv_heads)
        target = gguf_name(name)
        kind = (overrides or {}).get(target, tensor_type if array.ndim == 2 else "F32")
        qtype = gguf.GGMLQuantizationType[kind]
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, array)
        else:
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(target, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _add_tokenizer(writer, model_dir: Path, config: dict) -> None:
    if (model_dir / "tokenizer.model").is_file():
        _add_sentencepiece(writer, model_dir / "tokenizer.model")
    else:
        _add_byte_level_bpe(writer, model_dir, config)
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        template = json.loads(tokenizer_config.read_text()).get("chat_template")
        if isinstance(template, str):
            writer.add_chat_template(template)


def _add_sentencepiece(writer, model_file: Path) -> None:
    """A SentencePiece model as GGUF's `llama` kind: pieces, scores and piece types."""
    sp = read_sentencepiece_model(model_file)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(sp.pieces)
    writer.add_token_scores(sp.scores)
    writer.add_token_types(sp.types)
    for token_id, add in (
        (sp.bos_id, writer.add_bos_token_id),
        (sp.eos_id, writer.add_eos_token_id),
        (sp.unk_id, writer.add_unk_token_id),
        (sp.pad_id, writer.add_pad_token_id),
    ):
        if token_id >= 0:
            add(token_id)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(sp.add_dummy_prefix)


def _add_byte_level_bpe(writer, model_dir: Path, config: dict) -> None:
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError("GGUF export supports byte-level BPE tokenizers only")
    vocab = dict(model["vocab"])
    for added in data.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    # llama.cpp sizes the embedding by the token list: pad it to the model's vocabulary with
    # unused placeholders, as its own converter does.
    size = max(max(vocab.values()) + 1, int(config.get("vocab_size", 0)))
    tokens = [f"[PAD{i}]" for i in range(size)]
    for token, index in vocab.items():
        tokens[index] = token
    used = set(vocab.values())
    special = {a["content"] for a in data.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [3 if t in special else 1 if i in used else 5 for i, t in enumerate(tokens)]
    )
    writer.add_token_merges(merges)
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
    ):
        if isinstance(config.get(key), int):
            add(config[key])
    writer.add_add_bos_token(False)
