"""A GGUF file seen as a Hugging Face checkpoint: an HF-style config, HF tensor names, and the
tokenizer and chat template written out as `tokenizer.json` / `tokenizer_config.json`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .reader import GGUFError, GGUFFile
from .tokenizer import adds_bos, tokenizer_from_gguf

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# llama.cpp interleaves the rotary pairs of Q/K rows only for the Llama architecture; Qwen2 runs
# its NeoX-style rotary on the Hugging Face layout.
_PERMUTED_ROTARY = ("llama",)


def _unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of Q/K rows (interleaved rotary pairs per head) back to the
    Hugging Face layout (first half / second half of each head)."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


class GGUFCheckpoint:
    """Same interface as `HFCheckpoint`: `config`, `names()`, `get(hf_name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        meta = self.file.metadata
        arch = meta.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise GGUFError(
                f"{self.path}: GGUF architecture {arch!r} is not supported yet "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        self.architecture = arch
        self.config = self._llama_config(meta)
        self._sources = self._llama_tensor_map()

    @property
    def model_name(self) -> str:
        return self.path.stem

    @property
    def generation_config(self) -> dict[str, Any]:
        return {}

    def _llama_config(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The config of a Llama-layout architecture (`llama`, `qwen2`), keys under its name."""
        arch = self.architecture

        def need(key: str) -> Any:
            if f"{arch}.{key}" not in meta:
                raise GGUFError(f"{self.path}: metadata lacks {arch}.{key}")
            return meta[f"{arch}.{key}"]

        def get(key: str, default: Any) -> Any:
            return meta.get(f"{arch}.{key}", default)

        heads = int(need("attention.head_count"))
        hidden = int(need("embedding_length"))
        vocab = get("vocab_size", None) or len(meta.get("tokenizer.ggml.tokens", []))
        config: dict[str, Any] = {
            "model_type": arch,
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": int(need("feed_forward_length")),
            "num_hidden_layers": int(need("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "head_dim": int(get("attention.key_length", hidden // heads)),
            "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(get("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(get("context_length", 2048)),
            "tie_word_embeddings": "output.weight" not in self.file.tensors,
            "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        }
        if get("rope.scaling.type", None) == "linear":
            config["rope_scaling"] = {
                "rope_type": "linear",
                "factor": float(need("rope.scaling.factor")),
            }
        return config

    def _llama_tensor_map(self) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
        c = self.config

        def keep(w: np.ndarray) -> np.ndarray:
            return w

        def unpermute(heads: int) -> Callable[[np.ndarray], np.ndarray]:
            if self.architecture not in _PERMUTED_ROTARY:
                return keep
            return lambda w: _unpermute_rotary(w, heads)

        mapping = {
            "model.embed_tokens.weight": ("token_embd.weight", keep),
            "model.norm.weight": ("output_norm.weight", keep),
        }
        if not c["tie_word_embeddings"]:
            mapping["lm_head.weight"] = ("output.weight", keep)
        layer = {
            "self_attn.q_proj": ("attn_q", unpermute(c["num_attention_heads"])),
            "self_attn.k_proj": ("attn_k", unpermute(c["num_key_value_heads"])),
            "self_attn.v_proj": ("attn_v", keep),
            "self_attn.o_proj": ("attn_output", keep),
            "mlp.gate_proj": ("ffn_gate", keep),
            "mlp.up_proj": ("ffn_up", keep),
            "mlp.down_proj": ("ffn_down", keep),
            "input_layernorm": ("attn_norm", keep),
            "post_attention_layernorm": ("ffn_norm", keep),
        }
        for i in range(c["num_hidden_layers"]):
            for hf, (gg, fix) in layer.items():
                for suffix in ("weight", "bias"):
                    if f"blk.{i}.{gg}.{suffix}" in self.file.tensors:
                        mapping[f"model.layers.{i}.{hf}.{suffix}"] = (f"blk.{i}.{gg}.{suffix}", fix)
        return mapping

    def names(self) -> Iterator[str]:
        return iter(self._sources)

    def get(self, name: str) -> np.ndarray:
        if name not in self._sources:
            raise GGUFError(f"{self.path} has no tensor for {name!r}")
        gguf_name, fix = self._sources[name]
        return fix(self.file.get(gguf_name))

    def write_tokenizer(self, out_dir: Path) -> list[str]:
        """`tokenizer.json` and `tokenizer_config.json` (with the chat template, if any)."""
        meta = self.file.metadata
        tokenizer = tokenizer_from_gguf(meta, self.path)
        tokenizer.save(str(out_dir / "tokenizer.json"))
        tokens = meta["tokenizer.ggml.tokens"]

        def token(key: str) -> str | None:
            index = meta.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[index] if index is not None and index < len(tokens) else None

        config = {
            "bos_token": token("bos"),
            "eos_token": token("eos"),
            "unk_token": token("unknown"),
            "pad_token": token("padding"),
            "add_bos_token": adds_bos(meta),
        }
        if "tokenizer.chat_template" in meta:
            config["chat_template"] = meta["tokenizer.chat_template"]
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        return ["tokenizer.json", "tokenizer_config.json"]
