"""The artifact layout: what `mlc build` writes and what the runtime checks when it loads it.

A built model directory holds
- `mlc-chat-config.json`: model config, quantization, generation defaults, template, tokenizer;
- `tensor-cache.json` + `params_shard_*.bin`: the converted weights, with a checksum per shard;
- `<model>-<quantization>-<target>.so`: the compiled library, stamped with `_metadata`;
- the tokenizer files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Bump when the library's calling convention or the weight layout changes incompatibly.
ARTIFACT_FORMAT_VERSION = 1
CHAT_CONFIG_NAME = "mlc-chat-config.json"
TENSOR_CACHE_NAME = "tensor-cache.json"
METADATA_FUNC = "_metadata"


class ArtifactError(RuntimeError):
    """An artifact is missing, damaged or does not match its companions."""


def library_name(model_name: str, quantization: str, target: str, suffix: str = ".so") -> str:
    return f"{model_name}-{quantization}-{target}{suffix}"


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{what} is not valid JSON ({path}): {err}") from err


def rebuild_hint(chat_config: dict[str, Any], model_dir: Path) -> str:
    source = chat_config.get("source_model", "<path/to/hf-model>")
    return (
        f"rebuild it with: mlc build {source} --quantization {chat_config.get('quantization')} "
        f"-o {model_dir.parent}"
    )


def check_library_metadata(
    library_meta: dict[str, Any],
    chat_config: dict[str, Any],
    param_records: list[dict[str, Any]],
    model_dir: Path,
    library_path: Path,
) -> None:
    """Refuse a library built for other weights, another model or another format."""
    hint = rebuild_hint(chat_config, model_dir)
    problems = []
    if library_meta.get("artifact_format_version") != ARTIFACT_FORMAT_VERSION:
        problems.append(
            f"artifact format {library_meta.get('artifact_format_version')} "
            f"(this runtime reads {ARTIFACT_FORMAT_VERSION})"
        )
    for key in ("model_type", "quantization"):
        if library_meta.get(key) != chat_config.get(key):
            problems.append(
                f"{key} {library_meta.get(key)!r} (the weights are {chat_config.get(key)!r})"
            )
    scheme = library_meta.get("quantization_scheme")  # older libraries did not record it
    if scheme is not None and scheme != chat_config.get("quantization_scheme"):
        problems.append("another weight layout than the weights' (the quantization changed)")
    if library_meta.get("model_config") != chat_config.get("model_config"):
        problems.append("a different model configuration than the weights")
    expected = [(p["name"], list(p["shape"]), p["dtype"]) for p in library_meta.get("params", [])]
    actual = [(p["name"], list(p["shape"]), p["dtype"]) for p in param_records]
    if not problems and expected != actual:
        diff = next(
            (f"{a} vs {b}" for a, b in zip(expected, actual, strict=False) if a != b),
            f"{len(expected)} parameters vs {len(actual)}",
        )
        problems.append(f"different parameters than the weights ({diff})")
    if problems:
        raise ArtifactError(
            f"The library {library_path.name} does not match the model in {model_dir}: it was "
            f"built for " + "; ".join(problems) + f". The library and the weights must come from "
            f"the same build; {hint}"
        )
