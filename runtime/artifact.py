"""The artifact layout, and the check that a library matches the weights beside it.

A built model directory holds
- `mlc-chat-config.json` (+ its JSON Schema): the build↔runtime contract (`chat_config.py`);
- `tensor-cache.json` + `params_shard_*.bin`: the converted weights (`tensor_cache.py`);
- `<model>-<quantization>-<target>.so`: the compiled library, stamped with `_metadata`;
- the tokenizer files;
- `chat-format.json`: the chat template as fixed text around turns (`chat_format.py`), for the
  runtimes without Jinja, where the template reduces to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .chat_config import ARTIFACT_FORMAT_VERSION, ArtifactError, ChatConfig
from .tensor_cache import TensorRecord

METADATA_FUNC = "_metadata"


def library_name(model_name: str, quantization: str, target: str, suffix: str = ".so") -> str:
    return f"{model_name}-{quantization}-{target}{suffix}"


def check_library_metadata(
    library_meta: dict[str, Any],
    chat_config: ChatConfig,
    records: list[TensorRecord],
    model_dir: Path,
    library_path: Path,
) -> None:
    """Refuse a library built for other weights, another model or another format."""
    hint = chat_config.rebuild_hint(model_dir)
    problems = []
    if library_meta.get("artifact_format_version") != ARTIFACT_FORMAT_VERSION:
        problems.append(
            f"artifact format {library_meta.get('artifact_format_version')} "
            f"(this runtime reads {ARTIFACT_FORMAT_VERSION})"
        )
    for key in ("model_type", "quantization"):
        if library_meta.get(key) != getattr(chat_config, key):
            problems.append(
                f"{key} {library_meta.get(key)!r} (the weights are {getattr(chat_config, key)!r})"
            )
    scheme = library_meta.get("quantization_scheme")  # older libraries did not record it
    if scheme is not None and scheme != chat_config.quantization_scheme:
        problems.append("another weight layout than the weights' (the quantization changed)")
    if library_meta.get("model_config") != chat_config.model_config:
        problems.append("a different model configuration than the weights")
    expected = [(p["name"], list(p["shape"]), p["dtype"]) for p in library_meta.get("params", [])]
    actual = [r.key() for r in records]
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
