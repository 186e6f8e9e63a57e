"""Read a Hugging Face model directory: `config.json` and weights, one tensor at a time.

Safetensors files are parsed here (an 8-byte header length, a JSON header, raw data), so a
tensor is read only when asked for and a damaged file is named precisely.
`pytorch_model*.bin` files are opened with `torch.load(mmap=True)` when torch is installed.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """The model directory is missing something or holds damaged files."""


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 on read
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """One `.safetensors` file, memory-mapped, with its header checked against its size."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated: no safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(f"{path} is truncated or not a safetensors file")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{path} has a corrupt safetensors header: {err}") from err
        header.pop("__metadata__", None)
        self.header: dict[str, Any] = header
        self.data_start = 8 + header_len
        data_end = max((h["data_offsets"][1] for h in header.values()), default=0)
        if self.data_start + data_end > size:
            raise CheckpointError(
                f"{path} is truncated: its header describes {self.data_start + data_end} bytes "
                f"but the file has {size}. Download or copy it again."
            )

    def names(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}"
            )
        begin, end = info["data_offsets"]
        # A plain read, not a memory map: after conversion the tensor's memory is freed, so a
        # build holds about one tensor at a time whatever the model's size.
        array = np.fromfile(
            self.path,
            dtype=_SAFETENSORS_DTYPES[info["dtype"]],
            count=(end - begin) // np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).itemsize,
            offset=self.data_start + begin,
        ).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return bfloat16_to_float32(array)
        return array


class TorchBinFile:
    """One `pytorch_model*.bin` file, opened lazily through torch's memory map."""

    def __init__(self, path: Path):
        try:
            import torch
        except ImportError as err:
            raise CheckpointError(
                f"{path} is a PyTorch checkpoint; reading it needs torch "
                "(pip install torch), or convert the model to safetensors"
            ) from err
        try:
            self._state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as err:  # torch raises many types for a damaged zip or pickle
            raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint: {err}") from err
        self.path = path

    def names(self) -> list[str]:
        return list(self._state)

    def get(self, name: str) -> np.ndarray:
        import torch

        tensor = self._state[name]
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()


class HFCheckpoint:
    """A Hugging Face model directory: its config and a name → tensor lookup over all shards."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise CheckpointError(
                f"model directory not found: {self.model_dir} (give a Hugging Face model "
                "directory holding config.json, the weights and the tokenizer)"
            )
        config_path = self.model_dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(
                f"{self.model_dir} has no config.json: it is not a Hugging Face model directory"
            )
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
        self._files = self._open_weight_files()
        self._where: dict[str, SafetensorsFile | TorchBinFile] = {}
        for f in self._files:
            for name in f.names():
                self._where[name] = f

    def _open_weight_files(self) -> list[SafetensorsFile | TorchBinFile]:
        d = self.model_dir
        for index_name, opener in (
            ("model.safetensors.index.json", SafetensorsFile),
            ("pytorch_model.bin.index.json", TorchBinFile),
        ):
            index_path = d / index_name
            if index_path.is_file():
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
                missing = [f for f in files if not (d / f).is_file()]
                if missing:
                    raise CheckpointError(f"{index_path} names missing shards: {missing}")
                return [opener(d / f) for f in files]
        safetensors = sorted(d.glob("*.safetensors"))
        if safetensors:
            return [SafetensorsFile(p) for p in safetensors]
        bins = sorted(d.glob("pytorch_model*.bin"))
        if bins:
            return [TorchBinFile(p) for p in bins]
        raise CheckpointError(
            f"{d} holds no weights: expected *.safetensors (with its index when sharded) "
            "or pytorch_model*.bin"
        )

    @property
    def model_name(self) -> str:
        return self.model_dir.name

    @property
    def generation_config(self) -> dict[str, Any]:
        path = self.model_dir / "generation_config.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def write_tokenizer(self, out_dir: Path) -> list[str]:
        """Copy the tokenizer files; make `tokenizer.json` if the model has only a slow one."""
        copied = []
        for name in TOKENIZER_FILES:
            if (self.model_dir / name).is_file():
                shutil.copy2(self.model_dir / name, out_dir / name)
                copied.append(name)
        if "tokenizer.json" not in copied:
            _write_tokenizer_json(self.model_dir, out_dir)
            copied.insert(0, "tokenizer.json")
        return copied

    def names(self) -> Iterator[str]:
        return iter(self._where)

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(
                f"the checkpoint in {self.model_dir} lacks the tensor {name!r}; "
                "is config.json from the same model as the weights?"
            )
        return self._where[name].get(name)


def _write_tokenizer_json(model_dir: Path, out_dir: Path) -> None:
    """Older models ship only a slow tokenizer; transformers can convert it once at build time."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    except Exception as err:
        raise CheckpointError(
            f"{model_dir} has no tokenizer.json and it could not be made from the other "
            f"tokenizer files ({err}); add a tokenizer.json to the model directory"
        ) from err
