"""`mlc-chat-config.json`, the contract between `mlc build` and every runtime, defined once.

`mlc build` writes a `ChatConfig` and, beside it, the JSON Schema generated from this class
(`mlc-chat-config.schema.json`); the Python runtime reads it back through `ChatConfig.load`,
and the web page (and any other runtime) validates the file against that schema. A missing,
unknown or mistyped key is refused with an error that names the file, the key and the rebuild
command.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

CHAT_CONFIG_NAME = "mlc-chat-config.json"
CHAT_CONFIG_SCHEMA_NAME = "mlc-chat-config.schema.json"
# The sampling defaults a build records (`GenerationConfig` field names).
GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")
# Bump when the library's calling convention, the weight layout or this schema changes
# incompatibly; the library records the same number.
ARTIFACT_FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, damaged or does not match its companions."""


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """Everything a runtime needs to load a build and chat with it."""

    artifact_format_version: int = field(
        metadata=_doc("the artifact format this build was written in")
    )
    builder: str = field(metadata=_doc("the mlc version that built it"))
    tvm_version: str = field(metadata=_doc("the TVM version that compiled the library"))
    model_type: str = field(metadata=_doc("the Hugging Face `model_type` (the architecture)"))
    quantization: str = field(metadata=_doc("the quantization code, e.g. q4f16_1"))
    quantization_scheme: dict[str, Any] = field(
        metadata=_doc("the scheme's parameters and weight layout")
    )
    model_config: dict[str, Any] = field(
        metadata=_doc("the architecture's configuration (models/<arch>.py)")
    )
    vocab_size: int = field(metadata=_doc("rows of the embedding and the logits"))
    context_window_size: int = field(metadata=_doc("tokens a sequence may hold in the KV cache"))
    prefill_chunk_size: int = field(metadata=_doc("tokens one prefill call takes at most"))
    max_batch_size: int = field(metadata=_doc("sequences one decode call serves at most"))
    temperature: float = field(metadata=_doc("default sampling temperature (0: greedy)"))
    top_p: float = field(metadata=_doc("default nucleus sampling mass"))
    top_k: int = field(metadata=_doc("default top-k (0: off)"))
    repetition_penalty: float = field(metadata=_doc("default repetition penalty (1: off)"))
    max_tokens: int = field(metadata=_doc("default answer length limit in tokens"))
    conv_template: str | dict[str, Any] | None = field(
        metadata=_doc("a built-in conversation template (name or definition), or null")
    )
    chat_template: str | None = field(metadata=_doc("the model's own Jinja chat template, or null"))
    tokenizer_files: list[str] = field(metadata=_doc("the tokenizer files in the build folder"))
    bos_token_id: int | None = field(metadata=_doc("the beginning-of-sequence token, or null"))
    eos_token_id: int | list[int] | None = field(
        metadata=_doc("the end-of-sequence token(s), or null")
    )
    pad_token_id: int | None = field(metadata=_doc("the padding token, or null"))
    model_lib: str = field(metadata=_doc("the compiled library's file name in the build folder"))
    target: str = field(metadata=_doc("the target preset the library was built for"))
    source_model: str = field(metadata=_doc("the checkpoint the build was made from"))

    # --- reading and writing ----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = CHAT_CONFIG_NAME) -> ChatConfig:
        """Validate `data` against the schema; ArtifactError names `source` and the key."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{source} must hold a JSON object, not {type(data).__name__}")
        rebuild = _rebuild_hint(data.get("source_model"), data.get("quantization"))
        version = data.get("artifact_format_version")
        if version != ARTIFACT_FORMAT_VERSION:
            raise ArtifactError(
                f"{source} has artifact format {version!r}; this runtime reads "
                f"{ARTIFACT_FORMAT_VERSION}: {rebuild}"
            )
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ArtifactError(f"{source} lacks the key(s) {', '.join(missing)}: {rebuild}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ArtifactError(
                f"{source} has unknown key(s) {', '.join(unknown)} (written by another mlc "
                f"version?): {rebuild}"
            )
        for name in names:
            if not _matches(data[name], hints[name]):
                raise ArtifactError(
                    f"{source}: key {name!r} must be {_type_name(hints[name])}, not "
                    f"{data[name]!r}: {rebuild}"
                )
        return cls(**{n: data[n] for n in names})

    @classmethod
    def load(cls, model_dir: Path) -> ChatConfig:
        """The chat config of the build in `model_dir`."""
        path = Path(model_dir) / CHAT_CONFIG_NAME
        return cls.from_dict(read_json(path, "chat config"), str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, model_dir: Path) -> None:
        """Write the config and its JSON Schema into `model_dir`."""
        (model_dir / CHAT_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2))
        (model_dir / CHAT_CONFIG_SCHEMA_NAME).write_text(json.dumps(json_schema(), indent=2))

    # --- what the runtimes ask of it ---------------------------------------------------------

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return list(eos) if isinstance(eos, list) else [] if eos is None else [eos]

    def generation_defaults(self) -> dict[str, Any]:
        """The model's sampling defaults, as `GenerationConfig` field values."""
        return {k: getattr(self, k) for k in GENERATION_DEFAULT_KEYS}

    def rebuild_hint(self, model_dir: Path | None = None) -> str:
        return _rebuild_hint(self.source_model, self.quantization, self.target, model_dir)


def _rebuild_hint(
    source: Any, quantization: Any, target: Any = None, model_dir: Path | None = None
) -> str:
    command = f"mlc build {source or '<path/to/model>'} --quantization {quantization or 'CODE'}"
    if target and target != "llvm":
        command += f" --target {target}"
    if model_dir is not None:
        command += f" -o {Path(model_dir).parent}"
    return f"rebuild it with: {command}"


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{what} is not valid JSON ({path}): {err}") from err


# --- the type hints as JSON types --------------------------------------------------------------


def _alternatives(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(value: Any, hint: Any) -> bool:
    for alt in _alternatives(hint):
        origin = typing.get_origin(alt) or alt
        if alt is type(None) and value is None:
            return True
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if origin is str and isinstance(value, str):
            return True
        if origin is dict and isinstance(value, dict):
            return True
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(alt)
            if all(_matches(v, item) for v in value):
                return True
    return False


def _type_name(hint: Any) -> str:
    return " or ".join(json.dumps(_schema_of(a)) for a in _alternatives(hint))


def _schema_of(hint: Any) -> dict[str, Any]:
    alts = _alternatives(hint)
    if len(alts) > 1:
        return {"anyOf": [_schema_of(a) for a in alts]}
    origin = typing.get_origin(hint) or hint
    simple = {int: "integer", float: "number", str: "string", dict: "object", type(None): "null"}
    if origin in simple:
        return {"type": simple[origin]}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": _schema_of(item)}
    raise TypeError(f"no JSON type for {hint!r}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `mlc-chat-config.json`."""
    hints = typing.get_type_hints(ChatConfig)
    properties = {}
    for f in dataclasses.fields(ChatConfig):
        properties[f.name] = {**_schema_of(hints[f.name]), "description": f.metadata["description"]}
    properties["artifact_format_version"]["const"] = ARTIFACT_FORMAT_VERSION
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": CHAT_CONFIG_NAME,
        "description": ChatConfig.__doc__,
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
