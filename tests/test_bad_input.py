"""Bad input gets an error that names the problem, and leaves no half-written output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mlc.build import BuildOptions, build
from mlc.hf_checkpoint import CheckpointError
from mlc.runtime import ArtifactError, ChatModule, CompiledModel
from mlc.testing.random_model import save_llama

GQA = {"num_key_value_heads": 2}


def _assert_nothing_written(out_dir):
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_missing_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        build(BuildOptions(model=tmp_path / "nope", output=tmp_path / "dist", quiet=True))


def test_missing_config_json(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        build(BuildOptions(model=tmp_path / "model", output=tmp_path / "dist", quiet=True))
    _assert_nothing_written(tmp_path / "dist")


def test_unknown_model_type(tmp_path):
    model = save_llama(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "transformer-from-mars"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'transformer-from-mars'.*llama"):
        build(BuildOptions(model=model, output=tmp_path / "dist", quiet=True))
    _assert_nothing_written(tmp_path / "dist")


def test_unknown_quantization_and_target(tmp_path):
    model = save_llama(tmp_path / "model")
    with pytest.raises(ValueError, match="unknown quantization 'q9f99'.*q0f32"):
        build(BuildOptions(model=model, quantization="q9f99", output=tmp_path / "d", quiet=True))
    with pytest.raises(ValueError, match="unknown target 'abacus'.*llvm"):
        build(BuildOptions(model=model, target="abacus", output=tmp_path / "d", quiet=True))
    _assert_nothing_written(tmp_path / "d")


def test_truncated_input_weights(tmp_path):
    model = save_llama(tmp_path / "model")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        build(BuildOptions(model=model, output=tmp_path / "dist", quiet=True))
    _assert_nothing_written(tmp_path / "dist")


def test_failed_build_leaves_nothing_and_keeps_the_previous_build(tmp_path):
    model = save_llama(tmp_path / "model")
    built = build(BuildOptions(model=model, output=tmp_path / "dist", quiet=True))
    before = sorted(p.name for p in built.iterdir())
    tensors = load_file(model / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks the tensor 'model.layers.1.mlp.down_proj"):
        build(BuildOptions(model=model, output=tmp_path / "dist", quiet=True))
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [built.name]
    assert sorted(p.name for p in built.iterdir()) == before
    CompiledModel(built).prefill([1, 2, 3])


def test_weights_of_another_shape_are_rejected(tmp_path):
    model = save_llama(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 128
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit the model"):
        build(BuildOptions(model=model, output=tmp_path / "dist", quiet=True))
    _assert_nothing_written(tmp_path / "dist")


@pytest.fixture
def artifact_copy(tiny_builds, tmp_path):
    _, built = tiny_builds.get("gqa", **GQA)
    copy = tmp_path / built.name
    shutil.copytree(built, copy)
    return copy


def test_truncated_shard(artifact_copy):
    shard = artifact_copy / "params_shard_0.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="params_shard_0.bin.*truncated.*mlc build"):
        ChatModule(str(artifact_copy))


def test_corrupted_shard(artifact_copy):
    shard = artifact_copy / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="params_shard_0.bin fails its checksum.*mlc build"):
        ChatModule(str(artifact_copy))


def test_missing_library_and_missing_model_dir(artifact_copy, tmp_path):
    with pytest.raises(ArtifactError, match="model directory not found"):
        ChatModule(str(tmp_path / "nowhere"))
    next(artifact_copy.glob("*.so")).unlink()
    with pytest.raises(ArtifactError, match="model library not found.*mlc build"):
        ChatModule(str(artifact_copy))


def test_library_built_for_another_model(tiny_builds, artifact_copy):
    _, other = tiny_builds.get("mha")
    library = next(other.glob("*.so"))
    with pytest.raises(ArtifactError, match="does not match.*rebuild it with: mlc build"):
        ChatModule(str(artifact_copy), model_lib=str(library))


def test_library_built_for_another_quantization(tiny_builds, artifact_copy):
    _, other = tiny_builds.get("gqa", quantization="q0f16", **GQA)
    library = next(other.glob("*.so"))
    with pytest.raises(ArtifactError, match="quantization 'q0f16'.*'q0f32'"):
        ChatModule(str(artifact_copy), model_lib=str(library))


def test_weights_in_another_layout_than_the_library(artifact_copy):
    """Weights converted with another layout of the same quantization (an older `mlc`)."""
    config_path = artifact_copy / "mlc-chat-config.json"
    config = json.loads(config_path.read_text())
    config["quantization_scheme"]["storage"] = "an older layout"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="another weight layout.*rebuild it with: mlc build"):
        ChatModule(str(artifact_copy))


def test_other_checkpoint_layouts_convert_to_the_same_weights(tmp_path, tiny_builds):
    """Sharded safetensors with an index, and pytorch_model.bin, give the same artifact."""
    _, reference = tiny_builds.get("gqa", **GQA)
    prompt = [1, 17, 42, 99, 7]
    expected = CompiledModel(reference).prefill(prompt)
    for name, kwargs in (("sharded", {"max_shard_size": "20KB"}), ("bin", {"safetensors": False})):
        model = save_llama(tmp_path / name, **GQA, **kwargs)
        if name == "sharded":
            assert (model / "model.safetensors.index.json").exists()
        else:
            assert list(model.glob("pytorch_model*.bin"))
        built = build(BuildOptions(model=model, output=tmp_path / "dist", quiet=True))
        np.testing.assert_array_equal(CompiledModel(built).prefill(prompt), expected)
