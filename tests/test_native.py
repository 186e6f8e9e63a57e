"""The native runtime (`runtime/native`, `mlc native build`): `mlc-chat` answers with exactly
`ChatModule`'s greedy tokens and text, refuses bad builds with Python's own messages, and a C
program that includes only `mlc_runtime.h` streams an answer and cancels one."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import mlc
from mlc import ChatModule, GenerationConfig
from mlc.build import BuildOptions, build
from mlc.native import emulator_prefix, native_build
from mlc.runtime import ArtifactError
from mlc.runtime.compiled_model import ContextWindowExceeded

GQA = {"num_key_value_heads": 2}
C_PROGRAM = Path(__file__).parent / "data" / "native_api_client.c"


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    return native_build(tmp_path_factory.mktemp("native") / "out")


@pytest.fixture(scope="module")
def tiny(tiny_builds) -> Path:
    return tiny_builds.get("gqa", **GQA)[1]


def mlc_chat(
    native: Path, model: Path, prompts: list[str], *options: str, arch: str = "x86_64"
) -> subprocess.CompletedProcess:
    """`mlc-chat --json` of the runtime in `native`, built for `arch` (run under emulation
    where that is not this machine's)."""
    program = [*emulator_prefix(arch), str(native / "bin" / "mlc-chat")]
    command = [*program, "--model", str(model), "--json", *options]
    for prompt in prompts:
        command += ["--prompt", prompt]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def turns(run: subprocess.CompletedProcess) -> list[dict]:
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def python_turns(model: Path, prompts: list[str], config: GenerationConfig) -> list[dict]:
    chat = ChatModule(str(model))
    out = []
    for prompt in prompts:
        pieces: list[str] = []
        answer = chat.generate(prompt, config, pieces.append)
        assert "".join(pieces) == answer
        stats = chat.last_stats
        out.append(
            {
                "answer": answer,
                "ids": chat.last_output_ids,
                "finish_reason": stats.finish_reason,
                "prefill_tokens": stats.prefill_tokens,
            }
        )
    return out


def assert_same_turns(native_turns: list[dict], expected: list[dict]) -> None:
    assert len(native_turns) == len(expected)
    for got, want in zip(native_turns, expected, strict=True):
        assert {k: got[k] for k in want} == want


def test_tiny_model_answers_as_chat_module(native, tiny):
    """Greedy, three turns of one conversation, a stop string found in the answer, and random
    byte-level tokens that split UTF-8 characters (the lossy decoding and the streamer)."""
    prompts = ["Hello there", "ünïcödé 🙂 and more", "The third turn."]
    greedy = GenerationConfig(temperature=0, max_tokens=24)
    expected = python_turns(tiny, prompts, greedy)
    assert_same_turns(
        turns(mlc_chat(native, tiny, prompts, "--temperature", "0", "--max-tokens", "24")), expected
    )
    assert any("\ufffd" in t["answer"] for t in expected) or any(
        len(t["answer"].encode()) > len(t["answer"]) for t in expected
    ), "no multi-byte character was generated: the test exercises nothing"

    answer = expected[0]["answer"]
    stop = next(answer[i : i + 2] for i in range(4, len(answer) - 2) if answer[i : i + 2].strip())
    config = GenerationConfig(temperature=0, max_tokens=24, stop=[stop])
    with_stop = python_turns(tiny, prompts[:2], config)
    assert with_stop[0]["finish_reason"] == "stop" and stop not in with_stop[0]["answer"]
    run = mlc_chat(
        native, tiny, prompts[:2], "--temperature", "0", "--max-tokens", "24", "--stop", stop
    )
    assert_same_turns(turns(run), with_stop)


def test_default_model_answers_as_chat_module(native, smollm2_builds):
    """The embedded default at its default code, through its own chat template: two turns."""
    from mlc.default_model import QUANTIZATION

    model = smollm2_builds(QUANTIZATION)
    prompts = ["Name the capital of France.", "And of Italy? Answer in one word."]
    expected = python_turns(model, prompts, GenerationConfig(temperature=0, max_tokens=40))
    assert "Paris" in expected[0]["answer"]
    run = mlc_chat(native, model, prompts, "--temperature", "0", "--max-tokens", "40")
    assert_same_turns(turns(run), expected)
    plain = subprocess.run(
        [
            str(native / "bin" / "mlc-chat"),
            "--model",
            str(model),
            "--prompt",
            prompts[0],
            "--temperature",
            "0",
            "--max-tokens",
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0 and plain.stdout == expected[0]["answer"] + "\n"


def test_sampling_is_reproducible_with_a_seed(native, tiny):
    options = ("--temperature", "1.0", "--top-p", "0.9", "--max-tokens", "16")
    runs = [
        turns(mlc_chat(native, tiny, ["Hi"], *options, "--seed", seed))[0]["ids"]
        for seed in ("1", "1", "2")
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.fixture
def broken(tiny, tmp_path) -> Path:
    copy = tmp_path / tiny.name
    shutil.copytree(tiny, copy)
    return copy


def python_error(model: Path, prompt: str = "Hi") -> str:
    with pytest.raises((ArtifactError, ContextWindowExceeded)) as err:
        ChatModule(str(model)).generate(prompt, GenerationConfig(temperature=0, max_tokens=4))
    return str(err.value)


def native_error(native: Path, model: Path, prompt: str = "Hi") -> str:
    run = mlc_chat(native, model, [prompt], "--temperature", "0", "--max-tokens", "4")
    assert run.returncode == 1 and run.stdout == ""
    prefix = "mlc-chat: "
    assert run.stderr.startswith(prefix)
    return run.stderr[len(prefix) :].strip()


def test_bad_builds_give_python_s_errors(native, broken, tiny_builds, tmp_path):
    assert native_error(native, tmp_path / "nowhere") == python_error(tmp_path / "nowhere")
    shard = broken / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    message = native_error(native, broken)
    assert "params_shard_0.bin fails its checksum" in message and message == python_error(broken)
    shard.write_bytes(bytes(data[:-100]))
    assert "truncated" in native_error(native, broken)
    assert native_error(native, broken) == python_error(broken)
    shard.unlink()
    assert native_error(native, broken) == python_error(broken)


def test_a_library_of_another_model_and_a_too_long_prompt(native, broken, tiny_builds):
    other = tiny_builds.get("mha")[1]
    library = next(broken.glob("*.so"))
    shutil.copy(next(other.glob("*.so")), library)
    message = native_error(native, broken)
    assert "does not match" in message and message == python_error(broken)
    long_prompt = "word " * 5000
    assert native_error(native, other, long_prompt) == python_error(other, long_prompt)


def test_a_c_program_streams_and_cancels(native, tiny, tmp_path):
    """Only `mlc_runtime.h` and `libmlc_runtime.so`: a streamed answer equals the returned one
    and ChatModule's; a callback that asks to stop and a cancel flag end answers early."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler is not None, "a C compiler is needed"
    program = tmp_path / "client"
    subprocess.run(
        [
            compiler,
            "-std=c11",
            "-Wall",
            "-Werror",
            str(C_PROGRAM),
            "-I",
            str(native / "include"),
            "-L",
            str(native / "lib"),
            "-lmlc_runtime",
            f"-Wl,-rpath,{native / 'lib'}",
            "-o",
            str(program),
        ],
        check=True,
    )
    run = subprocess.run([str(program), str(tiny)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    expected = python_turns(tiny, ["Hello there"], GenerationConfig(temperature=0, max_tokens=24))[
        0
    ]
    assert report["streamed"] == report["answer"] == expected["answer"]
    # Asked to stop at the third piece: at most the text held back until then follows.
    assert report["stopped_by_callback"]["finish_reason"] == "interrupted"
    assert report["stopped_by_callback"]["pieces"] in (3, 4)
    assert report["cancelled_by_flag"]["finish_reason"] == "interrupted"
    assert 2 <= report["cancelled_by_flag"]["decode_tokens"] < 24
    assert report["bad_prompt_status"] == -1
    assert report["bad_prompt_error"] == "prompt is NULL"
    assert report["version"] == mlc.__version__


# --- 64-bit ARM: the target and the runtime cross-compiled, run under qemu-aarch64 ----------


@pytest.fixture(scope="module")
def native_arm64(tmp_path_factory) -> Path:
    return native_build(tmp_path_factory.mktemp("native-arm64") / "out", "arm64")


# The float codes only: a random tiny model's logits are nearly tied, and the int8 codes turn a
# last-bit difference of the float kernels (norms, attention: vectorised differently for NEON
# and AVX) into a whole int8 step, enough to swap two near-equal tokens after a dozen steps.
# The int8 kernels themselves give x86's bits on arm64 (`test_gguf_native.py`), and a real
# model's answer at `gguf` is checked below.
@pytest.mark.parametrize("quantization", ["q0f32", "q4f32_1"])
def test_arm64_build_answers_as_the_x86_build(native, native_arm64, tiny_builds, quantization):
    """The same model built for `--target arm64` and for this CPU: the arm64 `mlc-chat` under
    qemu-aarch64 gives the x86 one's greedy tokens (two turns, past the first KV page)."""
    prompts = ["Hello there, a longer prompt that fills the first page of the KV cache", "More."]
    options = ("--temperature", "0", "--max-tokens", "20")
    x86 = tiny_builds.get("gqa", quantization, **GQA)[1]
    arm = tiny_builds.get("gqa", quantization, {"target": "arm64"}, **GQA)[1]
    library = next(arm.glob("*.so"))
    assert b"\x7fELF\x02\x01\x01" in library.read_bytes()[:8]
    assert int.from_bytes(library.read_bytes()[18:20], "little") == 183  # EM_AARCH64
    expected = turns(mlc_chat(native, x86, prompts, *options))
    got = turns(mlc_chat(native_arm64, arm, prompts, *options, arch="arm64"))
    keys = ("answer", "ids", "finish_reason", "prefill_tokens")
    assert [{k: t[k] for k in keys} for t in got] == [{k: t[k] for k in keys} for t in expected]
    assert expected[0]["prefill_tokens"] > 16


def test_an_arm64_build_is_refused_on_x86_with_the_fix(native, tiny_builds):
    arm = tiny_builds.get("gqa", "q0f32", {"target": "arm64"}, **GQA)[1]
    run = mlc_chat(native, arm, ["Hi"])
    assert run.returncode == 1 and "built for target 'arm64'" in run.stderr
    assert "qemu-aarch64" in run.stderr


def test_default_model_for_arm64_answers_as_on_x86(native_arm64, smollm2_builds, tmp_path):
    """The embedded default built with `--target arm64` (its GGUF blocks on the int8 kernels'
    generic form, the x86 kernels' bits) answers under qemu-aarch64 with the x86 build's
    tokens. About a minute: every instruction is emulated."""
    from mlc.default_model import QUANTIZATION, embedded_gguf

    prompt = "Name the capital of France."
    config = GenerationConfig(temperature=0, max_tokens=12)
    expected = python_turns(smollm2_builds(QUANTIZATION), [prompt], config)
    arm = build(BuildOptions(model=embedded_gguf(), target="arm64", output=tmp_path, quiet=True))
    options = ("--temperature", "0", "--max-tokens", "12")
    got = turns(mlc_chat(native_arm64, arm, [prompt], *options, arch="arm64"))
    assert_same_turns(got, expected)
    assert "Paris" in got[0]["answer"]
