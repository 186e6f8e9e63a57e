"""The build↔runtime contract (`runtime/chat_config.py`): what `mlc build` writes validates
against the JSON Schema written beside it (checked with the `jsonschema` package), and a broken
config is refused alike by the Python runtime, by `jsonschema` and by the page's validator."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from mlc.runtime import ChatModule
from mlc.runtime.chat_config import (
    CHAT_CONFIG_NAME,
    CHAT_CONFIG_SCHEMA_NAME,
    ArtifactError,
    ChatConfig,
    json_schema,
)

GQA = {"num_key_value_heads": 2}
ENGINE_JS = Path(__file__).parents[1] / "runtime" / "web" / "chat" / "engine.js"


@pytest.fixture(scope="module")
def built(tiny_builds) -> Path:
    return tiny_builds.get("gqa", **GQA)[1]


@pytest.fixture(scope="module")
def written(built) -> dict:
    return json.loads((built / CHAT_CONFIG_NAME).read_text())


def _broken(written: dict) -> dict[str, tuple[dict, str]]:
    """Broken copies of a good config, each with the key its error must name."""
    missing = {k: v for k, v in written.items() if k != "vocab_size"}
    return {
        "missing": (missing, "vocab_size"),
        "unknown": ({**written, "vocab_sise": 320}, "vocab_sise"),
        "mistyped": ({**written, "context_window_size": "256"}, "context_window_size"),
        "mistyped-list": ({**written, "eos_token_id": [2, "3"]}, "eos_token_id"),
        "bool-for-int": ({**written, "top_k": True}, "top_k"),
        "version": ({**written, "artifact_format_version": 0}, "artifact format"),
    }


def test_the_build_writes_a_config_its_schema_accepts(built, written):
    schema = json.loads((built / CHAT_CONFIG_SCHEMA_NAME).read_text())
    assert schema == json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(written, schema, cls=jsonschema.Draft202012Validator)
    assert ChatConfig.load(built).to_dict() == written


@pytest.mark.parametrize(
    "case", ["missing", "unknown", "mistyped", "mistyped-list", "bool-for-int", "version"]
)
def test_a_broken_config_is_refused_by_runtime_and_schema_alike(built, written, case):
    config, key = _broken(written)[case]
    with pytest.raises(
        ArtifactError, match=f"{CHAT_CONFIG_NAME}.*{key}.*rebuild it with: mlc build"
    ):
        ChatConfig.from_dict(config, str(built / CHAT_CONFIG_NAME))
    schema = json.loads((built / CHAT_CONFIG_SCHEMA_NAME).read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema, cls=jsonschema.Draft202012Validator)


def test_chat_module_names_the_file_and_the_key(built, written, tmp_path):
    copy = tmp_path / built.name
    shutil.copytree(built, copy)
    config, _ = _broken(written)["missing"]
    (copy / CHAT_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=f"{copy / CHAT_CONFIG_NAME} lacks the key.*vocab_size"):
        ChatModule(str(copy))


def test_the_page_s_validator_agrees_with_jsonschema(built, written):
    """`schemaViolation` in engine.js, run by node on the good config and every broken one."""
    node = shutil.which("node")
    assert node, "node is needed to run the page's validator (installed with npm)"
    cases = {"good": written, **{k: v for k, (v, _) in _broken(written).items()}}
    script = (
        f"import {{ schemaViolation }} from {json.dumps(ENGINE_JS.as_uri())};\n"
        f"const schema = {(built / CHAT_CONFIG_SCHEMA_NAME).read_text()};\n"
        f"const cases = {json.dumps(cases)};\n"
        "console.log(JSON.stringify(Object.fromEntries(Object.entries(cases).map("
        "([k, v]) => [k, schemaViolation(v, schema)]))));\n"
    )
    result = subprocess.run(
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, check=True
    )
    verdicts = json.loads(result.stdout)
    assert verdicts.pop("good") is None
    for case, problem in verdicts.items():
        assert problem, f"the page accepted the {case} config"
    assert "vocab_size" in verdicts["missing"] and "vocab_sise" in verdicts["unknown"]
