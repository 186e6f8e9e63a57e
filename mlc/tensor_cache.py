"""Write converted weights as `tensor-cache.json` plus `params_shard_*.bin`, streaming."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mlc.runtime.artifact import TENSOR_CACHE_NAME

DEFAULT_SHARD_BYTES = 32 * 1024 * 1024


class TensorCacheWriter:
    """Streams tensors into shards of about `shard_bytes`, recording offsets and checksums.

    A tensor never straddles two shards, so a tensor larger than `shard_bytes` gets a shard of
    its own. `ParamSize` counts the parameters before quantization, so `BitsPerParam` says how
    many bits a model parameter costs on disk.
    """

    def __init__(self, out_dir: Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.out_dir = out_dir
        self.shard_bytes = shard_bytes
        self.shards: list[dict[str, Any]] = []
        self.param_size = 0
        self.param_bytes = 0
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()

    def _open_shard(self) -> None:
        self._close_shard()
        name = f"params_shard_{len(self.shards)}.bin"
        self._file = (self.out_dir / name).open("wb")
        self._hash = hashlib.sha256()
        self.shards.append({"dataPath": name, "format": "raw-shard", "nbytes": 0, "records": []})

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.shards[-1]["sha256"] = self._hash.hexdigest()

    def add(self, name: str, array: np.ndarray, logical_size: int | None = None) -> None:
        """Append one tensor; `logical_size` is its parameter count before quantization."""
        data = np.ascontiguousarray(array)
        shard = self.shards[-1] if self.shards else None
        if shard is None or (shard["nbytes"] and shard["nbytes"] + data.nbytes > self.shard_bytes):
            self._open_shard()
            shard = self.shards[-1]
        assert self._file is not None
        buffer = memoryview(data.reshape(-1).view(np.uint8))
        self._file.write(buffer)
        self._hash.update(buffer)
        shard["records"].append(
            {
                "name": name,
                "shape": list(data.shape),
                "dtype": str(data.dtype),
                "format": "raw",
                "nbytes": int(data.nbytes),
                "byteOffset": shard["nbytes"],
            }
        )
        shard["nbytes"] += int(data.nbytes)
        self.param_size += int(logical_size if logical_size is not None else data.size)
        self.param_bytes += int(data.nbytes)

    def finish(self) -> dict[str, Any]:
        """Close the last shard and write `tensor-cache.json`; returns its content."""
        self._close_shard()
        cache = {
            "metadata": {
                "ParamSize": self.param_size,
                "ParamBytes": self.param_bytes,
                "BitsPerParam": 8.0 * self.param_bytes / max(self.param_size, 1),
            },
            "records": self.shards,
        }
        (self.out_dir / TENSOR_CACHE_NAME).write_text(json.dumps(cache, indent=1))
        return cache
