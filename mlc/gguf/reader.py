"""Parse a GGUF file (the llama.cpp format): metadata, tensor directory and raw tensor data.

Layout (little-endian): magic `GGUF`, version (u32, 2 or 3), tensor count and metadata count
(u64), the metadata key/value pairs, one record per tensor (name, dims with the fastest-varying
first, type, offset), then the data, aligned to `general.alignment` (default 32).
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .dequantize import GGML_TYPES, TYPE_NAMES, dequantize

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_ARRAY_DTYPES = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}


class GGUFError(ValueError):
    """The file is not a GGUF file we can read, or it is damaged."""


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: the slowest-varying dimension first
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.ggml_type, f"#{self.ggml_type}")


class GGUFFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"GGUF file not found: {self.path}")
        self.size = self.path.stat().st_size
        try:
            with self.path.open("rb") as f:
                self._parse(f)
        except (struct.error, UnicodeDecodeError, EOFError) as err:
            raise GGUFError(f"{self.path} is truncated or corrupt: {err}") from err

    def _parse(self, f: BinaryIO) -> None:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{self.path} is not a GGUF file (bad magic)")
        (version,) = _read(f, "<I")
        if version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {version} is not supported (2 or 3 are)")
        n_tensors, n_kv = _read(f, "<QQ")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _read_string(f)
            (value_type,) = _read(f, "<I")
            self.metadata[key] = _read_value(f, value_type)
        infos = []
        for _ in range(n_tensors):
            name = _read_string(f)
            (n_dims,) = _read(f, "<I")
            dims = _read(f, f"<{n_dims}Q")
            ggml_type, offset = _read(f, "<IQ")
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = -(-f.tell() // alignment) * alignment
        self.tensors: dict[str, GGUFTensor] = {}
        for name, shape, ggml_type, offset in infos:
            nbytes = GGML_TYPES[ggml_type].nbytes(shape) if ggml_type in GGML_TYPES else 0
            self.tensors[name] = GGUFTensor(name, shape, ggml_type, data_start + offset, nbytes)
        end = max((t.offset + t.nbytes for t in self.tensors.values()), default=data_start)
        if end > self.size:
            raise GGUFError(
                f"{self.path} is truncated: its tensors need {end} bytes, the file has {self.size}"
            )

    def get(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32 (float tensors keep F32/F16 as float32)."""
        tensor = self.tensors[name]
        return dequantize(self.raw(name), tensor.ggml_type, tensor.shape)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as the file stores them (uint8)."""
        tensor = self.tensors[name]
        if tensor.ggml_type not in GGML_TYPES:
            raise GGUFError(
                f"{self.path}: tensor {name} has ggml type {tensor.type_name}, which mlc cannot "
                f"read yet (supported: {', '.join(t.name for t in GGML_TYPES.values())})"
            )
        return np.fromfile(self.path, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)

    def blocks(self, name: str) -> np.ndarray:
        """A tensor's bytes as uint8 `[..., rows, blocks per row, bytes per block]`: a 2-D
        tensor read into memory, a 3-D one (a layer's experts) mapped, so that taking one
        expert reads only its bytes."""
        tensor = self.tensors[name]
        kind = GGML_TYPES.get(tensor.ggml_type)
        if kind is None or len(tensor.shape) not in (2, 3) or tensor.shape[-1] % kind.block_size:
            raise GGUFError(f"{self.path}: tensor {name} is not a 2-D tensor of whole blocks")
        shape = (*tensor.shape[:-1], tensor.shape[-1] // kind.block_size, kind.type_size)
        if len(tensor.shape) == 2:
            return self.raw(name).reshape(shape)
        return np.memmap(self.path, np.uint8, mode="r", offset=tensor.offset, shape=shape)


def _read(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) < size:
        raise EOFError("unexpected end of file")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (length,) = _read(f, "<Q")
    data = f.read(length)
    if len(data) < length:
        raise EOFError("unexpected end of file in a string")
    return data.decode("utf-8")


def _read_value(f: BinaryIO, value_type: int) -> Any:
    if value_type in _SCALARS:
        return _read(f, _SCALARS[value_type])[0]
    if value_type == _STRING:
        return _read_string(f)
    if value_type == _ARRAY:
        item_type, count = _read(f, "<IQ")
        if item_type in _ARRAY_DTYPES:
            dtype = np.dtype(_ARRAY_DTYPES[item_type])
            data = f.read(dtype.itemsize * count)
            if len(data) < dtype.itemsize * count:
                raise EOFError("unexpected end of file in an array")
            return np.frombuffer(data, dtype=dtype).tolist()
        return [_read_value(f, item_type) for _ in range(count)]
    raise GGUFError(f"unknown GGUF metadata value type {value_type}")
