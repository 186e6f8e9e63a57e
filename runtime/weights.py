"""Load `tensor-cache.json` + `params_shard_*.bin` onto a device, verifying every shard."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from .artifact import TENSOR_CACHE_NAME, ArtifactError, read_json

_HASH_CHUNK = 16 * 1024 * 1024


def read_tensor_cache(model_dir: Path) -> dict[str, Any]:
    return read_json(model_dir / TENSOR_CACHE_NAME, "weight index")


def param_records(cache: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for shard in cache["records"] for record in shard["records"]]


def _verify_shard(path: Path, shard: dict[str, Any], rebuild: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"weight shard missing: {path}; {rebuild}")
    size = path.stat().st_size
    if size != shard["nbytes"]:
        raise ArtifactError(
            f"weight shard {path.name} has {size} bytes, expected {shard['nbytes']}: it is "
            f"truncated or damaged; {rebuild}"
        )
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != shard["sha256"]:
        raise ArtifactError(
            f"weight shard {path.name} fails its checksum: it is corrupted; {rebuild}"
        )


def load_params(
    model_dir: Path,
    cache: dict[str, Any],
    device: tvm.runtime.Device,
    rebuild_hint: str,
    verify: bool = True,
) -> list[tvm.runtime.Tensor]:
    """All parameters in record order (the order the library's functions take them)."""
    params = []
    for shard in cache["records"]:
        path = model_dir / shard["dataPath"]
        if verify:
            _verify_shard(path, shard, rebuild_hint)
        elif not path.is_file() or path.stat().st_size != shard["nbytes"]:
            raise ArtifactError(f"weight shard {path} is missing or truncated; {rebuild_hint}")
        data = np.fromfile(path, dtype=np.uint8)
        for record in shard["records"]:
            begin = record["byteOffset"]
            raw = data[begin : begin + record["nbytes"]]
            array = raw.view(record["dtype"]).reshape(record["shape"])
            params.append(tvm.runtime.tensor(array, device))
        del data
    return params
