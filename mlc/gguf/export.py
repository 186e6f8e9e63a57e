"""Export a Hugging Face checkpoint to GGUF with the `gguf` package (an optional extra), as
llama.cpp's converter writes it: the same metadata keys, tensor names and layouts (the tables in
`architectures.py`: Llama's Q/K rows permuted, Falcon's QKV regrouped, GPT-2's `Conv1D` weights
transposed, Gemma 2's norms stored as `1 + w`).

Used to feed llama.cpp the same weights in benchmarks, and by the tests to make GGUF files of
every architecture and tensor type. The tokenizer is a SentencePiece `tokenizer.model` (GGUF kind
`llama`) or else a byte-level BPE `tokenizer.json` (kind `gpt2`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlc.hf_checkpoint import HFCheckpoint

from .architectures import for_model_type
from .sentencepiece_model import read_sentencepiece_model
from .tokenizer import PRE_TOKENIZER_SPLITS

# Tensors the converter always keeps in F32, besides every 1-D one and every norm (StableLM 2's
# stacked per-head norms are 2-D): learned positions and a mixture of experts' router.
_F32_TENSORS = ("position_embd.weight", "ffn_gate_inp.weight", "_norm.weight")
# Buffers some checkpoints carry that are not weights (the converter skips them too).
_BUFFERS = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def export_gguf(
    model_dir: Path,
    out_path: Path,
    tensor_type: str = "F32",
    architecture: str | None = None,
    overrides: dict[str, str] | None = None,
) -> Path:
    """Write `out_path`; weights (2-D, and 3-D expert stacks) in `tensor_type`, norms, biases
    and routers in F32. `overrides` maps
    a GGUF tensor name to another type (tests use it to cover every type); `architecture`
    renames `general.architecture` (tests use it to make a file of an unknown one)."""
    try:
        import gguf
    except ImportError as err:
        raise RuntimeError("GGUF export needs the gguf package: pip install gguf") from err
    ckpt = HFCheckpoint(model_dir)
    hf = ckpt.config
    arch = for_model_type(hf.get("model_type"), model_dir)
    metadata = arch.metadata(hf)  # refuses what llama.cpp's GGUF cannot hold
    present = {n for n in ckpt.names() if not n.endswith(_BUFFERS)}
    placed = [(g, h, rule) for g, h, rule in arch.tensor_names(hf) if h in present]
    unplaced = present - {h for _, h, _ in placed}
    if unplaced:
        raise ValueError(
            f"{model_dir}: tensors {', '.join(sorted(unplaced)[:4])} have no place in a "
            f"{arch.name} GGUF file"
        )
    name = architecture or arch.name
    writer = gguf.GGUFWriter(str(out_path), name)
    writer.add_name(ckpt.model_name)
    for key, value in metadata.items():
        _add_value(writer, f"{name}.{key}", value)
    _add_tokenizer(writer, model_dir, hf)
    # Several Hugging Face tensors with one GGUF name are stacked, in table order (StableLM 2's
    # per-head norms, a layer's experts, as the converter stacks them). One GGUF tensor is read
    # at a time: the float weights are never all in memory.
    sources: dict[str, list[tuple[str, Any]]] = {}
    for gguf_name, hf_name, rule in placed:
        sources.setdefault(gguf_name, []).append((hf_name, rule))
    for gguf_name, parts in sources.items():
        arrays = [rule.to_gguf(ckpt.get(h).astype(np.float32)) for h, rule in parts]
        array = arrays[0] if len(arrays) == 1 else np.stack(arrays)
        del arrays
        _add_tensor(writer, gguf, gguf_name, array, tensor_type, overrides or {})
    for gguf_name, array in arch.extra_tensors(hf).items():
        _add_tensor(writer, gguf, gguf_name, array, "F32", {})
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _add_value(writer, key: str, value: Any) -> None:
    """Metadata as the converter types it: bool, u32, f32 or string."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))


def _add_tensor(writer, gguf, name: str, array: np.ndarray, kind: str, overrides: dict) -> None:
    if array.ndim == 1 or name.endswith(_F32_TENSORS):
        kind = "F32"
    qtype = gguf.GGMLQuantizationType[overrides.get(name, kind)]
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        return
    try:
        data = gguf.quants.quantize(array, qtype)
    except gguf.quants.QuantError:  # rows that are not whole blocks: F16, as the converter does
        qtype = gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(array, qtype)
    writer.add_tensor(name, data, raw_dtype=qtype)


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


def llama_cpp_pre_name(pre: dict | None) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a `tokenizer.json` pre-tokenizer: the split
    llama.cpp applies before byte-level BPE, which must be the tokenizer's own."""

    def gpt2(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True)

    if pre is not None and gpt2(pre):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre is not None and pre["type"] == "Sequence" else []
    if len(parts) == 2:
        first, second = parts
        if first["type"] == "Digits" and first.get("individual_digits") and gpt2(second):
            return "smollm"
        if first["type"] == "Split" and second["type"] == "ByteLevel" and not gpt2(second):
            pattern = first.get("pattern", {}).get("Regex")
            for name in ("llama-bpe", "qwen2"):
                if pattern == PRE_TOKENIZER_SPLITS[name]:
                    return name
    raise ValueError(
        "GGUF export cannot name this tokenizer's pre-tokenizer for llama.cpp "
        f"(tokenizer.ggml.pre): {json.dumps(pre)[:300]}; it knows GPT-2's ByteLevel (gpt-2), "
        "Digits then ByteLevel (smollm) and the Llama 3 and Qwen2 splits"
    )


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
    writer.add_tokenizer_pre(llama_cpp_pre_name(data.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(
        [3 if t in special else 1 if i in used else 5 for i, t in enumerate(tokens)]
    )
    writer.add_token_merges(merges)
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
    ):
        if isinstance(config.get(key), int):
            add(config[key])
    writer.add_add_bos_token(False)
