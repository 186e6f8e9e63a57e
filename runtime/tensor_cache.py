"""The tensor cache: `tensor-cache.json` plus `params_shard_*.bin`, defined, written and read here.

The index lists shards (`dataPath`, `nbytes`, `sha256`) and, in each, the raw records of the
tensors it holds (`name`, `shape`, `dtype`, `nbytes`, `byteOffset`), in the order the library's
functions take the parameters. The field names are those of TVM's JavaScript runtime, which
reads the same index in the browser.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .chat_config import ArtifactError, read_json

TENSOR_CACHE_NAME = "tensor-cache.json"
DEFAULT_SHARD_BYTES = 32 * 1024 * 1024
_HASH_CHUNK = 16 * 1024 * 1024


@dataclasses.dataclass
class TensorRecord:
    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    byteOffset: int
    format: str = "raw"

    def key(self) -> tuple[str, list[int], str]:
        """What a library's parameter list must match."""
        return self.name, list(self.shape), self.dtype


@dataclasses.dataclass
class Shard:
    dataPath: str
    nbytes: int = 0
    records: list[TensorRecord] = dataclasses.field(default_factory=list)
    sha256: str = ""
    format: str = "raw-shard"


@dataclasses.dataclass
class TensorCacheIndex:
    shards: list[Shard]
    param_size: int  # parameters before quantization
    param_bytes: int  # bytes on disk

    @property
    def records(self) -> list[TensorRecord]:
        return [r for shard in self.shards for r in shard.records]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metadata": {
                "ParamSize": self.param_size,
                "ParamBytes": self.param_bytes,
                "BitsPerParam": 8.0 * self.param_bytes / max(self.param_size, 1),
            },
            "records": [dataclasses.asdict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str, rebuild: str) -> TensorCacheIndex:
        try:
            shards = [
                Shard(**{**s, "records": [TensorRecord(**r) for r in s["records"]]})
                for s in data["records"]
            ]
            meta = data["metadata"]
            return cls(shards, int(meta["ParamSize"]), int(meta["ParamBytes"]))
        except (KeyError, TypeError) as err:
            raise ArtifactError(
                f"{source} is not a tensor cache index ({err!r}); {rebuild}"
            ) from err

    @classmethod
    def load(cls, model_dir: Path, rebuild: str) -> TensorCacheIndex:
        path = Path(model_dir) / TENSOR_CACHE_NAME
        return cls.from_dict(read_json(path, "weight index"), str(path), rebuild)


class TensorCacheWriter:
    """Streams tensors into shards of about `shard_bytes`, recording offsets and checksums.

    A tensor never straddles two shards, so a tensor larger than `shard_bytes` gets a shard of
    its own. `ParamSize` counts the parameters before quantization, so `BitsPerParam` says how
    many bits a model parameter costs on disk.
    """

    def __init__(self, out_dir: Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.out_dir = out_dir
        self.shard_bytes = shard_bytes
        self.index = TensorCacheIndex([], 0, 0)
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()

    def _open_shard(self) -> Shard:
        self._close_shard()
        shard = Shard(f"params_shard_{len(self.index.shards)}.bin")
        self._file = (self.out_dir / shard.dataPath).open("wb")
        self._hash = hashlib.sha256()
        self.index.shards.append(shard)
        return shard

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.index.shards[-1].sha256 = self._hash.hexdigest()

    def add(self, name: str, array: np.ndarray, logical_size: int | None = None) -> None:
        """Append one tensor; `logical_size` is its parameter count before quantization."""
        data = np.ascontiguousarray(array)
        shard = self.index.shards[-1] if self.index.shards else None
        if shard is None or (shard.nbytes and shard.nbytes + data.nbytes > self.shard_bytes):
            shard = self._open_shard()
        assert self._file is not None
        buffer = memoryview(data.reshape(-1).view(np.uint8))
        self._file.write(buffer)
        self._hash.update(buffer)
        shard.records.append(
            TensorRecord(name, list(data.shape), str(data.dtype), int(data.nbytes), shard.nbytes)
        )
        shard.nbytes += int(data.nbytes)
        self.index.param_size += int(logical_size if logical_size is not None else data.size)
        self.index.param_bytes += int(data.nbytes)

    def finish(self) -> TensorCacheIndex:
        """Close the last shard and write `tensor-cache.json`."""
        self._close_shard()
        (self.out_dir / TENSOR_CACHE_NAME).write_text(json.dumps(self.index.to_dict(), indent=1))
        return self.index


def _verify_shard(path: Path, shard: Shard, rebuild: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"weight shard missing: {path}; {rebuild}")
    size = path.stat().st_size
    if size != shard.nbytes:
        raise ArtifactError(
            f"weight shard {path.name} has {size} bytes, expected {shard.nbytes}: it is "
            f"truncated or damaged; {rebuild}"
        )
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != shard.sha256:
        raise ArtifactError(
            f"weight shard {path.name} fails its checksum: it is corrupted; {rebuild}"
        )


def iter_arrays(
    model_dir: Path, index: TensorCacheIndex, rebuild: str, verify: bool = True
) -> Iterator[np.ndarray]:
    """Every parameter in record order (the order the library's functions take them); each
    shard is read whole and released once its tensors are consumed."""
    for shard in index.shards:
        path = Path(model_dir) / shard.dataPath
        if verify:
            _verify_shard(path, shard, rebuild)
        elif not path.is_file() or path.stat().st_size != shard.nbytes:
            raise ArtifactError(f"weight shard {path} is missing or truncated; {rebuild}")
        data = np.fromfile(path, dtype=np.uint8)
        for record in shard.records:
            raw = data[record.byteOffset : record.byteOffset + record.nbytes]
            yield raw.view(record.dtype).reshape(record.shape)
        del data
