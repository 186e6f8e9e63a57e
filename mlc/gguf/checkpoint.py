"""A GGUF file seen as a Hugging Face checkpoint: an HF-style config, HF tensor names, and the
tokenizer and chat template written out as `tokenizer.json` / `tokenizer_config.json`."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import SUPPORTED_ARCHITECTURES, Metadata, Transform, for_gguf
from .reader import GGUFError, GGUFFile
from .tokenizer import adds_bos, tokenizer_from_gguf

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFCheckpoint"]

# Expert stacks (gate, up and down of a layer or two) kept dequantized while read.
STACKS_KEPT = 6


class GGUFCheckpoint:
    """Same interface as `HFCheckpoint`: `config`, `names()`, `get(hf_name)`. The architecture's
    table (`architectures.py`) gives the config and maps every GGUF tensor to its Hugging Face
    name and layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        arch = for_gguf(self.file)
        self.architecture = arch.name
        self.config = arch.config(Metadata(self.file, arch.name))
        self._sources: dict[str, tuple[str, Transform]] = {
            hf_name: (gguf_name, rule.to_hf)
            for gguf_name, hf_name, rule in arch.tensor_names(self.config)
            if gguf_name in self.file.tensors
        }
        self._stacks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._stacks_lock = threading.Lock()
        known = {gguf_name for gguf_name, _ in self._sources.values()} | set(arch.config_tensors)
        unknown = sorted(set(self.file.tensors) - known)
        if unknown:
            raise GGUFError(
                f"{self.path}: tensors {', '.join(unknown[:4])} are not part of the "
                f"{arch.name} layout mlc reads"
            )

    @property
    def model_name(self) -> str:
        return self.path.stem

    @property
    def generation_config(self) -> dict[str, Any]:
        return {}

    def names(self) -> Iterator[str]:
        return iter(self._sources)

    def get(self, name: str) -> np.ndarray:
        gguf_name, fix = self._source(name)
        if len(self.file.tensors[gguf_name].shape) < 3:
            return fix(self.file.get(gguf_name))
        return fix(self._stack(gguf_name))

    def _stack(self, gguf_name: str) -> np.ndarray:
        """A 3-D tensor (a layer's experts, read one expert at a time), dequantized once while
        its experts are read: the last `STACKS_KEPT` stay."""
        with self._stacks_lock:
            if gguf_name in self._stacks:
                self._stacks.move_to_end(gguf_name)
                return self._stacks[gguf_name]
        array = self.file.get(gguf_name)
        with self._stacks_lock:
            self._stacks[gguf_name] = array
            while len(self._stacks) > STACKS_KEPT:
                self._stacks.popitem(last=False)
        return array

    def tensor_type(self, name: str) -> str:
        """The ggml type the file stores Hugging Face tensor `name` in (`Q4_1`, `F32`, ...)."""
        return self.file.tensors[self._source(name)[0]].type_name

    def block_rows(self, name: str) -> np.ndarray | None:
        """The order in which tensor `name`'s rows in the file become Hugging Face's; None
        where the layout change is not a reordering of whole rows (a transpose), so that its
        blocks cannot be kept. An expert of a 3-D stack is its rows in place. Reads no
        tensor data."""
        gguf_name, fix = self._source(name)
        shape = self.file.tensors[gguf_name].shape
        if len(shape) == 3:
            return np.arange(shape[1]) if _picks_a_slice(fix, shape[0]) else None
        return row_order(fix, shape[0])

    def get_blocks(self, name: str) -> np.ndarray:
        """Tensor `name` as the file's own blocks, uint8 `[rows, blocks, bytes]`, with its rows
        in Hugging Face order (`block_rows` must not be None)."""
        order = self.block_rows(name)
        if order is None:
            raise GGUFError(f"{self.path}: {name!r} is not stored as whole rows of blocks")
        gguf_name, fix = self._source(name)
        blocks = self.file.blocks(gguf_name)
        if blocks.ndim == 4:  # one expert of a stack
            return np.array(fix(blocks))
        return blocks[order]

    def _source(self, name: str) -> tuple[str, Transform]:
        if name not in self._sources:
            raise GGUFError(f"{self.path} has no tensor for {name!r}")
        return self._sources[name]

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


def _picks_a_slice(fix: Transform, count: int) -> bool:
    """Whether `fix` takes one slice of the leading axis of a `[count, ...]` stack as it is."""
    probe = np.arange(count * 2, dtype=np.float64).reshape(count, 2)
    try:
        picked = np.asarray(fix(probe))
    except (ValueError, IndexError):
        return False
    return picked.shape == (2,) and any(np.array_equal(picked, row) for row in probe)


def row_order(fix: Transform, rows: int) -> np.ndarray | None:
    """The row permutation `fix` applies to a `[rows, K]` tensor, or None if it does something
    else (found by applying it to row numbers, each row carried in two columns)."""
    probe = np.stack([np.arange(rows), -1 - np.arange(rows)], axis=1).astype(np.float64)
    try:
        moved = np.asarray(fix(probe))
    except (ValueError, IndexError):
        return None
    if moved.shape != probe.shape or not np.array_equal(moved[:, 1], -1 - moved[:, 0]):
        return None
    order = moved[:, 0].astype(np.int64)
    return order if np.array_equal(np.sort(order), np.arange(rows)) else None
